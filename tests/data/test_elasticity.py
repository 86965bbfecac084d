"""Tests for the embedded elasticity generator (flare.data.elasticity)."""
from __future__ import annotations

import os

import numpy as np
import pytest


from flare.data import elasticity as el  # noqa: E402
from flare.data.format import read_split  # noqa: E402

SEED = 7
NUM_SAMPLES = 6


@pytest.fixture(scope="module")
def generated():
    """Six generated samples (about 0.5 s each): ``(sigma [972, 6], xy [972, 2, 6])``."""
    return el.generate(NUM_SAMPLES, seed=SEED)


def _wavy_void(theta):
    return 0.3 + 0.05 * np.cos(3 * theta) + 0.03 * np.sin(5 * theta + 1.0)


def _circle(radius):
    return lambda theta: np.full_like(theta, radius)


# ----------------------------------------------------------------------------- geometry


def test_void_radius_stays_within_geofno_bounds_and_is_seeded():
    theta = np.linspace(0.0, 2 * np.pi, 721)
    radii = np.stack([el.random_void_radius(np.random.default_rng(s))(theta) for s in range(50)])
    assert radii.min() > 0.2 and radii.max() < 0.4
    assert radii.std(axis=1).max() > 0.005  # not all circles
    np.testing.assert_allclose(radii[:, 0], radii[:, -1], atol=1e-12)  # periodic in θ
    again = el.random_void_radius(np.random.default_rng(3))(theta)
    np.testing.assert_array_equal(again, radii[3])


def test_void_radius_rejects_a_void_that_leaves_the_cell():
    with pytest.raises(ValueError, match="inside the unit cell"):
        el.random_void_radius(np.random.default_rng(0), mean_radius=0.4, radius_spread=0.15)


def test_fitted_mesh_is_conforming_with_positive_areas():
    mesh = el.fitted_mesh(_wavy_void, 36, 27)
    p, t = mesh.p, mesh.t
    assert p.shape == (2, 36 * 27) and t.shape == (3, 2 * 36 * 26)
    assert len(np.unique(np.round(p.T, 12), axis=0)) == p.shape[1]  # no duplicate nodes
    a, b, c = p[:, t[0]], p[:, t[1]], p[:, t[2]]
    area = 0.5 * ((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))
    assert area.min() > 0
    # Conforming: every interior edge is shared by exactly two triangles, boundary edges by one.
    interior = np.setdiff1d(np.arange(mesh.facets.shape[1]), mesh.boundary_facets())
    assert (mesh.f2t[1, interior] >= 0).all()
    # The triangles tile the cell minus the (polygonal) void exactly.
    ring = p[:, :36]
    void_area = 0.5 * np.sum(ring[0] * np.roll(ring[1], -1) - np.roll(ring[0], -1) * ring[1])
    assert area.sum() == pytest.approx(1.0 - void_area, rel=1e-12)


def test_fitted_mesh_boundary_tags_cover_the_boundary_once():
    mesh = el.fitted_mesh(_wavy_void, 36, 27)
    tags = mesh.boundaries
    assert set(tags) == {"bottom", "top", "left", "right", "void"}
    tagged = np.concatenate([tags[name] for name in tags])
    assert len(tagged) == len(np.unique(tagged))
    np.testing.assert_array_equal(np.sort(tagged), np.sort(mesh.boundary_facets()))
    mid = mesh.p[:, mesh.facets].mean(axis=1)
    assert np.all(mid[1, tags["bottom"]] == 0) and np.all(mid[1, tags["top"]] == 1)
    assert np.all(mid[0, tags["left"]] == 0) and np.all(mid[0, tags["right"]] == 1)
    assert len(tags["void"]) == 36 and all(len(tags[s]) == 9 for s in ("bottom", "top", "left", "right"))
    theta = np.arctan2(mid[1, tags["void"]] - 0.5, mid[0, tags["void"]] - 0.5)
    rho = np.hypot(mid[0, tags["void"]] - 0.5, mid[1, tags["void"]] - 0.5)
    assert np.all(np.abs(rho - _wavy_void(theta)) < 0.01)  # chords of the void's boundary


def test_fitted_mesh_rejects_a_void_reaching_the_cell_edge():
    with pytest.raises(ValueError, match="inside the unit cell"):
        el.fitted_mesh(_circle(0.49), 36, 27)


def test_sample_points_are_972_mesh_nodes_in_the_solid():
    radius = el.random_void_radius(np.random.default_rng(1))
    points = el.sample_points(radius)
    assert points.shape == (972, 2)
    rays, levels = el.SAMPLE_RAYS, el.SAMPLE_LEVELS
    mesh = el.fitted_mesh(radius, 2 * rays, 2 * (levels - 1) + 1)
    picked = mesh.p[:, el.sample_indices(rays, levels, 2)].T
    np.testing.assert_allclose(picked, points, atol=1e-13)
    assert np.all((points >= 0) & (points <= 1))
    rel = points - 0.5
    rho, theta = np.hypot(rel[:, 0], rel[:, 1]), np.arctan2(rel[:, 1], rel[:, 0])
    assert np.all(rho >= radius(theta) - 1e-12)  # outside the void (level 0 lies on its boundary)
    assert np.sum(np.isclose(rho, radius(theta), atol=1e-12)) == rays


