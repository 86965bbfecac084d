"""Darcy-flow data following the FNO paper's recipe (piecewise-constant permeability).

Recipe, per sample, on an ``R×R`` grid of the unit square:

1. Gaussian random field with covariance ``(-Δ + τ² I)^(-α)``, ``α = 2``, ``τ = 3``, Neumann
   boundary conditions. Neumann eigenfunctions are cosines, so the field is a cosine series:
   spectral coefficient of mode ``(k1, k2)``, ``0 <= k1, k2 < R``::

       L[k1, k2] = R · τ^(α-1) · (π²(k1² + k2²) + τ²)^(-α/2) · ξ[k1, k2],   ξ ~ N(0, 1) i.i.d.
       L[0, 0]   = 0                                   (zero-mean field)
       field     = idctn(L, type=2, norm="ortho")      (inverse orthonormal 2-D DCT-II)

   ``norm="ortho"`` is the normalisation of MATLAB's ``idct2`` used by the original recipe.
   The DCT-II basis ``cos(π k (n + 1/2) / R)`` is even about the half-node points
   ``n = -1/2`` and ``n = R - 1/2``, which is the discrete Neumann condition.
2. Threshold: ``a = 12`` where ``field >= 0``, ``a = 3`` elsewhere.
3. Solve ``-∇·(a ∇u) = f``, ``f = 1``, ``u = 0`` on the boundary, by second-order finite
   differences on the ``R×R`` node grid ``x_i = i·h``, ``h = 1/(R-1)`` (boundary nodes are the
   first/last rows and columns of the arrays).

As in the original recipe, the field's samples (DCT points ``(n + 1/2)/R``) are used directly as
nodal values of the node grid ``i/(R-1)``; the two grids differ by less than one cell, and the
coefficient and solution stored together are exactly what the solver saw.

Axis convention of all ``R×R`` arrays here: ``arr[i, j]`` is the value at ``(x_i, y_j)`` —
axis 0 is x, axis 1 is y (``np.meshgrid(..., indexing="ij")``).

Files are written in the layout of the published FNO files (``piececonst_r421_N1024_smooth1.mat``):
MATLAB variables ``coeff`` and ``sol``, each ``[S, R, R]`` double.
"""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import scipy.io
import scipy.sparse
import scipy.sparse.linalg
from scipy.fft import idctn
from tqdm import tqdm

from flare.data.matfile import load_mat

# MATLAB's v5/v7 format cannot hold a variable of 2 GiB or more (v7.3 is needed beyond that).
_MAT_V5_MAX_BYTES = 2**31


def gaussian_random_field(resolution: int, rng: np.random.Generator, alpha: float = 2.0, tau: float = 3.0) -> np.ndarray:
    """One zero-mean Gaussian random field sample, ``[R, R]`` float64 (see module docstring, step 1).

    Draws exactly ``R*R`` standard normals from ``rng`` (in C order, ``ξ[k1, k2]``), so a seeded
    generator gives a reproducible sequence of fields.
    """
    resolution = _check_resolution(resolution)
    if not (alpha > 0 and tau > 0):
        raise ValueError(f"alpha and tau must be positive; got alpha={alpha}, tau={tau}")
    k = np.arange(resolution, dtype=np.float64)
    k1, k2 = np.meshgrid(k, k, indexing="ij")
    # Square root of the covariance's eigenvalues (π²|k|² + τ²)^(-α), times the recipe's τ^(α-1) scale.
    coef = tau ** (alpha - 1.0) * (np.pi**2 * (k1**2 + k2**2) + tau**2) ** (-alpha / 2.0)
    xi = rng.standard_normal((resolution, resolution))
    spectrum = resolution * coef * xi
    spectrum[0, 0] = 0.0  # drop the constant mode: the field has zero mean
    return idctn(spectrum, type=2, norm="ortho")


def threshold_coefficient(field: np.ndarray, high: float = 12.0, low: float = 3.0) -> np.ndarray:
    """Piecewise-constant coefficient: ``high`` where ``field >= 0``, ``low`` elsewhere (float64, same shape)."""
    field = np.asarray(field)
    return np.where(field >= 0, float(high), float(low))


