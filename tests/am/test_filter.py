"""The LPBF case filter: each criterion excludes the case built to break it, and only that case."""
import dataclasses
import logging

import numpy as np
import pandas as pd
import pytest

from flare.am.filter import FilterThresholds, case_statistics, filter_cases
from flare.am.sdf import hex_grid

# Small enough for meshes of a few dozen nodes; aspect mean and max apart so each can fail alone.
THRESHOLDS = FilterThresholds(max_nodes=50, max_edges=100, max_aspect_ratio_mean=2.0,
                              max_aspect_ratio_max=3.0, max_displacement=1.0, max_von_mises=2000.0)
TABLE_COLUMNS = ["case", "status", "reason", "detail", "nodes", "cells", "steps", "seconds"]


def write_case(folder, case, points, cells, displacement=None, von_mises=None):
    """<folder>/<case>.npz with the extraction's keys; fields default to a small sag and 100 MPa."""
    n = len(points)
    if displacement is None:
        displacement = np.zeros((n, 3))
        displacement[:, 2] = -0.002 * points[:, 2]
    if von_mises is None:
        von_mises = np.full(n, 100.0)
    np.savez(folder / f"{case}.npz", points=points, cells=cells, displacement=displacement,
             strain=np.zeros((n, 6)), stress=np.zeros((n, 6)), von_mises=von_mises,
             temperature=np.full(n, 25.0), time=np.float64(10.0), num_steps=np.int64(4))


def write_table(path, rows):
    """Extraction table; rows are (case, status, reason, detail)."""
    full = [(*row, 27 if row[1] == "accepted" else "", 8 if row[1] == "accepted" else "", 4, 0.1)
            for row in rows]
    pd.DataFrame(full, columns=TABLE_COLUMNS).to_csv(path, index=False)


def cube():
    """2 x 2 x 2 unit hexes: 27 nodes, 8 cells, 54 edges."""
    return hex_grid(np.ones((2, 2, 2), dtype=bool))


def violators():
    """{case: (points, cells, displacement, von_mises)}, each case named after the one criterion it breaks."""
    stretched_top = hex_grid(np.ones((1, 1, 4), dtype=bool))
    stretched_top[0][stretched_top[0][:, 2] == 4.0, 2] = 7.0  # aspect ratios 1, 1, 1, 4: mean 1.75
    touching = np.zeros((2, 2, 1), dtype=bool)
    touching[0, 0, 0] = touching[1, 1, 0] = True  # two cubes sharing only one edge
    points, cells = cube()
    lifted = np.zeros((len(points), 3))
    lifted[5] = 0.6  # |u| = 1.04 mm though every component is below 1 mm
    hot = np.full(len(points), 100.0)
    hot[7] = 2500.0
    return {
        "too_many_nodes": (*hex_grid(np.ones((1, 1, 12), dtype=bool)), None, None),  # 52 nodes, 100 edges
        "too_many_edges": (*hex_grid(np.ones((3, 3, 2), dtype=bool)), None, None),  # 48 nodes, 104 edges
        "aspect_ratio_mean": (*hex_grid(np.ones((2, 2, 1), dtype=bool), spacing=(1, 1, 2.5)), None, None),
        "aspect_ratio_max": (*stretched_top, None, None),
        "displacement": (points, cells, lifted, None),
        "von_mises": (points, cells, None, hot),
        "surface_not_watertight": (*hex_grid(touching), None, None),
    }


@pytest.fixture(scope="module")
def filtered(tmp_path_factory):
    root = tmp_path_factory.mktemp("filter")
    extracted, out = root / "extracted", root / "filtered"
    extracted.mkdir()
    points, cells = cube()
    write_case(extracted, "good", points, cells)
    at_limits = np.zeros((len(points), 3))
    at_limits[3, 2] = -1.0  # |u| exactly 1 mm
    write_case(extracted, "at_limits", points, cells, at_limits, np.full(len(points), 2000.0))
    for case, (p, c, u, vm) in violators().items():
        write_case(extracted, case, p, c, u, vm)
    rows = [(case, "accepted", "", "") for case in ["good", "at_limits", *violators()]]
    rows += [("crashed", "rejected", "analysis_terminated", "*** ERROR 1234 in mechanical.out"),
             ("empty", "rejected", "results_missing", "no results/empty_mechanical.case")]
    write_table(root / "extract.csv", rows)
    return root, filter_cases(extracted, root / "extract.csv", out, THRESHOLDS)


