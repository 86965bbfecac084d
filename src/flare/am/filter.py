"""Filtering of extracted LPBF cases by the paper's criteria (SPEC §5).

Input: the extraction step's output, ``<extracted_dir>/<case>.npz`` (points, cells, displacement,
von_mises, ...) for every case the extraction table marks "accepted". Each such case is measured
(:func:`case_statistics`) and kept unless it exceeds a threshold of :class:`FilterThresholds`; a
value equal to its threshold is kept, and a value that is NaN counts as exceeding it.

Output, in ``out_dir``: ``statistics.csv`` (one row per extracted case: its statistics, ``kept``,
``reasons``), ``kept.txt`` (the kept case names, sorted, one a line) and ``excluded.csv`` (case,
stage "extract" | "filter", reason, detail): the extraction's rejections carried over and the
filter's exclusions, with reason codes ``too_many_nodes``, ``too_many_edges``,
``aspect_ratio_mean``, ``aspect_ratio_max``, ``displacement``, ``von_mises``,
``surface_not_watertight`` (several joined by ";").
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from flare.am.mesh import hex_aspect_ratio, hex_edges
from flare.am.sdf import surface_mesh
from flare.data.npz import load_arrays

log = logging.getLogger(__name__)

EXTRACT_TABLE_COLUMNS = ("case", "status", "reason", "detail")
EXTRACT_STATUSES = ("accepted", "rejected")
EXCLUDED_COLUMNS = ["case", "stage", "reason", "detail"]
STATISTICS_COLUMNS = [
    "case", "nodes", "cells", "edges", "aspect_ratio_mean", "aspect_ratio_max", "max_displacement",
    "max_von_mises", "max_z_displacement", "watertight", "surface_error",
]


@dataclass(frozen=True)
class FilterThresholds:
    """Largest values a kept case may have (the paper's criteria as defaults; mm, MPa)."""

    max_nodes: int = 50000
    max_edges: int = 250000
    max_aspect_ratio_mean: float = 3.0  # mean over cells of longest / shortest edge
    max_aspect_ratio_max: float = 3.0  # the same, worst cell
    max_displacement: float = 1.0  # mm, max over nodes of |u| (vector norm)
    max_von_mises: float = 2000.0  # MPa, max over nodes
    require_watertight: bool = True  # the hex mesh's boundary must close into a watertight surface

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool":
                if not isinstance(value, (bool, np.bool_)):
                    raise ValueError(f"filter threshold {f.name} must be true or false, got {value!r}")
            elif isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"filter threshold {f.name} must be a number, got {value!r}")
            elif not value >= 0:
                raise ValueError(f"filter threshold {f.name} must be >= 0, got {value!r}")

    @classmethod
    def from_dict(cls, values: dict | None) -> "FilterThresholds":
        """Thresholds from a config mapping; missing keys keep their defaults, unknown keys are an error."""
        values = dict(values or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(k for k in values if k not in known)
        if unknown:
            raise ValueError(f"unknown filter threshold(s) {unknown}; known: {known}")
        return cls(**values)


def _surface_check(points: np.ndarray, cells: np.ndarray) -> tuple[bool, str]:
    """(watertight, why not) of the boundary surface of a hex mesh."""
    try:
        mesh = surface_mesh(points, cells)
    except ValueError as err:
        return False, str(err)
    if not mesh.is_watertight:
        return False, "the boundary surface is not watertight"
    return True, ""


def case_statistics(npz_path: str | Path) -> dict:
    """What the filter measures of one extracted case ``<case>.npz``.

    Returns a dict: ``nodes``, ``cells``, ``edges`` (unique hex edges), ``aspect_ratio_mean`` and
    ``aspect_ratio_max`` (longest / shortest edge per cell), ``max_displacement`` (mm, max over
    nodes of |u|), ``max_von_mises`` (MPa), ``max_z_displacement`` (mm, max over nodes of |u_z|),
    ``watertight`` (bool: the boundary surface of :func:`flare.am.sdf.surface_mesh` is
    watertight) and ``surface_error`` (why it is not, "" when it is). A file that is unreadable,
    lacks an array or holds arrays of the wrong shape is a ValueError naming it.
    """
    path = Path(npz_path)
    arrays = load_arrays(path, ("points", "cells", "displacement", "von_mises"))
    points, cells = arrays["points"], arrays["cells"]
    displacement, von_mises = arrays["displacement"], arrays["von_mises"]
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"{path}: 'points' has shape {points.shape}, expected [N, 3] with N > 0")
    if cells.ndim != 2 or cells.shape[1] != 8 or len(cells) == 0 or not np.issubdtype(cells.dtype, np.integer):
        raise ValueError(f"{path}: 'cells' is {cells.dtype} {cells.shape}, expected integer [C, 8] with C > 0")
    if cells.min() < 0 or cells.max() >= len(points):
        raise ValueError(f"{path}: 'cells' refer to nodes outside 0…{len(points) - 1}")
    if displacement.shape != points.shape:
        raise ValueError(f"{path}: 'displacement' has shape {displacement.shape}, expected {points.shape}")
    if von_mises.shape != (len(points),):
        raise ValueError(f"{path}: 'von_mises' has shape {von_mises.shape}, expected ({len(points)},)")
    try:
        edges = hex_edges(cells)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    aspect = hex_aspect_ratio(points, cells)
    watertight, surface_error = _surface_check(points, cells)
    displacement = displacement.astype(np.float64)
    return {
        "nodes": len(points),
        "cells": len(cells),
        "edges": len(edges),
        "aspect_ratio_mean": float(aspect.mean()),
        "aspect_ratio_max": float(aspect.max()),
        # np.max propagates NaN, so a case with NaN fields fails every "<= threshold" test
        "max_displacement": float(np.linalg.norm(displacement, axis=1).max()),
        "max_von_mises": float(np.max(von_mises.astype(np.float64))),
        "max_z_displacement": float(np.abs(displacement[:, 2]).max()),
        "watertight": bool(watertight),
        "surface_error": surface_error,
    }