def solve(a: np.ndarray, f: float | np.ndarray = 1.0) -> np.ndarray:
    """Solve ``-∇·(a ∇u) = f`` on the unit square with ``u = 0`` on the boundary.

    a: ``r×r`` nodal coefficients on the node grid ``x_i = i/(r-1)`` (boundary nodes included),
       finite and positive, ``r >= 3``.
    f: scalar, or ``r×r`` nodal source (only its interior values enter the equations).
    Returns ``u``: ``r×r`` float64, zero on the boundary rows/columns.

    Discretisation: the conservative 5-point stencil at each interior node ``(i, j)``::

        [a_{i+1/2,j}(u_ij - u_{i+1,j}) + a_{i-1/2,j}(u_ij - u_{i-1,j})
         + a_{i,j+1/2}(u_ij - u_{i,j+1}) + a_{i,j-1/2}(u_ij - u_{i,j-1})] / h² = f_ij

    with face coefficients the arithmetic mean of the two nodes, ``a_{i+1/2,j} = (a_ij + a_{i+1,j})/2``
    (second-order accurate for smooth ``a``). Boundary values are zero, so couplings to boundary
    nodes simply drop out. The ``(r-2)²`` system is symmetric positive definite, assembled as CSR
    and solved with a sparse direct solver.
    """
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"coefficient a must be a square 2-D array r×r; got shape {a.shape}")
    r = a.shape[0]
    if r < 3:
        raise ValueError(f"coefficient a must be at least 3×3 (one interior node); got {r}×{r}")
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ValueError(f"coefficient a must be real-valued; got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError("coefficient a contains non-finite values (nan or inf)")
    if not np.all(a > 0):
        raise ValueError(f"coefficient a must be strictly positive; minimum is {a.min()}")
    f_arr = np.asarray(f, dtype=np.float64)
    if f_arr.ndim == 0:
        f_arr = np.full((r, r), float(f_arr))
    elif f_arr.shape != (r, r):
        raise ValueError(f"source f must be a scalar or have the coefficient's shape {(r, r)}; got shape {f_arr.shape}")
    if not np.all(np.isfinite(f_arr)):
        raise ValueError("source f contains non-finite values (nan or inf)")

    m = r - 2  # interior nodes per axis
    h = 1.0 / (r - 1)

    # Face coefficients: fx[i, j] sits between nodes (i, j) and (i+1, j); fy[i, j] between (i, j) and (i, j+1).
    fx = 0.5 * (a[:-1, :] + a[1:, :])  # (r-1, r)
    fy = 0.5 * (a[:, :-1] + a[:, 1:])  # (r, r-1)
    # The four faces around each interior node (i, j), i, j = 1..r-2, as (m, m) arrays.
    west = fx[0:m, 1 : r - 1]  # between (i-1, j) and (i, j)
    east = fx[1 : m + 1, 1 : r - 1]  # between (i, j) and (i+1, j)
    south = fy[1 : r - 1, 0:m]  # between (i, j-1) and (i, j)
    north = fy[1 : r - 1, 1 : m + 1]  # between (i, j) and (i, j+1)

    # Unknown number of interior node (i, j) is (i-1)*m + (j-1): row-major over the interior block.
    idx = np.arange(m * m).reshape(m, m)
    # Couplings between interior neighbours only; each face appears once per direction (symmetric).
    x_lo, x_hi, x_val = idx[:-1, :].ravel(), idx[1:, :].ravel(), -east[:-1, :].ravel()
    y_lo, y_hi, y_val = idx[:, :-1].ravel(), idx[:, 1:].ravel(), -north[:, :-1].ravel()
    rows = np.concatenate([idx.ravel(), x_lo, x_hi, y_lo, y_hi])
    cols = np.concatenate([idx.ravel(), x_hi, x_lo, y_hi, y_lo])
    vals = np.concatenate([(west + east + south + north).ravel(), x_val, x_val, y_val, y_val])
    # Equations multiplied through by h², so the matrix entries are O(a) rather than O(a/h²).
    matrix = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(m * m, m * m))
    rhs = h * h * f_arr[1:-1, 1:-1].ravel()

    # The matrix is symmetric, so order for A + Aᵀ: far less fill-in than the default COLAMD.
    interior = scipy.sparse.linalg.spsolve(matrix, rhs, permc_spec="MMD_AT_PLUS_A")
    u = np.zeros((r, r), dtype=np.float64)
    u[1:-1, 1:-1] = np.asarray(interior).reshape(m, m)
    return u