def test_defaults_are_the_papers_criteria():
    t = FilterThresholds()
    assert (t.max_nodes, t.max_edges, t.max_aspect_ratio_mean, t.max_aspect_ratio_max) == (50000, 250000, 3.0, 3.0)
    assert (t.max_displacement, t.max_von_mises, t.require_watertight) == (1.0, 2000.0, True)


def test_thresholds_from_dict_override_and_reject_unknown_keys_by_name():
    assert FilterThresholds.from_dict({"max_nodes": 10}) == FilterThresholds(max_nodes=10)
    with pytest.raises(ValueError, match="max_node'"):
        FilterThresholds.from_dict({"max_nodes": 10, "max_node": 20})
    with pytest.raises(ValueError, match="max_von_mises must be a number"):
        FilterThresholds.from_dict({"max_von_mises": "high"})


def test_statistics_of_a_cube_with_a_known_sag(tmp_path):
    points, cells = cube()
    write_case(tmp_path, "good", points, cells)
    stats = case_statistics(tmp_path / "good.npz")
    assert (stats["nodes"], stats["cells"], stats["edges"]) == (27, 8, 54)
    assert stats["aspect_ratio_mean"] == stats["aspect_ratio_max"] == 1.0
    assert stats["max_displacement"] == pytest.approx(0.004)  # 0.002 x the top z of 2 mm
    assert stats["max_z_displacement"] == pytest.approx(0.004)
    assert stats["max_von_mises"] == 100.0
    assert stats["watertight"] is True and stats["surface_error"] == ""


def test_cubes_touching_along_an_edge_are_not_watertight_and_say_why(tmp_path):
    p, c, _, _ = violators()["surface_not_watertight"]
    write_case(tmp_path, "touching", p, c)
    stats = case_statistics(tmp_path / "touching.npz")
    assert stats["watertight"] is False
    assert "not watertight" in stats["surface_error"]


def test_each_criterion_excludes_exactly_the_case_built_to_break_it(filtered):
    _, statistics = filtered
    dropped = statistics.loc[~statistics["kept"]]
    assert sorted(dropped["case"]) == sorted(violators())
    for case, reasons in zip(dropped["case"], dropped["reasons"]):
        assert reasons == case


def test_values_equal_to_the_thresholds_are_kept(filtered):
    root, statistics = filtered
    row = statistics.set_index("case").loc["at_limits"]
    assert (row["max_displacement"], row["max_von_mises"]) == (1.0, 2000.0)
    assert statistics.set_index("case").loc["too_many_nodes", "edges"] == 100  # = max_edges, not a reason
    assert (root / "filtered" / "kept.txt").read_text() == "at_limits\ngood\n"


def test_statistics_csv_has_one_row_per_extracted_case(filtered):
    root, statistics = filtered
    on_disk = pd.read_csv(root / "filtered" / "statistics.csv", keep_default_na=False)
    assert list(on_disk["case"]) == sorted(["good", "at_limits", *violators()])
    assert on_disk.set_index("case").loc["too_many_edges", "edges"] == 104
    assert list(on_disk["kept"]) == list(statistics["kept"])


def test_excluded_csv_carries_extraction_rejections_and_filter_details(filtered):
    root, _ = filtered
    excluded = pd.read_csv(root / "filtered" / "excluded.csv", keep_default_na=False).set_index("case")
    assert list(excluded.columns) == ["stage", "reason", "detail"]
    assert excluded.loc["crashed"].tolist() == ["extract", "analysis_terminated", "*** ERROR 1234 in mechanical.out"]
    assert excluded.loc["empty", "reason"] == "results_missing"
    assert (excluded.loc[list(violators()), "stage"] == "filter").all()
    assert excluded.loc["too_many_nodes", "detail"] == "nodes 52 > max_nodes 50"
    assert excluded.loc["aspect_ratio_max", "detail"] == "aspect_ratio_max 4 > max_aspect_ratio_max 3"
    detail = excluded.loc["surface_not_watertight", "detail"]
    assert detail.startswith("surface: the boundary surface is not watertight")
    assert "good" not in excluded.index and "at_limits" not in excluded.index


