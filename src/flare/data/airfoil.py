"""Geo-FNO airfoil data (transonic flow over NACA airfoils) in the standard format (SPEC §4).

Published layout (``Geo-FNO.tar.gz``, folder ``airfoil/naca/``)::

    NACA_Cylinder_X.npy  [S, 221, 51]     x of each node of the C-grid
    NACA_Cylinder_Y.npy  [S, 221, 51]     y of each node
    NACA_Cylinder_Q.npy  [S, C, 221, 51]  flow fields per node; channel 4 is the Mach number

The FLARE reference code (vpuri3/FLARE.py ``pdebench/dataset/geo_fno.py``,
``load_airfoil_steady_dataset``) trains on samples ``[:1000]`` and tests on ``[1000:1200]``,
inputs (x, y) unnormalised, output ``Q[:, 4]`` normalised. Here the grid size is taken from the
files (the published one is 221×51) and nodes are flattened row-major over (i, j), so
``grid_shape`` is ``[n1, n2]`` as stored.

:func:`read_geofno_grid` reads the X/Y/Q triple and is shared with :mod:`flare.data.pipe`, whose
files have the same structure.
"""
from __future__ import annotations

import os

import numpy as np

X_FILE = "NACA_Cylinder_X.npy"
Y_FILE = "NACA_Cylinder_Y.npy"
Q_FILE = "NACA_Cylinder_Q.npy"
MACH_CHANNEL = 4
PUBLISHED_GRID = (221, 51)


def _load_npy(path: str, what: str) -> np.ndarray:
    """Memory-map a .npy file (the published Q arrays are about a gigabyte); errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file {path!r} does not exist")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path!r} is not a readable .npy file ({err})") from err


def check_split_sizes(num_train: int, num_test: int) -> tuple[int, int]:
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(num_train), int(num_test)


def read_geofno_grid(
    folder, files: tuple[str, str, str], channel: int, indices: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Read samples ``indices`` of a Geo-FNO structured-grid triple ``files = (X, Y, Q)`` in ``folder``.

    X, Y: ``[S, n1, n2]``; Q: ``[S, C, n1, n2]`` with ``channel < C``.
    Returns ``(xy [len(indices), n1, n2, 2], q [len(indices), n1, n2])`` float32. Shapes are
    checked against each other and every selected sample must be finite; errors name the file and
    the sample index (in the file's numbering).
    """
    folder = os.fspath(folder)
    paths = [os.path.join(folder, name) for name in files]
    x, y, q = (_load_npy(p, what) for p in paths)
    x_path, y_path, q_path = paths
    if x.ndim != 3:
        raise ValueError(f"{x_path!r}: expected node x-coordinates of shape [S, n1, n2]; got {x.shape}")
    if y.shape != x.shape:
        raise ValueError(f"{y_path!r}: shape {y.shape} differs from {x_path!r} {x.shape}")
    if q.ndim != 4 or q.shape[0] != x.shape[0] or q.shape[2:] != x.shape[1:]:
        raise ValueError(
            f"{q_path!r}: expected fields of shape [{x.shape[0]}, C, {x.shape[1]}, {x.shape[2]}] "
            f"to match {x_path!r}; got {q.shape}"
        )
    if q.shape[1] <= channel:
        raise ValueError(f"{q_path!r}: has {q.shape[1]} channels; channel {channel} is needed")
    if len(indices) and int(np.max(indices)) >= x.shape[0]:
        raise ValueError(
            f"{x_path!r} holds {x.shape[0]} samples but {int(np.max(indices)) + 1} are needed "
            f"(num_train + num_test)"
        )
    xy = np.stack([np.asarray(x[indices], dtype=np.float32), np.asarray(y[indices], dtype=np.float32)], axis=-1)
    fields = np.asarray(q[indices, channel], dtype=np.float32)
    for path, array, label in ((x_path, xy[..., 0], ""), (y_path, xy[..., 1], ""),
                               (q_path, fields, f" (channel {channel})")):
        bad = ~np.isfinite(array.reshape(len(indices), -1)).all(axis=1)
        if bad.any():
            samples = [int(indices[i]) for i in np.flatnonzero(bad)]
            raise ValueError(f"{path!r}: sample(s) {samples[:10]}{label} contain NaN or Inf")
    return xy, fields


def prepare(folder, out_dir, num_train: int = 1000, num_test: int = 200,
            source: str = "Geo-FNO airfoil .npy files") -> dict:
    """Convert the Geo-FNO airfoil files in ``folder`` to the standard format (SPEC §4).

    Train: samples ``[0, num_train)``; test: samples ``[num_train, num_train + num_test)`` (the
    paper's 0–999 / 1000–1199). Inputs x, y (not normalised); output the Mach number
    (``Q[:, 4]``, normalised with train statistics). Returns the written paths.
    """
    from flare.data.format import DatasetMeta, write_dataset

    num_train, num_test = check_split_sizes(num_train, num_test)
    xy, mach = read_geofno_grid(folder, (X_FILE, Y_FILE, Q_FILE), MACH_CHANNEL,
                                np.arange(num_train + num_test), "Geo-FNO airfoil")
    samples, n1, n2 = mach.shape
    meta = DatasetMeta(
        name="airfoil",
        input_channels=["x", "y"],
        output_channels=["mach"],
        input_units=["1", "1"],
        output_units=["1"],
        source=f"{source}: {X_FILE}, {Y_FILE}, {Q_FILE}[:, {MACH_CHANNEL}]; train = samples "
        f"[0:{num_train}], test = samples [{num_train}:{num_train + num_test}]",
        normalize_inputs=[False, False],
        grid_shape=[n1, n2],
        description="steady transonic Euler flow over NACA airfoils on a C-grid; node coordinates -> "
        "Mach number; nodes row-major over the grid",
    )
    xy = xy.reshape(samples, n1 * n2, 2)
    mach = mach.reshape(samples, n1 * n2, 1)
    return write_dataset(
        out_dir, meta,
        train=(xy[:num_train], mach[:num_train]),
        test=(xy[num_train:], mach[num_train:]),
    )
