"""Case extraction: accepted arrays, every rejection code from a real case folder, the batch."""
import numpy as np
import pandas as pd
import pytest

from flare.am import extract
from flare.am.ensight import geometry_bytes, write_case
from flare.am.extract import (
    NPZ_KEYS,
    TABLE_COLUMNS,
    CaseRejected,
    bad_cell_mask,
    corner_jacobians,
    extract_case,
    extract_cases,
)
from flare.am.sdf import hex_grid

LOG_OK = "Netfabb mechanical analysis\nincrement 3 converged\nAnalysis completed successfully\n"
LOG_FAILED = (
    "Netfabb mechanical analysis\n*** ERROR: excessive element distortion in element 12\n"
    "ANALYSIS TERMINATED\n"
)
TIMES = [10.0, 20.0, 30.0]


def make_case(sandbox, name, points=None, cells=None, log=LOG_OK):
    """A raw case folder with a log and three time steps of distinct fields; returns its path."""
    if points is None:
        points, cells = hex_grid(np.ones((2, 1, 1), dtype=bool), spacing=(1.0, 1.0, 0.5))
    n = len(points)
    node = np.arange(n, dtype=np.float64)[:, None]
    steps = [
        {
            "displacement": 1e-3 * (node + np.arange(1, 4)) * (k + 1),
            "strain": 1e-4 * (node + np.arange(1, 7)) * (k + 1),
            "stress": (node + np.arange(1, 7)) * (k + 1),
            "von_mises": node[:, 0] + 100.0 * k,
            "temperature": 20.0 + node[:, 0] + k,
        }
        for k in range(len(TIMES))
    ]
    case_dir = sandbox / name
    case_dir.mkdir(parents=True)
    if log is not None:
        (case_dir / "mechanical.out").write_text(log)
    write_case(case_dir / "results", name, points, cells, TIMES, steps)
    return case_dir


def rejection(case_dir):
    with pytest.raises(CaseRejected) as caught:
        extract_case(case_dir)
    assert caught.value.case == case_dir.name
    return caught.value


def results(case_dir):
    return case_dir / "results"


def test_extract_case_returns_the_final_step_in_our_conventions(tmp_path):
    points, cells = hex_grid(np.ones((2, 1, 1), dtype=bool), spacing=(1.0, 1.0, 0.5))
    arrays = extract_case(make_case(tmp_path, "good"))
    assert tuple(arrays) == NPZ_KEYS
    node = np.arange(len(points), dtype=np.float64)[:, None]
    np.testing.assert_array_equal(arrays["points"], points)
    np.testing.assert_array_equal(arrays["cells"], cells)
    np.testing.assert_allclose(arrays["displacement"], 3e-3 * (node + np.arange(1, 4)), rtol=1e-7)
    np.testing.assert_array_equal(arrays["stress"], 3.0 * (node + np.arange(1, 7)))
    np.testing.assert_array_equal(arrays["von_mises"], node[:, 0] + 200.0)
    np.testing.assert_array_equal(arrays["temperature"], 22.0 + node[:, 0])
    assert arrays["time"].shape == () and arrays["time"] == 30.0
    assert arrays["num_steps"].shape == () and arrays["num_steps"] == 3
    assert arrays["cells"].dtype == np.int64 and arrays["strain"].dtype == np.float64


def test_corner_jacobians_of_a_box_are_its_edge_product():
    points, cells = hex_grid(np.ones((1, 1, 1), dtype=bool), spacing=(1.0, 2.0, 3.0))
    np.testing.assert_allclose(corner_jacobians(points, cells), np.full((1, 8), 6.0))
    mirrored = cells[:, [4, 5, 6, 7, 0, 1, 2, 3]]
    np.testing.assert_allclose(corner_jacobians(points, mirrored), np.full((1, 8), -6.0))
    assert bad_cell_mask(points, mirrored).tolist() == [True]
    assert bad_cell_mask(points, cells).tolist() == [False]


def test_log_missing(tmp_path):
    error = rejection(make_case(tmp_path, "nolog", log=None))
    assert error.reason == "log_missing"
    assert "no mechanical.out" in error.detail


def test_analysis_terminated_quotes_the_first_error(tmp_path):
    error = rejection(make_case(tmp_path, "failed", log=LOG_FAILED))
    assert error.reason == "analysis_terminated"
    assert error.detail.endswith(
        "first error: *** ERROR: excessive element distortion in element 12"
    )


def test_a_log_without_the_completion_line_counts_as_terminated(tmp_path):
    error = rejection(make_case(tmp_path, "cut", log="increment 1 converged\n"))
    assert error.reason == "analysis_terminated"
    assert "lacks the line 'Analysis completed successfully'" in error.detail


