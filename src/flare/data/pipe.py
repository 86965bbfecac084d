"""Geo-FNO pipe data (incompressible flow in pipes of varying shape) in the standard format (SPEC §4).

Published layout (``Geo-FNO.tar.gz``, folder ``pipe/``)::

    Pipe_X.npy  [S, 129, 129]     x of each node of the structured mesh
    Pipe_Y.npy  [S, 129, 129]     y of each node
    Pipe_Q.npy  [S, C, 129, 129]  flow fields per node; channel 0 is the horizontal velocity

The FLARE reference code (vpuri3/FLARE.py ``pdebench/dataset/geo_fno.py``, ``load_pipe_dataset``)
keeps the first 1200 samples, trains on the first 1000 of them and tests on the last 200
(``[:1200][-200:]``, i.e. samples 1000–1199 even when the file holds more), and normalises both the
inputs (x, y) and the output. The same selection is made here for any ``num_train`` / ``num_test``.
Grid size is taken from the files (the published one is 129×129); nodes are flattened row-major.
"""
from __future__ import annotations

import numpy as np

from flare.data.airfoil import check_split_sizes, read_geofno_grid

X_FILE = "Pipe_X.npy"
Y_FILE = "Pipe_Y.npy"
Q_FILE = "Pipe_Q.npy"
VELOCITY_CHANNEL = 0
PUBLISHED_GRID = (129, 129)


def prepare(folder, out_dir, num_train: int = 1000, num_test: int = 200,
            source: str = "Geo-FNO pipe .npy files") -> dict:
    """Convert the Geo-FNO pipe files in ``folder`` to the standard format (SPEC §4).

    Of the first ``num_train + num_test`` samples, the first ``num_train`` train and the last
    ``num_test`` test. Inputs x, y and the output velocity (``Q[:, 0]``) are all normalised with
    train statistics. Returns the written paths.
    """
    from flare.data.format import DatasetMeta, write_dataset

    num_train, num_test = check_split_sizes(num_train, num_test)
    total = num_train + num_test
    xy, velocity = read_geofno_grid(folder, (X_FILE, Y_FILE, Q_FILE), VELOCITY_CHANNEL,
                                    np.arange(total), "Geo-FNO pipe")
    samples, n1, n2 = velocity.shape
    meta = DatasetMeta(
        name="pipe",
        input_channels=["x", "y"],
        output_channels=["velocity"],
        input_units=["1", "1"],
        output_units=["1"],
        source=f"{source}: {X_FILE}, {Y_FILE}, {Q_FILE}[:, {VELOCITY_CHANNEL}]; of samples [0:{total}], "
        f"train = [0:{num_train}], test = the last {num_test} ([{num_train}:{total}])",
        normalize_inputs=[True, True],
        grid_shape=[n1, n2],
        description="incompressible Navier-Stokes flow through pipes of varying shape; node coordinates -> "
        "horizontal velocity; nodes row-major over the grid",
    )
    xy = xy.reshape(samples, n1 * n2, 2)
    velocity = velocity.reshape(samples, n1 * n2, 1)
    return write_dataset(
        out_dir, meta,
        train=(xy[:num_train], velocity[:num_train]),
        test=(xy[total - num_test:], velocity[total - num_test:]),
    )
