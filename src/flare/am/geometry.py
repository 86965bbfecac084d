"""Part geometries for the LPBF case generator, and their hexa8 voxel meshes (SPEC §5).

The paper's parts come from the Fusion 360 segmentation dataset; here they come either from STL
files (:func:`load_stl_parts`) or from a few procedural families of typical LPBF test parts
(:data:`PART_FAMILIES`: blocks with holes, brackets, beams, towers, bridges, tubes, gusseted
plates), built from trimesh primitives and manifold3d booleans. Every part is a watertight
triangle surface in mm, z up, resting on the build plate z = 0 and centred in x and y.

:func:`voxelize` turns a surface into the hexa8 mesh the simulator builds layer by layer: one cell
per grid box whose centre lies inside the surface, the z spacing being the layer height, and only
the cells face-connected to the bottom layer kept (a piece floating in powder cannot be printed
without supports, and the simulator would have nothing to hold it by).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import scipy.ndimage
import trimesh

from flare.am.sdf import hex_grid

# Facets of a cylinder: enough for round holes at the 1-3 mm cells we mesh with, few enough to
# keep the booleans fast.
CYLINDER_SECTIONS = 48

# Parts may stick out of their box by this much (mm) before procedural_part raises: round-off of
# the booleans and of the re-centring.
BOX_TOLERANCE = 1e-6


# ----------------------------------------------------------------------------- primitives


def _box(lo, hi) -> trimesh.Trimesh:
    """Axis-aligned box between the corners lo and hi (mm)."""
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    return trimesh.creation.box(
        extents=hi - lo, transform=trimesh.transformations.translation_matrix((lo + hi) / 2)
    )


def _cylinder(radius: float, start, end) -> trimesh.Trimesh:
    """Solid cylinder of the given radius (mm) whose axis runs from start to end."""
    return trimesh.creation.cylinder(
        radius=radius, segment=np.array([start, end], dtype=float), sections=CYLINDER_SECTIONS
    )


def _union(meshes: list[trimesh.Trimesh]) -> trimesh.Trimesh:
    return trimesh.boolean.union(meshes, engine="manifold")


def _difference(mesh: trimesh.Trimesh, cutters: list[trimesh.Trimesh]) -> trimesh.Trimesh:
    return trimesh.boolean.difference([mesh, *cutters], engine="manifold")


# ----------------------------------------------------------------------------- part families
# Each builder draws its dimensions from rng and returns a solid inside [-s/2, s/2]^2 x [0, 1.5 s]
# (s = size, mm); procedural_part re-centres it. Walls are at least ~0.12 s thick so that a part of
# size 40 keeps a few 2.5 mm cells across every wall.


def block_with_holes(rng: np.random.Generator, size: float) -> trimesh.Trimesh:
    """A block with one to three vertical through-holes and maybe one horizontal one along y."""
    length, width = rng.uniform(0.7, 0.95) * size, rng.uniform(0.5, 0.9) * size
    height = rng.uniform(0.3, 0.9) * size
    block = _box([-length / 2, -width / 2, 0.0], [length / 2, width / 2, height])
    n_holes = int(rng.integers(1, 4))
    pitch = length / n_holes
    radius = rng.uniform(0.15, 0.3) * min(pitch, width)
    cutters = [
        _cylinder(radius, [x, 0.0, -1.0], [x, 0.0, height + 1.0])
        for x in -length / 2 + pitch * (np.arange(n_holes) + 0.5)
    ]
    if height > 0.6 * size and rng.random() < 0.5:
        side = rng.uniform(0.1, 0.18) * size
        cutters.append(_cylinder(side, [0.0, -width, 0.6 * height], [0.0, width, 0.6 * height]))
    return _difference(block, cutters)


def l_bracket(rng: np.random.Generator, size: float) -> trimesh.Trimesh:
    """A base plate with an upright wall along one edge, maybe a hole through the wall."""
    length, width = rng.uniform(0.6, 0.95) * size, rng.uniform(0.4, 0.9) * size
    base_t, wall_t = rng.uniform(0.12, 0.25) * size, rng.uniform(0.12, 0.25) * size
    height = rng.uniform(0.5, 1.4) * size
    base = _box([-length / 2, -width / 2, 0.0], [length / 2, width / 2, base_t])
    wall = _box([-length / 2, -width / 2, base_t / 2], [-length / 2 + wall_t, width / 2, height])
    part = _union([base, wall])
    if rng.random() < 0.5:
        z = (base_t + height) / 2
        radius = 0.25 * min(width, height - base_t)
        hole = _cylinder(radius, [-length / 2 - 1.0, 0.0, z], [-length / 2 + wall_t + 1.0, 0.0, z])
        part = _difference(part, [hole])
    return part


def t_beam(rng: np.random.Generator, size: float) -> trimesh.Trimesh:
    """A T section extruded along y: a web standing on the plate under an overhanging flange."""
    span = rng.uniform(0.6, 0.95) * size
    flange_w, flange_t = rng.uniform(0.6, 0.95) * size, rng.uniform(0.12, 0.2) * size
    web_t, height = rng.uniform(0.15, 0.3) * size, rng.uniform(0.5, 1.2) * size
    web = _box([-web_t / 2, -span / 2, 0.0], [web_t / 2, span / 2, height - flange_t / 2])
    flange = _box([-flange_w / 2, -span / 2, height - flange_t], [flange_w / 2, span / 2, height])
    return _union([web, flange])


def stepped_tower(rng: np.random.Generator, size: float) -> trimesh.Trimesh:
    """Two to four stacked blocks, each one smaller in plan than the one below."""
    n_steps = int(rng.integers(2, 5))
    height = rng.uniform(0.6, 1.45) * size
    step_h = height / n_steps
    footprint = np.array([rng.uniform(0.7, 0.95), rng.uniform(0.7, 0.95)]) * size
    shrink = rng.uniform(0.6, 0.85)
    blocks = []
    for k in range(n_steps):
        half = footprint * shrink**k / 2
        top = (k + 1) * step_h
        bottom = max(k * step_h - 0.5 * step_h, 0.0)  # overlap the block below
        blocks.append(_box([-half[0], -half[1], bottom], [half[0], half[1], top]))
    return _union(blocks)


def arch_bridge(rng: np.random.Generator, size: float) -> trimesh.Trimesh:
    """A block with a round-topped tunnel along y through its base: two legs and a deck."""
    length, width = rng.uniform(0.75, 0.95) * size, rng.uniform(0.3, 0.8) * size
    height = rng.uniform(0.5, 1.0) * size
    leg = rng.uniform(0.15, 0.25) * length
    deck = rng.uniform(0.15, 0.3) * height
    radius = min(length / 2 - leg, height - deck)
    block = _box([-length / 2, -width / 2, 0.0], [length / 2, width / 2, height])
    spring = height - deck - radius  # height of the arch's centre line
    tunnel = [_cylinder(radius, [0.0, -width, spring], [0.0, width, spring])]
    if spring > 1e-6 * size:  # straight tunnel walls below the round top
        tunnel.append(_box([-radius, -width, -1.0], [radius, width, spring]))
    return _difference(block, tunnel)


def ring(rng: np.random.Generator, size: float) -> trimesh.Trimesh:
    """An upright tube (annulus extruded along z), maybe closed by a floor."""
    r_out = rng.uniform(0.3, 0.475) * size
    r_in = r_out - rng.uniform(0.12, 0.25) * size
    height = rng.uniform(0.3, 1.2) * size
    outer = _cylinder(r_out, [0, 0, 0], [0, 0, height])
    tube = _difference(outer, [_cylinder(r_in, [0, 0, -1.0], [0, 0, height + 1.0])])
    if rng.random() < 0.3:
        floor = _cylinder(0.5 * (r_in + r_out), [0, 0, 0], [0, 0, 0.15 * size])
        tube = _union([tube, floor])
    return tube


def gusseted_plate(rng: np.random.Generator, size: float) -> trimesh.Trimesh:
    """A base plate with a central upright wall braced by triangular gussets on both sides."""
    length, width = rng.uniform(0.7, 0.95) * size, rng.uniform(0.6, 0.95) * size
    base_t, wall_t = rng.uniform(0.12, 0.2) * size, rng.uniform(0.12, 0.2) * size
    height = rng.uniform(0.5, 1.3) * size
    gusset_t = rng.uniform(0.12, 0.2) * size
    n_gussets = int(rng.integers(1, 4))
    parts = [
        _box([-length / 2, -width / 2, 0.0], [length / 2, width / 2, base_t]),
        _box([-wall_t / 2, -width / 2, base_t / 2], [wall_t / 2, width / 2, height]),
    ]
    reach = 0.9 * (length / 2 - wall_t / 2)  # horizontal leg of each gusset
    rise = 0.8 * (height - base_t)  # vertical leg
    pitch = width / n_gussets
    for y in -width / 2 + pitch * (np.arange(n_gussets) + 0.5):
        for side in (-1.0, 1.0):
            x0 = side * wall_t / 4  # start inside the wall
            x1 = side * (wall_t / 2 + reach)
            z0 = base_t / 2  # start inside the plate
            corners = [[x0, z0], [x1, z0], [x0, base_t + rise]]
            vertices = [[x, y + dy, z] for x, z in corners for dy in (-gusset_t / 2, gusset_t / 2)]
            parts.append(trimesh.convex.convex_hull(np.array(vertices)))
    return _union(parts)


# name -> builder(rng, size) of a solid trimesh; procedural_part picks one of these.
PART_FAMILIES: dict[str, Callable[[np.random.Generator, float], trimesh.Trimesh]] = {
    "block_with_holes": block_with_holes,
    "l_bracket": l_bracket,
    "t_beam": t_beam,
    "stepped_tower": stepped_tower,
    "arch_bridge": arch_bridge,
    "ring": ring,
    "gusseted_plate": gusseted_plate,
}


def place_on_plate(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A copy of mesh moved so that it rests on z = 0 with its bounding box centred in x and y."""
    lo, hi = mesh.bounds
    offset = -np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
    placed = mesh.copy()
    placed.apply_translation(offset)
    return placed


