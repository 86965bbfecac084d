"""Elasticity data in the layout of Geo-FNO's unit-cell benchmark, generated with linear elasticity.

The published benchmark (Geo-FNO, Li et al. 2022) is a unit cell ``[0, 1]²`` with a central void of
random star shape; the bottom edge is clamped and a traction ``t = [0, 100]`` pulls the top edge; the
material is hyperelastic (incompressible Rivlin–Saunders); the stress is stored at 972 points per
sample. This module rebuilds that data set with **linear** elasticity, so the stresses are not the
published ones, but the layout, the geometry prior and the loading are the same.

Recipe, per sample:

1. Void boundary ``r(θ)``, centred at ``(0.5, 0.5)`` (:func:`random_void_radius`): a latent Gaussian
   process on the angle, squashed into ``[0.2, 0.4]`` — Geo-FNO's prior
   ``r = 0.2 + 0.2 / (1 + exp(r̃))``, ``r̃ ~ N(0, 4² (-d²/dθ² + 3²)^(-1))`` on ``θ ∈ [0, 2π)`` periodic,
   as we read the paper. The void stays at least 0.1 away from the cell's edges.
2. O-grid mesh fitted to the void (:func:`fitted_mesh`): rays from the centre to points spaced
   evenly along the square's perimeter (corners included), nodes interpolated along each ray from
   the void boundary to the square, each quadrilateral split into two triangles.
3. Linear elasticity, plane strain, quadratic (P2) triangles, solved with scikit-fem
   (:func:`solve_tension`): bottom edge clamped (``u = 0``), top edge traction ``[0, 100]``, sides and
   void traction-free, no body force.
4. The von Mises stress (plane strain: ``σ_zz = ν (σ_xx + σ_yy)`` enters) at the 972 sample points
   (:func:`sample_points`): the nodes of a 108-ray × 9-level O-grid, which are also nodes of the
   solution mesh (216 rays × 17 levels: the sample grid halved in both directions, 6912 triangles).
   Nodal stresses are the average over the elements that share the node. Against a mesh twice as
   fine again, the sampled von Mises stress differs by under 1 % (relative L2) away from the bottom
   corners; at the two bottom corners, where the clamped edge meets a free one, the exact stress is
   singular and the sampled value depends on the mesh (as in any clamped-cell data set).

Units: lengths in cell widths (dimensionless); stresses in the units of the traction (taken as Pa).
The material constants are set so the small-strain shear modulus matches Geo-FNO's
Rivlin–Saunders constants (``μ = 2 (C1 + C2)``, ``C1 = 1.863e5``, ``C2 = 9.79e3``) with ``ν = 0.45``
(nearly incompressible, as the original, yet well within what P2 triangles handle without locking).
As the only prescribed displacement is zero, the stress field does not depend on ``E``, only on ``ν``.

Files are written in the published layout: ``Random_UnitCell_sigma_10.npy`` ``[972, S]`` and
``Random_UnitCell_XY_10.npy`` ``[972, 2, S]`` (sample axis last), float64. The published files'
dtype is not confirmed here; Geo-FNO's loaders cast to float32 either way.
"""
from __future__ import annotations

import os
import sys
import tempfile
from typing import Callable, NamedTuple

import numpy as np
import scipy.sparse.linalg
import skfem
from skfem.models.elasticity import linear_elasticity
from tqdm import tqdm

SIGMA_FILE = "Random_UnitCell_sigma_10.npy"
XY_FILE = "Random_UnitCell_XY_10.npy"

CENTRE = (0.5, 0.5)
# 108 rays × 9 radial levels = 972 sample points: near the void the points are about as far apart
# along the ray as across (≈ 0.02), and 27 rays end on each edge of the cell.
SAMPLE_RAYS = 108
SAMPLE_LEVELS = 9
NUM_POINTS = SAMPLE_RAYS * SAMPLE_LEVELS
MESH_REFINE = 2  # the solution mesh halves the sample grid's spacing in both directions
RADIAL_GRADING = 1.0  # see fitted_mesh: outer layers ≈ e^1 times as thick as the inner ones

