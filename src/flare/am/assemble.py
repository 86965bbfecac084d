"""The LPBF dataset in the standard format, from extracted cases (SPEC §5).

Two steps. :func:`compute_sdf` computes the eleven SDF node features of each case
(:func:`flare.am.sdf.sdf_features`) into ``<sdf_dir>/<case>.npz`` (``features`` [N, 11] float32 and
``seconds``, the time the features took); it skips cases already done, so it resumes and can be
split into shards over any subsets of the cases. :func:`assemble` draws the paper's split and
writes ``train.h5`` / ``test.h5`` with :func:`flare.data.format.write_dataset`:

* inputs: node positions x/30, y/30, z/60 (mm, as the published samples, ``POS_SCALE_MM``), not
  normalised further; with ``sdf_dir`` also the 11 SDF features, normalised with train statistics;
* output: the z-displacement at the final time step (mm);
* edges: the unique hex-mesh edges of each sample (:func:`flare.am.mesh.hex_edges`);
* split: ``np.random.RandomState(seed).permutation(n)`` over the sorted case names, the first
  ``num_train`` train and the next ``num_test`` test (the paper's seed-0 draw; cases past
  ``num_train + num_test`` are left out);

and ``cases.csv`` (split, index, case, nodes) maps every sample back to its case.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from flare.am.mesh import hex_edges
from flare.am.sdf import FEATURE_NAMES, sdf_features
from flare.data.lpbf_published import POS_SCALE_MM
from flare.data.npz import load_arrays

log = logging.getLogger(__name__)

SDF_KEY = "features"
# Units of the SDF features in FEATURE_NAMES order: the flag is a number, the rest lengths.
SDF_UNITS = ["1"] + ["mm"] * (len(FEATURE_NAMES) - 1)


def _check_unique(cases: list[str]) -> list[str]:
    counts = pd.Series(cases, dtype=object).value_counts()
    duplicated = sorted(counts.index[counts > 1])
    if duplicated:
        raise ValueError(f"case(s) listed more than once: {duplicated[:5]}")
    return cases


def _write_atomic(path: Path, write) -> None:
    """Call ``write(file object)`` on a temporary file in ``path``'s folder, then rename it to ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_case(extracted_dir: Path, case: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    path = extracted_dir / f"{case}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"case {case}: extracted file {path} does not exist")
    arrays = load_arrays(path, keys)
    points = arrays["points"]
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"case {case}: {path} 'points' has shape {points.shape}, expected [N, 3] with N > 0")
    if "displacement" in arrays and arrays["displacement"].shape != points.shape:
        raise ValueError(f"case {case}: {path} 'displacement' has shape {arrays['displacement'].shape}, "
                         f"expected {points.shape}")
    return arrays


def compute_sdf(extracted_dir: str | Path, cases: Iterable[str], out_dir: str | Path,
                progress: bool = True) -> pd.DataFrame:
    """SDF features of ``cases`` into ``<out_dir>/<case>.npz``; existing files are kept (resume).

    Each file holds ``features`` [N, 11] float32 (``FEATURE_NAMES`` order, mm) and ``seconds``
    (0-d float64: wall time of the feature computation alone). Returns one row per case in the
    given order: case, nodes, seconds (read back from the file for cases already done).
    ``progress`` logs one line per case.
    """
    extracted_dir, out_dir = Path(extracted_dir), Path(out_dir)
    cases = _check_unique([str(c) for c in cases])
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, case in enumerate(cases, 1):
        path = out_dir / f"{case}.npz"
        if path.is_file():
            done = load_arrays(path, (SDF_KEY, "seconds"))
            rows.append({"case": case, "nodes": len(done[SDF_KEY]), "seconds": float(done["seconds"])})
            if progress:
                log.info("sdf %d/%d %s: done before (%d nodes)", i, len(cases), case, len(done[SDF_KEY]))
            continue
        arrays = _load_case(extracted_dir, case, ("points", "cells"))
        start = time.perf_counter()
        try:
            features = sdf_features(arrays["points"], arrays["cells"])
        except ValueError as err:
            raise ValueError(f"case {case}: no SDF features: {err}") from err
        seconds = time.perf_counter() - start
        _write_atomic(path, lambda fh: np.savez(fh, **{SDF_KEY: features, "seconds": np.float64(seconds)}))
        rows.append({"case": case, "nodes": len(features), "seconds": seconds})
        if progress:
            log.info("sdf %d/%d %s: %d nodes in %.2f s", i, len(cases), case, len(features), seconds)
    return pd.DataFrame(rows, columns=["case", "nodes", "seconds"])


