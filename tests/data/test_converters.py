"""Converters of the published layouts (airfoil, pipe, DrivAerML, LPBF) to the standard format.

Fixtures are miniature files in the published layouts: member paths, file names, array keys and
axis order as published, few samples. Grids are small where the converter takes the grid from the
files, plus one run each on the published 221×51 / 129×129 grids.
"""
from __future__ import annotations

import json

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flare.data import airfoil, drivaerml, lpbf_published, pipe
from flare.data.archive import safe_extract
from flare.data.format import read_split
from tests.data.miniatures import drivaerml_tarball, geo_fno_tarball


def _splits(out_dir):
    return read_split(out_dir / "train.h5"), read_split(out_dir / "test.h5")


def _samples(data):
    return [data.sample(i) for i in range(len(data))]


def _assert_output_normaliser_fitted_on(data, train_ys):
    ys = np.concatenate(train_ys).astype(np.float64)
    np.testing.assert_allclose(data.y_normalizer.mean.numpy(), ys.mean(0), rtol=1e-5)
    np.testing.assert_allclose(data.y_normalizer.std.numpy(), ys.std(0), rtol=1e-5)


# ----------------------------------------------------------------------------- Geo-FNO grids


@pytest.fixture(scope="module")
def geo_fno(tmp_path_factory):
    """A miniature Geo-FNO.tar.gz (7 samples, small grids) extracted as published."""
    root = tmp_path_factory.mktemp("geofno")
    arrays = geo_fno_tarball(root / "Geo-FNO.tar.gz", samples=7)
    safe_extract(root / "Geo-FNO.tar.gz", root / "x")
    return root / "x" / "Geo-FNO", {k.split("/")[-1]: v for k, v in arrays.items()}