# Rivlin–Saunders constants of Geo-FNO; the linear material matches their small-strain shear modulus.
RIVLIN_C1, RIVLIN_C2 = 1.863e5, 9.79e3
SHEAR_MODULUS = 2.0 * (RIVLIN_C1 + RIVLIN_C2)
POISSON = 0.45
YOUNG = 2.0 * SHEAR_MODULUS * (1.0 + POISSON)
TRACTION = 100.0

RadiusFn = Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------- geometry


def random_void_radius(
    rng: np.random.Generator,
    num_modes: int = 10,
    mean_radius: float = 0.3,
    radius_spread: float = 0.1,
    latent_scale: float = 4.0,
    latent_tau: float = 3.0,
) -> RadiusFn:
    """One random star-shaped void: returns ``r(θ)``, a vectorised function of the angle (radians).

    Latent field, a Fourier series truncated after ``num_modes`` harmonics (Karhunen–Loève expansion
    of the Gaussian process ``N(0, s² (-d²/dθ² + τ²)^(-1))`` on the periodic interval ``[0, 2π)``,
    ``s = latent_scale``, ``τ = latent_tau``)::

        r̃(θ) = s / (τ √(2π)) · ξ_0 + Σ_{k=1..K} s / √(π (k² + τ²)) · (ξ_k cos kθ + η_k sin kθ)

    with ``ξ, η ~ N(0, 1)`` i.i.d. (``2K + 1`` draws from ``rng``, in the order ξ_0..ξ_K, η_1..η_K).
    Radius, a smooth clip of the series into ``[r0 - Δ, r0 + Δ]`` (``r0 = mean_radius``,
    ``Δ = radius_spread``)::

        r(θ) = r0 + Δ · tanh(r̃(θ) / 2)

    With the defaults this is Geo-FNO's ``0.2 + 0.2 / (1 + exp(r̃))`` (the same law, as ``r̃`` is
    symmetric), so ``0.2 < r < 0.4`` and the void keeps 0.1 from the cell's edges.
    """
    if int(num_modes) != num_modes or num_modes < 0:
        raise ValueError(f"num_modes must be a non-negative integer; got {num_modes!r}")
    num_modes = int(num_modes)
    if not (radius_spread >= 0 and mean_radius - radius_spread > 0):
        raise ValueError(
            f"need 0 <= radius_spread < mean_radius; got mean_radius={mean_radius}, radius_spread={radius_spread}"
        )
    if mean_radius + radius_spread >= 0.5:
        raise ValueError(
            f"the void must fit inside the unit cell: mean_radius + radius_spread = "
            f"{mean_radius + radius_spread} must be < 0.5"
        )
    if not (latent_scale >= 0 and latent_tau > 0):
        raise ValueError(f"need latent_scale >= 0 and latent_tau > 0; got {latent_scale}, {latent_tau}")
    k = np.arange(1, num_modes + 1, dtype=np.float64)
    xi = rng.standard_normal(num_modes + 1)
    eta = rng.standard_normal(num_modes)
    a0 = latent_scale / (latent_tau * np.sqrt(2.0 * np.pi)) * xi[0]
    amplitude = latent_scale / np.sqrt(np.pi * (k**2 + latent_tau**2))
    a, b = amplitude * xi[1:], amplitude * eta

    def radius(theta):
        theta = np.asarray(theta, dtype=np.float64)
        kt = np.multiply.outer(theta, k)  # [..., K]
        latent = a0 + np.cos(kt) @ a + np.sin(kt) @ b
        return mean_radius + radius_spread * np.tanh(0.5 * latent)

    return radius


def _perimeter_points(n_rays: int) -> np.ndarray:
    """``n_rays`` points evenly spaced along the unit square's perimeter, counter-clockwise from the
    corner ``(1, 0)``; every corner is one of them. ``[n_rays, 2]``."""
    per_side = n_rays // 4
    s = np.arange(per_side) / per_side  # position along one side, corner first
    sides = [
        np.stack([np.ones_like(s), s], axis=1),  # right edge, upwards from (1, 0)
        np.stack([1.0 - s, np.ones_like(s)], axis=1),  # top edge, leftwards from (1, 1)
        np.stack([np.zeros_like(s), 1.0 - s], axis=1),  # left edge, downwards from (0, 1)
        np.stack([s, np.zeros_like(s)], axis=1),  # bottom edge, rightwards from (0, 0)
    ]
    return np.concatenate(sides)


