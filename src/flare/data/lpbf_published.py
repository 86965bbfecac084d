"""The published LPBF samples (Hugging Face dataset ``vedantpuri/LPBF_FLARE``) in the standard format.

Published layout, as written by the FLARE reference code (vpuri3/FLARE.py
``am/dataset/filtering.py::make_dataset``, indexed by canxkoz/FLARE.py ``am/dataset/upload_to_hf.py``
and read by vpuri3/FLARE.py ``pdebench/dataset/lpbf.py``)::

    train/<case>.npz, test/<case>.npz     one simulation each; <case> = case<5 digits>_<case name>
        pos         [N, 3]  float32   node positions (mm); x, y in [-30, 30], z in [-25, 60]
        disp        [N, 3]  float32   displacement at the final time step (mm)
        temp, vmstr [N, 1]  float32   temperature, von Mises stress (not used here)
        elems       [M, 8]  int32     hexa8 connectivity (not used here)
        edge_index  [2, E]  int64     mesh edges (kept as the dataset's edges)
        _metadata   [1]     object    JSON text {"metadata": {"case_name", "zmax", "time_steps"}}
                                      (a pickled object array; never loaded here)
    data/train-00000-of-00001.parquet, data/test-00000-of-00001.parquet
        index tables, one row per sample: case_id, file ("train/<case>.npz"), num_nodes, num_edges,
        metadata (the ``datasets`` library's layout for the ``data/train-*`` / ``data/test-*``
        splits named in the dataset card)

The split is the published one: ``make_dataset`` drew it once with ``np.random.seed(0);
np.random.permutation(n)`` (first 1100 train, remaining 290 test) over a list of case files whose
order came from a Python ``set``, so it cannot be re-drawn; it lives on as the train/ and test/
folders and the two index tables. The reference reads each split in index order, inputs
``pos / [30, 30, 60]`` (``DatasetTransform.pos_scale``) and output ``disp[:, 2]`` (z-displacement, mm,
``disp_scale = 1``).

Which files are read: with index tables (``index_dir``, or ``<folder>/data`` when it holds
``train-*.parquet`` and ``test-*.parquet``) the rows of each table in order, their ``file`` entries
resolved under ``folder`` (a sample is found by its ``<split>/<case>.npz`` tail, so the npz may sit
deeper, as in an extracted ``LPBF.tar.gz``); without them every ``train/*.npz`` and ``test/*.npz``
under ``folder``, sorted by name (the order the index tables were built in).

This layout is read off the code that wrote and reads the files (``am/dataset/utils.py::makegraph``
builds the arrays, ``make_dataset`` saves them), not off a downloaded copy; unconfirmed are the
``[N, 1]`` shape of temp / vmstr (unused here) and the parquet shard names (``-00000-of-00001``,
the ``datasets`` library's default) — any ``train-*.parquet`` / ``test-*.parquet`` is accepted.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import numpy as np

from flare.data.npz import load_arrays

POS_SCALE_MM = (30.0, 30.0, 60.0)
EDGE_KEY = "edge_index"
POS_KEY = "pos"
DISP_KEY = "disp"
SPLITS = ("train", "test")


def find_samples(folder) -> dict[str, Path]:
    """Every ``train/*.npz`` / ``test/*.npz`` under ``folder`` as ``{"<split>/<case>.npz": path}``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"LPBF folder {folder} does not exist")
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.npz")):
        if path.parent.name not in SPLITS or not path.is_file():
            continue
        key = f"{path.parent.name}/{path.name}"
        if key in found:
            raise ValueError(f"sample {key} appears twice under {folder}: {found[key]} and {path}")
        found[key] = path
    return found


def _index_tables(index_dir: Path) -> dict[str, list[Path]] | None:
    tables = {split: sorted(index_dir.glob(f"{split}-*.parquet")) for split in SPLITS}
    return tables if all(tables.values()) else None


def read_index(index_dir) -> dict[str, list[dict]]:
    """Rows (``file`` and, when present, ``case_id`` / ``num_nodes``) of the index tables in ``index_dir``,
    per split, in table order; each row also records the table it came from."""
    index_dir = Path(index_dir)
    tables = _index_tables(index_dir) if index_dir.is_dir() else None
    if tables is None:
        raise FileNotFoundError(f"{index_dir} does not hold both train-*.parquet and test-*.parquet index tables")
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError("reading the LPBF index tables needs pyarrow (pip install pyarrow)") from err
    rows: dict[str, list[dict]] = {}
    for split, paths in tables.items():
        rows[split] = []
        for path in paths:
            try:
                table = pq.read_table(path)
            except Exception as err:  # pyarrow raises its own error types for corrupt files
                raise ValueError(f"{path}: not a readable parquet file ({err})") from err
            columns = table.column_names
            if "file" not in columns:
                raise ValueError(f"{path}: no 'file' column; columns present: {columns}")
            keep = [c for c in ("file", "case_id", "num_nodes") if c in columns]
            for i, row in enumerate(table.select(keep).to_pylist()):
                rows[split].append({**row, "table": path, "row": i})
    return rows


def resolve_files(folder, index_dir=None) -> tuple[dict[str, list[Path]], dict[str, list[int | None]], str]:
    """The sample files of each split, the expected node counts (None where unknown) and a sentence
    saying where the split came from."""
    folder = Path(folder)
    samples = find_samples(folder)
    if index_dir is None and (folder / "data").is_dir() and _index_tables(folder / "data") is not None:
        index_dir = folder / "data"
    if index_dir is None:
        files = {s: [p for k, p in sorted(samples.items()) if k.startswith(f"{s}/")] for s in SPLITS}
        for split, paths in files.items():
            if not paths:
                raise FileNotFoundError(f"no {split}/*.npz under {folder} (and no index tables in {folder / 'data'})")
        return files, {s: [None] * len(files[s]) for s in SPLITS}, "split from the train/ and test/ folders"
    rows = read_index(index_dir)
    files, nodes = {}, {}
    for split in SPLITS:
        files[split], nodes[split] = [], []
        for row in rows[split]:
            entry = PurePosixPath(str(row["file"]).replace("\\", "/"))
            key = "/".join(entry.parts[-2:])
            if key not in samples:
                raise FileNotFoundError(
                    f"{row['table']} row {row['row']} names {row['file']!r}, which is not under {folder}"
                )
            files[split].append(samples[key])
            nodes[split].append(row.get("num_nodes"))
        if not files[split]:
            raise ValueError(f"the {split} index table(s) in {index_dir} have no rows")
    both = sorted({p.name for p in files["train"]} & {p.name for p in files["test"]})
    if both:
        raise ValueError(f"index tables in {index_dir} list {both[:5]} in both train and test")
    return files, nodes, f"split from the index tables in {Path(index_dir).name}/"


def read_sample(path, num_nodes: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(pos [N, 3] mm, disp [N, 3] mm, edges [E, 2] or None)`` of one sample, one read of the file.

    Positions and displacements are float32; the mesh edges come from ``edge_index [2, E]`` when the
    file has it. ``_metadata`` (pickled) is never touched. Errors name the file.
    """
    path = Path(path)
    arrays = load_arrays(path, (POS_KEY, DISP_KEY), optional=(EDGE_KEY,))
    pos, disp = arrays[POS_KEY], arrays[DISP_KEY]
    if pos.ndim != 2 or pos.shape[1] != 3 or len(pos) == 0:
        raise ValueError(f"{path}: {POS_KEY!r} has shape {pos.shape}, expected [N, 3] with N > 0")
    if disp.shape != pos.shape:
        raise ValueError(f"{path}: {DISP_KEY!r} has shape {disp.shape}, expected {pos.shape} like {POS_KEY!r}")
    if num_nodes is not None and int(num_nodes) != len(pos):
        raise ValueError(f"{path}: holds {len(pos)} nodes but the index table says num_nodes = {num_nodes}")
    if not np.isfinite(pos).all() or not np.isfinite(disp).all():
        raise ValueError(f"{path}: node positions or displacements contain NaN or Inf")
    edges = arrays.get(EDGE_KEY)
    if edges is not None:
        if edges.ndim != 2 or edges.shape[0] != 2 or (edges.size and (edges.min() < 0 or edges.max() >= len(pos))):
            raise ValueError(f"{path}: {EDGE_KEY!r} must be [2, E] node indices below {len(pos)}; got {edges.shape}")
        edges = edges.T.astype(np.int64)
    return pos.astype(np.float32), disp.astype(np.float32), edges


def prepare(folder, out_dir, index_dir=None, source: str = "LPBF_FLARE published samples") -> dict:
    """Convert the published LPBF samples under ``folder`` to the standard format (see the module docstring).

    Inputs x, y, z = ``pos / [30, 30, 60]`` (not normalised further); output the z-displacement in mm
    (normalised with train statistics). Samples keep their own node counts. Returns the written paths.
    """
    from flare.data.format import DatasetMeta, write_dataset

    files, nodes, how = resolve_files(folder, index_dir)
    scale = np.asarray(POS_SCALE_MM, dtype=np.float32)
    samples = {}
    for split in SPLITS:
        xs, ys, edges = [], [], []
        for path, n in zip(files[split], nodes[split]):
            pos, disp, mesh_edges = read_sample(path, n)
            xs.append(pos / scale)
            ys.append(disp[:, 2:3])
            edges.append(mesh_edges)
        # mesh edges travel with the samples when every file has them (graph models need them)
        samples[split] = (xs, ys, edges) if all(e is not None for e in edges) else (xs, ys)
    if len(samples["train"]) != len(samples["test"]):
        samples = {split: value[:2] for split, value in samples.items()}
    meta = DatasetMeta(
        name="lpbf",
        input_channels=["x", "y", "z"],
        output_channels=["z_displacement"],
        input_units=[f"{s:g} mm" for s in POS_SCALE_MM],
        output_units=["mm"],
        source=f"{source} in {os.fspath(folder)}: {how}; {len(files['train'])} train / {len(files['test'])} test "
        f"samples; arrays {POS_KEY!r} and {DISP_KEY!r}[:, 2]",
        normalize_inputs=[False, False, False],
        grid_shape=[],
        description="laser powder bed fusion (Netfabb, Ti-6Al-4V): hex-mesh node positions divided by "
        "[30, 30, 60] mm -> vertical displacement (mm) after the build",
    )
    return write_dataset(out_dir, meta, train=samples["train"], test=samples["test"])
