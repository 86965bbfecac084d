"""Signed-distance-style node features of a hexa8 part mesh (SPEC §5).

Eleven features per node, in ``FEATURE_NAMES`` order: the on-surface flag, the vector from the
node to the nearest point of the part surface (3) and its length, and the distance to the surface
along +x, -x, +y, -y, +z, -z by ray casting (6). Lengths are in the units of ``points`` (mm).

The surface is the set of boundary quads of the hex mesh (faces used by exactly one cell), each
split into two triangles that keep the quad's outward winding, checked to be watertight.
"""
from __future__ import annotations

import numpy as np
import trimesh
from trimesh.ray.ray_triangle import RayMeshIntersector

FEATURE_NAMES = [
    "on_surface",
    "nearest_dx",
    "nearest_dy",
    "nearest_dz",
    "nearest_distance",
    "ray_distance_px",
    "ray_distance_mx",
    "ray_distance_py",
    "ray_distance_my",
    "ray_distance_pz",
    "ray_distance_mz",
]

# The six faces of a VTK hexa8 (nodes 0-3 the bottom quad counter-clockwise seen from +z, 4-7 the
# top quad above them), each listed counter-clockwise seen from outside, so that the right-hand
# normal points out of a positively oriented cell.
HEX_FACES = np.array(
    [
        [0, 3, 2, 1],  # -z
        [4, 5, 6, 7],  # +z
        [0, 1, 5, 4],  # -y
        [2, 3, 7, 6],  # +y
        [3, 0, 4, 7],  # -x
        [1, 2, 6, 5],  # +x
    ]
)

# Ray directions in the order of the last six features.
RAY_DIRECTIONS = np.array(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64
)

# Surface nodes start their rays this far inside (times the bounding-box diagonal); see
# ``axis_ray_distances``.
RAY_START_DEPTH = 1e-6


def _check_cells(cells: np.ndarray, n_points: int | None = None) -> np.ndarray:
    cells = np.asarray(cells)
    if cells.ndim != 2 or cells.shape[1] != 8:
        raise ValueError(f"cells must be hexa8 connectivity of shape [C, 8], got {cells.shape}")
    if not np.issubdtype(cells.dtype, np.integer):
        raise ValueError(f"cells must hold integer node indices, got dtype {cells.dtype}")
    if len(cells) == 0:
        raise ValueError("cells is empty: the mesh has no hexahedra")
    if n_points is not None and (cells.min() < 0 or cells.max() >= n_points):
        raise ValueError(
            f"cells refer to nodes outside [0, {n_points}): min {cells.min()}, max {cells.max()}"
        )
    return cells.astype(np.int64, copy=False)


def _check_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("points hold NaN or infinite coordinates")
    return points


