"""Bring your own data: a folder of mesh files, one sample each, in the standard format.

Every file matching ``pattern`` that meshio reads (VTU, XDMF, Gmsh ``.msh``, …) is one sample; its
points are the sample's points. Per point:

- inputs: the coordinates (when ``coordinates=True``; only the axes the data actually use — an
  axis that is constant in every file, like z = 0 of a 2-D mesh stored with 3-D points, is
  dropped), then the named ``point_data`` fields;
- outputs: the named ``point_data`` fields.

A field with one value per point gives one channel named after it; a vector or tensor field with
k values per point gives channels ``name_0 … name_{k-1}``. Every file must hold every named field
with the same number of components. Samples may have different point counts (train with batch
size 1 then). Cell connectivity and ``cell_data`` are not read.

Split: explicit ``train_files`` / ``test_files`` (file names or paths relative to ``folder``), or
a seeded random choice of ``round(test_fraction · n)`` test files (at least one, and at least one
file left to train on): ``np.random.default_rng(seed).permutation(n)`` over the matched files sorted
by path, the first ones to test. Within a split samples are ordered by path; ``splits.json`` in
the output folder lists the files of each split.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

AXES = ("x", "y", "z")
UNKNOWN_UNIT = "unknown"


class MissingFieldError(KeyError):
    """A mesh file without a requested point_data field."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _read_mesh(path: Path):
    try:
        import meshio
    except ImportError as err:
        raise ImportError("converting a mesh folder needs meshio (pip install meshio)") from err
    try:
        return meshio.read(path)
    # meshio raises many types (ReadError, KeyError, ValueError, …) and calls sys.exit(1) when no
    # reader accepts the file; neither may end the caller's program.
    except (Exception, SystemExit) as err:
        raise ValueError(f"{path}: meshio cannot read it ({type(err).__name__}: {err})") from None


def _field(mesh, path: Path, name: str) -> np.ndarray:
    """Point field ``name`` as ``[N, k]`` float64; errors name the file and list the fields present."""
    if name not in mesh.point_data:
        present = ", ".join(sorted(mesh.point_data)) or "none"
        cell = ", ".join(sorted(mesh.cell_data))
        extra = f" (cell_data fields, not read: {cell})" if cell else ""
        raise MissingFieldError(f"{path}: no point_data field {name!r}; point_data fields present: {present}{extra}")
    values = np.asarray(mesh.point_data[name])
    if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
        raise ValueError(f"{path}: point_data field {name!r} is not real-valued (dtype {values.dtype})")
    if len(values) != len(mesh.points):
        raise ValueError(f"{path}: point_data field {name!r} has {len(values)} values for {len(mesh.points)} points")
    if not np.isfinite(values).all():
        raise ValueError(f"{path}: point_data field {name!r} contains NaN or Inf")
    return values.reshape(len(values), -1).astype(np.float64)


def channel_names(name: str, components: int) -> list[str]:
    """``["p"]`` for a scalar field, ``["u_0", "u_1", …]`` for a field of several components."""
    return [name] if components == 1 else [f"{name}_{i}" for i in range(components)]


def _check_names(inputs: Sequence[str], outputs: Sequence[str], coordinates: bool) -> tuple[list[str], list[str]]:
    if isinstance(inputs, str) or isinstance(outputs, str):
        raise TypeError("inputs and outputs must be lists of field names, not a single string")
    inputs, outputs = list(inputs), list(outputs)
    if not outputs:
        raise ValueError("outputs must name at least one point_data field")
    if not inputs and not coordinates:
        raise ValueError("no inputs: name point_data fields in inputs or set coordinates=True")
    for kind, names in (("inputs", inputs), ("outputs", outputs)):
        if len(set(names)) != len(names):
            raise ValueError(f"{kind} names a field twice: {names}")
    return inputs, outputs


