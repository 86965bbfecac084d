"""The standard on-disk dataset format: ``<dataset dir>/{train,test}.h5``.

Each split file holds all samples' points concatenated, so samples may differ in size
(LPBF meshes) without a change of format:

    x        float32 [P, c_in]   inputs of every point of every sample (all arrays Fletcher-32 checked)
    y        float32 [P, c_out]  outputs
    offsets  int64   [S + 1]     sample i is rows offsets[i]:offsets[i+1]
    edges, edge_offsets  (optional) int64 [E, 2] and [S + 1]: mesh edges of every sample as pairs of
             point indices local to the sample (for graph models); edge_offsets [0, E] when all
             samples share one edge list (structured grids)
    normalizer/{x_mean,x_std,y_mean,y_std}  float64 [c]  fitted on the train split only
    attrs    format_version, name, split, source, description, input_channels, output_channels,
             input_units, output_units, normalize_inputs, grid_shape, num_samples,
             points_per_sample (-1 when sizes differ)

Files are written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from flare.data.normalize import GaussianNormalizer

FORMAT_VERSION = 1
SPLITS = ("train", "test")


@dataclass
class DatasetMeta:
    """What a dataset holds; models and trainers size themselves from it."""

    name: str
    input_channels: list[str]
    output_channels: list[str]
    input_units: list[str]
    output_units: list[str]
    source: str
    normalize_inputs: list[bool]
    grid_shape: list[int] = field(default_factory=list)  # e.g. [85, 85]; empty for point clouds
    description: str = ""

    def __post_init__(self):
        for key, ref in (("input_units", "input_channels"), ("normalize_inputs", "input_channels"),
                         ("output_units", "output_channels")):
            if len(getattr(self, key)) != len(getattr(self, ref)):
                raise ValueError(f"dataset {self.name!r}: {key} has {len(getattr(self, key))} entries "
                                 f"but {ref} has {len(getattr(self, ref))}")

    @property
    def in_channels(self) -> int:
        return len(self.input_channels)

    @property
    def out_channels(self) -> int:
        return len(self.output_channels)


class DatasetFormatError(ValueError):
    """A dataset file that does not follow the standard format."""


def _as_sample_list(samples, name: str, split: str, kind: str, channels: int) -> list[np.ndarray]:
    out = []
    for i, sample in enumerate(samples):
        arr = np.asarray(sample, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != channels:
            raise DatasetFormatError(
                f"dataset {name!r}, {split} sample {i}: {kind} has shape {arr.shape}, expected [points, {channels}]"
            )
        if not np.isfinite(arr).all():
            raise DatasetFormatError(f"dataset {name!r}, {split} sample {i}: {kind} contains NaN or Inf")
        out.append(arr)
    return out


def write_dataset(
    out_dir: str | Path,
    meta: DatasetMeta,
    train: tuple,
    test: tuple,
    y_normalizer: tuple[GaussianNormalizer, str] | None = None,
) -> dict[str, Path]:
    """Validate the samples, fit the normaliser on ``train`` and write ``train.h5`` and ``test.h5``.

    ``train`` and ``test`` are ``(xs, ys)`` with one ``[points, c_in]`` / ``[points, c_out]`` array per
    sample (a stacked ``[S, points, c]`` array works too), or ``(xs, ys, edges)`` with one ``[E_i, 2]``
    integer array of point-index pairs per sample for meshes (one ``[E, 2]`` array when all samples
    share their edges). ``y_normalizer``: a fixed output normaliser and a note saying where its values
    come from, instead of fitting one on ``train``. Returns the written paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.h5.tmp-*"):  # left by a conversion that was killed mid-write
        stale.unlink(missing_ok=True)
    splits, edges = {}, {}
    for split, data in zip(SPLITS, (train, test)):
        if len(data) not in (2, 3):
            raise ValueError(f"dataset {meta.name!r}, {split}: expected (xs, ys) or (xs, ys, edges)")
        xs, ys = data[0], data[1]
        xs = _as_sample_list(xs, meta.name, split, "x", meta.in_channels)
        ys = _as_sample_list(ys, meta.name, split, "y", meta.out_channels)
        if len(xs) != len(ys) or not xs:
            raise DatasetFormatError(f"dataset {meta.name!r}, {split}: {len(xs)} inputs and {len(ys)} outputs")
        for i, (x, y) in enumerate(zip(xs, ys)):
            if len(x) != len(y):
                raise DatasetFormatError(
                    f"dataset {meta.name!r}, {split} sample {i}: {len(x)} input points but {len(y)} output points"
                )
        splits[split] = (xs, ys)
        edges[split] = _as_edge_list(data[2], xs, meta.name, split) if len(data) == 3 else None
    if (edges["train"] is None) != (edges["test"] is None):
        raise DatasetFormatError(f"dataset {meta.name!r}: give edges for both splits or for neither")
    x_norm = GaussianNormalizer.fit(np.concatenate(splits["train"][0]), mask=meta.normalize_inputs)
    if y_normalizer is None:
        y_norm, fitted_on = GaussianNormalizer.fit(np.concatenate(splits["train"][1])), "train"
    else:
        y_norm, fitted_on = y_normalizer
    paths = {}
    for split, (xs, ys) in splits.items():
        paths[split] = _write_split(out_dir / f"{split}.h5", meta, split, xs, ys, x_norm, y_norm, edges[split],
                                    fitted_on)
    with open(out_dir / "meta.json", "w") as fh:  # a human-readable copy of the metadata
        json.dump({**asdict(meta), "num_samples": {s: len(v[0]) for s, v in splits.items()}}, fh, indent=2)
    return paths