def ogrid_nodes(radius_fn: RadiusFn, n_theta: int, n_radial: int, grading: float = RADIAL_GRADING,
                margin: float = 0.02) -> np.ndarray:
    """Nodes of the O-grid around the void, ``[n_radial, n_theta, 2]``: ``[j, i]`` is level ``j`` on ray ``i``.

    Ray ``i`` runs from the centre to the ``i``-th of ``n_theta`` points spaced evenly along the
    square's perimeter (counter-clockwise from the corner ``(1, 0)``; ``n_theta`` a multiple of 4 so
    the corners are rays). Along the ray, at angle ``θ_i`` and with ``R_i`` the distance to the square,
    level ``j`` sits at distance ``ρ = r(θ_i) + (R_i - r(θ_i)) · g(j / (n_radial - 1))`` from the centre,
    ``g(s) = (e^(βs) - 1) / (e^β - 1)`` (``β = grading``; ``β = 0`` means even spacing), so level 0
    lies on the void and the last level on the square. The levels depend only on ``s``, so the nodes of
    ``(n_theta, n_radial)`` are also nodes of ``(m·n_theta, m·(n_radial - 1) + 1)``.

    Raises ValueError unless ``0 < r(θ_i) <= R_i - margin`` on every ray.
    """
    if int(n_theta) != n_theta or n_theta < 4 or n_theta % 4:
        raise ValueError(f"n_theta must be a multiple of 4 (the square's corners are rays); got {n_theta!r}")
    if int(n_radial) != n_radial or n_radial < 2:
        raise ValueError(f"n_radial must be an integer >= 2; got {n_radial!r}")
    n_theta, n_radial = int(n_theta), int(n_radial)
    outer = _perimeter_points(n_theta)
    centre = np.asarray(CENTRE)
    offset = outer - centre
    reach = np.hypot(offset[:, 0], offset[:, 1])  # R_i: centre to the square along ray i
    direction = offset / reach[:, None]
    theta = np.arctan2(offset[:, 1], offset[:, 0])
    r_void = np.asarray(radius_fn(theta), dtype=np.float64)
    if r_void.shape != theta.shape or not np.all(np.isfinite(r_void)):
        raise ValueError(f"radius_fn must return finite radii of the angles' shape {theta.shape}; got {r_void.shape}")
    bad = (r_void <= 0) | (r_void > reach - margin)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"void radius {r_void[i]:.4g} at θ = {theta[i]:.4g} is not positive or leaves less than {margin} "
            f"to the cell's edge (at distance {reach[i]:.4g}); keep the void inside the unit cell"
        )
    s = np.linspace(0.0, 1.0, n_radial)
    g = s if grading == 0 else np.expm1(grading * s) / np.expm1(grading)
    g[-1] = 1.0
    rho = r_void[None, :] + (reach - r_void)[None, :] * g[:, None]  # [n_radial, n_theta]
    nodes = centre + rho[..., None] * direction[None, :, :]
    nodes[-1] = outer  # exactly on the square, so the edge tags are exact
    return nodes


