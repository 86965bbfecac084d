"""Procedural LPBF parts, STL loading and the layer-grid voxel mesh."""
import numpy as np
import pytest
import trimesh

from flare.am.geometry import (
    PART_FAMILIES,
    build_part,
    load_stl_parts,
    procedural_part,
    voxel_mask,
    voxelize,
)

SIZE = 40.0


def box_on_plate(extents, offset=(0.0, 0.0, 0.0)) -> trimesh.Trimesh:
    """A box of the given extents standing on z = 0 (shifted by offset)."""
    extents = np.asarray(extents, dtype=float)
    centre = np.asarray(offset, dtype=float) + [0.0, 0.0, extents[2] / 2]
    move = trimesh.transformations.translation_matrix(centre)
    return trimesh.creation.box(extents=extents, transform=move)


# ----------------------------------------------------------------------------- procedural parts


def test_there_are_at_least_six_part_families():
    assert len(PART_FAMILIES) >= 6


@pytest.mark.parametrize("family", sorted(PART_FAMILIES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_family_is_a_closed_solid_on_the_plate_inside_its_box(family, seed):
    mesh = build_part(family, seed, SIZE)
    assert mesh.is_watertight
    assert mesh.volume > 0
    lo, hi = mesh.bounds
    assert lo[2] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose((lo[:2] + hi[:2]) / 2, 0.0, atol=1e-9)
    assert (hi[:2] <= SIZE / 2 + 1e-6).all() and hi[2] <= 1.5 * SIZE + 1e-6
    # a part worth printing: more than a sliver of its box
    assert mesh.volume > 0.02 * SIZE**3


def test_same_seed_gives_the_same_part_and_other_seeds_vary():
    family, mesh = procedural_part(7, SIZE)
    again_family, again = procedural_part(7, SIZE)
    assert family == again_family and family in PART_FAMILIES
    np.testing.assert_array_equal(mesh.vertices, again.vertices)
    np.testing.assert_array_equal(mesh.faces, again.faces)
    families = {procedural_part(seed, SIZE)[0] for seed in range(40)}
    assert len(families) >= 5  # the seed picks the family too
    volumes = {round(build_part("l_bracket", seed, SIZE).volume, 6) for seed in range(3)}
    assert len(volumes) == 3


def test_procedural_part_scales_with_size():
    _, mesh = procedural_part(3, 20.0)
    lo, hi = mesh.bounds
    assert (hi[:2] <= 10.0 + 1e-6).all() and hi[2] <= 30.0 + 1e-6


def test_unknown_family_is_named_in_the_error():
    with pytest.raises(ValueError, match="'spiral'"):
        build_part("spiral", 0)


# ----------------------------------------------------------------------------- voxel mesh


def test_voxelizing_a_box_gives_the_exact_grid():
    # 10 x 7.5 x 5 mm at 2.5 mm cells and 1.25 mm layers: 4 x 3 x 4 cells, 5 x 4 x 5 nodes
    points, cells = voxelize(box_on_plate([10.0, 7.5, 5.0]), cell_size=2.5, layer_height=1.25)
    assert cells.shape == (48, 8) and points.shape == (100, 3)
    np.testing.assert_allclose(points.min(axis=0), [-5.0, -3.75, 0.0], atol=1e-12)
    np.testing.assert_allclose(points.max(axis=0), [5.0, 3.75, 5.0], atol=1e-12)
    np.testing.assert_allclose(np.unique(points[:, 2]), [0.0, 1.25, 2.5, 3.75, 5.0], atol=1e-12)
    assert cells.dtype == np.int64 and points.dtype == np.float64


def test_a_floating_piece_is_dropped_and_the_supported_part_kept():
    base = box_on_plate([10.0, 10.0, 5.0])
    floating = box_on_plate([5.0, 5.0, 5.0], offset=(0.0, 0.0, 10.0))  # z in [10, 15], no contact
    points, cells = voxelize(trimesh.util.concatenate([base, floating]), 2.5, 2.5)
    assert len(cells) == 4 * 4 * 2
    assert points[:, 2].max() == pytest.approx(5.0)


def test_cells_touching_only_along_an_edge_are_not_supported():
    # a cube standing on the plate and one resting on it diagonally, edge to edge
    lower = box_on_plate([2.5, 2.5, 2.5], offset=(-1.25, 0.0, 0.0))
    upper = box_on_plate([2.5, 2.5, 2.5], offset=(1.25, 0.0, 2.5))
    mask, _ = voxel_mask(trimesh.util.concatenate([lower, upper]), 2.5, 2.5)
    assert mask.shape == (2, 1, 2)
    np.testing.assert_array_equal(mask[:, 0, :], [[True, False], [False, False]])


def test_a_part_thinner_than_a_cell_raises():
    with pytest.raises(ValueError, match="no cell"):
        voxelize(box_on_plate([10.0, 10.0, 1.0]), 2.5, 2.5)


def test_non_positive_cell_size_raises():
    with pytest.raises(ValueError, match="cell_size"):
        voxelize(box_on_plate([5.0, 5.0, 5.0]), 0.0, 2.5)


def test_a_procedural_part_voxelizes_into_a_positively_oriented_supported_mesh():
    _, mesh = procedural_part(0, 20.0)
    points, cells = voxelize(mesh, 2.5, 2.5)
    assert len(cells) > 0
    p = points[cells]
    edges = p[:, [1, 3, 4]] - p[:, :1]
    volume = np.einsum("ij,ij->i", np.cross(edges[:, 0], edges[:, 1]), edges[:, 2])
    np.testing.assert_allclose(volume, 2.5**3)
    assert points[:, 2].min() == 0.0


# ----------------------------------------------------------------------------- STL parts


def test_stl_parts_are_loaded_sorted_and_placed_on_the_plate(tmp_path):
    box_on_plate([4.0, 6.0, 8.0], offset=(30.0, -7.0, 12.0)).export(tmp_path / "b_part.stl")
    trimesh.creation.icosphere(radius=3.0).export(tmp_path / "a_part.stl")
    (tmp_path / "notes.txt").write_text("not a part")
    parts = load_stl_parts(tmp_path)
    assert [name for name, _ in parts] == ["a_part", "b_part"]
    box = parts[1][1]
    np.testing.assert_allclose(box.bounds, [[-2.0, -3.0, 0.0], [2.0, 3.0, 8.0]], atol=1e-6)
    assert parts[0][1].bounds[0, 2] == pytest.approx(0.0, abs=1e-9)


def test_an_open_stl_raises_naming_the_file(tmp_path):
    box = box_on_plate([4.0, 4.0, 4.0])
    open_box = trimesh.Trimesh(box.vertices, box.faces[:-2])
    open_box.export(tmp_path / "broken.stl")
    box.export(tmp_path / "good.stl")
    with pytest.raises(ValueError, match="broken.stl.*not watertight"):
        load_stl_parts(tmp_path)


def test_an_empty_stl_raises_naming_the_file(tmp_path):
    (tmp_path / "empty.stl").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.stl"):
        load_stl_parts(tmp_path)
