"""EnSight Gold writer and VTK-backed reader: round trips, file layout, refusals (SPEC §5)."""
import numpy as np
import pytest

from flare.am import ensight
from flare.am.ensight import (
    ensight_to_voigt,
    geometry_bytes,
    parse_case_file,
    read_case,
    time_set_problems,
    voigt_to_ensight,
    write_case,
)
from flare.am.sdf import hex_grid

TIMES = [0.25, 1.5, 2.0, 3.125, 4.0, 5.5, 7.0]  # more than one line of time values


def scrambled_mesh():
    """A 2 x 2 x 2 hex block (spacing 1, 2, 3 mm) with its nodes in a random order."""
    points, cells = hex_grid(np.ones((2, 2, 2), dtype=bool), spacing=(1.0, 2.0, 3.0))
    order = np.random.default_rng(0).permutation(len(points))
    return points[order], np.argsort(order)[cells]


def distinct_steps(n_points, n_steps):
    """Fields whose every node, component and step holds a different value."""
    node = np.arange(n_points, dtype=np.float64)[:, None]
    steps = []
    for k in range(n_steps):
        steps.append(
            {
                "displacement": 0.001 * node + 0.1 * np.arange(1, 4) + k,
                "strain": 1e-4 * (node + 0.125 * np.arange(1, 7) + k),
                "stress": 10.0 * node + np.arange(1, 7) + 100.0 * k,
                "von_mises": 3.0 * node[:, 0] + 0.5 + k,
                "temperature": 20.0 + node[:, 0] + 7.0 * k,
            }
        )
    return steps


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    points, cells = scrambled_mesh()
    steps = distinct_steps(len(points), len(TIMES))
    case_file = write_case(tmp_path_factory.mktemp("results"), "part7", points, cells, TIMES, steps)
    return case_file, points, cells, steps


def test_write_case_names_the_files_of_the_contract(written):
    case_file, *_ = written
    names = sorted(p.name for p in case_file.parent.iterdir())
    expected = ["part7_mechanical.case", "part7_mechanical.geo"] + [
        f"part7_mechanical.{var}.{k:04d}"
        for var in ["displacement", "strain", "stress", "temperature", "von_mises"]
        for k in range(1, len(TIMES) + 1)
    ]
    assert case_file.name == "part7_mechanical.case"
    assert names == sorted(expected)  # no temporary files left behind


def test_case_file_lists_variables_and_time_section(written):
    case_file, *_ = written
    text = case_file.read_text()
    lines = text.splitlines()
    assert lines[:5] == [
        "FORMAT", "type: ensight gold", "", "GEOMETRY", "model: part7_mechanical.geo"
    ]
    assert "vector per node: 1 displacement part7_mechanical.displacement.****" in lines
    assert "tensor symm per node: 1 strain part7_mechanical.strain.****" in lines
    assert "tensor symm per node: 1 stress part7_mechanical.stress.****" in lines
    assert "scalar per node: 1 von_mises part7_mechanical.von_mises.****" in lines
    assert "scalar per node: 1 temperature part7_mechanical.temperature.****" in lines
    time_part = lines[lines.index("TIME"):]
    assert time_part[1:5] == [
        "time set: 1", f"number of steps: {len(TIMES)}", "filename start number: 1",
        "filename increment: 1",
    ]
    assert max(len(line) for line in lines) < 256  # VTK's line limit
    values = " ".join(time_part[6:]).split()
    assert [float(v) for v in values] == TIMES


def test_geometry_file_is_c_binary_with_one_based_int32_connectivity(written):
    case_file, points, cells, _ = written
    data = (case_file.parent / "part7_mechanical.geo").read_bytes()
    records = [data[i * 80 : (i + 1) * 80].rstrip(b"\0") for i in range(6)]
    assert records[0] == b"C Binary"
    assert records[3:6] == [b"node id off", b"element id off", b"part"]
    n = len(points)
    # part number, "part" description, "coordinates", node count, x y z blocks, "hexa8", count
    offset = 6 * 80 + 4 + 2 * 80
    assert np.frombuffer(data, "<i4", 1, offset)[0] == n
    x = np.frombuffer(data, "<f4", n, offset + 4)
    np.testing.assert_array_equal(x, points[:, 0].astype(np.float32))
    offset += 4 + 12 * n
    assert data[offset : offset + 80].rstrip(b"\0") == b"hexa8"
    assert np.frombuffer(data, "<i4", 1, offset + 80)[0] == len(cells)
    connectivity = np.frombuffer(data, "<i4", 8 * len(cells), offset + 84).reshape(-1, 8)
    np.testing.assert_array_equal(connectivity, cells + 1)
    assert offset + 84 + 32 * len(cells) == len(data)


