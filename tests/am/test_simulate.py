"""Layer-by-layer inherent-strain elasticity against closed-form answers (free bodies, bimetal
cantilever) and against its own definition (superposition of single solves)."""
import numpy as np
import pytest
import skfem

from flare.am.sdf import hex_grid
from flare.am.simulate import (
    DEFAULT_INHERENT_STRAIN,
    POISSON_TI64,
    YOUNG_TI64,
    cell_layers,
    hooke,
    simulate_layers,
    skfem_mesh,
    solve_inherent_strain,
    voigt_to_tensor,
    von_mises,
)

E, NU = YOUNG_TI64, POISSON_TI64


def node_at(points, xyz):
    hits = np.flatnonzero(np.abs(points - np.asarray(xyz, dtype=float)).max(axis=1) < 1e-12)
    assert len(hits) == 1, f"no unique node at {xyz}"
    return int(hits[0])


def minimal_constraints(points):
    """[N, 3] mask removing only the six rigid-body motions of a body with a corner at the origin:
    (0,0,0) fixed, (1,0,0) held in y and z, (0,1,0) held in z."""
    fixed = np.zeros((len(points), 3), dtype=bool)
    fixed[node_at(points, [0, 0, 0])] = True
    fixed[node_at(points, [1, 0, 0]), 1:] = True
    fixed[node_at(points, [0, 1, 0]), 2] = True
    return fixed


def affine_fit(points, u):
    """[3, 3] A of the best fit u ≈ A x + b."""
    design = np.c_[points, np.ones(len(points))]
    coef, *_ = np.linalg.lstsq(design, u, rcond=None)
    return coef[:3].T


# ----------------------------------------------------------------------------- node ordering


def test_skfem_mesh_puts_vtk_corners_where_skfem_expects_them():
    points, cells = hex_grid(np.ones((1, 1, 1), dtype=bool), spacing=(1.0, 2.0, 3.0))
    mesh = skfem_mesh(points, cells)
    reference = skfem.MeshHex1()  # the unit cube in scikit-fem's own corner order
    corners = mesh.p[:, mesh.t[:, 0]].T
    np.testing.assert_array_equal(corners, reference.p[:, reference.t[:, 0]].T * [1.0, 2.0, 3.0])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_unit_hex_with_uniaxial_eigenstrain_stretches_exactly_along_its_axis(axis):
    points, cells = hex_grid(np.ones((1, 1, 1), dtype=bool))
    strain = np.zeros(6)
    strain[axis] = 0.01
    u = solve_inherent_strain(points, cells, strain, E, NU, fixed_nodes=minimal_constraints(points))
    expected = np.zeros_like(points)
    expected[:, axis] = 0.01 * points[:, axis]
    np.testing.assert_allclose(u, expected, rtol=0, atol=1e-14)


def test_hand_numbered_vtk_hex_with_shuffled_nodes_gets_the_same_exact_displacement():
    # VTK order written out by hand, nodes stored in a scrambled order
    corners = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],
                        [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=float)
    perm = np.array([5, 2, 7, 0, 3, 6, 1, 4])  # storage slot of each VTK corner
    points = np.empty_like(corners)
    points[perm] = corners
    cells = perm[None, :]
    u = solve_inherent_strain(points, cells, [0, 0, -0.02, 0, 0, 0], E, NU,
                              fixed_nodes=minimal_constraints(points))
    np.testing.assert_allclose(u[:, 2], -0.02 * points[:, 2], atol=1e-14)
    np.testing.assert_allclose(u[:, :2], 0.0, atol=1e-14)


def test_unit_hex_with_full_eigenstrain_deforms_by_it_up_to_a_rotation():
    points, cells = hex_grid(np.ones((1, 1, 1), dtype=bool))
    strain = np.array([0.01, -0.02, 0.03, 0.004, -0.005, 0.006])  # tensor shear components
    u = solve_inherent_strain(points, cells, strain, E, NU, fixed_nodes=minimal_constraints(points))
    gradient = affine_fit(points, u)
    np.testing.assert_allclose(points @ gradient.T, u - u[node_at(points, [0, 0, 0])], atol=1e-13)
    np.testing.assert_allclose(0.5 * (gradient + gradient.T), voigt_to_tensor(strain), atol=1e-13)


# ----------------------------------------------------------------------------- free bar