def _write_grid_files(folder, names, samples, grid, channels, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    x = rng.random((samples, *grid)) + np.arange(samples)[:, None, None]  # sample s lies in [s, s+1)
    y = rng.random((samples, *grid))
    q = rng.random((samples, channels, *grid))
    for name, array in zip(names, (x, y, q)):
        np.save(folder / name, array)
    return x, y, q


def test_airfoil_takes_samples_0_to_num_train_and_the_next_num_test(geo_fno, tmp_path):
    folder, arrays = geo_fno
    airfoil.prepare(folder / "airfoil" / "naca", tmp_path / "out", num_train=4, num_test=2)
    train, test = _splits(tmp_path / "out")
    X, Y, Q = (arrays[f"NACA_Cylinder_{k}.npy"] for k in "XYQ")
    n1, n2 = X.shape[1:]
    for data, indices in ((train, [0, 1, 2, 3]), (test, [4, 5])):  # sample 6 is in neither
        assert len(data) == len(indices) and data.fixed_size
        for (x, y), s in zip(_samples(data), indices):
            assert x.shape == (n1 * n2, 2) and y.shape == (n1 * n2, 1)
            np.testing.assert_allclose(x[:, 0], X[s].ravel(), rtol=1e-6)  # row-major over (i, j)
            np.testing.assert_allclose(x[:, 1], Y[s].ravel(), rtol=1e-6)
            np.testing.assert_allclose(y[:, 0], Q[s, 4].ravel(), rtol=1e-6)  # Mach is channel 4
    meta = train.meta
    assert meta.name == "airfoil" and meta.input_channels == ["x", "y"] and meta.output_channels == ["mach"]
    assert meta.grid_shape == [n1, n2] and meta.normalize_inputs == [False, False]
    assert "NACA_Cylinder_Q.npy[:, 4]" in meta.source and "[4:6]" in meta.source
    np.testing.assert_array_equal(train.x_normalizer.mean.numpy(), [0, 0])  # inputs not normalised
    np.testing.assert_array_equal(train.x_normalizer.std.numpy(), [1, 1])
    _assert_output_normaliser_fitted_on(test, [Q[s, 4].reshape(-1, 1) for s in range(4)])


def test_airfoil_on_the_published_221_by_51_grid(tmp_path):
    X, Y, Q = _write_grid_files(tmp_path / "naca", (airfoil.X_FILE, airfoil.Y_FILE, airfoil.Q_FILE),
                                3, airfoil.PUBLISHED_GRID, 5)
    airfoil.prepare(tmp_path / "naca", tmp_path / "out", num_train=2, num_test=1)
    train, test = _splits(tmp_path / "out")
    assert train.meta.grid_shape == [221, 51] and len(train) == 2 and len(test) == 1
    x, y = test.sample(0)
    assert x.shape == (11271, 2)
    np.testing.assert_allclose(x[52, 0], X[2, 1, 1], rtol=1e-6)  # node (1, 1) is row 1·51 + 1
    np.testing.assert_allclose(y[:, 0], Q[2, 4].ravel(), rtol=1e-6)
    with h5py.File(tmp_path / "out" / "train.h5") as f:
        assert f.attrs["points_per_sample"] == 11271


def test_pipe_tests_on_the_last_num_test_of_the_first_num_train_plus_num_test(geo_fno, tmp_path):
    folder, arrays = geo_fno
    pipe.prepare(folder / "pipe", tmp_path / "out", num_train=3, num_test=2)
    train, test = _splits(tmp_path / "out")
    X, Y, Q = (arrays[f"Pipe_{k}.npy"] for k in "XYQ")
    for data, indices in ((train, [0, 1, 2]), (test, [3, 4])):  # as the reference's [:1200][-200:]
        assert len(data) == len(indices)
        for (x, y), s in zip(_samples(data), indices):
            np.testing.assert_allclose(x, np.stack([X[s].ravel(), Y[s].ravel()], 1), rtol=1e-6)
            np.testing.assert_allclose(y[:, 0], Q[s, 0].ravel(), rtol=1e-6)  # velocity is channel 0
    meta = test.meta
    assert meta.name == "pipe" and meta.output_channels == ["velocity"] and meta.normalize_inputs == [True, True]
    assert meta.grid_shape == list(X.shape[1:])
    train_xy = np.concatenate([np.stack([X[s].ravel(), Y[s].ravel()], 1) for s in range(3)])
    np.testing.assert_allclose(test.x_normalizer.mean.numpy(), train_xy.mean(0), rtol=1e-5)
    np.testing.assert_allclose(test.x_normalizer.std.numpy(), train_xy.std(0), rtol=1e-5)
    _assert_output_normaliser_fitted_on(test, [Q[s, 0].reshape(-1, 1) for s in range(3)])


def test_pipe_on_the_published_129_by_129_grid(tmp_path):
    _write_grid_files(tmp_path / "pipe", (pipe.X_FILE, pipe.Y_FILE, pipe.Q_FILE), 3, pipe.PUBLISHED_GRID, 3)
    pipe.prepare(tmp_path / "pipe", tmp_path / "out", num_train=2, num_test=1)
    train, _ = _splits(tmp_path / "out")
    assert train.meta.grid_shape == [129, 129] and len(train.x) == 2 * 129 * 129


@pytest.fixture
def airfoil_files(tmp_path):
    names = (airfoil.X_FILE, airfoil.Y_FILE, airfoil.Q_FILE)
    arrays = _write_grid_files(tmp_path / "naca", names, 4, (6, 3), 5)
    return tmp_path / "naca", dict(zip(names, arrays))


def test_geofno_missing_file_is_named(airfoil_files, tmp_path):
    folder, _ = airfoil_files
    (folder / airfoil.Q_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="NACA_Cylinder_Q.npy"):
        airfoil.prepare(folder, tmp_path / "out", num_train=2, num_test=1)


def test_geofno_shape_mismatch_names_the_file(airfoil_files, tmp_path):
    folder, arrays = airfoil_files
    np.save(folder / airfoil.Q_FILE, arrays[airfoil.Q_FILE][:, :, :5])  # grid 6×3 vs 5×3
    with pytest.raises(ValueError, match=r"NACA_Cylinder_Q\.npy.*\[4, C, 6, 3\]"):
        airfoil.prepare(folder, tmp_path / "out", num_train=2, num_test=1)
    np.save(folder / airfoil.Q_FILE, arrays[airfoil.Q_FILE][:, :4])  # no channel 4
    with pytest.raises(ValueError, match=r"NACA_Cylinder_Q\.npy.*4 channels; channel 4"):
        airfoil.prepare(folder, tmp_path / "out", num_train=2, num_test=1)


def test_geofno_nan_names_file_and_sample_and_unused_data_is_not_checked(airfoil_files, tmp_path):
    folder, arrays = airfoil_files
    q = arrays[airfoil.Q_FILE].copy()
    q[1, 2, 0, 0] = np.nan  # channel 2 is not used: fine
    q[3, 4, 0, 0] = np.nan  # sample 3 is beyond num_train + num_test: fine
    np.save(folder / airfoil.Q_FILE, q)
    airfoil.prepare(folder, tmp_path / "ok", num_train=2, num_test=1)
    q[2, 4, 1, 1] = np.nan
    np.save(folder / airfoil.Q_FILE, q)
    with pytest.raises(ValueError, match=r"NACA_Cylinder_Q\.npy.*sample\(s\) \[2\] \(channel 4\).*NaN"):
        airfoil.prepare(folder, tmp_path / "bad", num_train=2, num_test=1)


def test_geofno_too_few_samples_is_an_error(airfoil_files, tmp_path):
    folder, _ = airfoil_files
    with pytest.raises(ValueError, match=r"NACA_Cylinder_X\.npy.* holds 4 samples"):
        airfoil.prepare(folder, tmp_path / "out", num_train=4, num_test=1)


# ----------------------------------------------------------------------------- DrivAerML


def _write_run(path, n, seed, fields=None, coords=None):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    xyz = rng.uniform(XYZ_LO, XYZ_HI, size=(n, 3)).astype(np.float32) if coords is None else coords
    f = (rng.normal(-230, 270, size=(n, 4)).astype(np.float32)) if fields is None else fields
    np.savez(path, surface_mesh_centers=xyz, surface_fields=f)
    return xyz, f


XYZ_LO, XYZ_HI = np.array(drivaerml.XYZ_MIN), np.array(drivaerml.XYZ_MAX)


def test_drivaerml_tarball_split_by_folders_box_map_and_reference_normaliser(tmp_path):
    members = drivaerml_tarball(tmp_path / "d.tar.gz", train_runs=(1, 2, 10), test_runs=(3,), points=16)
    safe_extract(tmp_path / "d.tar.gz", tmp_path / "x")
    folder = tmp_path / "x" / "drivaerml_surface_presampled_40k"
    drivaerml.prepare(folder, tmp_path / "out")
    train, test = _splits(tmp_path / "out")
    runs = {m.split("/")[-1]: np.load(tmp_path / "x" / m) for m in members}
    for data, names in ((train, ["run_1.npz", "run_2.npz", "run_10.npz"]), (test, ["run_3.npz"])):
        assert len(data) == len(names)  # ordered by run number
        for (x, y), name in zip(_samples(data), names):
            xyz, fields = runs[name]["surface_mesh_centers"], runs[name]["surface_fields"]
            np.testing.assert_allclose(x, (xyz - XYZ_LO) / (XYZ_HI - XYZ_LO), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(y[:, 0], fields[:, 0], rtol=1e-6)  # pressure, unscaled
    meta = train.meta
    assert meta.input_channels == ["x", "y", "z"] and meta.output_channels == ["pressure"]
    assert meta.normalize_inputs == [False, False, False] and meta.output_units == ["Pa"]
    assert "train/ and test/ folders" in meta.source and "run_10" in meta.source
    assert "229.845718" in meta.description and "[0, 1]^3" in meta.description
    for data in (train, test):  # the model sees (p + 229.845718) / 269.598572
        np.testing.assert_allclose(data.y_normalizer.mean.numpy(), [-229.845718], rtol=1e-7)
        np.testing.assert_allclose(data.y_normalizer.std.numpy(), [269.598572], rtol=1e-7)
        np.testing.assert_array_equal(data.x_normalizer.std.numpy(), [1, 1, 1])


def test_drivaerml_splits_file_accepts_numbers_ids_and_file_names(tmp_path):
    sizes = {1: 10, 2: 7, 3: 12, 4: 5, 5: 9}  # point counts differ between runs
    runs = {i: _write_run(tmp_path / "runs" / f"run_{i}.npz", n, i) for i, n in sizes.items()}
    (tmp_path / "runs" / "train_test_splits.json").write_text(json.dumps(
        {"train": [4, "run_1", "run_2.npz"], "test": ["run_5"], "val": [3], "hidden_test": []}))
    drivaerml.prepare(tmp_path / "runs", tmp_path / "out", pressure_normalizer="train")
    train, test = _splits(tmp_path / "out")
    assert [len(x) for x, _ in _samples(train)] == [sizes[1], sizes[2], sizes[4]]
    assert [len(x) for x, _ in _samples(test)] == [sizes[5]]  # run 3 ("val") is in neither
    assert not train.fixed_size and "train_test_splits.json" in train.meta.source
    _assert_output_normaliser_fitted_on(train, [runs[i][1][:, :1] for i in (1, 2, 4)])
    with h5py.File(tmp_path / "out" / "train.h5") as f:
        assert f.attrs["points_per_sample"] == -1


def test_drivaerml_explicit_splits_file_overrides_the_folders(tmp_path):
    folder = tmp_path / "d"
    for split, runs in (("train", (1, 2)), ("test", (3,))):
        for i in runs:
            _write_run(folder / split / f"run_{i}.npz", 8, i)
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": [3, 1], "test": [2]}))
    drivaerml.prepare(folder, tmp_path / "out", splits_file=splits)
    train, test = _splits(tmp_path / "out")
    assert len(train) == 2 and len(test) == 1
    np.testing.assert_allclose(test.sample(0)[1][:, 0], np.load(folder / "train" / "run_2.npz")["surface_fields"][:, 0])


def test_drivaerml_bad_inputs_name_the_run(tmp_path):
    folder = tmp_path / "d"
    _write_run(folder / "train" / "run_1.npz", 8, 1)
    _write_run(folder / "test" / "run_2.npz", 8, 2)
    (tmp_path / "s.json").write_text(json.dumps({"train": [1, 7], "test": [2]}))
    with pytest.raises(FileNotFoundError, match=r"s\.json lists train run\(s\) \[7\]"):
        drivaerml.prepare(folder, tmp_path / "o1", splits_file=tmp_path / "s.json")
    (tmp_path / "s.json").write_text(json.dumps({"train": [1]}))
    with pytest.raises(ValueError, match=r"key 'test' must be a non-empty list"):
        drivaerml.prepare(folder, tmp_path / "o1", splits_file=tmp_path / "s.json")

    np.savez(folder / "test" / "run_2.npz", surface_mesh_centers=np.zeros((8, 3)), fields=np.zeros((8, 4)))
    with pytest.raises(ValueError, match=r"run_2\.npz: no array\(s\) \['surface_fields'\]; arrays present: \['fields'"):
        drivaerml.prepare(folder, tmp_path / "o2")
    _write_run(folder / "test" / "run_2.npz", 8, 2, fields=np.zeros((8, 3), np.float32))
    with pytest.raises(ValueError, match=r"run_2\.npz: 'surface_fields' has shape \(8, 3\)"):
        drivaerml.prepare(folder, tmp_path / "o3")
    fields = np.zeros((8, 4), np.float32)
    fields[5, 0] = np.nan
    _write_run(folder / "test" / "run_2.npz", 8, 2, fields=fields)
    with pytest.raises(ValueError, match=r"run_2\.npz: .*NaN"):
        drivaerml.prepare(folder, tmp_path / "o4")
    (folder / "test" / "run_2.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"no run_<i>\.npz in a test/ folder"):
        drivaerml.prepare(folder, tmp_path / "o5")


# ----------------------------------------------------------------------------- LPBF


def _write_case(path, n, seed, drop=None, nan=False):
    """One sample as make_dataset writes it (np.savez_compressed of the PyG graph's arrays)."""
    rng = np.random.default_rng(seed)
    pos = np.column_stack([rng.uniform(-30, 30, n), rng.uniform(-30, 30, n), rng.uniform(-25, 60, n)])
    disp = rng.normal(0, 0.1, size=(n, 3))
    if nan:
        disp[n // 2, 2] = np.nan
    arrays = {
        "edge_index": np.stack([np.arange(n - 1), np.arange(1, n)]).astype(np.int64),
        "elems": rng.integers(0, n, size=(max(1, n // 8), 8)).astype(np.int32),
        "temp": rng.uniform(25, 300, size=(n, 1)).astype(np.float32),
        "disp": disp.astype(np.float32),
        "vmstr": rng.uniform(0, 900, size=(n, 1)).astype(np.float32),
        "pos": pos.astype(np.float32),
        "_metadata": np.array([json.dumps({"metadata": {"case_name": path.stem[10:], "zmax": None,
                                                        "time_steps": 1}})], dtype=object),
    }
    if drop:
        del arrays[drop]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return arrays


def _write_index(path, root, files):
    rows = []
    for f in files:
        with np.load(root / f, allow_pickle=True) as data:
            rows.append({"case_id": f.split("/")[-1][:-4], "file": f, "num_nodes": int(data["pos"].shape[0]),
                         "num_edges": int(data["edge_index"].shape[1]),
                         "metadata": json.dumps(json.loads(data["_metadata"][0])["metadata"])})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture
def lpbf_repo(tmp_path):
    """A miniature snapshot of vedantpuri/LPBF_FLARE: train/, test/ npz and data/ index tables."""
    root = tmp_path / "LPBF_FLARE"
    cases = {"train": ["case00007_21232_dae006f4_0", "case00002_33084_344fec27_2", "case00011_41508_c18d22f2_1"],
             "test": ["case00004_101635_11b839a3_5", "case00000_24077_ba015383_4"]}
    sizes = iter([40, 25, 33, 18, 29])
    arrays = {}
    for split, names in cases.items():
        for name in names:
            key = f"{split}/{name}.npz"
            arrays[key] = _write_case(root / key, next(sizes), seed=len(arrays))
        _write_index(root / "data" / f"{split}-00000-of-00001.parquet", root,
                     sorted(f"{split}/{n}.npz" for n in names))  # the index lists files sorted, as built
    return root, arrays


def test_lpbf_index_split_scaling_and_z_displacement(lpbf_repo, tmp_path):
    root, arrays = lpbf_repo
    lpbf_published.prepare(root, tmp_path / "out")
    train, test = _splits(tmp_path / "out")
    expected = {s: sorted(k for k in arrays if k.startswith(s + "/")) for s in ("train", "test")}
    for data, split in ((train, "train"), (test, "test")):
        assert len(data) == len(expected[split])
        for (x, y), key in zip(_samples(data), expected[split]):
            np.testing.assert_allclose(x, arrays[key]["pos"] / np.array([30, 30, 60], np.float32), rtol=1e-6)
            np.testing.assert_allclose(y[:, 0], arrays[key]["disp"][:, 2], rtol=1e-6)
    meta = train.meta
    assert meta.name == "lpbf" and meta.output_channels == ["z_displacement"] and meta.output_units == ["mm"]
    assert meta.input_units == ["30 mm", "30 mm", "60 mm"] and meta.normalize_inputs == [False] * 3
    assert "index tables" in meta.source and not train.fixed_size
    _assert_output_normaliser_fitted_on(test, [arrays[k]["disp"][:, 2:] for k in expected["train"]])


def test_lpbf_follows_the_index_order_and_membership(lpbf_repo, tmp_path):
    root, arrays = lpbf_repo
    moved = "train/case00011_41508_c18d22f2_1.npz"
    order = [moved, "test/case00004_101635_11b839a3_5.npz"]  # a train-folder file listed as test
    _write_index(root / "data" / "test-00000-of-00001.parquet", root, order)
    _write_index(root / "data" / "train-00000-of-00001.parquet", root,
                 ["train/case00007_21232_dae006f4_0.npz", "train/case00002_33084_344fec27_2.npz"])
    lpbf_published.prepare(root, tmp_path / "out")
    train, test = _splits(tmp_path / "out")
    assert [len(x) for x, _ in _samples(test)] == [len(arrays[k]["pos"]) for k in order]
    assert [len(x) for x, _ in _samples(train)] == [40, 25]


def test_lpbf_without_index_uses_the_folders_found_at_any_depth(lpbf_repo, tmp_path):
    root, arrays = lpbf_repo
    nested = tmp_path / "extracted" / "LPBF" / "LPBF"  # as LPBF.tar.gz unpacks under the download folder
    nested.parent.mkdir(parents=True)
    (root / "train").rename(nested.parent / "train_tmp")
    nested.mkdir()
    (nested.parent / "train_tmp").rename(nested / "train")
    (root / "test").rename(nested / "test")
    lpbf_published.prepare(tmp_path / "extracted", tmp_path / "out")  # no data/ index here
    train, test = _splits(tmp_path / "out")
    assert "train/ and test/ folders" in train.meta.source
    assert [len(x) for x, _ in _samples(train)] == [25, 40, 33]  # sorted by file name
    # the index tables elsewhere still resolve "train/<case>.npz" against the nested copy
    lpbf_published.prepare(tmp_path / "extracted", tmp_path / "out2", index_dir=root / "data")
    assert [len(x) for x, _ in _samples(read_split(tmp_path / "out2" / "test.h5"))] == [29, 18]


def test_lpbf_bad_inputs_name_the_file(lpbf_repo, tmp_path):
    root, _ = lpbf_repo
    bad = root / "test" / "case00000_24077_ba015383_4.npz"
    _write_case(bad, 29, 3, drop="disp")
    with pytest.raises(ValueError, match=r"case00000_24077_ba015383_4\.npz: no array\(s\) \['disp'\]; arrays present"):
        lpbf_published.prepare(root, tmp_path / "o1")
    _write_case(bad, 29, 3, nan=True)
    with pytest.raises(ValueError, match=r"case00000_24077_ba015383_4\.npz: .*NaN"):
        lpbf_published.prepare(root, tmp_path / "o2")
    _write_case(bad, 30, 3)  # the index says 29 nodes
    with pytest.raises(ValueError, match=r"case00000_24077_ba015383_4\.npz: holds 30 nodes .* num_nodes = 29"):
        lpbf_published.prepare(root, tmp_path / "o3")
    bad.unlink()
    with pytest.raises(FileNotFoundError, match=r"test-00000-of-00001\.parquet row 0 names 'test/case00000"):
        lpbf_published.prepare(root, tmp_path / "o4")
