"""LPBF dataset assembly: the seed-0 split, channels, outputs, edges, the case map and SDF resume."""
import numpy as np
import pandas as pd
import pytest

import flare.am.assemble as assemble_module
from flare.am.assemble import assemble, compute_sdf
from flare.am.mesh import hex_edges
from flare.am.sdf import FEATURE_NAMES, hex_grid, sdf_features
from flare.data.format import read_split

# Seven parts of different sizes, named so that sorting reorders them.
CASES = {name: k for k, name in enumerate(["part_d", "part_a", "part_g", "part_b", "part_f", "part_c", "part_e"], 1)}


def part(k):
    """A 1 x 2 x k bar of 2.5 mm hexes on the plate at z = -25 mm: 6 (k + 1) nodes."""
    return hex_grid(np.ones((1, 2, k), dtype=bool), spacing=(2.5, 2.5, 2.5), origin=(-3.0, 4.0, -25.0))


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("extracted")
    rng = np.random.default_rng(0)
    for case, k in CASES.items():
        points, cells = part(k)
        n = len(points)
        np.savez(folder / f"{case}.npz", points=points, cells=cells, displacement=rng.normal(0, 0.1, (n, 3)),
                 strain=np.zeros((n, 6)), stress=np.zeros((n, 6)), von_mises=np.full(n, 50.0),
                 temperature=np.full(n, 25.0), time=np.float64(1.0), num_steps=np.int64(k))
    return folder


