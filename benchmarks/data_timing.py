"""Seconds per sample of the embedded generators and of the converters to the standard format.

    python benchmarks/data_timing.py [--samples 20] [--out results/bench/data_timing.csv]

Converters read synthetic files of the published sizes (Darcy 421×421 .mat, Geo-FNO elasticity
972 points, airfoil 221×51, pipe 129×129), written here first, so the numbers are the converters'
own cost.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from flare.data import airfoil, darcy, elasticity, pipe


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--out", default="results/bench/data_timing.csv")
    args = parser.parse_args()
    s, rng, rows = args.samples, np.random.default_rng(0), []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = timed(darcy.generate_file, tmp / "d1.mat", 421, s, 1, progress=False)
        rows.append(("generate", "darcy 421×421", t / s))
        darcy.generate_file(tmp / "d2.mat", 421, 4, 2, progress=False)
        rows.append(("prepare", "darcy 421 -> 85×85", timed(darcy.prepare, tmp / "d1.mat", tmp / "d2.mat",
                                                             tmp / "darcy", 5, s - 2, 2) / s))
        t = timed(elasticity.generate_files, tmp / "el", s, 0, progress=False)
        rows.append(("generate", "elasticity 972 points", t / s))
        rows.append(("prepare", "elasticity 972 points",
                     timed(elasticity.prepare, tmp / "el", tmp / "elasticity", s - 2, 2) / s))
        for module, grid, channels in ((airfoil, (221, 51), 5), (pipe, (129, 129), 3)):
            folder = tmp / module.__name__.rsplit(".", 1)[1]
            folder.mkdir()
            np.save(folder / module.X_FILE, rng.random((s, *grid)))
            np.save(folder / module.Y_FILE, rng.random((s, *grid)))
            np.save(folder / module.Q_FILE, rng.random((s, channels, *grid)))
            rows.append(("prepare", f"{folder.name} {grid[0]}×{grid[1]}",
                         timed(module.prepare, folder, tmp / f"{folder.name}-out", s - 2, 2) / s))
    table = pd.DataFrame(rows, columns=["step", "dataset", "seconds_per_sample"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.to_markdown(index=False, floatfmt=".4f"))


if __name__ == "__main__":
    main()