def test_tensor_file_holds_ensight_order_11_22_33_12_13_23(written):
    case_file, points, _, steps = written
    data = (case_file.parent / "part7_mechanical.stress.0002").read_bytes()
    n = len(points)
    blocks = np.frombuffer(data, "<f4", 6 * n, 3 * 80 + 4).reshape(6, n)
    voigt = steps[1]["stress"]  # [xx, yy, zz, yz, xz, xy]
    for block, voigt_index in zip(blocks, [0, 1, 2, 5, 4, 3]):
        np.testing.assert_array_equal(block, voigt[:, voigt_index].astype(np.float32))


def test_voigt_ensight_conversion_round_trips():
    voigt = np.array([11.0, 22.0, 33.0, 23.0, 13.0, 12.0])  # named by their tensor indices
    np.testing.assert_array_equal(voigt_to_ensight(voigt), [11, 22, 33, 12, 13, 23])
    np.testing.assert_array_equal(ensight_to_voigt(voigt_to_ensight(voigt)), voigt)


@pytest.mark.parametrize("step", [-1, 0, 3])
def test_read_case_round_trips_every_field_in_node_order(written, step):
    case_file, points, cells, steps = written
    result = read_case(case_file, step=step)
    index = step % len(TIMES)
    assert result["step"] == index
    assert result["time"] == TIMES[index]
    np.testing.assert_array_equal(result["times"], TIMES)
    np.testing.assert_array_equal(result["points"], points.astype(np.float32))
    np.testing.assert_array_equal(result["cells"], cells)
    assert result["cells"].dtype == np.int64
    np.testing.assert_array_equal(result["cell_types"], np.full(len(cells), 12))
    for name, values in steps[index].items():
        assert result[name].shape == values.shape, name
        np.testing.assert_array_equal(result[name], values.astype(np.float32), err_msg=name)


def test_read_case_keeps_time_values_to_float32(tmp_path):
    points, cells = hex_grid(np.ones((1, 1, 1), dtype=bool))
    times = [1.0 / 3.0, 0.1, 12345.678]
    times.sort()
    steps = [{"temperature": np.full(len(points), t)} for t in times]
    result = read_case(write_case(tmp_path, "t", points, cells, times, steps))
    np.testing.assert_allclose(result["times"], times, rtol=1e-7)
    assert set(result) == {"times", "step", "time", "points", "cells", "cell_types", "temperature"}


def test_read_case_marks_cells_that_are_not_hexahedra(tmp_path):
    points, cells = hex_grid(np.ones((2, 1, 1), dtype=bool))
    case_file = write_case(tmp_path, "mixed", points, cells, [1.0], [{}])
    tetra = np.array([[1, 2, 5, 8]])
    (tmp_path / "mixed_mechanical.geo").write_bytes(
        geometry_bytes("mixed", points, {"hexa8": cells[:1], "tetra4": tetra})
    )
    result = read_case(case_file)
    np.testing.assert_array_equal(result["cell_types"], [12, 10])
    np.testing.assert_array_equal(result["cells"], [cells[0], [-1] * 8])


def test_read_case_refuses_a_time_section_vtk_cannot_follow(written, tmp_path):
    case_file, *_ = written
    broken = case_file.parent / "broken.case"
    broken.write_text(case_file.read_text().replace("number of steps: 7", "number of steps: 8"))
    with pytest.raises(ValueError, match="lists 7 time values for 8 steps"):
        read_case(broken)
    with pytest.raises(IndexError, match="step 7 out of range for 7"):
        read_case(case_file, step=7)
    with pytest.raises(FileNotFoundError, match="no such EnSight case file"):
        read_case(tmp_path / "absent.case")


def test_read_case_raises_on_a_truncated_variable_file(tmp_path):
    points, cells = hex_grid(np.ones((1, 1, 1), dtype=bool))
    steps = distinct_steps(len(points), 2)
    case_file = write_case(tmp_path, "cut", points, cells, [1.0, 2.0], steps)
    variable = tmp_path / "cut_mechanical.stress.0002"
    variable.write_bytes(variable.read_bytes()[:-12])
    with pytest.raises(RuntimeError, match="Read failed"):
        read_case(case_file)


