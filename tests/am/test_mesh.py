"""Hex-mesh edges and aspect ratios against counts and lengths worked out by hand."""
import numpy as np
import pytest

from flare.am.mesh import hex_aspect_ratio, hex_edges
from flare.am.sdf import hex_grid


def unit_cell():
    return hex_grid(np.ones((1, 1, 1), dtype=bool))


def test_one_cell_has_the_twelve_edges_of_vtk_hexa8_order():
    cells = np.arange(8)[None, :]  # local numbering: the edges read straight off VTK's picture
    expected = [[0, 1], [0, 3], [0, 4], [1, 2], [1, 5], [2, 3], [2, 6], [3, 7],
                [4, 5], [4, 7], [5, 6], [6, 7]]
    np.testing.assert_array_equal(hex_edges(cells), expected)
    assert hex_edges(cells).dtype == np.int64


def test_two_cells_side_by_side_share_one_face_so_twenty_edges():
    points, cells = hex_grid(np.ones((2, 1, 1), dtype=bool))
    edges = hex_edges(cells)
    assert edges.shape == (20, 2)  # 2 x 12 minus the 4 edges of the shared face
    assert (edges[:, 0] < edges[:, 1]).all()
    np.testing.assert_array_equal(edges, np.unique(edges, axis=0))  # sorted, unique
    # every edge is a unit grid line, never a face or body diagonal
    np.testing.assert_allclose(np.linalg.norm(points[edges[:, 1]] - points[edges[:, 0]], axis=1), 1.0)


def test_grid_edge_count_is_three_n_times_n_plus_one_squared():
    _, cells = hex_grid(np.ones((3, 3, 3), dtype=bool))
    assert len(hex_edges(cells)) == 3 * 3 * 4 * 4  # 144


def test_edges_are_the_same_whatever_the_node_numbering():
    points, cells = hex_grid(np.ones((2, 2, 1), dtype=bool))
    perm = np.random.default_rng(0).permutation(len(points))
    renumbered = np.argsort(perm)[cells]  # node k becomes argsort(perm)[k]
    edges = hex_edges(renumbered)
    back = np.sort(perm[edges], axis=1)
    np.testing.assert_array_equal(np.unique(back, axis=0), hex_edges(cells))


def test_collapsed_cell_is_rejected_naming_it():
    cells = np.array([[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 12, 14, 15]])
    with pytest.raises(ValueError, match="cell 1"):
        hex_edges(cells)


def test_unit_cube_aspect_ratio_is_one():
    np.testing.assert_allclose(hex_aspect_ratio(*unit_cell()), [1.0])


def test_one_by_one_by_three_box_has_aspect_ratio_three():
    points, cells = hex_grid(np.ones((1, 1, 1), dtype=bool), spacing=(1.0, 1.0, 3.0))
    np.testing.assert_allclose(hex_aspect_ratio(points, cells), [3.0])


def test_aspect_ratio_is_per_cell_longest_over_shortest():
    points, cells = hex_grid(np.ones((1, 1, 3), dtype=bool), spacing=(1.0, 2.0, 0.5))
    points[points[:, 2] > 1.4, 2] = 3.5  # the top layer stretched from 0.5 to 2.5 mm high
    np.testing.assert_allclose(hex_aspect_ratio(points, cells), [4.0, 4.0, 2.5])


def test_cell_with_a_zero_length_edge_has_infinite_aspect_ratio():
    points, cells = unit_cell()
    points[cells[0, 1]] = points[cells[0, 0]]
    assert np.isinf(hex_aspect_ratio(points, cells)[0])


def test_cells_pointing_past_the_points_are_rejected():
    points, cells = unit_cell()
    with pytest.raises(ValueError, match="only 7 points"):
        hex_aspect_ratio(points[:7], cells)