@pytest.fixture(scope="module")
def sdf_dir(extracted, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdf")
    compute_sdf(extracted, list(CASES), folder, progress=False)
    return folder


def load(extracted, case):
    with np.load(extracted / f"{case}.npz") as data:
        return {k: data[k] for k in data.files}


def expected_split(num_train, num_test):
    cases = sorted(CASES)
    order = np.random.RandomState(0).permutation(len(cases))
    return [cases[i] for i in order[:num_train]], [cases[i] for i in order[num_train:num_train + num_test]]


def test_split_is_the_seed_zero_permutation_of_the_sorted_cases(extracted, tmp_path):
    assemble(extracted, list(CASES), tmp_path, num_train=4, num_test=2)
    table = pd.read_csv(tmp_path / "cases.csv")
    train, test = expected_split(4, 2)
    assert table.loc[table["split"] == "train", "case"].tolist() == train
    assert table.loc[table["split"] == "test", "case"].tolist() == test
    assert table["index"].tolist() == [0, 1, 2, 3, 0, 1]
    assert len(set(train) | set(test)) == 6  # one case left over, none used twice


def test_without_sdf_inputs_are_scaled_positions_and_output_is_z_displacement(extracted, tmp_path):
    assemble(extracted, list(CASES), tmp_path, num_train=4, num_test=2)
    table = pd.read_csv(tmp_path / "cases.csv")
    for split in ("train", "test"):
        data = read_split(tmp_path / f"{split}.h5")
        assert data.meta.input_channels == ["x", "y", "z"]
        assert data.meta.input_units == ["30 mm", "30 mm", "60 mm"]
        assert data.meta.normalize_inputs == [False, False, False]
        assert data.meta.output_channels == ["z_displacement"] and data.meta.output_units == ["mm"]
        rows = table.loc[table["split"] == split]
        assert len(data) == len(rows)
        for index, case, nodes in zip(rows["index"], rows["case"], rows["nodes"]):
            arrays = load(extracted, case)
            x, y = data.sample(index)
            assert len(x) == nodes == len(arrays["points"])  # cases.csv maps the sample back
            np.testing.assert_allclose(x, arrays["points"] / [30.0, 30.0, 60.0], rtol=1e-6)
            np.testing.assert_allclose(y[:, 0], arrays["displacement"][:, 2], rtol=1e-6)
            np.testing.assert_array_equal(data.sample_edges(index), hex_edges(arrays["cells"]))


def test_with_sdf_the_eleven_features_follow_the_positions_and_are_normalised(extracted, sdf_dir, tmp_path):
    assemble(extracted, list(CASES), tmp_path, num_train=4, num_test=2, sdf_dir=sdf_dir)
    data = read_split(tmp_path / "test.h5")
    assert data.meta.input_channels == ["x", "y", "z", *FEATURE_NAMES]
    assert data.meta.normalize_inputs == [False] * 3 + [True] * 11
    assert data.meta.input_units[3:5] == ["1", "mm"]
    _, test = expected_split(4, 2)
    for index, case in enumerate(test):
        x, _ = data.sample(index)
        with np.load(sdf_dir / f"{case}.npz") as stored:
            np.testing.assert_array_equal(x[:, 3:], stored["features"])
    # fitted on train: the normaliser of a flag channel is its train mean / std, not the identity
    assert data.x_normalizer.std[3] != 1.0 and data.x_normalizer.std[0] == 1.0


def test_compute_sdf_stores_the_features_of_sdf_features(extracted, sdf_dir):
    arrays = load(extracted, "part_c")
    with np.load(sdf_dir / "part_c.npz") as stored:
        assert stored["features"].dtype == np.float32
        np.testing.assert_array_equal(stored["features"], sdf_features(arrays["points"], arrays["cells"]))
        assert stored["seconds"].shape == () and stored["seconds"] > 0


def test_compute_sdf_resumes_and_can_be_sharded(extracted, tmp_path, monkeypatch):
    first = compute_sdf(extracted, ["part_b"], tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part_b.npz"]  # a shard writes only its cases
    computed = []

    def counting(points, cells):
        computed.append(len(points))
        return sdf_features(points, cells)

    monkeypatch.setattr(assemble_module, "sdf_features", counting)
    rows = compute_sdf(extracted, ["part_a", "part_b"], tmp_path, progress=False)
    assert computed == [6 * (CASES["part_a"] + 1)]  # part_b was not computed again
    assert rows["case"].tolist() == ["part_a", "part_b"]
    assert rows["nodes"].tolist() == [6 * (CASES["part_a"] + 1), 6 * (CASES["part_b"] + 1)]
    assert rows["seconds"].iloc[1] == first["seconds"].iloc[0]  # read back from the file
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_too_few_cases_is_an_error_naming_both_numbers(extracted, tmp_path):
    with pytest.raises(ValueError, match="num_train 5 \\+ num_test 3"):
        assemble(extracted, list(CASES), tmp_path, num_train=5, num_test=3)


def test_missing_sdf_file_is_an_error_naming_the_case(extracted, sdf_dir, tmp_path):
    partial = tmp_path / "sdf"
    partial.mkdir()
    for case in CASES:
        if case != "part_f":
            (partial / f"{case}.npz").write_bytes((sdf_dir / f"{case}.npz").read_bytes())
    with pytest.raises(FileNotFoundError, match="case part_f"):
        assemble(extracted, list(CASES), tmp_path / "out", num_train=5, num_test=2, sdf_dir=partial)


def test_sdf_file_with_another_node_count_is_an_error_naming_the_case(extracted, sdf_dir, tmp_path):
    swapped = tmp_path / "sdf"
    swapped.mkdir()
    for case in CASES:
        (swapped / f"{case}.npz").write_bytes((sdf_dir / f"{case}.npz").read_bytes())
    (swapped / "part_a.npz").write_bytes((sdf_dir / "part_g.npz").read_bytes())
    nodes_a, nodes_g = 6 * (CASES["part_a"] + 1), 6 * (CASES["part_g"] + 1)
    with pytest.raises(ValueError, match=f"case part_a: .*features of shape \\({nodes_g}, 11\\).*{nodes_a} nodes"):
        assemble(extracted, list(CASES), tmp_path / "out", num_train=5, num_test=2, sdf_dir=swapped)


def test_a_case_listed_twice_is_an_error(extracted, tmp_path):
    with pytest.raises(ValueError, match="part_a"):
        assemble(extracted, [*CASES, "part_a"], tmp_path, num_train=4, num_test=2)