@pytest.mark.parametrize("strain", [[-0.01, 0, 0, 0, 0, 0], [0.004, 0.004, 0.004, 0, 0, 0]])
def test_free_bar_with_uniform_eigenstrain_changes_length_by_eigenstrain_times_length_without_stress(strain):
    length = 8.0
    points, cells = hex_grid(np.ones((8, 1, 1), dtype=bool))
    fixed = minimal_constraints(points)
    u = solve_inherent_strain(points, cells, strain, E, NU, fixed_nodes=fixed)
    left, right = points[:, 0] == 0, points[:, 0] == length
    growth = u[right, 0].mean() - u[left, 0].mean()
    assert abs(growth - strain[0] * length) <= 1e-10 * abs(strain[0] * length)
    np.testing.assert_allclose(u, points @ voigt_to_tensor(np.asarray(strain, float)).T, atol=1e-12)

    # one layer (the whole bar) through the layer-by-layer path: no stress anywhere
    result = simulate_layers(points, cells, 10.0, strain, E, NU, fixed_nodes=fixed)
    scale = E * np.abs(strain).max()
    assert np.abs(result["cell_stress"]).max() <= 1e-9 * scale
    assert np.abs(result["stress"]).max() <= 1e-9 * scale
    np.testing.assert_allclose(result["strain"], np.broadcast_to(strain, (len(points), 6)), atol=1e-12)


# ----------------------------------------------------------------------------- cantilever


def bimetal_cantilever(contracted: str, eigenstrain: float = -0.01):
    """Beam [0, 16] x [0, 1] x [0, 4] (0.5 mm cells, 1 mm wide), clamped at x = 0, with an axial
    eigenstrain in its top or bottom 1 mm. Returns (FE tip deflection, beam-theory deflection)."""
    length, height, layer = 16.0, 4.0, 1.0
    points, cells = hex_grid(np.ones((32, 1, 8), dtype=bool), spacing=(0.5, 1.0, 0.5))
    zc = points[cells, 2].mean(axis=1)
    in_layer = zc > height - layer if contracted == "top" else zc < layer
    strain = np.zeros((len(cells), 6))
    strain[in_layer, 0] = eigenstrain
    u = solve_inherent_strain(points, cells, strain, E, NU, fixed_nodes=points[:, 0] == 0)
    tip = u[points[:, 0] == length, 2].mean()
    # Free thermostat-like strip: zero axial force and moment give the curvature
    # κ = ∫ ε* z' dA / I, z' from the mid-plane; w'' = -κ, so the clamped tip rises by -κ L² / 2.
    lever = (height - layer) / 2 if contracted == "top" else -(height - layer) / 2
    kappa = eigenstrain * layer * lever / (height**3 / 12)
    return tip, -kappa * length**2 / 2


def test_cantilever_contracted_on_top_curls_up_by_the_bimetal_strip_deflection():
    tip, theory = bimetal_cantilever("top")
    assert tip > 0
    assert abs(tip - theory) <= 0.2 * abs(theory)


def test_cantilever_contracted_at_the_bottom_curls_down():
    tip, theory = bimetal_cantilever("bottom")
    assert tip < 0 and theory < 0
    assert abs(tip - theory) <= 0.2 * abs(theory)


def test_cantilever_tip_deflection_grows_linearly_with_eigenstrain():
    tip_small, _ = bimetal_cantilever("top", -0.005)
    tip_large, _ = bimetal_cantilever("top", -0.01)
    assert 0 < tip_small < tip_large
    assert tip_large == pytest.approx(2 * tip_small, rel=1e-10)


# ----------------------------------------------------------------------------- layer by layer


@pytest.fixture(scope="module")
def stack():
    """8 x 1 x 4 cells of 1 mm on a plate fixed over the whole footprint, built in 4 layers."""
    points, cells = hex_grid(np.ones((8, 1, 4), dtype=bool))
    strain = np.array([-0.01, -0.005, -0.008, 0.0, 0.0, 0.0])
    result = simulate_layers(points, cells, 1.0, strain, E, NU, keep_steps=True)
    return points, cells, strain, result


def test_layer_by_layer_equals_the_sum_of_single_solves_on_the_growing_part(stack):
    points, cells, strain, result = stack
    layer = cell_layers(points, cells, 1.0)
    np.testing.assert_array_equal(layer, points[cells, 2].mean(axis=1).astype(int))
    base = points[:, 2] == 0
    total = np.zeros_like(points)
    for k in range(4):
        active = layer <= k
        load = np.where((layer[active] == k)[:, None], strain, 0.0)
        total += solve_inherent_strain(points, cells[active], load, E, NU, fixed_nodes=base)
        np.testing.assert_allclose(result["step_displacements"][k], total, atol=1e-14)
    np.testing.assert_allclose(result["displacement"], total, atol=1e-14)
    assert np.all(result["displacement"][base] == 0)


def test_stack_stress_is_hooke_of_strain_minus_eigenstrain_and_the_last_layer_is_in_tension(stack):
    points, cells, strain, result = stack
    np.testing.assert_allclose(result["cell_stress"], hooke(result["cell_strain"] - strain, E, NU))
    np.testing.assert_allclose(result["von_mises"], von_mises(result["stress"]))
    top_middle = (result["cell_layer"] == 3) & (np.abs(points[cells, 0].mean(axis=1) - 4) < 1)
    assert (result["cell_stress"][top_middle, 0] > 0).all()  # the last layer shrinks on a stiff base
    for key, shape in [("displacement", (len(points), 3)), ("strain", (len(points), 6)),
                       ("stress", (len(points), 6)), ("von_mises", (len(points),))]:
        assert result[key].shape == shape and np.isfinite(result[key]).all()


