"""Tests for the embedded Darcy-flow generator (flare.data.darcy)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.io

from flare.data import darcy
from flare.data.darcy import (
    gaussian_random_field,
    generate,
    generate_file,
    mat_filename,
    read_fno_mat,
    solve,
    threshold_coefficient,
    write_fno_mat,
)

PI = np.pi
MAT_HEADER_KEYS = {"__header__", "__version__", "__globals__"}


# ----------------------------------------------------------------------------- solver


def _manufactured(r: int):
    """Smooth positive a, u = sin(πx) sin(πy), and f = -∇·(a∇u) computed by hand."""
    x = np.linspace(0.0, 1.0, r)
    X, Y = np.meshgrid(x, x, indexing="ij")  # axis 0 is x, axis 1 is y
    a = 1.0 + X**2 + 0.5 * np.sin(2 * PI * Y) + X * Y  # >= 0.5, not symmetric in x <-> y
    a_x = 2 * X + Y
    a_y = PI * np.cos(2 * PI * Y) + X
    u = np.sin(PI * X) * np.sin(PI * Y)
    u_x = PI * np.cos(PI * X) * np.sin(PI * Y)
    u_y = PI * np.sin(PI * X) * np.cos(PI * Y)
    # -∇·(a∇u) = -(a_x u_x + a_y u_y) - a Δu, and Δu = -2π² u.
    f = -(a_x * u_x + a_y * u_y) + 2 * PI**2 * a * u
    return a, f, u


def test_solve_converges_at_second_order():
    errors = []
    for r in (17, 33, 65, 129):
        a, f, u_exact = _manufactured(r)
        errors.append(np.abs(solve(a, f) - u_exact).max())
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))  # h halves at each step
    assert np.all((orders > 1.8) & (orders < 2.2)), (errors, orders)


def test_solve_poisson_unit_square():
    # -Δu = 1, u = 0 on ∂[0,1]²: max at the centre, u_max = 0.07367135... (series solution).
    r = 129
    u = solve(np.ones((r, r)), 1.0)
    assert abs(u.max() - 0.0736713533) / 0.0736713533 < 0.01
    assert np.unravel_index(np.argmax(u), u.shape) == (r // 2, r // 2)
    np.testing.assert_allclose(u, u.T, atol=1e-13)
    np.testing.assert_allclose(u, u[::-1, :], atol=1e-13)
    np.testing.assert_allclose(u, u[:, ::-1], atol=1e-13)
    assert np.all(u[1:-1, 1:-1] > 0)
    for edge in (u[0], u[-1], u[:, 0], u[:, -1]):
        assert np.all(edge == 0)


def test_solve_matches_stated_stencil():
    """The assembled operator is the 5-point stencil with arithmetic-mean face coefficients."""
    rng = np.random.default_rng(7)
    r = 7
    a = rng.uniform(1.0, 10.0, size=(r, r))
    f = rng.normal(size=(r, r))
    u = solve(a, f)
    h = 1.0 / (r - 1)
    for i in range(1, r - 1):
        for j in range(1, r - 1):
            flux = 0.0
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                face = 0.5 * (a[i, j] + a[i + di, j + dj])
                flux += face * (u[i, j] - u[i + di, j + dj])
            assert flux / h**2 == pytest.approx(f[i, j], rel=1e-9, abs=1e-9)


def test_solve_scalar_and_array_source_agree_and_smallest_grid():
    rng = np.random.default_rng(3)
    a = threshold_coefficient(rng.normal(size=(9, 9)))
    np.testing.assert_allclose(solve(a, 2.5), solve(a, np.full((9, 9), 2.5)), rtol=1e-14)
    # r = 3: one unknown, 4 faces of coefficient 1 -> 4u/h² = f with h = 1/2.
    u = solve(np.ones((3, 3)), 1.0)
    assert u[1, 1] == pytest.approx(1.0 / 16.0)


@pytest.mark.parametrize(
    "a, f, match",
    [
        (np.ones((4, 5)), 1.0, "square"),
        (np.ones(9), 1.0, "square"),
        (np.ones((2, 2)), 1.0, "at least 3"),
        (np.where(np.eye(5) > 0, np.nan, 1.0), 1.0, "non-finite"),
        (np.where(np.eye(5) > 0, np.inf, 1.0), 1.0, "non-finite"),
        (np.where(np.eye(5) > 0, 0.0, 1.0), 1.0, "positive"),
        (-np.ones((5, 5)), 1.0, "positive"),
        (np.ones((5, 5)), np.ones((4, 4)), "shape"),
        (np.ones((5, 5)), np.ones(5), "shape"),
        (np.ones((5, 5)), np.nan, "non-finite"),
    ],
)
def test_solve_rejects_bad_input(a, f, match):
    with pytest.raises(ValueError, match=match):
        solve(a, f)


# ----------------------------------------------------------------------------- random field


def _cosine_basis(r: int, n: np.ndarray) -> np.ndarray:
    """Orthonormal DCT-II basis evaluated at (possibly out-of-range) sample indices n: [len(n), r]."""
    k = np.arange(r)
    weight = np.where(k == 0, np.sqrt(1.0 / r), np.sqrt(2.0 / r))
    return weight * np.cos(PI * k[None, :] * (2 * n[:, None] + 1) / (2 * r))


def test_grf_is_the_recipe_cosine_series():
    """field = Σ_k L[k] φ_k1(n1) φ_k2(n2) with L = R·τ^(α-1)(π²|k|²+τ²)^(-α/2)·ξ, L[0,0] = 0."""
    r, alpha, tau = 16, 2.0, 3.0
    field = gaussian_random_field(r, np.random.default_rng(11), alpha=alpha, tau=tau)
    xi = np.random.default_rng(11).standard_normal((r, r))  # the same draws
    k1, k2 = np.meshgrid(np.arange(r), np.arange(r), indexing="ij")
    spectrum = r * tau ** (alpha - 1) * (PI**2 * (k1**2 + k2**2) + tau**2) ** (-alpha / 2) * xi
    spectrum[0, 0] = 0.0
    basis = _cosine_basis(r, np.arange(r))
    np.testing.assert_allclose(field, basis @ spectrum @ basis.T, atol=1e-12)
    assert field.shape == (r, r) and field.dtype == np.float64


def test_grf_basis_satisfies_discrete_neumann_condition():
    """Every basis function is even about the half-node boundaries n = -1/2 and n = R - 1/2, so the
    ghost values equal the boundary values and the centred boundary difference vanishes."""
    r = 12
    ghost_lo, first = _cosine_basis(r, np.array([-1, 0]))
    last, ghost_hi = _cosine_basis(r, np.array([r - 1, r]))
    np.testing.assert_allclose(ghost_lo, first, atol=1e-14)
    np.testing.assert_allclose(ghost_hi, last, atol=1e-14)
    # And not merely constant: the basis varies in the interior.
    assert np.abs(_cosine_basis(r, np.arange(r))[:, 1:]).max() > 0.1


def test_grf_mean_and_threshold_values():
    rng = np.random.default_rng(0)
    for _ in range(3):
        field = gaussian_random_field(32, rng)
        assert abs(field.mean()) < 1e-12  # the constant mode is removed
        assert field.std() > 1e-2
        a = threshold_coefficient(field)
        assert set(np.unique(a)) == {3.0, 12.0}
        np.testing.assert_array_equal(a == 12.0, field >= 0)


def test_grf_determinism():
    f1 = gaussian_random_field(20, np.random.default_rng(5))
    f2 = gaussian_random_field(20, np.random.default_rng(5))
    f3 = gaussian_random_field(20, np.random.default_rng(6))
    np.testing.assert_array_equal(f1, f2)
    assert not np.allclose(f1, f3)


def test_threshold_custom_levels():
    a = threshold_coefficient(np.array([[-1.0, 0.0], [2.0, -0.5]]), high=5.0, low=1.0)
    np.testing.assert_array_equal(a, [[1.0, 5.0], [5.0, 1.0]])


# ----------------------------------------------------------------------------- generation and files


def test_generate_shapes_and_determinism():
    coeff, sol = generate(12, 3, seed=1)
    assert coeff.shape == sol.shape == (3, 12, 12)
    assert coeff.dtype == sol.dtype == np.float64
    assert set(np.unique(coeff)) <= {3.0, 12.0}
    assert np.all(sol[:, 0, :] == 0) and np.all(sol[:, :, -1] == 0)
    assert np.all(sol[:, 1:-1, 1:-1] > 0)  # f = 1 > 0 and a > 0: maximum principle
    coeff2, sol2 = generate(12, 3, seed=1)
    np.testing.assert_array_equal(coeff, coeff2)
    np.testing.assert_array_equal(sol, sol2)
    coeff3, _ = generate(12, 3, seed=2)
    assert not np.array_equal(coeff, coeff3)
    # One generator feeds the samples in order: a shorter run is a prefix.
    coeff1, sol1 = generate(12, 1, seed=1)
    np.testing.assert_array_equal(coeff1[0], coeff[0])
    np.testing.assert_array_equal(sol1[0], sol[0])


def test_generate_progress_bar_goes_to_stderr(capsys):
    generate(8, 2, seed=0, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "2/2" in captured.err


def test_mat_filename():
    assert mat_filename(421, 1024, 1) == "piececonst_r421_N1024_smooth1.mat"


def test_write_read_round_trip(tmp_path):
    coeff, sol = generate(21, 3, seed=4)
    path = tmp_path / mat_filename(21, 3, 1)
    write_fno_mat(path, coeff, sol)
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind

    raw = scipy.io.loadmat(path)
    assert set(raw) == {"coeff", "sol"} | MAT_HEADER_KEYS
    np.testing.assert_array_equal(raw["coeff"], coeff)
    np.testing.assert_array_equal(raw["sol"], sol)
    assert raw["coeff"].dtype == np.float64

    c, s = read_fno_mat(path)
    assert c.dtype == s.dtype == np.float32 and c.shape == (3, 21, 21)
    np.testing.assert_array_equal(c, coeff.astype(np.float32))
    np.testing.assert_array_equal(s, sol.astype(np.float32))

    c5, s5 = read_fno_mat(str(path), subsample=5, num_samples=2)
    assert c5.shape == s5.shape == (2, 5, 5)
    np.testing.assert_array_equal(s5, sol[:2, ::5, ::5].astype(np.float32))
    assert c5.flags.c_contiguous


def test_generate_file(tmp_path):
    path = tmp_path / "d.mat"
    generate_file(path, 9, 2, seed=3, progress=False)
    coeff, sol = generate(9, 2, seed=3)
    c, s = read_fno_mat(path)
    np.testing.assert_array_equal(c, coeff.astype(np.float32))
    np.testing.assert_array_equal(s, sol.astype(np.float32))


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "out.mat"
    coeff, sol = generate(6, 1, seed=0)

    def broken_savemat(handle, *args, **kwargs):
        handle.write(b"MATLAB 5.0 MAT-file, partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(darcy.scipy.io, "savemat", broken_savemat)
    with pytest.raises(KeyboardInterrupt):
        write_fno_mat(path, coeff, sol)
    assert os.listdir(tmp_path) == []

    # An existing file survives a failed overwrite untouched.
    monkeypatch.undo()
    write_fno_mat(path, coeff, sol)
    before = path.read_bytes()
    monkeypatch.setattr(darcy.scipy.io, "savemat", broken_savemat)
    with pytest.raises(KeyboardInterrupt):
        write_fno_mat(path, 2 * coeff, sol)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.mat"]


def test_write_rejects_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_fno_mat(tmp_path / "x.mat", np.ones((2, 4, 4)), np.ones((2, 5, 5)))
    with pytest.raises(ValueError, match="shape"):
        write_fno_mat(tmp_path / "x.mat", np.ones((4, 4)), np.ones((4, 4)))
    assert os.listdir(tmp_path) == []


def test_read_fno_mat_errors_name_the_file(tmp_path):
    path = tmp_path / "small.mat"
    write_fno_mat(path, *generate(5, 2, seed=0))
    with pytest.raises(ValueError, match="small.mat"):
        read_fno_mat(path, num_samples=3)
    with pytest.raises(ValueError, match="small.mat"):
        read_fno_mat(path, subsample=0)
    with pytest.raises(FileNotFoundError, match="absent.mat"):
        read_fno_mat(tmp_path / "absent.mat")
    other = tmp_path / "other.mat"
    scipy.io.savemat(other, {"coeff": np.ones((2, 5, 5))})
    with pytest.raises(KeyError, match="other.mat"):
        read_fno_mat(other)


def test_generate_with_worker_processes_equals_sequential():
    a1, u1 = darcy.generate(9, 5, seed=3)
    a2, u2 = darcy.generate(9, 5, seed=3, workers=2)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(u1, u2)
