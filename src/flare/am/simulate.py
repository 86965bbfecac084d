"""Layer-by-layer inherent-strain simulation of an LPBF part (the mechanics behind SPEC §5's data).

The part is a hexa8 mesh (VTK node order, as from :func:`flare.am.sdf.hex_grid`), z up, the build
plate at the lowest node height ``z_min``. Each cell carries an inherent strain (eigenstrain)
``ε*``: the permanent strain the melt-and-cool cycle leaves in the layer, in the spirit of the
inherent-strain method of fast LPBF distortion codes. The material is linear elastic, so

* one solve (:func:`solve_inherent_strain`) finds ``u`` with ``∫ ε(v) : C (ε(u) − ε*) dV = 0`` for
  all admissible ``v``, i.e. ``K u = f`` with ``f = ∫ Bᵀ C ε* dV``, trilinear hexahedra
  (scikit-fem ``ElementHex1``, 2 x 2 x 2 Gauss points), a sparse direct solve (or, with
  ``solver="cg"``, Jacobi-preconditioned conjugate gradients: ~13x faster on a 20³-cell part);
* the build (:func:`simulate_layers`) activates the layers one after the other; step ``k`` solves
  on the cells of layers ``≤ k`` only, loaded only by the inherent strain of layer ``k``, base-plate
  nodes fixed, and the final fields are the sums of the steps' increments.

Conventions. Units mm and MPa. Voigt order ``[xx, yy, zz, yz, xz, xy]``; strains (the inherent
strain given and the strain returned) hold **tensor** shear components ``ε_yz`` (not engineering
``γ_yz = 2 ε_yz``). Nodal fields are unweighted means of the cell-centre values over the cells that
share the node; von Mises is computed from the nodal stress.

Inactive nodes: a node that no active cell uses at step ``k`` gets zero incremental displacement in
that step. So a node's final displacement counts only the steps after it was deposited: a new layer
is laid down at its nominal height (the recoater levels the powder) and then moves with the part.
Nodes it shares with the part below are already active and carry their whole history.
A cell counts strain only from the steps in which it is active, so it is born stress-free on the
already deformed part (the mismatch between its nominal top and displaced bottom is not strain).

The material defaults are Ti-6Al-4V at room temperature; ``DEFAULT_INHERENT_STRAIN`` is a typical
order of magnitude (a few tenths of a percent in plane, about twice that along the build direction),
**not** a value calibrated against Netfabb or experiments.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import scipy.sparse.linalg
import skfem
from skfem.helpers import ddot, sym_grad
from skfem.models.elasticity import linear_elasticity

YOUNG_TI64 = 110e3  # MPa
POISSON_TI64 = 0.34
# Typical magnitude only (see the module docstring): contraction in plane and along z.
DEFAULT_INHERENT_STRAIN = np.array([-0.005, -0.005, -0.01, 0.0, 0.0, 0.0])

# scikit-fem's MeshHex1 numbers the unit cube's corners (0,0,0), (0,0,1), (0,1,0), (1,0,0),
# (0,1,1), (1,0,1), (1,1,0), (1,1,1); VTK's hexa8 goes round the bottom quad, then the top one.
# Column i is the VTK corner at scikit-fem's corner i (the same map as skfem.io.meshio's).
VTK_TO_SKFEM_HEX = np.array([0, 4, 3, 1, 7, 5, 2, 6])

# 2 x 2 x 2 Gauss points (scikit-fem's intorder 3): exact stiffness of a parallelepiped cell (the
# default, 4 x 4 x 4, gives the same matrix to round-off and takes 8 times as long).
INTORDER = 3

# Voigt index -> tensor index pair, in [xx, yy, zz, yz, xz, xy] order.
VOIGT_PAIRS = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]


# ----------------------------------------------------------------------------- input checks


def _check_mesh(points: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("points hold NaN or infinite coordinates")
    cells = np.asarray(cells)
    if cells.ndim != 2 or cells.shape[1] != 8:
        raise ValueError(
            f"cells must be hexa8 connectivity of shape [C, 8] (VTK node order), got {cells.shape}"
        )
    if not np.issubdtype(cells.dtype, np.integer):
        raise ValueError(f"cells must hold integer node indices, got dtype {cells.dtype}")
    if len(cells) == 0:
        raise ValueError("cells is empty: the mesh has no hexahedra")
    if cells.min() < 0 or cells.max() >= len(points):
        raise ValueError(
            f"cells refer to nodes outside [0, {len(points)}): min {cells.min()}, max {cells.max()}"
        )
    return points, cells.astype(np.int64, copy=False)


def _check_material(E: float, nu: float) -> None:
    if not np.isfinite(E) or E <= 0:
        raise ValueError(f"Young's modulus E must be positive (MPa), got {E}")
    if not (-1.0 < nu < 0.5):
        raise ValueError(f"Poisson's ratio nu must lie in (-1, 0.5), got {nu}")


def _check_inherent_strain(inherent_strain, n_cells: int) -> np.ndarray:
    """[C, 6] Voigt inherent strain per cell from a [6] or [C, 6] input."""
    strain = np.asarray(inherent_strain, dtype=np.float64)
    if strain.shape == (6,):
        strain = np.broadcast_to(strain, (n_cells, 6))
    if strain.shape != (n_cells, 6):
        raise ValueError(
            f"inherent_strain must be a Voigt 6-vector [xx, yy, zz, yz, xz, xy] or one per cell "
            f"[{n_cells}, 6], got shape {strain.shape}"
        )
    if not np.isfinite(strain).all():
        raise ValueError("inherent_strain holds NaN or infinite values")
    return strain


def _fixed_dof_mask(fixed_nodes, n_points: int) -> np.ndarray:
    """[N, 3] bool: which displacement components are held at zero.

    fixed_nodes: a [N] bool mask or integer node indices (all three components fixed), or a
    [N, 3] bool mask per component (for minimal rigid-body constraints).
    """
    fixed = np.asarray(fixed_nodes)
    if fixed.dtype == bool:
        if fixed.shape == (n_points,):
            return np.repeat(fixed[:, None], 3, axis=1)
        if fixed.shape == (n_points, 3):
            return fixed.copy()
        raise ValueError(
            f"a boolean fixed_nodes must have shape [{n_points}] or [{n_points}, 3], got {fixed.shape}"
        )
    if fixed.size and not np.issubdtype(fixed.dtype, np.integer):
        raise ValueError(f"fixed_nodes must be a boolean mask or integer indices, got {fixed.dtype}")
    fixed = fixed.reshape(-1).astype(np.int64)
    if fixed.size and (fixed.min() < 0 or fixed.max() >= n_points):
        raise ValueError(f"fixed_nodes holds indices outside [0, {n_points})")
    mask = np.zeros((n_points, 3), dtype=bool)
    mask[fixed] = True
    return mask


# ----------------------------------------------------------------------------- finite elements


def lame_constants(E: float, nu: float) -> tuple[float, float]:
    """(λ, μ) of an isotropic material, in the units of E."""
    return E * nu / ((1.0 + nu) * (1.0 - 2.0 * nu)), E / (2.0 * (1.0 + nu))


def voigt_to_tensor(voigt: np.ndarray) -> np.ndarray:
    """[..., 6] Voigt (tensor shear components) -> [..., 3, 3] symmetric tensor."""
    tensor = np.zeros(voigt.shape[:-1] + (3, 3))
    for k, (i, j) in enumerate(VOIGT_PAIRS):
        tensor[..., i, j] = voigt[..., k]
        tensor[..., j, i] = voigt[..., k]
    return tensor


def tensor_to_voigt(tensor: np.ndarray) -> np.ndarray:
    """[..., 3, 3] symmetric tensor -> [..., 6] Voigt (tensor shear components)."""
    return np.stack([tensor[..., i, j] for i, j in VOIGT_PAIRS], axis=-1)


def hooke(strain: np.ndarray, E: float, nu: float) -> np.ndarray:
    """[..., 6] stress (MPa) of the [..., 6] strain (tensor shear) of an isotropic material."""
    lam, mu = lame_constants(E, nu)
    stress = 2.0 * mu * strain
    stress[..., :3] += lam * strain[..., :3].sum(axis=-1, keepdims=True)
    return stress


def von_mises(stress: np.ndarray) -> np.ndarray:
    """[...] von Mises stress of [..., 6] Voigt stress."""
    sxx, syy, szz, syz, sxz, sxy = np.moveaxis(stress, -1, 0)
    return np.sqrt(
        0.5 * ((sxx - syy) ** 2 + (syy - szz) ** 2 + (szz - sxx) ** 2)
        + 3.0 * (syz**2 + sxz**2 + sxy**2)
    )


def skfem_mesh(points: np.ndarray, cells: np.ndarray) -> skfem.MeshHex1:
    """scikit-fem hex mesh of [N, 3] points and [C, 8] VTK hexa8 cells (same node numbering)."""
    return skfem.MeshHex1(
        np.ascontiguousarray(points.T), np.ascontiguousarray(cells[:, VTK_TO_SKFEM_HEX].T),
        sort_t=False,
    )


def _eigenstress_load(lam: float, mu: float) -> skfem.LinearForm:
    """f(v) = ∫ C ε* : ε(v) dV, with ε* per element given as the six Voigt fields e0..e5."""

    @skfem.LinearForm
    def load(v, w):
        eps = [[None] * 3 for _ in range(3)]
        for k, (i, j) in enumerate(VOIGT_PAIRS):
            eps[i][j] = eps[j][i] = w[f"e{k}"]
        trace = eps[0][0] + eps[1][1] + eps[2][2]
        sig = np.array(
            [[2.0 * mu * eps[i][j] + (lam * trace if i == j else 0.0) for j in range(3)] for i in range(3)]
        )
        return ddot(sig, sym_grad(v))

    return load


def _eigenstrain_fields(basis: skfem.CellBasis, strain: np.ndarray) -> dict[str, np.ndarray]:
    """Per-element constant Voigt components as [elements, quadrature points] arrays."""
    shape = (len(strain), basis.X.shape[1])
    return {f"e{k}": np.broadcast_to(strain[:, k : k + 1], shape) for k in range(6)}


def _cell_centre_strain(centre_basis: skfem.CellBasis, u: np.ndarray) -> np.ndarray:
    """[C, 6] strain at the cell centres of the skfem dof vector u."""
    grad = centre_basis.interpolate(u).grad[..., 0]  # [3, 3, C]: du_i / dx_j
    eps = 0.5 * (grad + grad.transpose(1, 0, 2))
    return tensor_to_voigt(np.moveaxis(eps, -1, 0))


def _nodal_mean(cells: np.ndarray, values: np.ndarray, n_points: int) -> np.ndarray:
    """[N, K] mean of the [C, K] cell values over the cells sharing each node (0 for unused nodes)."""
    total = np.zeros((n_points, values.shape[1]))
    count = np.zeros(n_points)
    for corner in range(8):
        np.add.at(total, cells[:, corner], values)
        np.add.at(count, cells[:, corner], 1.0)
    return total / np.maximum(count, 1.0)[:, None]


SOLVERS = ("direct", "cg")
CG_RTOL = 1e-10


def _solve(stiffness, load: np.ndarray, free: np.ndarray, solver: str = "direct") -> np.ndarray:
    """u with u[free] = K_ff⁻¹ f_f and zero elsewhere (K symmetric positive definite on free).

    "direct": SuperLU in symmetric mode (as flare.data.elasticity; several times faster than the
    default for SPD matrices). "cg": conjugate gradients with a Jacobi preconditioner to a relative
    residual of ``CG_RTOL``, ~10x faster on parts of ~10⁴ nodes, whose direct factors fill in badly.
    """
    u = np.zeros(len(load))
    if free.size == 0:
        return u
    matrix, rhs = stiffness[free][:, free].tocsc(), load[free]
    if solver == "direct":
        factor = scipy.sparse.linalg.splu(
            matrix, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True}
        )
        u[free] = factor.solve(rhs)
    else:
        jacobi = scipy.sparse.diags(1.0 / matrix.diagonal())
        u[free], info = scipy.sparse.linalg.cg(
            matrix, rhs, rtol=CG_RTOL, atol=0.0, maxiter=20 * len(free), M=jacobi
        )
        if info != 0:
            raise RuntimeError(f"CG did not converge in {info} iterations; try solver='direct'")
    return u


def _check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")


def _compact(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(used [M] node ids, [C, 8] cells renumbered into 0..M-1).

    scikit-fem sizes a mesh's dofs by the largest node index in use, so nodes no cell uses are
    dropped before meshing and get zero fields afterwards.
    """
    used, local = np.unique(cells, return_inverse=True)
    return used, local.reshape(cells.shape)


