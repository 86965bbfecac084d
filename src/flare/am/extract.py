"""Extraction of raw LPBF cases into one npz each, with a table of accepted and rejected cases.

A raw case folder (SPEC §5) holds ``mechanical.out`` (the solver log) and ``results/`` with the
EnSight Gold ``<case>_mechanical.case`` and the files it names. :func:`extract_case` reads the
final time step and returns the arrays of the extracted-case contract, or raises
:class:`CaseRejected` with one of ``REJECTION_REASONS``. The checks run in this order, so that a
case is rejected for its most basic fault:

1. the log: present (``log_missing``), ends well (``analysis_terminated``);
2. the results: ``results/``, the ``.case`` and the geometry it names (``results_missing``);
3. the time steps: counts, strictly increasing values, a file for every variable at every step,
   and agreement with the reader (``inconsistent_time_steps``);
4. the arrays: read by VTK without error, every variable present with N rows, all finite
   (``unreadable``);
5. the cells: hexahedra only, none inverted or degenerate (``bad_cells``).

:func:`extract_cases` runs a whole sandbox, resumable, and writes the table.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from flare.am import ensight

LOG_NAME = "mechanical.out"
COMPLETED = "analysis completed successfully"
TERMINATED = "analysis terminated"
REJECTION_REASONS = (
    "results_missing",
    "log_missing",
    "analysis_terminated",
    "inconsistent_time_steps",
    "unreadable",
    "bad_cells",
)
TABLE_COLUMNS = ["case", "status", "reason", "detail", "nodes", "cells", "steps", "seconds"]
NPZ_KEYS = (
    "points",
    "cells",
    "displacement",
    "strain",
    "stress",
    "von_mises",
    "temperature",
    "time",
    "num_steps",
)
FIELDS = ("displacement", "strain", "stress", "von_mises", "temperature")

# A corner's Jacobian determinant at or below this times the cell's mean edge length cubed marks
# the cell as inverted or degenerate.
JACOBIAN_TOLERANCE = 1e-9

# For each VTK hexa8 corner, its three neighbours along the cell's edges, ordered so that the
# determinant of (neighbour - corner) vectors is positive in a positively oriented cell.
CORNER_NEIGHBOURS = np.array(
    [
        [1, 3, 4],
        [2, 0, 5],
        [3, 1, 6],
        [0, 2, 7],
        [7, 5, 0],
        [4, 6, 1],
        [5, 7, 2],
        [6, 4, 3],
    ]
)
HEX_EDGES = np.array(
    [[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]]
)


class CaseRejected(Exception):
    """A case that cannot be extracted: ``case`` (its name), ``reason`` (one of
    ``REJECTION_REASONS``) and ``detail`` (a sentence saying what is wrong)."""

    def __init__(self, case: str, reason: str, detail: str):
        if reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}; known: {REJECTION_REASONS}")
        super().__init__(f"case {case} rejected ({reason}): {detail}")
        self.case = case
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------- cell quality


def corner_jacobians(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """[C, 8] Jacobian determinant at each corner of hexa8 cells (mm³).

    points: [N, 3] mm; cells: [C, 8] VTK hexa8 order. The determinant of the three edge vectors
    leaving the corner, positive for a positively oriented, convex cell (1 at each corner of the
    unit cube).
    """
    corners = points[cells]  # [C, 8, 3]
    edges = corners[:, CORNER_NEIGHBOURS] - corners[:, :, None, :]  # [C, 8, 3, 3]
    return np.linalg.det(edges)


def mean_edge_length(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """[C] mean length of the 12 edges of each hexa8 cell (mm)."""
    corners = points[cells]
    return np.linalg.norm(corners[:, HEX_EDGES[:, 1]] - corners[:, HEX_EDGES[:, 0]], axis=2).mean(1)


def bad_cell_mask(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """[C] bool: cells with a corner Jacobian <= JACOBIAN_TOLERANCE x (mean edge length)³."""
    threshold = JACOBIAN_TOLERANCE * mean_edge_length(points, cells) ** 3
    return (corner_jacobians(points, cells) <= threshold[:, None]).any(axis=1)


# ----------------------------------------------------------------------------- one case


def _check_log(case: str, case_dir: Path) -> None:
    log = case_dir / LOG_NAME
    if not log.is_file():
        raise CaseRejected(case, "log_missing", f"no {LOG_NAME} in {case_dir}")
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    lowered = [line.lower() for line in lines]
    errors = [line.strip() for line in lines if "*** error" in line.lower()]
    if any(TERMINATED in line for line in lowered):
        cause = f"; first error: {errors[0]}" if errors else ""
        raise CaseRejected(
            case, "analysis_terminated", f"{LOG_NAME} says the analysis terminated{cause}"
        )
    if not any(COMPLETED in line for line in lowered):
        raise CaseRejected(
            case, "analysis_terminated",
            f"{LOG_NAME} lacks the line 'Analysis completed successfully' (run unfinished)",
        )


def _find_case_file(case: str, case_dir: Path) -> Path:
    results = case_dir / "results"
    if not results.is_dir():
        raise CaseRejected(case, "results_missing", f"no results folder in {case_dir}")
    expected = results / f"{ensight.results_prefix(case)}.case"
    if expected.is_file():
        return expected
    found = sorted(results.glob("*mechanical.case"))
    if not found:
        raise CaseRejected(case, "results_missing", f"no *mechanical.case in {results}")
    if len(found) > 1:
        names = ", ".join(path.name for path in found)
        raise CaseRejected(
            case, "unreadable",
            f"several .case files in {results} ({names}), none named {expected.name}",
        )
    return found[0]


def _check_index(case: str, case_file: Path) -> ensight.CaseIndex:
    """Parse the .case and check its geometry, time sets and step files (stages 2 and 3)."""
    try:
        index = ensight.parse_case_file(case_file)
    except (ValueError, OSError) as error:
        raise CaseRejected(case, "unreadable", str(error)) from None
    if not (index.folder / index.geometry).is_file():
        raise CaseRejected(
            case, "results_missing",
            f"geometry file {index.geometry} named by {case_file.name} is missing",
        )
    if not index.time_sets:
        raise CaseRejected(case, "inconsistent_time_steps", f"{case_file.name} defines no time set")
    problems = ensight.time_set_problems(index)
    if problems:
        raise CaseRejected(case, "inconsistent_time_steps", "; ".join(problems))
    for name, (_, pattern, time_set) in index.variables.items():
        files = index.files_of(pattern, time_set)
        missing = [path for path in files if not path.is_file()]
        if missing:
            raise CaseRejected(
                case, "inconsistent_time_steps",
                f"{len(missing)} of {len(files)} files of {name} are missing, "
                f"first {missing[0].name}",
            )
    return index


def _read_arrays(case: str, case_file: Path, index: ensight.CaseIndex) -> dict:
    """Read the final step and check the arrays (stages 3, reader agreement, and 4)."""
    try:
        data = ensight.read_case(case_file, step=-1)
    except Exception as error:  # VTK's errors come in several types; all mean the same here
        message = " ".join(str(error).split())  # VTK's messages span lines
        raise CaseRejected(case, "unreadable", f"the EnSight reader failed: {message}") from None
    time_set = next(iter(sorted(index.time_sets.items())))[1]
    if len(data["times"]) != time_set.number_of_steps or not np.allclose(
        data["times"], time_set.values, rtol=1e-6, atol=0.0
    ):
        raise CaseRejected(
            case, "inconsistent_time_steps",
            f"the reader found {len(data['times'])} time values, {case_file.name} lists "
            f"{time_set.number_of_steps} (or their values differ)",
        )
    points = data["points"]
    n_points = len(points)
    if n_points == 0 or len(data["cells"]) == 0:
        raise CaseRejected(
            case, "unreadable", f"the mesh has {n_points} nodes and {len(data['cells'])} cells"
        )
    if not np.isfinite(points).all():
        raise CaseRejected(case, "unreadable", "node coordinates hold NaN or Inf")
    for name in FIELDS:
        if name not in data:
            raise CaseRejected(
                case, "unreadable", f"variable {name} is missing from {case_file.name}"
            )
        components = ensight.VARIABLES[name][1]
        shape = (n_points,) if components == 1 else (n_points, components)
        if data[name].shape != shape:
            raise CaseRejected(
                case, "unreadable",
                f"{name} has shape {list(data[name].shape)}, expected {list(shape)}",
            )
        if not np.isfinite(data[name]).all():
            bad = int((~np.isfinite(data[name])).any(axis=tuple(range(1, data[name].ndim))).sum())
            raise CaseRejected(case, "unreadable", f"{name} holds NaN or Inf at {bad} nodes")
    return data


def _check_cells(case: str, data: dict) -> None:
    cell_types, cells = data["cell_types"], data["cells"]
    other = np.flatnonzero(cell_types != ensight.VTK_HEXAHEDRON)
    if other.size:
        raise CaseRejected(
            case, "bad_cells",
            f"{other.size} of {len(cells)} cells are not hexahedra, first cell {other[0]} "
            f"(VTK type {cell_types[other[0]]})",
        )
    bad = np.flatnonzero(bad_cell_mask(data["points"], cells))
    if bad.size:
        worst = corner_jacobians(data["points"], cells[bad[:1]]).min()
        raise CaseRejected(
            case, "bad_cells",
            f"{bad.size} of {len(cells)} cells are inverted or degenerate, first cell {bad[0]} "
            f"(smallest corner Jacobian {worst:.3g} mm^3)",
        )


def extract_case(case_dir) -> dict:
    """The final time step of a raw case as the extracted-case arrays, or CaseRejected.

    case_dir: ``<sandbox>/<case>``. Returns ``points`` [N, 3] mm, ``cells`` [C, 8] int64 (VTK
    hexa8, 0-based), ``displacement`` [N, 3] mm, ``strain`` [N, 6] and ``stress`` [N, 6] MPa
    (Voigt ``[xx, yy, zz, yz, xz, xy]``), ``von_mises`` [N] MPa, ``temperature`` [N] deg C (all
    float64, from float32 files), ``time`` (0-d float64, the final time) and ``num_steps`` (0-d
    int64). Raises CaseRejected (see the module docstring for the order of the checks).
    """
    case_dir = Path(case_dir)
    case = case_dir.name
    _check_log(case, case_dir)
    case_file = _find_case_file(case, case_dir)
    index = _check_index(case, case_file)
    data = _read_arrays(case, case_file, index)
    _check_cells(case, data)
    result = {name: data[name] for name in ("points", "cells") + FIELDS}
    result["time"] = np.array(data["times"][-1], dtype=np.float64)
    result["num_steps"] = np.array(len(data["times"]), dtype=np.int64)
    return result


# ----------------------------------------------------------------------------- a sandbox


def _atomic_savez(path: Path, arrays: dict) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _atomic_csv(path: Path, table: pd.DataFrame) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            table.to_csv(stream, index=False)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _existing_row(case: str, npz_path: Path) -> dict | None:
    """The table row of an already extracted case, or None when its npz cannot be opened."""
    try:
        with np.load(npz_path) as stored:
            return {
                "case": case, "status": "accepted", "reason": "", "detail": "already extracted",
                "nodes": len(stored["points"]), "cells": len(stored["cells"]),
                "steps": int(stored["num_steps"]), "seconds": 0.0,
            }
    except Exception:  # a damaged file is extracted again
        return None


def case_folders(sandbox) -> list[Path]:
    """The case folders of a sandbox, sorted by name; hidden folders (``.name``) are skipped."""
    sandbox = Path(sandbox)
    if not sandbox.is_dir():
        raise FileNotFoundError(f"sandbox folder {sandbox} does not exist")
    return sorted(p for p in sandbox.iterdir() if p.is_dir() and not p.name.startswith("."))


def _newest_mtime(folder: Path) -> float:
    """The newest modification time of the files of a case folder (a resimulated case is newer
    than its old extraction, which is then redone)."""
    return max((p.stat().st_mtime for p in folder.rglob("*") if p.is_file()), default=0.0)


def extract_cases(sandbox, out_dir, table_path, progress: bool = True) -> pd.DataFrame:
    """Extract every case of a sandbox to ``<out_dir>/<case>.npz``; write and return the table.

    A case whose npz already exists and is newer than every file of its folder is not read again
    (its row says "already extracted").
    A rejected case, or one that fails unexpectedly (an "unreadable" row holding the exception
    text), never stops the batch. The table has ``TABLE_COLUMNS`` (nodes, cells, steps empty for
    rejected cases; seconds: time spent on the case) and is written as csv to ``table_path``.
    progress: show a progress bar on stderr.
    """
    folders = case_folders(sandbox)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path = Path(table_path)
    table_path.parent.mkdir(parents=True, exist_ok=True)

    if progress:
        from tqdm import tqdm

        folders_iter = tqdm(folders, desc="extract", unit="case")
    else:
        folders_iter = folders
    rows = []
    for folder in folders_iter:
        case = folder.name
        npz_path = out_dir / f"{case}.npz"
        current = npz_path.exists() and npz_path.stat().st_mtime >= _newest_mtime(folder)
        row = _existing_row(case, npz_path) if current else None
        if row is None:
            start = time.perf_counter()
            row = {"case": case}
            try:
                arrays = extract_case(folder)
                _atomic_savez(npz_path, arrays)
                row.update(
                    status="accepted", reason="", detail="", nodes=len(arrays["points"]),
                    cells=len(arrays["cells"]), steps=int(arrays["num_steps"]),
                )
            except CaseRejected as rejection:
                row.update(status="rejected", reason=rejection.reason, detail=rejection.detail)
            except Exception as error:  # one broken case must not stop the batch
                row.update(
                    status="rejected", reason="unreadable",
                    detail=f"unexpected {type(error).__name__}: {' '.join(str(error).split())}",
                )
            row["seconds"] = round(time.perf_counter() - start, 4)
        rows.append(row)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for column in ("nodes", "cells", "steps"):
        table[column] = table[column].astype("Int64")
    _atomic_csv(table_path, table)
    return table
