"""Raw LPBF cases from the embedded simulator: layout, log, failure modes, resume, round trip."""
import json

import numpy as np
import pytest
import trimesh

from flare.am import cases as cases_module
from flare.am.cases import (
    AMBIENT,
    COMPLETED_LINE,
    FAILURE_MODES,
    LAYER_TIME,
    PEAK_RISE,
    COOLING_TIME,
    CaseSpec,
    case_part,
    cooling_temperature,
    plan_cases,
    simulate_case,
    simulate_cases,
)
from flare.am.ensight import parse_case_file, read_case
from flare.am.extract import CaseRejected, extract_case
from flare.am.geometry import voxelize
from flare.am.simulate import simulate_layers

VARIABLES = ["displacement", "strain", "stress", "von_mises", "temperature"]


@pytest.fixture(scope="module")
def stl_part(tmp_path_factory):
    """An L-shaped test part: a 10 x 5 x 2.5 mm foot and a 5 x 5 x 7.5 mm column on one end.

    At 2.5 mm cells: 8 foot cells and 2 x 2 x 3 column cells in four layers (20 cells, 57 nodes).
    """
    foot = trimesh.creation.box(extents=[10.0, 5.0, 2.5])
    foot.apply_translation([0.0, 0.0, 1.25])
    column = trimesh.creation.box(extents=[5.0, 5.0, 7.6])
    column.apply_translation([-2.5, 0.0, 2.4 + 3.8])
    part = trimesh.boolean.union([foot, column], engine="manifold")
    path = tmp_path_factory.mktemp("parts") / "l_part.stl"
    part.export(path)
    return path


def spec_of(stl_part, name="case00000", failure=None):
    return CaseSpec(name=name, stl_path=str(stl_part), failure=failure)


def reference_fields(spec):
    """The simulator's own answer for a spec: voxel mesh and simulate_layers result."""
    _, _, mesh = case_part(spec)
    points, cells = voxelize(mesh, spec.cell_size, spec.layer_height)
    return points, cells, simulate_layers(points, cells, spec.layer_height, keep_step_fields=True)


# ----------------------------------------------------------------------------- plan


def test_plan_is_deterministic_with_the_requested_failure_share():
    plan = plan_cases(20, seed=3, fail_fraction=0.25)
    assert plan == plan_cases(20, seed=3, fail_fraction=0.25)
    assert [spec.name for spec in plan] == [f"case{i:05d}" for i in range(20)]
    failing = [spec.failure for spec in plan if spec.failure is not None]
    assert failing == ["terminated", "missing", "inconsistent", "inverted", "terminated"]
    assert all(spec.seed is not None and spec.stl_path is None for spec in plan)
    assert [s.seed for s in plan] != [s.seed for s in plan_cases(20, seed=4, fail_fraction=0.25)]
    assert sum(spec.failure is not None for spec in plan_cases(10, fail_fraction=0.1)) == 1
    assert all(spec.failure is None for spec in plan_cases(10, fail_fraction=0.0))


def test_plan_uses_the_stl_parts_first(tmp_path, stl_part):
    for name in ("b.stl", "a.stl"):
        (tmp_path / name).write_bytes(stl_part.read_bytes())
    plan = plan_cases(4, parts_dir=tmp_path, fail_fraction=0.0)
    assert [spec.stl_path for spec in plan[:2]] == [str(tmp_path / n) for n in ("a.stl", "b.stl")]
    assert plan[2].stl_path is None and plan[2].seed is not None


def test_plan_rejects_unknown_failure_modes():
    with pytest.raises(ValueError, match="fail_modes"):
        plan_cases(4, fail_modes=("exploded",))
    with pytest.raises(ValueError, match="exactly one of seed and stl_path"):
        CaseSpec(name="case00000")


# ----------------------------------------------------------------------------- temperature


def test_cooling_model_has_its_documented_values():
    times = np.array([60.0, 120.0, 180.0])
    temperature = cooling_temperature(times, np.array([0, 1, 3]))  # node 2 is never deposited
    expected = np.array(
        [
            [AMBIENT + PEAK_RISE, AMBIENT, AMBIENT],
            [AMBIENT + PEAK_RISE * np.exp(-60.0 / COOLING_TIME), AMBIENT + PEAK_RISE, AMBIENT],
            [
                AMBIENT + PEAK_RISE * np.exp(-120.0 / COOLING_TIME),
                AMBIENT + PEAK_RISE * np.exp(-60.0 / COOLING_TIME),
                AMBIENT,
            ],
        ]
    )
    np.testing.assert_allclose(temperature, expected)


# ----------------------------------------------------------------------------- one good case