def _scatter(values: np.ndarray, used: np.ndarray, n_points: int) -> np.ndarray:
    """[N, K] array holding the [M, K] values at the used nodes and zero elsewhere."""
    full = np.zeros((n_points,) + values.shape[1:])
    full[used] = values
    return full


def _unsupported_nodes(cells: np.ndarray, fixed: np.ndarray, n_points: int) -> np.ndarray:
    """Nodes of the cells whose connected piece of the mesh holds no fixed component at all."""
    rows = np.repeat(cells[:, 0], 7)
    cols = cells[:, 1:].reshape(-1)
    graph = scipy.sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_points, n_points))
    _, label = scipy.sparse.csgraph.connected_components(graph, directed=False)
    used = np.zeros(n_points, dtype=bool)
    used[cells.reshape(-1)] = True
    supported = np.zeros(label.max() + 1, dtype=bool)
    supported[label[used & fixed.any(axis=1)]] = True
    return np.flatnonzero(used & ~supported[label])


# ----------------------------------------------------------------------------- solvers


def solve_inherent_strain(
    points: np.ndarray,
    cells: np.ndarray,
    inherent_strain=DEFAULT_INHERENT_STRAIN,
    E: float = YOUNG_TI64,
    nu: float = POISSON_TI64,
    fixed_nodes=None,
    solver: str = "direct",
) -> np.ndarray:
    """Displacement [N, 3] (mm) of a linear-elastic hex part loaded by an eigenstrain.

    points: [N, 3] mm; cells: [C, 8] VTK hexa8; inherent_strain: [6] or [C, 6] Voigt
    ``[xx, yy, zz, yz, xz, xy]`` (tensor shear), constant per cell; E (MPa), nu; fixed_nodes: [N]
    bool mask or node indices (all components zero) or [N, 3] bool mask per component. The fixed
    set must remove every rigid-body motion, else the solve is singular. Nodes no cell uses get 0.
    solver: "direct" (sparse LU) or "cg" (see ``_solve``).
    """
    points, cells = _check_mesh(points, cells)
    _check_material(E, nu)
    _check_solver(solver)
    strain = _check_inherent_strain(inherent_strain, len(cells))
    if fixed_nodes is None:
        raise ValueError("fixed_nodes is required: give the nodes (or components) held at zero")
    fixed = _fixed_dof_mask(fixed_nodes, len(points))
    if not fixed.any():
        raise ValueError("fixed_nodes is empty: a free body has no unique displacement")
    unsupported = _unsupported_nodes(cells, fixed, len(points))
    if unsupported.size:
        raise ValueError(
            f"{unsupported.size} nodes belong to pieces of the mesh with no fixed node "
            f"(e.g. node {unsupported[0]}); every connected piece must be held"
        )
    used, local_cells = _compact(cells)
    mesh = skfem_mesh(points[used], local_cells)
    basis = skfem.Basis(mesh, skfem.ElementVector(skfem.ElementHex1()), intorder=INTORDER)
    lam, mu = lame_constants(E, nu)
    stiffness = skfem.asm(linear_elasticity(lam, mu), basis)
    load = skfem.asm(_eigenstress_load(lam, mu), basis, **_eigenstrain_fields(basis, strain))
    dofs = basis.nodal_dofs.T  # [M, 3]: the dof of component i at used node n
    u = _solve(stiffness, load, np.sort(dofs[~fixed[used]]), solver)
    displacement = np.zeros((len(points), 3))
    displacement[used] = u[dofs]
    return displacement


