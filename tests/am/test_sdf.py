"""SDF node features of hexa8 meshes against hand-computed distances: cube and L (SPEC §5)."""
import numpy as np
import pytest

from flare.am.sdf import (
    FEATURE_NAMES,
    boundary_quads,
    hex_grid,
    sdf_features,
    surface_mesh,
)

ON_SURFACE, VECTOR, NEAREST, RAYS = 0, slice(1, 4), 4, slice(5, 11)


@pytest.fixture(scope="module")
def cube():
    """[0, 1]^3 meshed with 4 x 4 x 4 hexes."""
    return hex_grid(np.ones((4, 4, 4), dtype=bool), spacing=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def cube_features(cube):
    return sdf_features(*cube)


@pytest.fixture(scope="module")
def l_part():
    """([0, 4]^2 minus the notch [2, 4]^2) x [0, 4], meshed with 0.5 mm hexes."""
    mask = np.ones((8, 8, 8), dtype=bool)
    mask[4:, 4:, :] = False
    return hex_grid(mask, spacing=(0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def l_features(l_part):
    return sdf_features(*l_part)


def node(points, xyz):
    """Row of the node at coordinates xyz."""
    (index,) = np.flatnonzero(np.all(np.isclose(points, xyz), axis=1))
    return index


def test_hex_grid_merges_shared_nodes_and_orients_cells_positively():
    mask = np.ones((2, 3, 4), dtype=bool)
    points, cells = hex_grid(mask, spacing=(1.0, 2.0, 0.5), origin=(1, 0, -1))
    assert points.shape == (3 * 4 * 5, 3) and cells.shape == (24, 8)
    np.testing.assert_allclose(points.min(axis=0), [1, 0, -1])
    np.testing.assert_allclose(points.max(axis=0), [3, 6, 1])
    p = points[cells]
    np.testing.assert_allclose(p[:, 6] - p[:, 0], np.tile([1.0, 2.0, 0.5], (24, 1)))
    np.testing.assert_allclose(p[:, 1] - p[:, 0], np.tile([1.0, 0, 0], (24, 1)))
    np.testing.assert_allclose(p[:, 3] - p[:, 0], np.tile([0, 2.0, 0], (24, 1)))


def test_cube_has_six_by_sixteen_boundary_quads_with_outward_normals(cube):
    points, cells = cube
    quads = boundary_quads(cells)
    assert quads.shape == (6 * 16, 4)
    q = points[quads]
    normals = np.cross(q[:, 1] - q[:, 0], q[:, 2] - q[:, 0])
    centre_to_face = q.mean(axis=1) - 0.5
    assert (np.einsum("ij,ij->i", normals, centre_to_face) > 0).all()


def test_cube_surface_is_watertight_with_unit_volume(cube):
    mesh = surface_mesh(*cube)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert len(mesh.faces) == 2 * 6 * 16
    assert mesh.volume == pytest.approx(1.0)


def test_feature_shapes_dtype_and_names(cube, cube_features):
    points, _ = cube
    assert len(FEATURE_NAMES) == 11 == len(set(FEATURE_NAMES))
    assert cube_features.shape == (len(points), 11)
    assert cube_features.dtype == np.float32


def test_cube_on_surface_flag_marks_exactly_the_boundary_nodes(cube, cube_features):
    points, _ = cube
    boundary = np.any((points == 0) | (points == 1), axis=1)
    np.testing.assert_array_equal(cube_features[:, ON_SURFACE], boundary.astype(np.float32))


def test_cube_nearest_distance_is_distance_to_closest_face(cube, cube_features):
    points, _ = cube
    exact = np.minimum(points, 1 - points).min(axis=1)
    np.testing.assert_allclose(cube_features[:, NEAREST], exact, atol=1e-6)
    vector = cube_features[:, VECTOR]
    np.testing.assert_allclose(np.linalg.norm(vector, axis=1), exact, atol=1e-6)
    interior = exact > 0
    # the nearest point lies on the surface: one coordinate at 0 or 1
    target = points[interior] + vector[interior]
    on_a_face = np.isclose(target, 0, atol=1e-6) | np.isclose(target, 1, atol=1e-6)
    assert on_a_face.any(axis=1).all()


def test_cube_axis_rays_reach_the_opposite_faces(cube, cube_features):
    points, _ = cube
    x, y, z = points.T
    exact = np.stack([1 - x, x, 1 - y, y, 1 - z, z], axis=1)
    interior = cube_features[:, ON_SURFACE] == 0
    np.testing.assert_allclose(cube_features[interior, RAYS], exact[interior], atol=1e-6)
    # surface nodes: ~0 where the ray leaves the part, the chord where it enters
    np.testing.assert_allclose(cube_features[~interior, RAYS], exact[~interior], atol=1e-5)


@pytest.mark.parametrize(
    "xyz, vector",
    [
        ((1.5, 1.5, 2.0), (0.5, 0.5, 0.0)),  # nearest point is the re-entrant edge (2, 2, z)
        ((1.5, 1.5, 1.0), (0.5, 0.5, 0.0)),  # edge at sqrt(0.5) beats the floor at 1
        ((1.5, 3.0, 2.0), (0.5, 0.0, 0.0)),  # notch wall x = 2
        ((3.0, 1.5, 2.0), (0.0, 0.5, 0.0)),  # notch wall y = 2
        ((1.0, 1.0, 0.5), (0.0, 0.0, -0.5)),  # floor
    ],
)
def test_l_part_nearest_point_near_the_reentrant_corner(l_part, l_features, xyz, vector):
    points, _ = l_part
    row = l_features[node(points, xyz)]
    assert row[ON_SURFACE] == 0
    np.testing.assert_allclose(row[NEAREST], np.linalg.norm(vector), atol=1e-6)
    np.testing.assert_allclose(row[VECTOR], vector, atol=1e-6)


@pytest.mark.parametrize(
    "xyz, rays",  # +x, -x, +y, -y, +z, -z
    [
        ((1.0, 3.0, 2.0), (1.0, 1.0, 1.0, 3.0, 2.0, 2.0)),  # +x stops at the notch wall x = 2
        ((3.0, 1.0, 2.0), (1.0, 3.0, 1.0, 1.0, 2.0, 2.0)),  # +y stops at the notch wall y = 2
        ((1.5, 1.5, 1.0), (2.5, 1.5, 2.5, 1.5, 3.0, 1.0)),  # passes beside the notch
        ((0.0, 3.0, 2.0), (2.0, 0.0, 1.0, 3.0, 2.0, 2.0)),  # surface node: +x crosses the arm
        ((2.0, 3.0, 2.0), (0.0, 2.0, 1.0, 3.0, 2.0, 2.0)),  # on the notch wall: +x leaves
        ((2.0, 2.0, 2.0), (2.0, 2.0, 2.0, 2.0, 2.0, 2.0)),  # re-entrant edge: rays run inside
    ],
)
def test_l_part_axis_ray_distances(l_part, l_features, xyz, rays):
    points, _ = l_part
    np.testing.assert_allclose(l_features[node(points, xyz), RAYS], rays, atol=1e-5)


def test_mirrored_node_order_gives_the_same_features(cube, cube_features):
    points, cells = cube
    mirrored = cells[:, [4, 5, 6, 7, 0, 1, 2, 3]]
    np.testing.assert_array_equal(sdf_features(points, mirrored), cube_features)


def test_cells_touching_along_an_edge_are_not_watertight():
    mask = np.zeros((2, 2, 1), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 0] = True
    with pytest.raises(ValueError, match="not watertight"):
        surface_mesh(*hex_grid(mask))


def test_unmerged_interface_is_rejected():
    points, cells = hex_grid(np.ones((2, 1, 1), dtype=bool))
    second = cells[1].copy()
    points = np.vstack([points, points[second]])
    cells = np.vstack([cells[:1], len(points) - 8 + np.arange(8)[None]])
    with pytest.raises(ValueError, match="merge coincident nodes"):
        surface_mesh(points, cells)


def test_one_inverted_cell_is_rejected():
    points, cells = hex_grid(np.ones((2, 1, 1), dtype=bool))
    cells = cells.copy()
    cells[1] = cells[1, [4, 5, 6, 7, 0, 1, 2, 3]]
    with pytest.raises(ValueError, match="1 of 2 cells are inverted"):
        surface_mesh(points, cells)


def test_duplicated_cell_is_rejected():
    points, cells = hex_grid(np.ones((2, 1, 1), dtype=bool))
    with pytest.raises(ValueError, match="more than once"):
        surface_mesh(points, np.vstack([cells, cells[:1]]))


def test_bad_shapes_are_rejected():
    points, cells = hex_grid(np.ones((1, 1, 1), dtype=bool))
    with pytest.raises(ValueError, match=r"\[C, 8\]"):
        boundary_quads(cells[:, :4])
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        sdf_features(points[:, :2], cells)
    with pytest.raises(ValueError, match="outside"):
        surface_mesh(points[:4], cells)