# ----------------------------------------------------------------------------- solver


def test_patch_test_reproduces_a_uniform_strain_exactly():
    mesh = el.fitted_mesh(_wavy_void, 36, 9)
    basis = el.displacement_basis(mesh, "P2")
    grad = np.array([[2.0e-3, -0.7e-3], [1.1e-3, -0.5e-3]])  # ∂u_a/∂x_b, a uniform strain plus rotation
    shift = np.array([1e-4, -3e-4])

    def exact(x):  # x: [2, n] -> u: [2, n]
        return grad @ x + shift[:, None]

    u_exact = np.empty(basis.N)
    for component, dofs in enumerate(basis.split_indices()):
        u_exact[dofs] = exact(basis.doflocs[:, dofs])[component]
    fixed = basis.get_dofs().all()  # the whole boundary, void included
    E, nu = el.YOUNG, el.POISSON
    u = el.solve_elasticity(basis, E, nu, "strain", fixed_dofs=fixed, fixed_values=u_exact[fixed])
    assert np.abs(u - u_exact).max() < 1e-10 * np.abs(u_exact).max()

    lam, mu = el.lame_constants(E, nu, "strain")
    strain = 0.5 * (grad + grad.T)
    expected = np.zeros((3, 3))
    expected[:2, :2] = 2 * mu * strain + lam * np.trace(strain) * np.eye(2)
    expected[2, 2] = lam * np.trace(strain)
    stress = el.vertex_stress(el.Displacement(basis, u), E, nu, "strain")
    assert stress.shape == (mesh.nvertices, 3, 3)
    assert np.abs(stress - expected).max() < 1e-10 * np.abs(expected).max()


def test_kirsch_hole_concentrates_stress_threefold():
    traction = 100.0
    mesh = el.fitted_mesh(_circle(0.025), 48, 21, grading=4.0)
    # Roller bottom (a symmetry plane): the far field is uniaxial σ_yy = S.
    _, stress_fn = el.solve_tension(mesh, traction=traction, bottom="roller")
    stress = stress_fn()[:, :2, :2] / traction
    edge = mesh.p[:, :48] - 0.5  # level-0 nodes: on the hole
    theta = np.arctan2(edge[1], edge[0])
    tangent = np.stack([-np.sin(theta), np.cos(theta)], axis=1)
    hoop = np.einsum("ni,nij,nj->n", tangent, stress[:48], tangent)
    assert hoop.max() == pytest.approx(3.0, rel=0.05)  # at the hole's equator, |x - 0.5| = a
    assert abs(np.cos(theta[np.argmax(hoop)])) == pytest.approx(1.0, abs=1e-6)
    assert hoop.min() == pytest.approx(-1.0, rel=0.05)  # at the poles, on the load axis
    far = np.abs(mesh.p[1] - 0.5) >= 0.4  # 16 radii or more from the hole
    assert np.abs(stress[far, 1, 1] - 1.0).max() < 0.03
    assert np.abs(stress[far, 0, 0]).max() < 0.03 and np.abs(stress[far, 0, 1]).max() < 0.03