def test_results_missing_without_folder_case_file_or_geometry(tmp_path):
    no_folder = make_case(tmp_path, "a")
    for path in results(no_folder).iterdir():
        path.unlink()
    results(no_folder).rmdir()
    assert rejection(no_folder).reason == "results_missing"

    no_case = make_case(tmp_path, "b")
    (results(no_case) / "b_mechanical.case").unlink()
    error = rejection(no_case)
    assert error.reason == "results_missing"
    assert error.detail.startswith("no *mechanical.case")

    no_geometry = make_case(tmp_path, "c")
    (results(no_geometry) / "c_mechanical.geo").unlink()
    error = rejection(no_geometry)
    assert error.reason == "results_missing"
    assert "geometry file c_mechanical.geo" in error.detail


def edit_case_file(case_dir, old, new):
    path = results(case_dir) / f"{case_dir.name}_mechanical.case"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_inconsistent_time_steps_from_counts_order_and_missing_files(tmp_path):
    count = make_case(tmp_path, "count")
    edit_case_file(count, "number of steps: 3", "number of steps: 4")
    error = rejection(count)
    assert error.reason == "inconsistent_time_steps"
    assert "lists 3 time values for 4 steps" in error.detail

    order = make_case(tmp_path, "order")
    edit_case_file(order, "10 20 30", "10 30 20")
    error = rejection(order)
    assert error.reason == "inconsistent_time_steps"
    assert "not strictly increasing (value 2 is 30, value 3 is 20)" in error.detail

    missing = make_case(tmp_path, "missing")
    (results(missing) / "missing_mechanical.strain.0002").unlink()
    error = rejection(missing)
    assert error.reason == "inconsistent_time_steps"
    assert error.detail == (
        "1 of 3 files of strain are missing, first missing_mechanical.strain.0002"
    )


def test_reader_disagreeing_with_the_case_file_is_inconsistent(tmp_path, monkeypatch):
    case_dir = make_case(tmp_path, "disagree")
    real = extract.ensight.read_case

    def shifted(case_file, step=-1):
        data = real(case_file, step)
        data["times"] = data["times"] + 1.0
        return data

    monkeypatch.setattr(extract.ensight, "read_case", shifted)
    error = rejection(case_dir)
    assert error.reason == "inconsistent_time_steps"
    assert "differ" in error.detail


def test_unreadable_for_missing_variable_reader_error_and_nan(tmp_path):
    no_temperature = make_case(tmp_path, "nt")
    edit_case_file(
        no_temperature, "scalar per node: 1 temperature nt_mechanical.temperature.****\n", ""
    )
    error = rejection(no_temperature)
    assert (error.reason, error.detail) == (
        "unreadable", "variable temperature is missing from nt_mechanical.case"
    )

    truncated = make_case(tmp_path, "tr")
    variable = results(truncated) / "tr_mechanical.displacement.0003"
    variable.write_bytes(variable.read_bytes()[:-8])
    error = rejection(truncated)
    assert error.reason == "unreadable"
    assert error.detail.startswith("the EnSight reader failed") and "Read failed" in error.detail

    nan = make_case(tmp_path, "nan")
    variable = results(nan) / "nan_mechanical.von_mises.0003"
    data = bytearray(variable.read_bytes())
    data[3 * 80 + 4 : 3 * 80 + 8] = np.array([np.nan], dtype="<f4").tobytes()  # node 0
    variable.write_bytes(bytes(data))
    error = rejection(nan)
    assert (error.reason, error.detail) == ("unreadable", "von_mises holds NaN or Inf at 1 nodes")


def test_bad_cells_inverted_collapsed_and_not_hexahedra(tmp_path):
    points, cells = hex_grid(np.ones((3, 1, 1), dtype=bool))
    inverted = cells.copy()
    inverted[1] = cells[1][[4, 5, 6, 7, 0, 1, 2, 3]]
    error = rejection(make_case(tmp_path, "inverted", points, inverted))
    assert error.reason == "bad_cells"
    assert error.detail.startswith("1 of 3 cells are inverted or degenerate, first cell 1")
    assert "smallest corner Jacobian -1 mm^3" in error.detail

    collapsed = cells.copy()
    collapsed[2, 4:] = cells[2, :4]  # the top face on the bottom one: zero volume
    error = rejection(make_case(tmp_path, "collapsed", points, collapsed))
    assert error.reason == "bad_cells"
    assert error.detail.startswith("1 of 3 cells are inverted or degenerate, first cell 2")

    mixed = make_case(tmp_path, "mixed", points, cells)
    (results(mixed) / "mixed_mechanical.geo").write_bytes(
        geometry_bytes("mixed", points, {"hexa8": cells[:2], "tetra4": np.array([[2, 3, 6, 10]])})
    )
    error = rejection(mixed)
    assert (error.reason, error.detail) == (
        "bad_cells", "1 of 3 cells are not hexahedra, first cell 2 (VTK type 10)"
    )