def match_files(folder, pattern: str) -> list[Path]:
    """Files under ``folder`` matching the glob ``pattern`` (``"**/*.vtu"`` recurses), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"mesh folder {folder} does not exist")
    files = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not files:
        raise FileNotFoundError(f"no files matching {pattern!r} in {folder}")
    return files


def split_files(files: list[Path], folder: Path, test_fraction: float, seed: int,
                train_files=None, test_files=None) -> dict[str, list[Path]]:
    """Train and test files (each sorted by path); see the module docstring."""
    if (train_files is None) != (test_files is None):
        raise ValueError("give both train_files and test_files, or neither (then test_fraction and seed decide)")
    if train_files is not None:
        by_name: dict[str, list[Path]] = {}
        for path in files:  # a file can be named by its path relative to folder or, if unique, its name
            by_name.setdefault(path.relative_to(folder).as_posix(), []).append(path)
            if path.name != path.relative_to(folder).as_posix():
                by_name.setdefault(path.name, []).append(path)
        chosen = {}
        for split, names in (("train", train_files), ("test", test_files)):
            if isinstance(names, str) or not names:
                raise ValueError(f"{split}_files must be a non-empty list of file names")
            keys = [Path(n).as_posix() for n in names]
            unknown = [n for n, k in zip(names, keys) if k not in by_name]
            if unknown:
                raise FileNotFoundError(
                    f"{split}_files {unknown[:10]} are not among the files matching the pattern in {folder}"
                )
            ambiguous = [n for n, k in zip(names, keys) if len(by_name[k]) > 1]
            if ambiguous:
                raise ValueError(f"{split}_files {ambiguous[:10]} match several files in {folder}; give relative paths")
            chosen[split] = sorted({by_name[k][0] for k in keys})
        both = sorted(set(chosen["train"]) & set(chosen["test"]))
        if both:
            raise ValueError(f"{[p.name for p in both][:10]} are in both train_files and test_files")
        return chosen
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1; got {test_fraction!r}")
    if len(files) < 2:
        raise ValueError(f"{len(files)} file(s) in {folder}: at least 2 are needed for a train and a test sample")
    num_test = min(max(1, round(test_fraction * len(files))), len(files) - 1)
    order = np.random.default_rng(seed).permutation(len(files))
    test = sorted(files[i] for i in order[:num_test])
    train = sorted(files[i] for i in order[num_test:])
    return {"train": train, "test": test}


def prepare(
    folder,
    out_dir,
    inputs: Sequence[str],
    outputs: Sequence[str],
    pattern: str = "*.vtu",
    coordinates: bool = True,
    test_fraction: float = 0.2,
    seed: int = 0,
    train_files: Sequence[str] | None = None,
    test_files: Sequence[str] | None = None,
    name: str | None = None,
    units: Mapping[str, str] | None = None,
    normalize_inputs: bool = True,
    source: str = "mesh folder",
) -> dict:
    """Convert a folder of mesh files to the standard format (see the module docstring).

    inputs / outputs: names of ``point_data`` fields. units: optional unit per field or coordinate
    axis name (``{"x": "m", "p": "Pa"}``), ``"unknown"`` otherwise. normalize_inputs: normalise every
    input channel (coordinates included) with train statistics; outputs always are. name: the
    dataset's name (default: the folder's name). Returns the written paths.
    """
    from flare.data.format import DatasetMeta, write_dataset

    folder = Path(folder)
    inputs, outputs = _check_names(inputs, outputs, coordinates)
    files = match_files(folder, pattern)
    splits = split_files(files, folder, test_fraction, seed, train_files, test_files)
    units = dict(units or {})

    components: dict[str, int] = {}
    used_axes = np.zeros(0, dtype=bool)
    raw: dict[str, list[tuple[np.ndarray | None, list[np.ndarray], list[np.ndarray]]]] = {}
    for split, paths in splits.items():
        raw[split] = []
        for path in paths:
            mesh = _read_mesh(path)
            points = np.asarray(mesh.points, dtype=np.float64)
            if points.ndim != 2 or len(points) == 0:
                raise ValueError(f"{path}: no points (points array of shape {points.shape})")
            if coordinates and not np.isfinite(points).all():
                raise ValueError(f"{path}: point coordinates contain NaN or Inf")
            fields = {}
            for field in dict.fromkeys(inputs + outputs):
                values = _field(mesh, path, field)
                if components.setdefault(field, values.shape[1]) != values.shape[1]:
                    raise ValueError(
                        f"{path}: point_data field {field!r} has {values.shape[1]} components, "
                        f"but {components[field]} in the files read before"
                    )
                fields[field] = values
            coords = None
            if coordinates:
                if used_axes.size == 0:
                    used_axes = np.zeros(points.shape[1], dtype=bool)
                if points.shape[1] != used_axes.size:
                    raise ValueError(f"{path}: points have {points.shape[1]} coordinates, other files {used_axes.size}")
                used_axes |= np.ptp(points, axis=0) > 0
                coords = points
            raw[split].append((coords, [fields[f] for f in inputs], [fields[f] for f in outputs]))

    axes = [AXES[i] if i < len(AXES) else f"axis_{i}" for i in np.flatnonzero(used_axes)] if coordinates else []
    if coordinates and not axes:
        raise ValueError(f"every point of every file in {folder} has the same coordinates: no coordinate input left")
    samples = {}
    for split, rows in raw.items():
        xs, ys = [], []
        for coords, ins, outs in rows:
            parts = ([coords[:, used_axes]] if coordinates else []) + ins
            xs.append(np.concatenate(parts, axis=1))
            ys.append(np.concatenate(outs, axis=1))
        samples[split] = (xs, ys)

    input_channels = axes + [c for f in inputs for c in channel_names(f, components[f])]
    output_channels = [c for f in outputs for c in channel_names(f, components[f])]
    input_units = [units.get(a, UNKNOWN_UNIT) for a in axes] + [
        units.get(f, UNKNOWN_UNIT) for f in inputs for _ in range(components[f])]
    output_units = [units.get(f, UNKNOWN_UNIT) for f in outputs for _ in range(components[f])]
    sizes = [len(x) for xs, _ in samples.values() for x in xs]
    meta = DatasetMeta(
        name=name or folder.resolve().name,
        input_channels=input_channels,
        output_channels=output_channels,
        input_units=input_units,
        output_units=output_units,
        source=f"{source} {os.fspath(folder)}: {len(files)} files matching {pattern!r}, "
        f"{len(splits['train'])} train / {len(splits['test'])} test "
        + ("(explicit lists)" if train_files is not None else f"(test_fraction {test_fraction}, seed {seed})")
        + "; file lists in splits.json",
        normalize_inputs=[bool(normalize_inputs)] * len(input_channels),
        grid_shape=[],
        description=f"point_data {inputs} (+ coordinates {axes}) -> {outputs}; "
        f"{min(sizes)}-{max(sizes)} points per sample",
    )
    paths = write_dataset(out_dir, meta, train=samples["train"], test=samples["test"])
    listing = {split: [p.relative_to(folder).as_posix() for p in ps] for split, ps in splits.items()}
    with open(Path(out_dir) / "splits.json", "w") as fh:
        json.dump({**listing, "pattern": pattern, "seed": seed, "test_fraction": test_fraction}, fh, indent=2)
    return paths