# (reason code, statistic, threshold field, format of the values in the detail)
CRITERIA = [
    ("too_many_nodes", "nodes", "max_nodes", "d"),
    ("too_many_edges", "edges", "max_edges", "d"),
    ("aspect_ratio_mean", "aspect_ratio_mean", "max_aspect_ratio_mean", "g"),
    ("aspect_ratio_max", "aspect_ratio_max", "max_aspect_ratio_max", "g"),
    ("displacement", "max_displacement", "max_displacement", "g"),
    ("von_mises", "max_von_mises", "max_von_mises", "g"),
]


def exclusion_reasons(stats: dict, thresholds: FilterThresholds) -> tuple[list[str], list[str]]:
    """(reason codes, details) of the criteria a case's statistics violate; empty when it is kept.

    A statistic equal to its threshold passes; NaN fails.
    """
    reasons, details = [], []
    for reason, key, limit_key, fmt in CRITERIA:
        value, limit = stats[key], getattr(thresholds, limit_key)
        if not value <= limit:
            reasons.append(reason)
            details.append(f"{key} {value:{fmt}} > {limit_key} {limit:{fmt}}")
    if thresholds.require_watertight and not stats["watertight"]:
        reasons.append("surface_not_watertight")
        details.append(f"surface: {stats['surface_error'] or 'not watertight'}")
    return reasons, details


def read_extract_table(path: str | Path) -> pd.DataFrame:
    """The extraction table csv (case, status, reason, detail, ...), checked; empty cells read as ""."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"extraction table {path} does not exist (run the extraction step first)")
    table = pd.read_csv(path, dtype={"case": str, "status": str, "reason": str, "detail": str},
                        keep_default_na=False)
    missing = [c for c in EXTRACT_TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; columns present: {list(table.columns)}")
    bad = sorted(set(table["status"]) - set(EXTRACT_STATUSES))
    if bad:
        raise ValueError(f"{path}: status must be one of {list(EXTRACT_STATUSES)}, found {bad}")
    duplicated = sorted(set(table.loc[table["case"].duplicated(), "case"]))
    if duplicated:
        raise ValueError(f"{path}: case(s) listed more than once: {duplicated[:5]}")
    return table


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _summary(kept: int, total: int, extract_rejected: pd.DataFrame, filter_reasons: list[list[str]]) -> str:
    parts = []
    for stage, counts in (("extraction", Counter(extract_rejected["reason"])),
                          ("filter", Counter(r for reasons in filter_reasons for r in reasons))):
        if counts:
            parts.append(f"{stage}: " + ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())))
    return f"kept {kept} of {total} cases" + (": " + "; ".join(parts) if parts else "")


def filter_cases(
    extracted_dir: str | Path,
    extract_table: str | Path,
    out_dir: str | Path,
    thresholds: FilterThresholds | dict | None = None,
) -> pd.DataFrame:
    """Measure every accepted case of the extraction table and keep those within ``thresholds``.

    extracted_dir: holds ``<case>.npz`` for each accepted case; extract_table: the extraction csv;
    thresholds: a :class:`FilterThresholds`, a dict for :meth:`FilterThresholds.from_dict`, or None
    (the paper's). Writes ``statistics.csv``, ``kept.txt`` and ``excluded.csv`` in ``out_dir``
    (module docstring) and returns the statistics table (one row per accepted case, sorted by
    case; columns ``STATISTICS_COLUMNS`` + ``kept``, ``reasons``). An accepted case without its npz
    is a FileNotFoundError naming the file.
    """
    if not isinstance(thresholds, FilterThresholds):
        thresholds = FilterThresholds.from_dict(thresholds)
    extracted_dir, out_dir = Path(extracted_dir), Path(out_dir)
    table = read_extract_table(extract_table)
    accepted = sorted(table.loc[table["status"] == "accepted", "case"])
    rejected = table.loc[table["status"] == "rejected"].sort_values("case")

    rows, excluded, all_reasons = [], [], []
    for case in accepted:
        path = extracted_dir / f"{case}.npz"
        if not path.is_file():
            raise FileNotFoundError(
                f"case {case} is accepted in {extract_table} but {path} does not exist"
            )
        stats = case_statistics(path)
        reasons, details = exclusion_reasons(stats, thresholds)
        rows.append({"case": case, **stats, "kept": not reasons, "reasons": ";".join(reasons)})
        all_reasons.append(reasons)
        if reasons:
            excluded.append({"case": case, "stage": "filter", "reason": ";".join(reasons),
                             "detail": "; ".join(details)})

    statistics = pd.DataFrame(rows, columns=[*STATISTICS_COLUMNS, "kept", "reasons"])
    carried = pd.DataFrame({"case": rejected["case"], "stage": "extract", "reason": rejected["reason"],
                            "detail": rejected["detail"]}, columns=EXCLUDED_COLUMNS)
    excluded = pd.concat([carried, pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS)], ignore_index=True)
    kept = statistics.loc[statistics["kept"], "case"].tolist()

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(out_dir / "statistics.csv", statistics.to_csv(index=False))
    _write_text_atomic(out_dir / "excluded.csv", excluded.to_csv(index=False))
    _write_text_atomic(out_dir / "kept.txt", "".join(f"{case}\n" for case in kept))
    log.info(_summary(len(kept), len(table), rejected, all_reasons))
    return statistics