def generate(
    resolution: int, num_samples: int, seed: int, progress: bool = False, workers: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``num_samples`` (coefficient, solution) pairs with the FNO recipe.

    Returns ``(coeff, sol)``, each ``[S, R, R]`` float64. Deterministic given ``seed``: one
    ``np.random.default_rng(seed)`` feeds all samples in order, so sample ``i`` of a run
    equals sample ``i`` of any longer run with the same seed and resolution, whatever ``workers``.
    progress: show a tqdm progress bar on stderr. workers: processes for the solves (the fields
    are drawn in order first, so the result does not depend on it).
    """
    resolution = _check_resolution(resolution)
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer; got {num_samples!r}")
    num_samples = int(num_samples)
    rng = np.random.default_rng(seed)
    coeff = np.empty((num_samples, resolution, resolution), dtype=np.float64)
    for s in range(num_samples):
        coeff[s] = threshold_coefficient(gaussian_random_field(resolution, rng))
    bar = dict(total=num_samples, desc=f"Darcy r={resolution}", unit="sample", file=sys.stderr,
               disable=not progress)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            sol = np.stack(list(tqdm(pool.map(solve, coeff, chunksize=4), **bar)))
    else:
        sol = np.stack([solve(a, 1.0) for a in tqdm(coeff, **bar)])
    return coeff, sol


def mat_filename(resolution: int, num_samples: int, smooth: int) -> str:
    """File name in the published FNO convention, e.g. ``piececonst_r421_N1024_smooth1.mat``."""
    return f"piececonst_r{resolution}_N{num_samples}_smooth{smooth}.mat"


def write_fno_mat(path, coeff: np.ndarray, sol: np.ndarray) -> None:
    """Write ``coeff`` and ``sol`` (each ``[S, R, R]``) to a MATLAB v5 ``.mat`` file at ``path``.

    Same variable names and layout as the published FNO files, stored as double. The data go to a
    temporary file in the destination directory which is then renamed over ``path`` (atomic on
    POSIX and Windows), so an interrupted write never leaves a complete-looking file behind.
    """
    coeff = np.asarray(coeff, dtype=np.float64)
    sol = np.asarray(sol, dtype=np.float64)
    if coeff.ndim != 3 or coeff.shape[1] != coeff.shape[2] or coeff.shape != sol.shape:
        raise ValueError(f"coeff and sol must both be [S, R, R] with equal shapes; got {coeff.shape} and {sol.shape}")
    if coeff.nbytes >= _MAT_V5_MAX_BYTES:
        raise ValueError(
            f"each variable must be under 2 GiB for a MATLAB v5 file; got {coeff.nbytes} bytes "
            f"for shape {coeff.shape} — write fewer samples per file"
        )
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".partial", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            # A file object, not a name: savemat would otherwise append ".mat" to the temporary name.
            scipy.io.savemat(handle, {"coeff": coeff, "sol": sol}, format="5", do_compression=False)
            handle.flush()
            os.fsync(handle.fileno())  # data on disk before the rename makes the file visible
        os.replace(tmp_path, path)
    except BaseException:
        # Includes KeyboardInterrupt: never leave the partial file around.
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass
        raise


def generate_file(path, resolution: int, num_samples: int, seed: int, progress: bool = True,
                  workers: int = 1) -> None:
    """:func:`generate` then :func:`write_fno_mat` to ``path``."""
    coeff, sol = generate(resolution, num_samples, seed, progress=progress, workers=workers)
    write_fno_mat(path, coeff, sol)


def read_fno_mat(path, subsample: int = 1, num_samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read an FNO Darcy file (v5 or v7.3) and return ``(coeff, sol)``, float32 ``[S, r, r]``.

    Keeps the first ``num_samples`` samples (all when None) and every ``subsample``-th node along
    both axes starting at node 0 (``[::s, ::s]``: 421 -> 85 with ``s = 5``, boundary nodes kept).
    Errors name the file.
    """
    path = os.fspath(path)
    if int(subsample) != subsample or subsample < 1:
        raise ValueError(f"subsample must be a positive integer; got {subsample!r} (reading {path!r})")
    subsample = int(subsample)
    data = load_mat(path, ["coeff", "sol"])
    coeff, sol = data["coeff"], data["sol"]
    if coeff.ndim != 3 or coeff.shape != sol.shape:
        raise ValueError(
            f"MATLAB file {path!r}: expected 'coeff' and 'sol' of equal shape [S, R, R]; "
            f"got {coeff.shape} and {sol.shape}"
        )
    available = coeff.shape[0]
    if num_samples is None:
        num_samples = available
    elif int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer or None; got {num_samples!r} (reading {path!r})")
    elif num_samples > available:
        raise ValueError(f"MATLAB file {path!r} holds {available} samples; {num_samples} requested")
    num_samples = int(num_samples)
    pick = (slice(0, num_samples), slice(None, None, subsample), slice(None, None, subsample))
    return (
        np.ascontiguousarray(coeff[pick], dtype=np.float32),
        np.ascontiguousarray(sol[pick], dtype=np.float32),
    )


def _check_resolution(resolution: int) -> int:
    if int(resolution) != resolution or resolution < 3:
        raise ValueError(f"resolution must be an integer >= 3; got {resolution!r}")
    return int(resolution)


def grid_inputs(coeff: np.ndarray) -> np.ndarray:
    """Per-node inputs ``[S, r·r, 3]``: x, y (unit square) and the coefficient, row-major over (i, j)."""
    samples, r, _ = coeff.shape
    xs, ys = np.meshgrid(np.linspace(0.0, 1.0, r), np.linspace(0.0, 1.0, r), indexing="ij")
    coords = np.broadcast_to(np.stack([xs, ys], axis=-1).reshape(1, r * r, 2), (samples, r * r, 2))
    return np.concatenate([coords, coeff.reshape(samples, r * r, 1)], axis=-1).astype(np.float32)


def grid_edges(nx: int, ny: int) -> np.ndarray:
    """Edges ``[E, 2]`` between horizontally and vertically adjacent nodes of a row-major nx×ny grid."""
    index = np.arange(nx * ny).reshape(nx, ny)
    along_y = np.stack([index[:, :-1].ravel(), index[:, 1:].ravel()], axis=1)
    along_x = np.stack([index[:-1, :].ravel(), index[1:, :].ravel()], axis=1)
    return np.concatenate([along_x, along_y])


def prepare(
    train_file,
    test_file,
    out_dir,
    subsample: int = 5,
    num_train: int = 1000,
    num_test: int = 200,
    source: str = "FNO piececonst .mat files",
) -> dict:
    """Convert FNO Darcy files to the standard format (SPEC §4): ``train_file[:num_train]`` for training,
    ``test_file[:num_test]`` for testing, grid subsampled every ``subsample``-th node.

    Inputs x, y, coefficient (only the coefficient is normalised); output u.
    """
    from flare.data.format import DatasetMeta, write_dataset

    a_train, u_train = read_fno_mat(train_file, subsample, num_train)
    a_test, u_test = read_fno_mat(test_file, subsample, num_test)
    if a_train.shape[1:] != a_test.shape[1:]:
        raise ValueError(
            f"{train_file} gives a {a_train.shape[1:]} grid but {test_file} gives {a_test.shape[1:]}"
        )
    r = a_train.shape[1]
    meta = DatasetMeta(
        name="darcy",
        input_channels=["x", "y", "permeability"],
        output_channels=["pressure"],
        input_units=["1", "1", "1"],
        output_units=["1"],
        source=f"{source}: {os.path.basename(os.fspath(train_file))}[:{num_train}] / "
        f"{os.path.basename(os.fspath(test_file))}[:{num_test}], every {subsample}th node",
        normalize_inputs=[False, False, True],
        grid_shape=[r, r],
        description="-div(a grad u) = 1 on the unit square, u = 0 on the boundary; a piecewise constant 12/3",
    )
    return write_dataset(
        out_dir, meta,
        train=(grid_inputs(a_train), u_train.reshape(len(u_train), r * r, 1), grid_edges(r, r)),
        test=(grid_inputs(a_test), u_test.reshape(len(u_test), r * r, 1), grid_edges(r, r)),
    )