def boundary_quads(cells: np.ndarray) -> np.ndarray:
    """Boundary faces of a hexa8 mesh: those used by exactly one cell.

    cells: [C, 8] node indices in VTK hexa8 order. Returns [F, 4] node indices, each quad
    counter-clockwise seen from outside (outward right-hand normal) for positively oriented cells.
    Raises ValueError for duplicated cells or a face shared by more than two cells.
    """
    cells = _check_cells(cells)
    sorted_cells = np.sort(cells, axis=1)
    _, cell_counts = np.unique(sorted_cells, axis=0, return_counts=True)
    if (cell_counts > 1).any():
        raise ValueError(
            f"{int((cell_counts > 1).sum())} cells appear more than once (same eight nodes); "
            "remove the duplicated cells"
        )
    faces = cells[:, HEX_FACES].reshape(-1, 4)  # [6C, 4]
    _, inverse, counts = np.unique(
        np.sort(faces, axis=1), axis=0, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    if (counts > 2).any():
        raise ValueError(
            f"{int((counts > 2).sum())} faces are shared by more than two cells; the mesh is not "
            "a valid conforming hex mesh"
        )
    return faces[counts[inverse] == 1]


def _cell_orientation(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """[C] signed triple product at node 0: positive for a cell in VTK hexa8 order."""
    p0 = points[cells[:, 0]]
    e1 = points[cells[:, 1]] - p0
    e3 = points[cells[:, 3]] - p0
    e4 = points[cells[:, 4]] - p0
    return np.einsum("ij,ij->i", np.cross(e1, e3), e4)


def surface_mesh(points: np.ndarray, cells: np.ndarray) -> trimesh.Trimesh:
    """Watertight, outward-oriented triangle surface of a hexa8 mesh.

    points: [N, 3] node coordinates; cells: [C, 8] VTK hexa8 connectivity. Each boundary quad
    (a, b, c, d) becomes triangles (a, b, c) and (a, c, d). The mesh holds only surface nodes;
    ``mesh.metadata["node_ids"]`` [V] maps its vertices back to rows of ``points``.

    A mesh whose cells are all mirrored (negative orientation) is reoriented; one with some
    inverted cells, no boundary, coincident unmerged surface nodes, open or non-manifold edges,
    or inconsistent winding raises ValueError naming the problem. Not detected: a non-conforming
    (hanging-node) interface, whose two sides close into a watertight internal double wall.
    """
    points = _check_points(points)
    cells = _check_cells(cells, len(points))
    orientation = _cell_orientation(points, cells)
    if (orientation == 0).any():
        raise ValueError(f"{int((orientation == 0).sum())} cells are degenerate (zero volume)")
    if (orientation < 0).all():
        cells = cells[:, [4, 5, 6, 7, 0, 1, 2, 3]]  # a consistently mirrored node order
    elif (orientation < 0).any():
        bad = np.flatnonzero(orientation < 0)
        raise ValueError(
            f"{len(bad)} of {len(cells)} cells are inverted (negative volume in VTK hexa8 node "
            f"order), e.g. cell {bad[0]}; reorder their nodes"
        )
    quads = boundary_quads(cells)
    if len(quads) == 0:
        raise ValueError("the hex mesh has no boundary faces, so no surface can be built")
    triangles = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    node_ids, faces = np.unique(triangles, return_inverse=True)
    faces = faces.reshape(-1, 3)
    _, coincident = np.unique(points[node_ids], axis=0, return_counts=True)
    if (coincident > 1).any():
        # distinct nodes at one place: an unmerged interface would become an internal double wall
        raise ValueError(
            f"{int((coincident > 1).sum())} surface positions hold more than one node; merge "
            "coincident nodes before building the surface"
        )
    mesh = trimesh.Trimesh(vertices=points[node_ids], faces=faces, process=False)
    mesh.metadata["node_ids"] = node_ids

    edges = np.sort(mesh.edges, axis=1)
    _, edge_counts = np.unique(edges, axis=0, return_counts=True)
    if (edge_counts != 2).any():
        raise ValueError(
            f"the boundary surface is not watertight: {int((edge_counts != 2).sum())} edges are "
            "used by other than two triangles (a hole, hanging nodes, or cells touching only "
            "along an edge)"
        )
    if not mesh.is_winding_consistent:
        raise ValueError("the boundary surface has inconsistent triangle winding")
    if mesh.volume <= 0:
        raise ValueError(f"the boundary surface encloses a non-positive volume ({mesh.volume})")
    return mesh


def nearest_surface_vectors(
    mesh: trimesh.Trimesh, points: np.ndarray, on_surface: np.ndarray
) -> np.ndarray:
    """[N, 3] vector from each point to its nearest surface point; zero for on-surface nodes."""
    vectors = np.zeros_like(points)
    inside = ~on_surface
    if inside.any():
        closest, _, _ = trimesh.proximity.closest_point(mesh, points[inside])
        vectors[inside] = closest - points[inside]
    return vectors


def axis_ray_distances(
    mesh: trimesh.Trimesh, points: np.ndarray, on_surface: np.ndarray
) -> np.ndarray:
    """[N, 6] distance from each point to the first surface hit along +x, -x, +y, -y, +z, -z.

    Interior nodes cast from the node itself. A surface node would hit its own faces at distance
    zero, so its rays start ``RAY_START_DEPTH`` x (bounding-box diagonal) inside the part, against
    the vertex normal; the distance is still measured from the node along the ray, so a direction
    leaving the part at the node gives ~0 and one entering it gives the chord through the part.
    A ray with no hit (impossible from inside a closed surface, but guarded) gets the extent of the
    surface's bounding box along that axis.
    """
    normals = np.zeros_like(points)
    normals[mesh.metadata["node_ids"]] = mesh.vertex_normals
    depth = RAY_START_DEPTH * float(np.linalg.norm(mesh.extents))
    origins = points - depth * normals * on_surface[:, None]

    n = len(points)
    ray_origins = np.repeat(origins, 6, axis=0)  # [6N, 3], ray r = 6 * node + direction
    ray_directions = np.tile(RAY_DIRECTIONS, (n, 1))
    locations, index_ray, _ = RayMeshIntersector(mesh).intersects_location(
        ray_origins, ray_directions, multiple_hits=True
    )
    ahead_of_origin = np.einsum(
        "ij,ij->i", locations - ray_origins[index_ray], ray_directions[index_ray]
    )
    from_node = np.einsum(
        "ij,ij->i", locations - points[index_ray // 6], ray_directions[index_ray]
    )
    keep = ahead_of_origin >= 0
    distances = np.full(6 * n, np.inf)
    np.minimum.at(distances, index_ray[keep], np.maximum(from_node[keep], 0.0))
    distances = distances.reshape(n, 6)
    fallback = np.repeat(mesh.extents, 2)  # x, x, y, y, z, z
    return np.where(np.isfinite(distances), distances, fallback[None, :])


def sdf_features(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """[N, 11] float32 node features in ``FEATURE_NAMES`` order for a hexa8 part mesh.

    points: [N, 3] node coordinates (mm); cells: [C, 8] VTK hexa8 connectivity. Nodes used by no
    cell are treated as interior points (measured against the surface all the same).
    """
    points = _check_points(points)
    mesh = surface_mesh(points, cells)
    on_surface = np.zeros(len(points), dtype=bool)
    on_surface[mesh.metadata["node_ids"]] = True
    vectors = nearest_surface_vectors(mesh, points, on_surface)
    rays = axis_ray_distances(mesh, points, on_surface)
    return np.concatenate(
        [
            on_surface[:, None].astype(np.float64),
            vectors,
            np.linalg.norm(vectors, axis=1, keepdims=True),
            rays,
        ],
        axis=1,
    ).astype(np.float32)


def hex_grid(
    mask: np.ndarray,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Structured hexa8 mesh of the cells of a boolean grid, shared nodes merged.

    mask: [nx, ny, nz] bool, True where grid cell (i, j, k) is part of the solid; cell (i, j, k)
    spans origin + spacing * ([i, i+1], [j, j+1], [k, k+1]). Returns points [N, 3] float64 (only
    nodes used by some cell, in C order of their grid index) and cells [C, 8] int64 in VTK hexa8
    order, positively oriented.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3 or mask.dtype != bool:
        raise ValueError(f"mask must be a 3-D bool array, got {mask.dtype} of shape {mask.shape}")
    spacing = np.asarray(spacing, dtype=np.float64)
    origin = np.asarray(origin, dtype=np.float64)
    if spacing.shape != (3,) or not (spacing > 0).all():
        raise ValueError(f"spacing must be three positive lengths, got {spacing}")
    if origin.shape != (3,):
        raise ValueError(f"origin must be three coordinates, got {origin}")
    nx, ny, nz = mask.shape
    node_index = np.arange((nx + 1) * (ny + 1) * (nz + 1)).reshape(nx + 1, ny + 1, nz + 1)
    i, j, k = np.nonzero(mask)
    corners = [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0)]
    corners += [(a, b, 1) for a, b, _ in corners]  # VTK: top quad above the bottom one
    cells = np.stack([node_index[i + a, j + b, k + c] for a, b, c in corners], axis=1)
    used, cells = np.unique(cells, return_inverse=True)
    grid = np.stack(np.unravel_index(used, node_index.shape), axis=1)
    points = origin + grid * spacing
    return points, cells.reshape(-1, 8).astype(np.int64)