def fitted_mesh(radius_fn: RadiusFn, n_theta: int, n_radial: int, grading: float = RADIAL_GRADING) -> skfem.MeshTri:
    """Conforming triangle mesh of the unit cell minus the void, fitted to the void's boundary.

    Nodes are those of :func:`ogrid_nodes`; node ``(level j, ray i)`` has index ``j * n_theta + i``.
    Each quadrilateral between rays ``i, i+1`` and levels ``j, j+1`` is split along one diagonal,
    alternating in a checkerboard so the mesh has no preferred direction; triangles are
    counter-clockwise. Boundary facets are tagged ``'bottom'``, ``'top'``, ``'left'``, ``'right'``
    (the square's edges) and ``'void'``.
    """
    nodes = ogrid_nodes(radius_fn, n_theta, n_radial, grading)
    n_theta, n_radial = nodes.shape[1], nodes.shape[0]
    j, i = np.meshgrid(np.arange(n_radial - 1), np.arange(n_theta), indexing="ij")
    j, i = j.ravel(), i.ravel()
    inner, inner_next = j * n_theta + i, j * n_theta + (i + 1) % n_theta
    outer, outer_next = inner + n_theta, inner_next + n_theta
    # Rays turn counter-clockwise and levels go outwards, so (inner, outer, outer_next) is
    # counter-clockwise.
    flip = (i + j) % 2 == 1
    tri_a = np.where(flip, [inner, outer, inner_next], [inner, outer, outer_next])
    tri_b = np.where(flip, [inner_next, outer, outer_next], [inner, outer_next, inner_next])
    triangles = np.concatenate([tri_a, tri_b], axis=1)
    # sort_t=False keeps each triangle's vertex order (scikit-fem sorts it by default), so the
    # triangles stay counter-clockwise.
    mesh = skfem.MeshTri(nodes.reshape(-1, 2).T.copy(), triangles, sort_t=False)

    facets = mesh.boundary_facets()
    ends = mesh.facets[:, facets]
    on_void = (ends < n_theta).all(axis=0)
    mid = mesh.p[:, ends].mean(axis=1)  # facet midpoints [2, nf]
    tags = {
        "void": facets[on_void],
        "bottom": facets[~on_void & (mid[1] == 0.0)],
        "top": facets[~on_void & (mid[1] == 1.0)],
        "left": facets[~on_void & (mid[0] == 0.0)],
        "right": facets[~on_void & (mid[0] == 1.0)],
    }
    return mesh.with_boundaries(tags)


def sample_indices(n_theta: int, n_radial: int, refine: int) -> np.ndarray:
    """Indices into the nodes of ``fitted_mesh(·, refine·n_theta, refine·(n_radial-1)+1)`` of the
    ``(n_theta, n_radial)`` O-grid's nodes, in level-major order ``[n_radial · n_theta]``."""
    j, i = np.meshgrid(np.arange(n_radial) * refine, np.arange(n_theta) * refine, indexing="ij")
    return (j * (refine * n_theta) + i).ravel()


def sample_points(radius_fn: RadiusFn, n_theta: int = SAMPLE_RAYS, n_radial: int = SAMPLE_LEVELS,
                  grading: float = RADIAL_GRADING) -> np.ndarray:
    """The sample points ``[n_radial · n_theta, 2]`` (972 by default): O-grid nodes, level-major
    (level 0 = the void's boundary, the last level = the square's perimeter)."""
    return ogrid_nodes(radius_fn, n_theta, n_radial, grading).reshape(-1, 2)


# ----------------------------------------------------------------------------- solver


class Displacement(NamedTuple):
    """A finite element displacement field: the basis and the solution vector on it."""

    basis: skfem.CellBasis
    dofs: np.ndarray  # [basis.N]


def lame_constants(E: float, nu: float, plane: str) -> tuple[float, float]:
    """In-plane Lamé constants ``(λ, μ)`` for ``plane`` = ``"strain"`` or ``"stress"``."""
    if not (E > 0 and -1.0 < nu < 0.5):
        raise ValueError(f"need E > 0 and -1 < nu < 0.5; got E={E}, nu={nu}")
    mu = E / (2.0 * (1.0 + nu))
    if plane == "strain":
        lam = E * nu / ((1.0 + nu) * (1.0 - 2.0 * nu))
    elif plane == "stress":
        lam = E * nu / (1.0 - nu**2)
    else:
        raise ValueError(f"plane must be 'strain' or 'stress'; got {plane!r}")
    return lam, mu


_ELEMENTS = {"P1": skfem.ElementTriP1, "P2": skfem.ElementTriP2}


def displacement_basis(mesh: skfem.MeshTri, element: str = "P2") -> skfem.CellBasis:
    """Vector-valued Lagrange basis (``"P1"`` or ``"P2"``) for the displacement on ``mesh``."""
    if element not in _ELEMENTS:
        raise ValueError(f"element must be one of {sorted(_ELEMENTS)}; got {element!r}")
    return skfem.Basis(mesh, skfem.ElementVector(_ELEMENTS[element]()))