def build_part(family: str, seed: int, size: float = 40.0) -> trimesh.Trimesh:
    """The part of the named family with dimensions drawn from seed, placed on the plate (mm)."""
    if family not in PART_FAMILIES:
        raise ValueError(f"unknown part family {family!r}; known: {sorted(PART_FAMILIES)}")
    if not np.isfinite(size) or size <= 0:
        raise ValueError(f"size must be a positive length (mm), got {size}")
    rng = np.random.default_rng([int(seed), list(PART_FAMILIES).index(family)])
    mesh = place_on_plate(PART_FAMILIES[family](rng, float(size)))
    if not mesh.is_watertight or mesh.volume <= 0:
        raise RuntimeError(
            f"part family {family!r} (seed {seed}, size {size}) built a surface that is not a "
            f"closed solid (watertight {mesh.is_watertight}, volume {mesh.volume:.3g})"
        )
    lo, hi = mesh.bounds
    limit = np.array([size / 2, size / 2, 1.5 * size]) + BOX_TOLERANCE
    if (hi > limit).any() or (lo[:2] < -limit[:2]).any():
        raise RuntimeError(
            f"part family {family!r} (seed {seed}, size {size}) spans {lo} .. {hi}, outside its "
            f"box [-{size / 2}, {size / 2}]^2 x [0, {1.5 * size}]"
        )
    return mesh