def test_von_mises_of_simple_states():
    uniaxial = np.diag([5.0, 0.0, 0.0])
    shear = np.array([[0.0, 2.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    hydrostatic = 7.0 * np.eye(3)
    np.testing.assert_allclose(el.von_mises(np.stack([uniaxial, shear, hydrostatic])), [5.0, 2 * np.sqrt(3), 0.0],
                               atol=1e-12)
    np.testing.assert_allclose(el.von_mises(uniaxial[:2, :2]), 5.0)  # 2×2 read as plane stress


# ----------------------------------------------------------------------------- data set


def test_generate_is_deterministic_per_seed_and_samples_are_prefix_stable(generated):
    sigma, xy = generated
    assert sigma.shape == (972, NUM_SAMPLES) and xy.shape == (972, 2, NUM_SAMPLES)
    assert sigma.dtype == np.float64 and np.isfinite(sigma).all() and (sigma >= 0).all()
    again_sigma, again_xy = el.generate(2, seed=SEED)
    np.testing.assert_array_equal(again_sigma, sigma[:, :2])
    np.testing.assert_array_equal(again_xy, xy[:, :, :2])
    other_sigma, other_xy = el.generate(1, seed=SEED + 1)
    assert not np.allclose(other_xy[..., 0], xy[..., 0])
    assert not np.allclose(other_sigma[:, 0], sigma[:, 0])
    assert not np.allclose(xy[..., 0], xy[..., 1])  # samples differ from each other
    # Sample 0's points are the sample points of the first void drawn from the seed.
    radius = el.random_void_radius(np.random.default_rng(SEED))
    np.testing.assert_allclose(xy[..., 0], el.sample_points(radius), atol=1e-13)
    # Tension of 100 around a void of 0.2–0.4 radius: stresses of that order, concentrated at the void.
    ring = np.arange(972) < el.SAMPLE_RAYS  # level 0: on the void
    assert 50 < np.median(sigma) < 300 and sigma[ring].mean() > sigma[~ring].mean()


def test_write_geofno_uses_the_published_layout(generated, tmp_path):
    sigma, xy = generated
    paths = el.write_geofno(tmp_path, sigma, xy)
    assert sorted(os.listdir(tmp_path)) == sorted([el.SIGMA_FILE, el.XY_FILE])  # no temporaries left
    on_disk_sigma = np.load(paths[el.SIGMA_FILE])
    on_disk_xy = np.load(paths[el.XY_FILE])
    assert on_disk_sigma.shape == (972, NUM_SAMPLES) and on_disk_xy.shape == (972, 2, NUM_SAMPLES)
    np.testing.assert_array_equal(on_disk_sigma, sigma)
    np.testing.assert_array_equal(on_disk_xy, xy)


def test_write_geofno_rejects_wrong_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"sigma must be \[972, S\]"):
        el.write_geofno(tmp_path, np.zeros((6, 972)), np.zeros((972, 2, 6)))
    with pytest.raises(ValueError, match=r"xy must be \[972, 2, S\]"):
        el.write_geofno(tmp_path, np.zeros((972, 6)), np.zeros((972, 2, 5)))
    assert os.listdir(tmp_path) == []


def test_read_geofno_moves_the_sample_axis_first(generated, tmp_path):
    sigma, xy = generated
    el.write_geofno(tmp_path, sigma, xy)
    read_sigma, read_xy = el.read_geofno(tmp_path)
    assert read_sigma.shape == (NUM_SAMPLES, 972, 1) and read_xy.shape == (NUM_SAMPLES, 972, 2)
    np.testing.assert_allclose(read_sigma[2, :, 0], sigma[:, 2], rtol=1e-6)
    np.testing.assert_allclose(read_xy[4], xy[:, :, 4], rtol=1e-6)


def test_read_geofno_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=el.SIGMA_FILE):
        el.read_geofno(tmp_path)
    np.save(tmp_path / el.SIGMA_FILE, np.zeros((972, 4)))
    with pytest.raises(FileNotFoundError, match=el.XY_FILE):
        el.read_geofno(tmp_path)
    np.save(tmp_path / el.XY_FILE, np.zeros((972, 2, 3)))
    with pytest.raises(ValueError, match=f"{el.XY_FILE}.* 3 samples .*{el.SIGMA_FILE}.* 4"):
        el.read_geofno(tmp_path)
    np.save(tmp_path / el.XY_FILE, np.zeros((4, 972, 2)))  # sample axis first: not the published layout
    with pytest.raises(ValueError, match=el.XY_FILE):
        el.read_geofno(tmp_path)
    np.save(tmp_path / el.SIGMA_FILE, np.zeros((4, 972)))
    with pytest.raises(ValueError, match=el.SIGMA_FILE):
        el.read_geofno(tmp_path)


def test_prepare_takes_the_first_for_training_and_the_last_for_testing(generated, tmp_path):
    sigma, xy = generated
    el.write_geofno(tmp_path / "raw", sigma, xy)
    paths = el.prepare(tmp_path / "raw", tmp_path / "dataset", num_train=4, num_test=2)
    train, test = read_split(paths["train"]), read_split(paths["test"])
    assert len(train) == 4 and len(test) == 2
    assert train.meta.name == "elasticity" and train.meta.input_channels == ["x", "y"]
    assert train.meta.output_channels == ["stress"] and train.meta.grid_shape == []
    assert train.meta.normalize_inputs == [False, False]
    for split, picks in ((train, [0, 1, 2, 3]), (test, [4, 5])):
        for i, s in enumerate(picks):
            x, y = split.sample(i)
            np.testing.assert_allclose(x, xy[:, :, s], rtol=1e-6)
            np.testing.assert_allclose(y[:, 0], sigma[:, s], rtol=1e-6)
    # Output normaliser from the training split only; inputs left as they are.
    assert float(train.y_normalizer.mean[0]) == pytest.approx(sigma[:, :4].mean(), rel=1e-5)
    np.testing.assert_array_equal(train.x_normalizer.mean.numpy(), [0.0, 0.0])


def test_prepare_refuses_overlapping_splits(generated, tmp_path):
    sigma, xy = generated
    el.write_geofno(tmp_path, sigma, xy)
    with pytest.raises(ValueError, match="overlap"):
        el.prepare(tmp_path, tmp_path / "dataset", num_train=5, num_test=2)
