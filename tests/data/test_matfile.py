"""Tests for flare.data.matfile.load_mat (MATLAB v5 and v7.3 files)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io

from flare.data.darcy import read_fno_mat
from flare.data.matfile import load_mat


def _write_v73(path, variables: dict[str, np.ndarray]) -> None:
    """Write a file the way MATLAB's ``save -v7.3`` lays it out.

    MATLAB writes its column-major memory unchanged, so an ``S×R×C`` MATLAB array becomes an
    HDF5 dataset of shape ``C×R×S`` (all axes reversed). MATLAB also reserves a 512-byte userblock
    with a text header in front of the HDF5 data; reproduced here to show it is handled.
    """
    with h5py.File(path, "w", userblock_size=512) as handle:
        for name, value in variables.items():
            dataset = handle.create_dataset(name, data=np.ascontiguousarray(value.T))
            dataset.attrs["MATLAB_class"] = np.bytes_("double")
    with open(path, "r+b") as raw:
        raw.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .")


def _matlab_like(shape) -> np.ndarray:
    """Distinct values so any axis mix-up shows."""
    return np.arange(np.prod(shape), dtype=np.float64).reshape(shape) / 7.0


def test_v5_file(tmp_path):
    path = tmp_path / "v5.mat"
    coeff, sol = _matlab_like((3, 4, 5)), -_matlab_like((3, 4, 5))
    scipy.io.savemat(path, {"coeff": coeff, "sol": sol, "other": np.ones((2, 2))})
    out = load_mat(path, ["coeff", "sol"])
    assert set(out) == {"coeff", "sol"}
    np.testing.assert_array_equal(out["coeff"], coeff)
    np.testing.assert_array_equal(out["sol"], sol)
    assert load_mat(str(path), "other")["other"].shape == (2, 2)  # a single name as a string works too


def test_v73_file_axis_order(tmp_path):
    path = tmp_path / "v73.mat"  # the extension says nothing about the version
    coeff, sol = _matlab_like((3, 4, 5)), _matlab_like((3, 4, 5)) + 1.0
    _write_v73(path, {"coeff": coeff, "sol": sol})
    assert h5py.is_hdf5(path)
    with h5py.File(path, "r") as handle:
        assert handle["coeff"].shape == (5, 4, 3)  # as stored: reversed
    out = load_mat(path, ["coeff", "sol"])
    assert out["coeff"].shape == (3, 4, 5)
    np.testing.assert_array_equal(out["coeff"], coeff)
    np.testing.assert_array_equal(out["sol"], sol)
    assert out["coeff"].flags.c_contiguous


def test_v73_complex_compound(tmp_path):
    path = tmp_path / "cplx.mat"
    z = _matlab_like((2, 3)) + 1j * _matlab_like((2, 3))[::-1]
    stored = np.empty((3, 2), dtype=[("real", "<f8"), ("imag", "<f8")])
    stored["real"], stored["imag"] = z.real.T, z.imag.T
    with h5py.File(path, "w") as handle:
        handle["z"] = stored
    np.testing.assert_array_equal(load_mat(path, ["z"])["z"], z)


def test_fno_reader_agrees_across_versions(tmp_path):
    coeff, sol = _matlab_like((4, 11, 11)), _matlab_like((4, 11, 11)) * 2
    v5, v73 = tmp_path / "a.mat", tmp_path / "b.mat"
    scipy.io.savemat(v5, {"coeff": coeff, "sol": sol})
    _write_v73(v73, {"coeff": coeff, "sol": sol})
    for a, b in zip(read_fno_mat(v5, subsample=5, num_samples=3), read_fno_mat(v73, subsample=5, num_samples=3)):
        assert a.shape == (3, 3, 3)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("version", ["v5", "v73"])
def test_missing_key_names_key_file_and_present_keys(tmp_path, version):
    path = tmp_path / f"keys_{version}.mat"
    variables = {"coeff": np.ones((2, 3, 3)), "Kcoeff": np.ones((2, 2))}
    if version == "v5":
        scipy.io.savemat(path, variables)
    else:
        _write_v73(path, variables)
    with pytest.raises(KeyError) as err:
        load_mat(path, ["coeff", "sol"])
    message = str(err.value)
    assert "'sol'" in message
    assert str(path) in message
    assert "coeff" in message and "Kcoeff" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "x.mat"
    with pytest.raises(FileNotFoundError, match="x.mat"):
        load_mat(path, ["coeff"])


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.mat"
    path.write_bytes(b"this is not a MATLAB file at all\n" * 20)
    with pytest.raises(ValueError, match="garbage.mat"):
        load_mat(path, ["coeff"])


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mat"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.mat"):
        load_mat(path, ["coeff"])


def test_truncated_v5_file(tmp_path):
    whole = tmp_path / "whole.mat"
    scipy.io.savemat(whole, {"coeff": _matlab_like((3, 8, 8)), "sol": _matlab_like((3, 8, 8))})
    data = whole.read_bytes()
    path = tmp_path / "cut.mat"
    path.write_bytes(data[: len(data) // 3])  # ends inside the first variable
    with pytest.raises(ValueError, match="cut.mat"):
        load_mat(path, ["coeff", "sol"])


def test_truncated_v73_file(tmp_path):
    whole = tmp_path / "whole73.mat"
    _write_v73(whole, {"coeff": _matlab_like((3, 8, 8)), "sol": _matlab_like((3, 8, 8))})
    data = whole.read_bytes()
    path = tmp_path / "cut73.mat"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut73.mat"):
        load_mat(path, ["coeff", "sol"])