def test_a_single_layer_build_equals_one_direct_solve():
    points, cells = hex_grid(np.ones((4, 3, 2), dtype=bool), spacing=(1.0, 1.0, 0.5))
    strain = np.random.default_rng(0).normal(scale=1e-3, size=(len(cells), 6))
    base = points[:, 2] == 0
    result = simulate_layers(points, cells, 2.0, strain, E, NU)
    direct = solve_inherent_strain(points, cells, strain, E, NU, fixed_nodes=base)
    np.testing.assert_allclose(result["displacement"], direct, atol=1e-15)
    assert list(result["layers"]) == [0]


def test_conjugate_gradients_agree_with_the_direct_solver(stack):
    points, cells, strain, result = stack
    iterative = simulate_layers(points, cells, 1.0, strain, E, NU, solver="cg")
    scale = np.abs(result["displacement"]).max()
    np.testing.assert_allclose(iterative["displacement"], result["displacement"], atol=1e-8 * scale)


def test_defaults_are_ti64_with_a_typical_inherent_strain():
    assert (E, NU) == (110e3, 0.34)
    np.testing.assert_array_equal(DEFAULT_INHERENT_STRAIN, [-0.005, -0.005, -0.01, 0, 0, 0])
    points, cells = hex_grid(np.ones((2, 2, 2), dtype=bool))
    result = simulate_layers(points, cells, 1.0)
    assert np.isfinite(result["von_mises"]).all() and result["von_mises"].max() > 0


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def cube():
    return hex_grid(np.ones((2, 2, 2), dtype=bool))


def test_non_hexa8_cells_are_rejected(cube):
    points, cells = cube
    with pytest.raises(ValueError, match="hexa8"):
        solve_inherent_strain(points, cells[:, :4], fixed_nodes=points[:, 2] == 0)
    with pytest.raises(ValueError, match="hexa8"):
        simulate_layers(points, cells[:, :4], 1.0)


@pytest.mark.parametrize("young, poisson, message", [
    (0.0, 0.3, "E must be positive"), (-1.0, 0.3, "E must be positive"),
    (1.0, 0.5, "nu must lie"), (1.0, -1.0, "nu must lie"), (1.0, 0.7, "nu must lie"),
])
def test_bad_material_constants_are_rejected(cube, young, poisson, message):
    points, cells = cube
    with pytest.raises(ValueError, match=message):
        simulate_layers(points, cells, 1.0, E=young, nu=poisson)
    with pytest.raises(ValueError, match=message):
        solve_inherent_strain(points, cells, E=young, nu=poisson, fixed_nodes=points[:, 2] == 0)


def test_empty_fixed_set_is_rejected(cube):
    points, cells = cube
    with pytest.raises(ValueError, match="empty"):
        simulate_layers(points, cells, 1.0, fixed_nodes=np.zeros(len(points), dtype=bool))
    with pytest.raises(ValueError, match="empty"):
        simulate_layers(points, cells, 1.0, fixed_nodes=[])
    with pytest.raises(ValueError, match="empty"):
        solve_inherent_strain(points, cells, fixed_nodes=np.zeros((len(points), 3), dtype=bool))


def test_a_piece_not_connected_to_the_plate_is_rejected():
    mask = np.zeros((3, 1, 3), dtype=bool)
    mask[0, 0, :] = True  # a column on the plate
    mask[2, 0, 2] = True  # a floating cube at the top
    points, cells = hex_grid(mask)
    with pytest.raises(ValueError, match="not connected"):
        simulate_layers(points, cells, 1.0)


def test_bad_eigenstrain_layer_height_and_solver_are_rejected(cube):
    points, cells = cube
    with pytest.raises(ValueError, match="inherent_strain"):
        simulate_layers(points, cells, 1.0, inherent_strain=np.zeros((3, 6)))
    with pytest.raises(ValueError, match="layer_height"):
        simulate_layers(points, cells, 0.0)
    with pytest.raises(ValueError, match="solver"):
        simulate_layers(points, cells, 1.0, solver="magic")


def test_nodes_no_cell_uses_stay_at_zero_and_change_nothing_else(stack):
    points, cells, strain, result = stack
    # an unused node first (below the plate, so it must not define z_min) and one last
    padded = np.concatenate([[[0.0, 0.0, -5.0]], points, [[99.0, 0.0, 0.0]]])
    padded_result = simulate_layers(padded, cells + 1, 1.0, strain, E, NU, keep_steps=True)
    for key in ["displacement", "strain", "stress", "von_mises"]:
        assert np.all(padded_result[key][[0, -1]] == 0)
        np.testing.assert_allclose(padded_result[key][1:-1], result[key], atol=1e-12)
    direct = solve_inherent_strain(padded, cells + 1, strain, E, NU, fixed_nodes=padded[:, 2] == 0)
    assert np.all(direct[[0, -1]] == 0)