def cell_layers(points: np.ndarray, cells: np.ndarray, layer_height: float) -> np.ndarray:
    """[C] layer index of each cell: floor((z_centroid − z_min) / layer_height), z_min over used nodes."""
    points, cells = _check_mesh(points, cells)
    if not np.isfinite(layer_height) or layer_height <= 0:
        raise ValueError(f"layer_height must be positive (mm), got {layer_height}")
    z_min = points[np.unique(cells), 2].min()
    z_centroid = points[cells, 2].mean(axis=1)
    return np.floor((z_centroid - z_min) / layer_height).astype(np.int64)


def base_plate_nodes(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """[N] bool: used nodes at the lowest height (within 1e-9 of the part's height)."""
    points, cells = _check_mesh(points, cells)
    used = np.zeros(len(points), dtype=bool)
    used[cells.reshape(-1)] = True
    z = points[:, 2]
    z_min, z_max = z[used].min(), z[used].max()
    return used & (z <= z_min + 1e-9 * max(z_max - z_min, 1.0))


def simulate_layers(
    points: np.ndarray,
    cells: np.ndarray,
    layer_height: float,
    inherent_strain=DEFAULT_INHERENT_STRAIN,
    E: float = YOUNG_TI64,
    nu: float = POISSON_TI64,
    fixed_nodes=None,
    keep_steps: bool = False,
    solver: str = "direct",
    keep_step_fields: bool = False,
) -> dict:
    """Build the part layer by layer; return the superposed final state.

    points: [N, 3] mm, z up; cells: [C, 8] VTK hexa8; layer_height: mm (a cell's layer is
    :func:`cell_layers`); inherent_strain: [6] or [C, 6] Voigt (tensor shear); E (MPa), nu;
    fixed_nodes: as in :func:`solve_inherent_strain`, default the base-plate nodes (z == z_min);
    solver: "direct" or "cg" (much faster on large parts, see ``_solve``).

    Step k (over the non-empty layers, bottom up) solves on the cells of layers ≤ k, loaded by the
    inherent strain of layer k only; the nodes no active cell uses stay put in that step. The cell
    strain sums ε(u_k) over the steps in which the cell is active, the cell stress is
    C (strain − ε*) (the sum of the steps' stresses), both taken at the cell centre.

    Returns a dict: ``displacement`` [N, 3] mm, ``strain`` [N, 6] (tensor shear), ``stress`` [N, 6]
    MPa (nodal means of the cell values), ``von_mises`` [N] MPa, ``cell_strain`` [C, 6],
    ``cell_stress`` [C, 6], ``cell_layer`` [C], ``layers`` [K] (the layer index of each step), and
    with ``keep_steps`` ``step_displacements``: a list of K cumulative displacements [N, 3], the
    part's shape after each step (the last equals ``displacement``).

    With ``keep_step_fields`` also ``step_fields``: a list of K dicts, the state after each step,
    with ``displacement`` [N, 3], ``strain`` [N, 6], ``stress`` [N, 6], ``von_mises`` [N]; the
    nodal means run over the cells active at that step, nodes of no active cell get zeros (the
    last dict equals the final fields); and ``step_seconds`` [K]: wall time of each step (s).
    """
    points, cells = _check_mesh(points, cells)
    _check_material(E, nu)
    strain = _check_inherent_strain(inherent_strain, len(cells))
    _check_solver(solver)
    layer = cell_layers(points, cells, layer_height)
    fixed = _fixed_dof_mask(
        base_plate_nodes(points, cells) if fixed_nodes is None else fixed_nodes, len(points)
    )
    if not fixed.any():
        raise ValueError("the fixed set is empty: give nodes to hold (e.g. the base plate)")

    used, local_cells = _compact(cells)
    fixed_used = fixed[used]
    mesh = skfem_mesh(points[used], local_cells)
    element = skfem.ElementVector(skfem.ElementHex1())
    centre_basis = skfem.Basis(mesh, element, quadrature=(np.full((3, 1), 0.5), np.ones(1)))
    dofs = centre_basis.nodal_dofs.T  # [M, 3]: the dof of component i at used node n
    lam, mu = lame_constants(E, nu)
    stiffness_form, load_form = linear_elasticity(lam, mu), _eigenstress_load(lam, mu)

    n_dofs = centre_basis.N
    stiffness = scipy.sparse.csr_matrix((n_dofs, n_dofs))
    active_nodes = np.zeros(len(used), dtype=bool)
    displacement = np.zeros(n_dofs)
    cell_strain = np.zeros((len(cells), 6))
    steps, step_fields, step_seconds = [], [], []
    layers = np.unique(layer)
    for k in layers:
        start = time.perf_counter()
        new_cells = np.flatnonzero(layer == k)
        active_cells = layer <= k
        unsupported = used[_unsupported_nodes(local_cells[active_cells], fixed_used, len(used))]
        if unsupported.size:
            raise ValueError(
                f"at layer {k}, {unsupported.size} active nodes (e.g. node {unsupported[0]}) belong "
                "to pieces of the part not connected to a fixed node; add supports"
            )
        basis = skfem.Basis(mesh, element, elements=new_cells, intorder=INTORDER)
        stiffness = stiffness + skfem.asm(stiffness_form, basis)  # the active part's stiffness
        load = skfem.asm(load_form, basis, **_eigenstrain_fields(basis, strain[new_cells]))
        active_nodes[local_cells[new_cells].reshape(-1)] = True
        free = np.sort(dofs[active_nodes[:, None] & ~fixed_used])
        u_step = _solve(stiffness, load, free, solver)
        displacement += u_step
        cell_strain[active_cells] += _cell_centre_strain(centre_basis, u_step)[active_cells]
        if keep_steps:
            steps.append(_scatter(displacement[dofs], used, len(points)))
        if keep_step_fields:
            current = _scatter(displacement[dofs], used, len(points))
            step_fields.append(
                _step_state(points, cells, active_cells, cell_strain, strain, E, nu, current)
            )
        step_seconds.append(time.perf_counter() - start)

    cell_stress = hooke(cell_strain - strain, E, nu)
    nodal_stress = _nodal_mean(cells, cell_stress, len(points))
    result = {
        "displacement": _scatter(displacement[dofs], used, len(points)),
        "strain": _nodal_mean(cells, cell_strain, len(points)),
        "stress": nodal_stress,
        "von_mises": von_mises(nodal_stress),
        "cell_strain": cell_strain,
        "cell_stress": cell_stress,
        "cell_layer": layer,
        "layers": layers,
    }
    if keep_steps:
        result["step_displacements"] = steps
    if keep_step_fields:
        result["step_fields"] = step_fields
        result["step_seconds"] = np.array(step_seconds)
    return result


def _step_state(points, cells, active_cells, cell_strain, inherent_strain, E, nu, displacement):
    """Nodal fields of the part built so far (nodal means over the active cells only)."""
    active = cells[active_cells]
    nodal_strain = _nodal_mean(active, cell_strain[active_cells], len(points))
    nodal_stress = _nodal_mean(
        active, hooke(cell_strain[active_cells] - inherent_strain[active_cells], E, nu), len(points)
    )
    used = np.zeros(len(points), dtype=bool)
    used[active.reshape(-1)] = True
    return {
        "displacement": displacement,
        "strain": nodal_strain,
        "stress": nodal_stress,
        "von_mises": np.where(used, von_mises(nodal_stress), 0.0),
    }