def test_parse_case_file_follows_steps_and_file_numbers(written):
    case_file, *_ = written
    index = parse_case_file(case_file)
    assert index.geometry == "part7_mechanical.geo"
    assert index.variables["stress"] == ("tensor symm per node", "part7_mechanical.stress.****", 1)
    assert list(index.variables) == ["displacement", "strain", "stress", "von_mises", "temperature"]
    assert index.time_sets[1].file_numbers == list(range(1, 8))
    files = index.files_of("part7_mechanical.stress.****", 1)
    assert [f.name for f in files[:2]] == [
        "part7_mechanical.stress.0001", "part7_mechanical.stress.0002"
    ]
    assert time_set_problems(index) == []


def test_time_set_problems_names_decreasing_times(written, tmp_path):
    case_file, *_ = written
    text = case_file.read_text().replace("0.25 1.5 2 3.125 4", "0.25 1.5 1.5 3.125 4")
    assert "0.25 1.5 1.5" in text
    changed = tmp_path / "c.case"
    changed.write_text(text)
    assert time_set_problems(parse_case_file(changed)) == [
        "time set 1: time values are not strictly increasing (value 2 is 1.5, value 3 is 1.5)"
    ]


def test_parse_case_file_rejects_a_file_that_is_not_ensight_gold(tmp_path):
    path = tmp_path / "x.case"
    path.write_text("FORMAT\ntype: ensight\nGEOMETRY\nmodel: x.geo\n")
    with pytest.raises(ValueError, match="no 'type: ensight gold'"):
        parse_case_file(path)
    path.write_text("FORMAT\ntype: ensight gold\nGEOMETRY\nmodel: x.geo\nVARIABLE\nscalar: v f\n")
    with pytest.raises(ValueError, match="line 6: cannot read the variable line"):
        parse_case_file(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(times=[1.0, 1.0]), r"strictly increasing: times\[0\] = 1.0"),
        (lambda a: a.update(points=a["points"][:, :2]), r"points must have shape \[N, 3\]"),
        (lambda a: a["cells"].__setitem__((1, 7), 99), r"outside \[0, 12\): min 0, max 99"),
        (lambda a: a["steps"][1]["stress"].__setitem__((0, 0), np.nan), "step 1: stress holds NaN"),
        (lambda a: a["steps"][0].__setitem__("pressure", np.zeros(12)), "unknown variables"),
        (lambda a: a["steps"][1].pop("strain"), "every step must hold the same variables"),
        (
            lambda a: a["steps"][0].__setitem__("von_mises", np.zeros((12, 1))),
            r"von_mises must have shape \[12\]",
        ),
        (lambda a: a.update(steps=a["steps"][:1]), "got 1 steps for 2 time values"),
        (lambda a: a.update(case_name="my part"), "no spaces or slashes"),
    ],
)
def test_write_case_refuses_bad_input_with_the_reason(tmp_path, change, message):
    points, cells = hex_grid(np.ones((2, 1, 1), dtype=bool))
    arguments = {
        "case_name": "p", "points": points, "cells": cells.copy(), "times": [1.0, 2.0],
        "steps": distinct_steps(len(points), 2),
    }
    change(arguments)
    with pytest.raises(ValueError, match=message):
        write_case(tmp_path, **arguments)
    assert not (tmp_path / "p_mechanical.case").exists()


def test_write_case_writes_an_inverted_cell_unchecked(tmp_path):
    points, cells = hex_grid(np.ones((1, 1, 1), dtype=bool))
    inverted = cells[:, [4, 5, 6, 7, 0, 1, 2, 3]]
    case_file = write_case(tmp_path, "inv", points, inverted, [1.0], [{}])
    np.testing.assert_array_equal(read_case(case_file)["cells"], inverted)


def test_write_case_over_an_earlier_case_replaces_it(tmp_path):
    points, cells = hex_grid(np.ones((1, 1, 1), dtype=bool))
    first = [{"von_mises": np.full(len(points), 1.0)} for _ in range(3)]
    write_case(tmp_path, "again", points, cells, [1.0, 2.0, 3.0], first)
    second = ({"von_mises": np.full(len(points), 5.0)} for _ in range(2))  # a generator
    case_file = write_case(tmp_path, "again", points, cells, [4.0, 8.0], second)
    result = read_case(case_file)
    np.testing.assert_array_equal(result["times"], [4.0, 8.0])
    np.testing.assert_array_equal(result["von_mises"], np.full(len(points), 5.0))


def test_variables_table_matches_the_contract():
    assert ensight.VARIABLES == {
        "displacement": ("vector", 3),
        "strain": ("tensor symm", 6),
        "stress": ("tensor symm", 6),
        "von_mises": ("scalar", 1),
        "temperature": ("scalar", 1),
    }