def _as_edge_list(edges, xs, name: str, split: str) -> list[np.ndarray]:
    if isinstance(edges, np.ndarray) and edges.ndim == 2:  # one list shared by every sample
        if len({len(x) for x in xs}) != 1:
            raise DatasetFormatError(f"dataset {name!r}, {split}: shared edges need samples of one size")
        return _as_edge_list([edges], xs[:1], name, split)
    if len(edges) != len(xs):
        raise DatasetFormatError(f"dataset {name!r}, {split}: {len(edges)} edge lists for {len(xs)} samples")
    out = []
    for i, (e, x) in enumerate(zip(edges, xs)):
        e = np.asarray(e)
        if e.ndim != 2 or e.shape[1] != 2 or not np.issubdtype(e.dtype, np.integer):
            raise DatasetFormatError(f"dataset {name!r}, {split} sample {i}: edges must be integer [E, 2], "
                                     f"got {e.dtype} {e.shape}")
        if len(e) and (e.min() < 0 or e.max() >= len(x)):
            raise DatasetFormatError(f"dataset {name!r}, {split} sample {i}: edge indices outside 0…{len(x) - 1}")
        out.append(e.astype(np.int64))
    return out


def _offsets(arrays) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)


def _write_split(path: Path, meta: DatasetMeta, split: str, xs, ys, x_norm, y_norm, edges=None,
                 fitted_on: str = "train") -> Path:
    sizes = np.array([len(x) for x in xs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["split"] = split
            f.attrs["num_samples"] = len(xs)
            f.attrs["points_per_sample"] = int(sizes[0]) if (sizes == sizes[0]).all() else -1
            for key, value in asdict(meta).items():
                f.attrs[key] = json.dumps(value) if isinstance(value, list) else value
            # Fletcher-32 checksums per chunk: a flipped bit in the file is an error on reading, not data.
            f.create_dataset("x", data=np.concatenate(xs), fletcher32=True)
            f.create_dataset("y", data=np.concatenate(ys), fletcher32=True)
            f.create_dataset("offsets", data=offsets, fletcher32=True)
            if edges is not None:
                f.create_dataset("edges", data=np.concatenate(edges), fletcher32=True)
                f.create_dataset("edge_offsets", data=_offsets(edges), fletcher32=True)
            g = f.create_group("normalizer")
            g.attrs["fitted_on"] = fitted_on
            for prefix, norm in (("x", x_norm), ("y", y_norm)):
                g.create_dataset(f"{prefix}_mean", data=norm.mean.double().numpy())
                g.create_dataset(f"{prefix}_std", data=norm.std.double().numpy())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass
class SplitData:
    """One split read back: per-sample point arrays, metadata and the train-fitted normalisers."""

    meta: DatasetMeta
    split: str
    x: np.ndarray  # [P, c_in]
    y: np.ndarray  # [P, c_out]
    offsets: np.ndarray  # [S + 1]
    x_normalizer: GaussianNormalizer
    y_normalizer: GaussianNormalizer
    edges: np.ndarray | None = None  # [E, 2], sample-local point indices
    edge_offsets: np.ndarray | None = None  # [S + 1]

    def sample_edges(self, i: int) -> np.ndarray:
        """Edges ``[E_i, 2]`` of sample ``i``."""
        if self.edges is None:
            raise ValueError(f"dataset {self.meta.name!r} ({self.split}) holds no mesh edges")
        if len(self.edge_offsets) == 2:  # shared by every sample
            return self.edges
        return self.edges[self.edge_offsets[i] : self.edge_offsets[i + 1]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def fixed_size(self) -> bool:
        sizes = np.diff(self.offsets)
        return bool((sizes == sizes[0]).all())

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.x[lo:hi], self.y[lo:hi]


def _meta_from_attrs(f: h5py.File, path: Path) -> DatasetMeta:
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise DatasetFormatError(f"{path}: format_version {version}, expected {FORMAT_VERSION}")
    attrs = {k: f.attrs[k] for k in f.attrs}
    list_keys = ("input_channels", "output_channels", "input_units", "output_units", "normalize_inputs", "grid_shape")
    return DatasetMeta(
        **{k: json.loads(attrs[k]) for k in list_keys},
        name=str(attrs["name"]), source=str(attrs["source"]), description=str(attrs["description"]),
    )


CORRUPT_SUFFIX = ".corrupt"


def _quarantine(path: Path) -> Path | None:
    """Move a damaged dataset file aside (``<name>.corrupt``), so that the workflow's next run finds
    it missing and converts it again; nothing is deleted. None when it could not be moved."""
    target = path.with_name(path.name + CORRUPT_SUFFIX)
    try:
        os.replace(path, target)
    except OSError:  # already moved by another process (a DDP rank), or a read-only folder
        return None
    return target


def _unreadable(path: Path, err: Exception) -> DatasetFormatError:
    if isinstance(err, PermissionError):  # the file may be fine: say so, touch nothing
        return DatasetFormatError(f"{path}: cannot be read ({err})")
    moved = _quarantine(path)
    where = (f"moved to {moved.name} so that the next run of the workflow converts it again (snakemake "
             "reruns prepare)" if moved is not None else
             "convert it again: delete it and rerun the workflow (or snakemake --forcerun prepare)")
    return DatasetFormatError(f"{path}: not a readable dataset file in the standard format ({err}); {where}")


@contextlib.contextmanager
def _open_split(path: Path):
    """The open split file; whatever goes wrong reading it is an error naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist (run the workflow's prepare step)")
    try:
        with h5py.File(path, "r") as f:
            yield f
    except DatasetFormatError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise _unreadable(path, err) from err


def read_meta(path: str | Path) -> DatasetMeta:
    """Only the metadata of a split file (no arrays are read)."""
    path = Path(path)
    with _open_split(path) as f:
        return _meta_from_attrs(f, path)


def read_split(path: str | Path) -> SplitData:
    """Read a split file fully into memory; any deviation from the format names the file."""
    path = Path(path)
    with _open_split(path) as f:
        meta = _meta_from_attrs(f, path)
        x, y, offsets = f["x"][...], f["y"][...], f["offsets"][...]
        g = f["normalizer"]
        x_norm = GaussianNormalizer(g["x_mean"][...], g["x_std"][...])
        y_norm = GaussianNormalizer(g["y_mean"][...], g["y_std"][...])
        split = str(f.attrs["split"])
        edges = f["edges"][...] if "edges" in f else None
        edge_offsets = f["edge_offsets"][...] if "edge_offsets" in f else None
    if x.shape[1] != meta.in_channels or y.shape[1] != meta.out_channels or len(x) != len(y):
        raise DatasetFormatError(f"{path}: x {x.shape} / y {y.shape} disagree with the metadata's channels")
    if offsets[0] != 0 or offsets[-1] != len(x) or (np.diff(offsets) <= 0).any():
        raise DatasetFormatError(f"{path}: offsets do not partition the {len(x)} points into samples")
    if edges is not None and (edge_offsets is None or len(edge_offsets) not in (2, len(offsets))
                              or edge_offsets[-1] != len(edges)):
        raise DatasetFormatError(f"{path}: edge_offsets do not partition the edges into the {len(offsets) - 1} samples")
    return SplitData(meta, split, x, y, offsets, x_norm, y_norm, edges, edge_offsets)