@pytest.mark.parametrize("statistic, threshold, reason", [
    ("nodes", "max_nodes", "too_many_nodes"),
    ("edges", "max_edges", "too_many_edges"),
    ("aspect_ratio_mean", "max_aspect_ratio_mean", "aspect_ratio_mean"),
    ("aspect_ratio_max", "max_aspect_ratio_max", "aspect_ratio_max"),
    ("max_displacement", "max_displacement", "displacement"),
    ("max_von_mises", "max_von_mises", "von_mises"),
])
def test_threshold_at_the_value_keeps_and_just_below_excludes(tmp_path, statistic, threshold, reason):
    points, cells = cube()
    write_case(tmp_path, "good", points, cells)
    write_table(tmp_path / "extract.csv", [("good", "accepted", "", "")])
    value = case_statistics(tmp_path / "good.npz")[statistic]
    at = dataclasses.replace(FilterThresholds(), **{threshold: value})
    assert filter_cases(tmp_path, tmp_path / "extract.csv", tmp_path / "at", at)["kept"].tolist() == [True]
    below = dataclasses.replace(at, **{threshold: value - 1 if isinstance(value, int) else value * 0.999})
    result = filter_cases(tmp_path, tmp_path / "extract.csv", tmp_path / "below", below)
    assert result["reasons"].tolist() == [reason]


def test_several_reasons_are_joined_in_criterion_order(tmp_path):
    points, cells = hex_grid(np.ones((1, 1, 12), dtype=bool))
    write_case(tmp_path, "big_hot", points, cells, von_mises=np.full(len(points), 2500.0))
    write_table(tmp_path / "extract.csv", [("big_hot", "accepted", "", "")])
    result = filter_cases(tmp_path, tmp_path / "extract.csv", tmp_path / "out", THRESHOLDS)
    assert result["reasons"].tolist() == ["too_many_nodes;von_mises"]
    excluded = pd.read_csv(tmp_path / "out" / "excluded.csv", keep_default_na=False)
    assert excluded["detail"].tolist() == ["nodes 52 > max_nodes 50; max_von_mises 2500 > max_von_mises 2000"]


def test_non_watertight_case_is_kept_when_watertightness_is_not_required(tmp_path):
    p, c, _, _ = violators()["surface_not_watertight"]
    write_case(tmp_path, "touching", p, c)
    write_table(tmp_path / "extract.csv", [("touching", "accepted", "", "")])
    lax = dataclasses.replace(FilterThresholds(), require_watertight=False)
    assert filter_cases(tmp_path, tmp_path / "extract.csv", tmp_path / "out", lax)["kept"].tolist() == [True]


def test_nan_fields_exclude_the_case(tmp_path):
    points, cells = cube()
    von_mises = np.full(len(points), 100.0)
    von_mises[0] = np.nan
    write_case(tmp_path, "nan", points, cells, von_mises=von_mises)
    write_table(tmp_path / "extract.csv", [("nan", "accepted", "", "")])
    result = filter_cases(tmp_path, tmp_path / "extract.csv", tmp_path / "out", FilterThresholds())
    assert result["reasons"].tolist() == ["von_mises"]


def test_summary_line_counts_cases_per_reason(tmp_path, caplog):
    points, cells = cube()
    write_case(tmp_path, "good", points, cells)
    write_case(tmp_path, "hot", points, cells, von_mises=np.full(len(points), 3000.0))
    write_table(tmp_path / "extract.csv", [("good", "accepted", "", ""), ("hot", "accepted", "", ""),
                                           ("crashed", "rejected", "analysis_terminated", "")])
    with caplog.at_level(logging.INFO, logger="flare.am.filter"):
        filter_cases(tmp_path, tmp_path / "extract.csv", tmp_path / "out")
    assert "kept 1 of 3 cases: extraction: analysis_terminated 1; filter: von_mises 1" in caplog.text


def test_accepted_case_without_its_npz_is_an_error_naming_the_file(tmp_path):
    write_table(tmp_path / "extract.csv", [("ghost", "accepted", "", "")])
    with pytest.raises(FileNotFoundError, match="ghost.npz"):
        filter_cases(tmp_path, tmp_path / "extract.csv", tmp_path / "out")


def test_extraction_table_without_a_status_column_is_an_error_naming_it(tmp_path):
    pd.DataFrame({"case": ["a"], "reason": [""], "detail": [""]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad\.csv.*\['status'\]"):
        filter_cases(tmp_path, tmp_path / "bad.csv", tmp_path / "out")