def procedural_part(seed: int, size: float = 40.0) -> tuple[str, trimesh.Trimesh]:
    """(family name, part) with the family and its dimensions drawn from seed (deterministic).

    The part is watertight, rests on z = 0, is centred in x and y and lies inside
    [-size/2, size/2]^2 x [0, 1.5 size] (mm).
    """
    rng = np.random.default_rng(int(seed))
    family = list(PART_FAMILIES)[int(rng.integers(len(PART_FAMILIES)))]
    return family, build_part(family, seed, size)


# ----------------------------------------------------------------------------- STL parts


def load_stl_part(path) -> trimesh.Trimesh:
    """The part surface of one STL file (mm), resting on z = 0 and centred in x and y.

    Raises ValueError naming the file when it holds no triangles or is not a closed surface.
    """
    path = Path(path)
    try:
        mesh = trimesh.load_mesh(path, file_type="stl")
    except Exception as error:  # trimesh raises many types for a broken file
        raise ValueError(f"{path}: cannot read the STL file ({error})") from error
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError(f"{path}: the STL file holds no triangles")
    if not mesh.is_watertight:
        raise ValueError(
            f"{path}: the STL surface is not watertight (open or non-manifold edges), so its "
            "inside is undefined; repair it first"
        )
    if mesh.volume < 0:
        mesh.invert()  # an inside-out but closed surface
    return place_on_plate(mesh)