def solve_elasticity(basis: skfem.CellBasis, E: float, nu: float, plane: str = "strain",
                     fixed_dofs: np.ndarray | None = None, fixed_values: np.ndarray | None = None,
                     tractions: dict[str, tuple[float, float]] | None = None) -> np.ndarray:
    """Linear elasticity without body force: ``u`` (``[basis.N]``) with ``u[fixed_dofs] = fixed_values``
    and the constant traction ``tractions[name]`` on the boundary facets tagged ``name`` (other
    boundaries traction-free)."""
    lam, mu = lame_constants(E, nu, plane)
    stiffness = skfem.asm(linear_elasticity(lam, mu), basis)
    load = np.zeros(basis.N)
    for name, (tx, ty) in (tractions or {}).items():
        facet_basis = skfem.FacetBasis(basis.mesh, basis.elem, facets=basis.mesh.boundaries[name])
        load += skfem.asm(skfem.LinearForm(lambda v, w: tx * v[0] + ty * v[1]), facet_basis)
    u = np.zeros(basis.N)
    fixed = np.zeros(0, dtype=np.int64) if fixed_dofs is None else np.asarray(fixed_dofs)
    if fixed_values is not None:
        u[fixed] = fixed_values
    free = np.setdiff1d(np.arange(basis.N), fixed)
    rhs = load[free] - stiffness[free][:, fixed] @ u[fixed]
    # Symmetric positive definite: order for A + Aᵀ and factor without row pivoting (SuperLU's
    # symmetric mode) — several times faster than the default, and no less stable for an SPD matrix.
    factor = scipy.sparse.linalg.splu(stiffness[free][:, free].tocsc(), permc_spec="MMD_AT_PLUS_A",
                                      diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    u[free] = factor.solve(rhs)
    return u


def vertex_stress(displacement: Displacement, E: float, nu: float, plane: str = "strain") -> np.ndarray:
    """Cauchy stress at the mesh's vertices, ``[n_vertices, 3, 3]``, averaged over the elements
    sharing each vertex. ``σ_zz = λ tr ε`` in plane strain, 0 in plane stress; ``σ_xz = σ_yz = 0``."""
    basis, u = displacement
    lam, mu = lame_constants(E, nu, plane)
    mesh = basis.mesh
    # Evaluate the gradient at each element's three vertices: quadrature points = reference vertices.
    corners = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    at_corners = skfem.Basis(mesh, basis.elem, quadrature=(corners, np.full(3, 1.0 / 6.0)))
    grad = at_corners.interpolate(u).grad  # [2, 2, n_elements, 3]: ∂u_a/∂x_b
    strain = 0.5 * (grad + grad.transpose(1, 0, 2, 3))
    trace = strain[0, 0] + strain[1, 1]
    stress = np.zeros((3, 3) + trace.shape)
    stress[:2, :2] = 2.0 * mu * strain
    stress[0, 0] += lam * trace
    stress[1, 1] += lam * trace
    if plane == "strain":
        stress[2, 2] = lam * trace
    vertices = mesh.t.T  # [n_elements, 3], column k = reference vertex k
    counts = np.bincount(vertices.ravel(), minlength=mesh.nvertices)
    flat = stress.reshape(9, -1)  # [9, n_elements * 3], same order as vertices.ravel()
    summed = np.stack([np.bincount(vertices.ravel(), weights=c, minlength=mesh.nvertices) for c in flat])
    return (summed / counts).T.reshape(-1, 3, 3)


def solve_tension(mesh: skfem.MeshTri, E: float = YOUNG, nu: float = POISSON, traction: float = TRACTION,
                  element: str = "P2", bottom: str = "clamped", plane: str = "strain",
                  ) -> tuple[Displacement, Callable[[], np.ndarray]]:
    """Uniaxial tension of the cell: traction ``[0, traction]`` on ``'top'``, ``'left'``, ``'right'``
    and ``'void'`` free, and on ``'bottom'`` either

    - ``"clamped"`` (Geo-FNO): ``u = 0``; or
    - ``"roller"``: ``u_y = 0``, and ``u_x = 0`` at the corner ``(0, 0)`` only (removes the rigid
      translation) — the far field is then exactly uniaxial.

    Returns ``(Displacement(basis, dofs), stress)``, where ``stress()`` gives the vertex stress
    ``[n_vertices, 3, 3]`` (:func:`vertex_stress`).
    """
    basis = displacement_basis(mesh, element)
    if "bottom" not in (mesh.boundaries or {}):
        raise ValueError("mesh has no 'bottom' boundary; build it with fitted_mesh")
    dofs = basis.get_dofs("bottom")
    if bottom == "clamped":
        fixed = dofs.all()
    elif bottom == "roller":
        corner = int(np.argmin(mesh.p[0] ** 2 + mesh.p[1] ** 2))
        fixed = np.concatenate([dofs.all("u^2"), [basis.nodal_dofs[0, corner]]])
    else:
        raise ValueError(f"bottom must be 'clamped' or 'roller'; got {bottom!r}")
    u = solve_elasticity(basis, E, nu, plane, fixed_dofs=fixed, tractions={"top": (0.0, traction)})
    displacement = Displacement(basis, u)
    return displacement, lambda: vertex_stress(displacement, E, nu, plane)


def von_mises(stress: np.ndarray) -> np.ndarray:
    """Von Mises stress ``√(3/2 s:s)``, ``s`` the deviator, of ``[..., 3, 3]`` Cauchy stresses → ``[...]``.

    A ``[..., 2, 2]`` in-plane stress is read as plane stress (``σ_zz = 0``).
    """
    stress = np.asarray(stress, dtype=np.float64)
    if stress.shape[-2:] == (2, 2):
        full = np.zeros(stress.shape[:-2] + (3, 3))
        full[..., :2, :2] = stress
        stress = full
    if stress.shape[-2:] != (3, 3):
        raise ValueError(f"stress must be [..., 3, 3] or [..., 2, 2]; got shape {stress.shape}")
    mean = np.trace(stress, axis1=-2, axis2=-1) / 3.0
    deviator = stress - mean[..., None, None] * np.eye(3)
    return np.sqrt(1.5 * np.einsum("...ij,...ij->...", deviator, deviator))


# ----------------------------------------------------------------------------- data set


def generate(num_samples: int, seed: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``num_samples`` unit cells (see the module docstring).

    Returns ``(sigma [972, S], xy [972, 2, S])`` float64, sample axis last as in the published files:
    ``sigma`` is the von Mises stress, ``xy`` the sample points (:func:`sample_points`). Deterministic
    given ``seed``: one ``np.random.default_rng(seed)`` draws the voids in order, so sample ``i`` is the
    same in any run of at least ``i + 1`` samples.
    """
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer; got {num_samples!r}")
    num_samples = int(num_samples)
    rng = np.random.default_rng(seed)
    sigma = np.empty((NUM_POINTS, num_samples))
    xy = np.empty((NUM_POINTS, 2, num_samples))
    picks = sample_indices(SAMPLE_RAYS, SAMPLE_LEVELS, MESH_REFINE)
    samples = tqdm(range(num_samples), desc="elasticity", unit="sample", file=sys.stderr, disable=not progress)
    for s in samples:
        radius_fn = random_void_radius(rng)
        mesh = fitted_mesh(radius_fn, MESH_REFINE * SAMPLE_RAYS, MESH_REFINE * (SAMPLE_LEVELS - 1) + 1)
        _, stress = solve_tension(mesh)
        sigma[:, s] = von_mises(stress()[picks])
        xy[:, :, s] = mesh.p[:, picks].T
    return sigma, xy


def write_geofno(folder, sigma: np.ndarray, xy: np.ndarray) -> dict[str, str]:
    """Write ``Random_UnitCell_sigma_10.npy`` (``sigma [972, S]``) and ``Random_UnitCell_XY_10.npy``
    (``xy [972, 2, S]``) into ``folder``, float64. Returns the two paths.

    Both files go to temporary names in ``folder`` first and are renamed only once both are complete
    (each rename is atomic), so an interrupted write never leaves a complete-looking file behind.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    xy = np.asarray(xy, dtype=np.float64)
    if sigma.ndim != 2 or sigma.shape[0] != NUM_POINTS:
        raise ValueError(f"sigma must be [{NUM_POINTS}, S]; got shape {sigma.shape}")
    if xy.shape != (NUM_POINTS, 2, sigma.shape[1]):
        raise ValueError(f"xy must be [{NUM_POINTS}, 2, S] with S = {sigma.shape[1]} from sigma; got shape {xy.shape}")
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    written = {}
    try:
        for name, array in ((SIGMA_FILE, sigma), (XY_FILE, xy)):
            fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".partial", dir=folder)
            written[name] = tmp
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, array)  # a file object: np.save would append ".npy" to a name
                handle.flush()
                os.fsync(handle.fileno())
        paths = {}
        for name, tmp in written.items():
            paths[name] = os.path.join(folder, name)
            os.replace(tmp, paths[name])
        return paths
    finally:
        for tmp in written.values():
            if os.path.exists(tmp):
                os.unlink(tmp)