def test_checks_run_log_then_results_then_time_steps_then_arrays_then_cells(tmp_path):
    points, cells = hex_grid(np.ones((2, 1, 1), dtype=bool))
    inverted = cells[:, [4, 5, 6, 7, 0, 1, 2, 3]]
    case_dir = make_case(tmp_path, "many", points, inverted, log="no end line\n")
    edit_case_file(case_dir, "10 20 30", "10 30 20")
    (results(case_dir) / "many_mechanical.geo").rename(results(case_dir) / "elsewhere.geo")
    (case_dir / "mechanical.out").unlink()
    assert rejection(case_dir).reason == "log_missing"
    (case_dir / "mechanical.out").write_text("no end line\n")
    assert rejection(case_dir).reason == "analysis_terminated"
    (case_dir / "mechanical.out").write_text(LOG_OK)
    assert rejection(case_dir).reason == "results_missing"
    (results(case_dir) / "elsewhere.geo").rename(results(case_dir) / "many_mechanical.geo")
    assert rejection(case_dir).reason == "inconsistent_time_steps"
    edit_case_file(case_dir, "10 30 20", "10 20 30")
    variable = results(case_dir) / "many_mechanical.temperature.0003"
    intact = variable.read_bytes()
    variable.write_bytes(intact[:-4] + np.array([np.inf], dtype="<f4").tobytes())
    assert rejection(case_dir).reason == "unreadable"
    variable.write_bytes(intact)
    assert rejection(case_dir).reason == "bad_cells"


def test_case_rejected_refuses_unknown_reasons():
    with pytest.raises(ValueError, match="unknown rejection reason 'broken'"):
        CaseRejected("c", "broken", "x")
    error = CaseRejected("c7", "bad_cells", "cell 3 is inverted")
    assert str(error) == "case c7 rejected (bad_cells): cell 3 is inverted"


def test_extract_cases_keeps_going_resumes_and_writes_the_table(tmp_path, monkeypatch):
    sandbox = tmp_path / "SandBox"
    make_case(sandbox, "c1")
    make_case(sandbox, "b2", log=None)
    make_case(sandbox, "a3")
    make_case(sandbox, "d4")
    (sandbox / ".hidden").mkdir()
    (sandbox / "notes.txt").write_text("not a case")
    out_dir, table_path = tmp_path / "extracted", tmp_path / "tables" / "extraction.csv"

    real = extract.extract_case

    def exploding(case_dir):
        if case_dir.name == "d4":
            raise RuntimeError("disk on fire")
        return real(case_dir)

    monkeypatch.setattr(extract, "extract_case", exploding)
    table = extract_cases(sandbox, out_dir, table_path, progress=False)
    assert list(table.columns) == TABLE_COLUMNS
    assert table["case"].tolist() == ["a3", "b2", "c1", "d4"]
    assert table["status"].tolist() == ["accepted", "rejected", "accepted", "rejected"]
    assert table["reason"].tolist() == ["", "log_missing", "", "unreadable"]
    assert table.loc[3, "detail"] == "unexpected RuntimeError: disk on fire"
    assert table.loc[0, ["nodes", "cells", "steps"]].tolist() == [12, 2, 3]
    assert sorted(p.name for p in out_dir.iterdir()) == ["a3.npz", "c1.npz"]
    on_disk = pd.read_csv(table_path, keep_default_na=False)
    assert on_disk["case"].tolist() == ["a3", "b2", "c1", "d4"]
    assert on_disk.loc[1, "detail"].startswith("no mechanical.out in")
    with np.load(out_dir / "a3.npz") as stored:
        assert set(stored.files) == set(NPZ_KEYS)
        assert stored["num_steps"] == 3

    # Second run: a3's raw results are gone, so only the stored npz can make it accepted.
    mtime = (out_dir / "a3.npz").stat().st_mtime_ns
    for path in results(sandbox / "a3").iterdir():
        path.unlink()
    monkeypatch.setattr(extract, "extract_case", real)
    again = extract_cases(sandbox, out_dir, table_path, progress=False)
    assert (out_dir / "a3.npz").stat().st_mtime_ns == mtime
    assert again.loc[0, ["status", "detail", "nodes"]].tolist() == [
        "accepted", "already extracted", 12
    ]
    assert again["status"].tolist() == ["accepted", "rejected", "accepted", "accepted"]
    assert (out_dir / "d4.npz").exists()
    assert not [p for p in table_path.parent.iterdir() if p.name != "extraction.csv"]