def load_stl_parts(folder) -> list[tuple[str, trimesh.Trimesh]]:
    """(file stem, part) for every *.stl in folder, sorted by name; see :func:`load_stl_part`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of STL parts")
    return [(path.stem, load_stl_part(path)) for path in sorted(folder.glob("*.stl"))]


# ----------------------------------------------------------------------------- voxel mesh


def voxel_mask(
    mesh: trimesh.Trimesh, cell_size: float, layer_height: float
) -> tuple[np.ndarray, np.ndarray]:
    """(mask [nx, ny, nz] bool, origin [3] mm) of the printable cells of a part on the layer grid.

    The grid starts at the part's lowest x, y and at z = 0 (the plate); cell (i, j, k) spans
    origin + (cell_size, cell_size, layer_height) * ([i, i+1], [j, j+1], [k, k+1]). A cell is
    solid when its centre is inside the surface; only the cells face-connected to a solid cell of
    the bottom layer are kept.
    """
    for name, value in (("cell_size", cell_size), ("layer_height", layer_height)):
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive length (mm), got {value}")
    spacing = np.array([cell_size, cell_size, layer_height], dtype=float)
    lo, hi = mesh.bounds
    origin = np.array([lo[0], lo[1], 0.0])
    shape = np.maximum(np.ceil((hi - origin) / spacing - 1e-9).astype(int), 1)
    axes = [origin[d] + spacing[d] * (np.arange(shape[d]) + 0.5) for d in range(3)]
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    inside = mesh.contains(centres).reshape(shape)
    labels, _ = scipy.ndimage.label(inside)  # default structure: 6-connectivity
    grounded = np.unique(labels[:, :, 0])
    return np.isin(labels, grounded[grounded > 0]), origin


def voxelize(
    mesh: trimesh.Trimesh, cell_size: float, layer_height: float
) -> tuple[np.ndarray, np.ndarray]:
    """Hexa8 mesh of a part on the layer grid: points [N, 3] float64 mm, cells [C, 8] int64 (VTK).

    Cells as in :func:`voxel_mask` (centre inside the surface, face-connected to the bottom
    layer), meshed by :func:`flare.am.sdf.hex_grid`. Raises ValueError when no cell is left (the
    part is thinner than a cell or does not reach the plate).
    """
    mask, origin = voxel_mask(mesh, cell_size, layer_height)
    if not mask.any():
        raise ValueError(
            f"voxelizing the part (bounds {mesh.bounds.tolist()} mm) at cell size {cell_size} mm "
            f"and layer height {layer_height} mm leaves no cell connected to the plate; use "
            "smaller cells"
        )
    return hex_grid(mask, spacing=(cell_size, cell_size, layer_height), origin=tuple(origin))