def generate_files(folder, num_samples: int, seed: int, progress: bool = True) -> dict[str, str]:
    """:func:`generate` then :func:`write_geofno` into ``folder``; returns the two paths."""
    sigma, xy = generate(num_samples, seed, progress=progress)
    return write_geofno(folder, sigma, xy)


def _load_npy(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Geo-FNO elasticity file {path!r} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path!r} is not a readable .npy file ({err})") from err


def read_geofno(folder) -> tuple[np.ndarray, np.ndarray]:
    """Read the two Geo-FNO elasticity files from ``folder``; returns ``(sigma [S, 972, 1], xy [S, 972, 2])``
    float32, sample axis first. Errors name the offending file."""
    folder = os.fspath(folder)
    sigma_path, xy_path = os.path.join(folder, SIGMA_FILE), os.path.join(folder, XY_FILE)
    sigma, xy = _load_npy(sigma_path), _load_npy(xy_path)
    if sigma.ndim != 2 or sigma.shape[0] != NUM_POINTS:
        raise ValueError(f"{sigma_path!r}: expected stress of shape [{NUM_POINTS}, S]; got {sigma.shape}")
    if xy.ndim != 3 or xy.shape[:2] != (NUM_POINTS, 2):
        raise ValueError(f"{xy_path!r}: expected coordinates of shape [{NUM_POINTS}, 2, S]; got {xy.shape}")
    if xy.shape[2] != sigma.shape[1]:
        raise ValueError(
            f"{xy_path!r} holds {xy.shape[2]} samples but {sigma_path!r} holds {sigma.shape[1]}"
        )
    for path, array in ((sigma_path, sigma), (xy_path, xy)):
        if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
            raise ValueError(f"{path!r}: expected finite floating-point values; got dtype {array.dtype}")
    return (
        np.ascontiguousarray(sigma.T[:, :, None], dtype=np.float32),
        np.ascontiguousarray(xy.transpose(2, 0, 1), dtype=np.float32),
    )