def test_a_case_folder_holds_exactly_the_contract_files(tmp_path, stl_part):
    summary = simulate_case(spec_of(stl_part), tmp_path)
    assert summary["nodes"] == 57 and summary["cells"] == 20 and summary["steps"] == 4
    assert summary["part"] == "l_part" and summary["failure"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case00000"]  # no hidden build folder
    case = tmp_path / "case00000"
    assert sorted(p.name for p in case.iterdir()) == ["mechanical.out", "results", "test.stl"]
    expected = {"case00000_mechanical.case", "case00000_mechanical.geo"} | {
        f"case00000_mechanical.{name}.{step:04d}" for name in VARIABLES for step in range(1, 5)
    }
    assert {p.name for p in (case / "results").iterdir()} == expected
    index = parse_case_file(case / "results" / "case00000_mechanical.case")
    np.testing.assert_allclose(index.time_sets[1].values, LAYER_TIME * np.arange(1, 5))


def test_test_stl_is_the_binary_part_surface(tmp_path, stl_part):
    simulate_case(spec_of(stl_part), tmp_path)
    raw = (tmp_path / "case00000" / "test.stl").read_bytes()
    n_faces = int(np.frombuffer(raw[80:84], dtype="<u4")[0])
    assert len(raw) == 84 + 50 * n_faces  # the binary STL layout
    surface = trimesh.load_mesh(tmp_path / "case00000" / "test.stl")
    assert surface.is_watertight
    assert surface.volume == pytest.approx(10 * 5 * 2.5 + 5 * 5 * 7.5, rel=1e-6)
    assert surface.bounds[0, 2] == pytest.approx(0.0, abs=1e-9)


def test_the_log_has_a_header_a_line_per_layer_and_the_completion_line(tmp_path, stl_part):
    simulate_case(spec_of(stl_part), tmp_path)
    lines = (tmp_path / "case00000" / "mechanical.out").read_text().splitlines()
    assert lines[-1] == COMPLETED_LINE
    text = "\n".join(lines)
    for expected in ("case00000", "l_part", "Nodes:             57", "Ti-6Al-4V", "E = 110000 MPa",
                     "-0.005, -0.005, -0.01"):
        assert expected in text
    _, _, result = reference_fields(spec_of(stl_part))
    table = [line.split() for line in lines if line.split() and line.split()[0].isdigit()]
    assert [int(row[0]) for row in table] == [1, 2, 3, 4]
    assert [int(row[2]) for row in table] == [8, 12, 16, 20]  # active cells after each layer
    max_u = [np.linalg.norm(f["displacement"], axis=1).max() for f in result["step_fields"]]
    np.testing.assert_allclose([float(row[4]) for row in table], max_u, rtol=1e-6)


def test_an_interrupted_case_leaves_no_folder(tmp_path, stl_part, monkeypatch):
    def broken_writer(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cases_module, "write_case", broken_writer)
    with pytest.raises(OSError, match="disk full"):
        simulate_case(spec_of(stl_part), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_case_is_not_overwritten(tmp_path, stl_part):
    (tmp_path / "case00000").mkdir()
    with pytest.raises(FileExistsError, match="case00000"):
        simulate_case(spec_of(stl_part), tmp_path)


# ----------------------------------------------------------------------------- failure modes


def test_terminated_case_logs_the_error_and_keeps_results_before_it(tmp_path, stl_part):
    simulate_case(spec_of(stl_part, failure="terminated"), tmp_path)
    case = tmp_path / "case00000"
    log = (case / "mechanical.out").read_text()
    assert "*** ERROR: layer 3" in log and "Analysis terminated at layer 3" in log
    assert COMPLETED_LINE not in log
    index = parse_case_file(case / "results" / "case00000_mechanical.case")
    assert index.time_sets[1].number_of_steps == 2
    assert sorted(p.name for p in (case / "results").glob("*.displacement.*")) == [
        "case00000_mechanical.displacement.0001", "case00000_mechanical.displacement.0002"
    ]


def test_missing_case_has_a_complete_log_and_no_results(tmp_path, stl_part):
    simulate_case(spec_of(stl_part, failure="missing"), tmp_path)
    case = tmp_path / "case00000"
    assert sorted(p.name for p in case.iterdir()) == ["mechanical.out", "test.stl"]
    assert (case / "mechanical.out").read_text().splitlines()[-1] == COMPLETED_LINE


def test_inconsistent_case_lists_a_step_whose_files_are_missing(tmp_path, stl_part):
    simulate_case(spec_of(stl_part, failure="inconsistent"), tmp_path)
    results = tmp_path / "case00000" / "results"
    index = parse_case_file(results / "case00000_mechanical.case")
    assert index.time_sets[1].number_of_steps == 4
    assert not list(results.glob("*.0004"))
    assert len(list(results.glob("*.0003"))) == len(VARIABLES)


def test_inverted_case_has_one_cell_with_its_quads_swapped(tmp_path, stl_part):
    simulate_case(spec_of(stl_part, failure="inverted"), tmp_path)
    written = read_case(tmp_path / "case00000" / "results" / "case00000_mechanical.case")["cells"]
    _, cells, _ = reference_fields(spec_of(stl_part))
    differ = np.flatnonzero((written != cells).any(axis=1))
    assert differ.tolist() == [len(cells) // 2]
    np.testing.assert_array_equal(written[differ[0]], cells[differ[0], [4, 5, 6, 7, 0, 1, 2, 3]])


# ----------------------------------------------------------------------------- many cases


def test_simulate_cases_resumes_and_removes_stale_build_folders(tmp_path, stl_part, monkeypatch):
    specs = [spec_of(stl_part, "case00000"), spec_of(stl_part, "case00001", failure="missing")]
    manifest = tmp_path / "manifest.json"
    sandbox = tmp_path / "sandbox"
    first = simulate_cases(specs[:1], sandbox, manifest, progress=False)
    assert [entry["case"] for entry in first] == ["case00000"]

    stale = sandbox / ".partial-case00001-killed"
    stale.mkdir()
    (stale / "mechanical.out").write_text("half a log")
    ran = []
    real_simulate_case = cases_module.simulate_case

    def counting_simulate_case(spec, box):
        ran.append(spec.name)
        return real_simulate_case(spec, box)

    monkeypatch.setattr(cases_module, "simulate_case", counting_simulate_case)
    second = simulate_cases(specs, sandbox, manifest, progress=False)
    assert ran == ["case00001"]
    assert not stale.exists()
    assert sorted(p.name for p in sandbox.iterdir()) == ["case00000", "case00001"]
    assert second[0] == first[0]  # the finished case keeps its summary
    saved = json.loads(manifest.read_text())["cases"]
    assert saved == second
    assert [(e["case"], e["nodes"], e["failure"]) for e in saved] == [
        ("case00000", 57, None), ("case00001", 57, "missing")
    ]


def test_simulate_cases_names_the_case_that_fails(tmp_path):
    flat = tmp_path / "flat.stl"
    trimesh.creation.box(extents=[10.0, 10.0, 1.0]).export(flat)  # thinner than a layer
    with pytest.raises(RuntimeError, match="case00000.*no cell"):
        simulate_cases([CaseSpec(name="case00000", stl_path=str(flat))], tmp_path / "sb",
                       tmp_path / "m.json", progress=False)
    assert list((tmp_path / "sb").iterdir()) == []


def test_a_procedural_demo_case_runs(tmp_path):
    spec = plan_cases(1, seed=5, size=20.0, fail_fraction=0.0)[0]
    summary = simulate_case(spec, tmp_path)
    assert summary["source"] == "procedural" and summary["solver"] == "direct"
    assert summary["nodes"] > 0 and summary["steps"] >= 1
    assert (tmp_path / spec.name / "mechanical.out").read_text().endswith(COMPLETED_LINE + "\n")


# ----------------------------------------------------------------------------- step fields


def test_step_fields_end_at_the_final_fields_and_are_zero_before_deposition(stl_part):
    points, cells, result = reference_fields(spec_of(stl_part))
    final = result["step_fields"][-1]
    for name in ("displacement", "strain", "stress", "von_mises"):
        np.testing.assert_array_equal(final[name], result[name])
    first = result["step_fields"][0]
    above = points[:, 2] > 2.5 + 1e-9  # nodes of the later layers
    assert (first["displacement"][above] == 0).all() and (first["von_mises"][above] == 0).all()
    assert (first["von_mises"][~above] > 0).all()
    assert len(result["step_seconds"]) == len(result["layers"]) == 4


# ----------------------------------------------------------------------------- round trip


def test_extraction_returns_the_simulated_final_fields(tmp_path, stl_part):
    spec = spec_of(stl_part)
    simulate_case(spec, tmp_path)
    arrays = extract_case(tmp_path / spec.name)
    points, cells, result = reference_fields(spec)
    np.testing.assert_allclose(arrays["points"], points, rtol=1e-7, atol=1e-6)
    np.testing.assert_array_equal(arrays["cells"], cells)
    for name in ("displacement", "strain", "stress", "von_mises"):
        expected = result[name].astype(np.float32).astype(np.float64)
        np.testing.assert_array_equal(arrays[name], expected, err_msg=name)
    top = np.isclose(points[:, 2], points[:, 2].max())
    np.testing.assert_allclose(arrays["temperature"][top], AMBIENT + PEAK_RISE, rtol=1e-6)
    assert float(arrays["time"]) == pytest.approx(4 * LAYER_TIME)
    assert int(arrays["num_steps"]) == 4


@pytest.mark.parametrize(
    "failure, reason",
    [
        ("terminated", "analysis_terminated"),
        ("missing", "results_missing"),
        ("inconsistent", "inconsistent_time_steps"),
        ("inverted", "bad_cells"),
    ],
)
def test_each_failing_case_is_rejected_with_its_reason(tmp_path, stl_part, failure, reason):
    assert failure in FAILURE_MODES
    simulate_case(spec_of(stl_part, failure=failure), tmp_path)
    with pytest.raises(CaseRejected) as rejected:
        extract_case(tmp_path / "case00000")
    assert rejected.value.reason == reason
