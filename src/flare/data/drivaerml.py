"""DrivAerML surface pressure (presampled runs of the FLARE reference code) in the standard format (SPEC §4).

Published layout: ``drivaerml_surface_presampled_<size>.tar.gz`` holds ``train/run_<i>.npz`` and
``test/run_<i>.npz``, each with

    surface_mesh_centers  [N, 3]  surface cell centres x, y, z (m)
    surface_fields        [N, 4]  pMeanTrim, wallShearStressMeanTrim x/y/z

(vpuri3/FLARE.py ``pdebench/dataset/drivaerml_presample.py`` writes them; ``drivaerml.py`` reads
them). The presampler takes the split from a ``train_test_splits.json`` with keys ``"train"`` and
``"test"``, each a list of run numbers (it matches ``int(<i>)`` of ``run_<i>`` against the list
entries). Whether that file ships with the tarball is not known, so the split comes from, in order:
``splits_file`` if given, else ``<folder>/train_test_splits.json`` if present, else the ``train/``
and ``test/`` folders the runs sit in. List entries may be run numbers (``12``), run ids
(``"run_12"``) or file names (``"run_12.npz"``); other keys (``"val"``, ``"hidden_test"``, …) are
ignored. Runs are ordered by run number within a split.

Normalisation, as in the reference ``DrivAerMLDataset``:

- inputs: ``(xyz - XYZ_MIN) / (XYZ_MAX - XYZ_MIN)`` with the fixed box below, which maps the car
  into (about) the unit cube ``[0, 1]³``; no further input normalisation.
- output: the pressure is stored in physical units, and the output normaliser is the reference's
  fixed ``mean = -229.845718, std = 269.598572`` (the model sees ``(p + 229.845718) / 269.598572``,
  the metric decodes back to p, as the reference's ``RelL2Callback`` does). With
  ``pressure_normalizer="train"`` the usual train-fitted normaliser is kept instead.

Runs may have different point counts.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from flare.data.npz import load_arrays

XYZ_MIN = (-0.9425, -1.1314, -0.3176)
XYZ_MAX = (4.1325, 1.1317, 1.2445)
PRESSURE_MEAN = -229.845718
PRESSURE_STD = 269.598572
SPLITS_FILE = "train_test_splits.json"
COORDS_KEY = "surface_mesh_centers"
FIELDS_KEY = "surface_fields"
_RUN_FILE = re.compile(r"^run_(\d+)\.npz$")
_RUN_ENTRY = re.compile(r"^(?:run_)?(\d+)(?:\.npz)?$")


def find_runs(folder) -> dict[int, Path]:
    """Every ``run_<i>.npz`` under ``folder`` (any depth) as ``{i: path}``; a run found twice is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DrivAerML folder {folder} does not exist")
    runs: dict[int, Path] = {}
    for path in sorted(folder.rglob("run_*.npz")):
        match = _RUN_FILE.match(path.name)
        if match is None or not path.is_file():
            continue
        run = int(match.group(1))
        if run in runs:
            raise ValueError(f"run {run} appears twice under {folder}: {runs[run]} and {path}")
        runs[run] = path
    if not runs:
        raise FileNotFoundError(f"no run_<i>.npz files under {folder}")
    return runs


def _run_number(entry, splits_file: Path, split: str) -> int:
    if isinstance(entry, int) and not isinstance(entry, bool):
        return entry
    match = _RUN_ENTRY.match(str(entry)) if isinstance(entry, str) else None
    if match is None:
        raise ValueError(f"{splits_file}: entry {entry!r} of {split!r} is not a run number, run id or run file name")
    return int(match.group(1))