def prepare(folder, out_dir, num_train: int = 1000, num_test: int = 200,
            source: str = "Geo-FNO elasticity .npy files") -> dict:
    """Convert the Geo-FNO elasticity files in ``folder`` to the standard format (SPEC §4):
    the first ``num_train`` samples for training, the last ``num_test`` for testing (disjoint).

    Inputs x, y (not normalised); output the von Mises stress (normalised).
    """
    from flare.data.format import DatasetMeta, write_dataset

    for name, value in (("num_train", num_train), ("num_test", num_test)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    num_train, num_test = int(num_train), int(num_test)
    sigma, xy = read_geofno(folder)
    total = len(sigma)
    if num_train + num_test > total:
        raise ValueError(
            f"{os.path.join(os.fspath(folder), SIGMA_FILE)!r} holds {total} samples: the first {num_train} "
            f"(train) and the last {num_test} (test) would overlap"
        )
    meta = DatasetMeta(
        name="elasticity",
        input_channels=["x", "y"],
        output_channels=["stress"],
        input_units=["1", "1"],
        output_units=["Pa"],
        source=f"{source}: {SIGMA_FILE}, {XY_FILE}; train = samples [:{num_train}], "
        f"test = samples [{total - num_test}:] of {total}",
        normalize_inputs=[False, False],
        grid_shape=[],
        description="unit cell with a random central void under uniaxial tension (traction 100 on the top "
        "edge, bottom clamped); von Mises stress at 972 points",
    )
    return write_dataset(
        out_dir, meta,
        train=(xy[:num_train], sigma[:num_train]),
        test=(xy[total - num_test:], sigma[total - num_test:]),
    )
