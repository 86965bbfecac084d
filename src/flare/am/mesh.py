"""Edges and cell quality of hexa8 part meshes, the quantities the LPBF filter tests (SPEC §5).

Meshes are ``points [N, 3]`` (mm) and ``cells [C, 8]`` node indices in VTK hexa8 order: nodes 0-3
go round the bottom quad, 4-7 round the top quad above them. A hexahedron has twelve edges: the
four of each quad and the four vertical ones joining node k to node k + 4.
"""
from __future__ import annotations

import numpy as np

# The twelve edges of a VTK hexa8 as pairs of local node numbers: bottom quad, top quad, verticals.
HEX_EDGES = np.array(
    [
        [0, 1], [1, 2], [2, 3], [3, 0],
        [4, 5], [5, 6], [6, 7], [7, 4],
        [0, 4], [1, 5], [2, 6], [3, 7],
    ]
)


def _check_cells(cells: np.ndarray) -> np.ndarray:
    cells = np.asarray(cells)
    if cells.ndim != 2 or cells.shape[1] != 8:
        raise ValueError(f"cells must be hexa8 connectivity of shape [C, 8], got {cells.shape}")
    if not np.issubdtype(cells.dtype, np.integer):
        raise ValueError(f"cells must hold integer node indices, got dtype {cells.dtype}")
    if len(cells) and cells.min() < 0:
        raise ValueError(f"cells hold a negative node index ({cells.min()})")
    return cells.astype(np.int64, copy=False)


def hex_edges(cells: np.ndarray) -> np.ndarray:
    """The unique undirected edges of a hexa8 mesh.

    cells: [C, 8] node indices, VTK hexa8 order. Returns [E, 2] int64 node-index pairs (i, j) with
    i < j, sorted lexicographically; an edge shared by several cells appears once. A cell whose
    edge joins a node to itself (a collapsed hexahedron) is a ValueError naming the cell.
    """
    cells = _check_cells(cells)
    if len(cells) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = cells[:, HEX_EDGES]  # [C, 12, 2]
    collapsed = pairs[..., 0] == pairs[..., 1]
    if collapsed.any():
        bad = np.flatnonzero(collapsed.any(axis=1))
        raise ValueError(
            f"{len(bad)} cells have an edge joining a node to itself (collapsed hexahedra), "
            f"e.g. cell {bad[0]} with nodes {cells[bad[0]].tolist()}"
        )
    low = pairs.min(axis=2).ravel()
    high = pairs.max(axis=2).ravel()
    # One integer key per pair, low-major, so sorting the keys sorts the pairs lexicographically;
    # much faster than np.unique(axis=0) on the ~12 C rows of a large mesh.
    stride = int(cells.max()) + 1
    keys = np.unique(low * stride + high)
    return np.stack([keys // stride, keys % stride], axis=1)


def hex_edge_lengths(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """[C, 12] lengths (units of ``points``, mm) of each cell's edges in ``HEX_EDGES`` order."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {points.shape}")
    cells = _check_cells(cells)
    if len(cells) and cells.max() >= len(points):
        raise ValueError(f"cells refer to node {cells.max()} but there are only {len(points)} points")
    ends = points[cells[:, HEX_EDGES]]  # [C, 12, 2, 3]
    return np.linalg.norm(ends[:, :, 1] - ends[:, :, 0], axis=-1)


def hex_aspect_ratio(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """[C] aspect ratio of each cell: its longest edge over its shortest (1 for a cube).

    points: [N, 3] node coordinates (mm); cells: [C, 8] VTK hexa8 connectivity. A cell with a
    zero-length edge gets ``inf``, so that any threshold excludes it.
    """
    lengths = hex_edge_lengths(points, cells)
    if len(lengths) == 0:
        return np.zeros(0)
    shortest, longest = lengths.min(axis=1), lengths.max(axis=1)
    return np.divide(longest, shortest, out=np.full_like(longest, np.inf), where=shortest > 0)