def read_splits_file(path) -> dict[str, list[int]]:
    """``{"train": [...], "test": [...]}`` run numbers from a ``train_test_splits.json``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DrivAerML splits file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with keys 'train' and 'test'")
    splits = {}
    for split in ("train", "test"):
        entries = data.get(split)
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{path}: key {split!r} must be a non-empty list of runs; keys present: {sorted(data)}")
        splits[split] = [_run_number(e, path, split) for e in entries]
    both = sorted(set(splits["train"]) & set(splits["test"]))
    if both:
        raise ValueError(f"{path}: run(s) {both[:10]} are listed in both 'train' and 'test'")
    return splits


def resolve_split(folder, splits_file=None) -> tuple[dict[str, list[Path]], str]:
    """The run files of each split and a sentence saying where the split came from."""
    folder = Path(folder)
    runs = find_runs(folder)
    if splits_file is None and (folder / SPLITS_FILE).is_file():
        splits_file = folder / SPLITS_FILE
    if splits_file is not None:
        numbers = read_splits_file(splits_file)
        files = {}
        for split, wanted in numbers.items():
            missing = [n for n in wanted if n not in runs]
            if missing:
                raise FileNotFoundError(
                    f"{splits_file} lists {split} run(s) {missing[:10]} but no run_<i>.npz for them is under {folder}"
                )
            files[split] = [runs[n] for n in sorted(set(wanted))]
        return files, f"split from {Path(splits_file).name}"
    files = {split: [runs[n] for n in sorted(runs) if runs[n].parent.name == split] for split in ("train", "test")}
    for split, paths in files.items():
        if not paths:
            raise FileNotFoundError(
                f"no {SPLITS_FILE} given or found in {folder}, and no run_<i>.npz in a {split}/ folder under it"
            )
    return files, "split from the train/ and test/ folders"


def read_run(path) -> tuple[np.ndarray, np.ndarray]:
    """``(xyz [N, 3], pressure [N, 1])`` float32 of one presampled run; errors name the file."""
    path = Path(path)
    arrays = load_arrays(path, (COORDS_KEY, FIELDS_KEY))
    xyz, fields = arrays[COORDS_KEY], arrays[FIELDS_KEY]
    if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
        raise ValueError(f"{path}: {COORDS_KEY!r} has shape {xyz.shape}, expected [N, 3] with N > 0")
    if fields.ndim != 2 or fields.shape != (len(xyz), 4):
        raise ValueError(f"{path}: {FIELDS_KEY!r} has shape {fields.shape}, expected [{len(xyz)}, 4] (p, wss x/y/z)")
    if not np.isfinite(xyz).all() or not np.isfinite(fields[:, 0]).all():
        raise ValueError(f"{path}: coordinates or pressure contain NaN or Inf")
    return xyz.astype(np.float32), fields[:, :1].astype(np.float32)


def normalize_coordinates(xyz: np.ndarray) -> np.ndarray:
    """The reference's fixed box map ``(xyz - XYZ_MIN) / (XYZ_MAX - XYZ_MIN)``, ``[N, 3]`` -> ``[N, 3]``."""
    lo = np.asarray(XYZ_MIN, dtype=np.float64)
    hi = np.asarray(XYZ_MAX, dtype=np.float64)
    return ((np.asarray(xyz, dtype=np.float64) - lo) / (hi - lo)).astype(np.float32)


def prepare(folder, out_dir, splits_file=None, pressure_normalizer: str = "reference",
            source: str = "DrivAerML presampled surface runs") -> dict:
    """Convert a folder of presampled DrivAerML runs to the standard format (see the module docstring).

    Inputs x, y, z mapped by the reference's fixed box into about ``[0, 1]³`` (not normalised further);
    output the surface pressure p. ``pressure_normalizer``: ``"reference"`` (fixed mean/std of the
    reference code, default) or ``"train"`` (fitted on the train split). Returns the written paths.
    """
    from flare.data.format import DatasetMeta, write_dataset
    from flare.data.normalize import GaussianNormalizer

    if pressure_normalizer not in ("reference", "train"):
        raise ValueError(f"pressure_normalizer must be 'reference' or 'train'; got {pressure_normalizer!r}")
    files, how = resolve_split(folder, splits_file)
    samples = {}
    for split, paths in files.items():
        xs, ys = [], []
        for path in paths:
            xyz, p = read_run(path)
            xs.append(normalize_coordinates(xyz))
            ys.append(p)
        samples[split] = (xs, ys)
    if pressure_normalizer == "reference":
        norm = f"output normaliser fixed to the reference's mean {PRESSURE_MEAN}, std {PRESSURE_STD}"
    else:
        norm = "output normaliser fitted on the train split"
    meta = DatasetMeta(
        name="drivaerml",
        input_channels=["x", "y", "z"],
        output_channels=["pressure"],
        input_units=["1", "1", "1"],
        output_units=["Pa"],
        source=f"{source} in {os.fspath(folder)}: {how}; {len(files['train'])} train runs "
        f"({_run_list(files['train'])}), {len(files['test'])} test runs ({_run_list(files['test'])}); "
        f"{COORDS_KEY} and {FIELDS_KEY}[:, 0]",
        normalize_inputs=[False, False, False],
        grid_shape=[],
        description=f"DrivAerML car surface: cell-centre coordinates -> mean surface pressure. Inputs mapped by "
        f"(xyz - {list(XYZ_MIN)}) / ({list(XYZ_MAX)} - {list(XYZ_MIN)}) into about [0, 1]^3; pressure stored "
        f"unscaled; {norm}",
    )
    fixed = None
    if pressure_normalizer == "reference":
        fixed = (GaussianNormalizer([PRESSURE_MEAN], [PRESSURE_STD]), "fixed: DrivAerML reference constants")
    return write_dataset(out_dir, meta, train=samples["train"], test=samples["test"], y_normalizer=fixed)


def _run_list(paths: list[Path], limit: int = 20) -> str:
    names = [p.stem for p in paths]
    return ", ".join(names[:limit]) + (f", … ({len(names) - limit} more)" if len(names) > limit else "")