def split_cases(cases: Iterable[str], num_train: int, num_test: int, seed: int = 0) -> dict[str, list[str]]:
    """``{"train": [...], "test": [...]}``: the seed's permutation of the sorted cases, first
    ``num_train`` train, next ``num_test`` test."""
    cases = sorted(_check_unique([str(c) for c in cases]))
    if num_train < 1 or num_test < 1:
        raise ValueError(f"num_train and num_test must be positive, got {num_train} and {num_test}")
    if len(cases) < num_train + num_test:
        raise ValueError(f"only {len(cases)} cases for num_train {num_train} + num_test {num_test} "
                         f"= {num_train + num_test}")
    order = np.random.RandomState(seed).permutation(len(cases))
    return {"train": [cases[i] for i in order[:num_train]],
            "test": [cases[i] for i in order[num_train:num_train + num_test]]}


def _sample(extracted_dir: Path, case: str, sdf_dir: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x [N, c_in] float32, y [N, 1] float32 mm, edges [E, 2] int64) of one case."""
    arrays = _load_case(extracted_dir, case, ("points", "cells", "displacement"))
    points = arrays["points"]
    x = points / np.asarray(POS_SCALE_MM)
    if sdf_dir is not None:
        path = sdf_dir / f"{case}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"case {case}: SDF file {path} does not exist (run compute_sdf for it)")
        features = load_arrays(path, (SDF_KEY,))[SDF_KEY]
        if features.shape != (len(points), len(FEATURE_NAMES)):
            raise ValueError(f"case {case}: SDF file {path} has features of shape {features.shape} but the "
                             f"extracted case has {len(points)} nodes; expected ({len(points)}, "
                             f"{len(FEATURE_NAMES)}); delete it and compute it again")
        x = np.concatenate([x, features], axis=1)
    try:
        edges = hex_edges(arrays["cells"])
    except ValueError as err:
        raise ValueError(f"case {case}: {err}") from err
    if len(edges) and edges.max() >= len(points):
        raise ValueError(f"case {case}: cells refer to node {edges.max()} but there are {len(points)} points")
    return x.astype(np.float32), arrays["displacement"][:, 2:3].astype(np.float32), edges


def assemble(extracted_dir: str | Path, cases: Iterable[str], out_dir: str | Path, num_train: int,
             num_test: int, seed: int = 0, sdf_dir: str | Path | None = None,
             name: str = "lpbf") -> dict[str, Path]:
    """Write the LPBF dataset of ``cases`` to ``out_dir`` (``train.h5``, ``test.h5``, ``meta.json``,
    ``cases.csv``); see the module docstring. Returns the written paths by split, plus "cases".

    Raises ValueError when there are fewer cases than ``num_train + num_test``, and an error naming
    the case when its extracted file or SDF file is missing or disagrees in node count.
    """
    from flare.data.format import DatasetMeta, write_dataset

    extracted_dir, out_dir = Path(extracted_dir), Path(out_dir)
    sdf_dir = None if sdf_dir is None else Path(sdf_dir)
    cases = sorted(_check_unique([str(c) for c in cases]))
    split = split_cases(cases, num_train, num_test, seed)
    samples, rows = {}, []
    for part, names in split.items():
        xs, ys, edges = [], [], []
        for index, case in enumerate(names):
            x, y, e = _sample(extracted_dir, case, sdf_dir)
            xs.append(x)
            ys.append(y)
            edges.append(e)
            rows.append({"split": part, "index": index, "case": case, "nodes": len(x)})
        samples[part] = (xs, ys, edges)

    channels, units, normalize = ["x", "y", "z"], [f"{s:g} mm" for s in POS_SCALE_MM], [False] * 3
    if sdf_dir is not None:
        channels, units = channels + FEATURE_NAMES, units + SDF_UNITS
        normalize = normalize + [True] * len(FEATURE_NAMES)
    features = " and the 11 SDF node features" if sdf_dir is not None else ""
    meta = DatasetMeta(
        name=name,
        input_channels=channels,
        output_channels=["z_displacement"],
        input_units=units,
        output_units=["mm"],
        source=f"extracted Netfabb cases in {os.fspath(extracted_dir)}"
        + (f" with SDF features from {os.fspath(sdf_dir)}" if sdf_dir is not None else "")
        + f": seed-{seed} permutation of {len(cases)} sorted cases, {num_train} train / {num_test} test; "
        "arrays 'points' and 'displacement'[:, 2]",
        normalize_inputs=normalize,
        grid_shape=[],
        description="laser powder bed fusion (Netfabb, Ti-6Al-4V): hex-mesh node positions divided by "
        f"[30, 30, 60] mm{features} -> vertical displacement (mm) after the build",
    )
    paths = write_dataset(out_dir, meta, train=samples["train"], test=samples["test"])
    table = pd.DataFrame(rows, columns=["split", "index", "case", "nodes"])
    _write_atomic(out_dir / "cases.csv", lambda fh: fh.write(table.to_csv(index=False).encode()))
    return {**paths, "cases": out_dir / "cases.csv"}
