"""Time of each fused-mixer stage against the work per program, replayed from CUDA graphs (no launch
gaps, no L2 flush: as inside the training step), to split a stage's time into a part that grows with
the token tiles each program loops over and a part that does not.

At the paper's Darcy setting (B = 2, H = 16, D = 4, M = 256, fp32 with TF32 dots) the chunk count of
every stage is held at what the launcher picks for the full N = 7225 while N shrinks, so the grid
stays the same and only the tiles per program change. Per stage: the time at each N, and a least
squares line ``ms = a + b · tiles per program``.

    PYTHONPATH=src python benchmarks/bench_mixer_stages.py --out results/bench/mixer_stages.csv
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from flare.ops import triton_mixer as tm
from timing import graph_replay_ms, write_table



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", default="64,448,896,1792,3584,7225")
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--M", type=int, default=256)
    ap.add_argument("--D", type=int, default=4)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="results/bench/mixer_stages.csv")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    B, H, M, D = args.B, args.H, args.M, args.D
    n_full = max(int(n) for n in args.ns.split(","))
    cfg = tm.default_config(M, D, n_full, torch.float32, fp32_precision="tf32")
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(H, M, D, device="cuda", generator=g)

    # the chunk counts the launcher picks at the full N, by running each stage once there
    def inputs(N):
        k, v, dy = (torch.randn(B, N, H, D, device="cuda", generator=g).transpose(1, 2) for _ in range(3))
        return k, v, dy

    k, v, dy = inputs(n_full)
    z, lse_g = tm._run_gather(q, k, v, cfg)
    y, lse_s = tm._run_scatter(q, k, z, cfg)
    dz, delta_g, _, delta_s = tm._run_bwd_scatter(q, k, z, y, lse_s, dy, cfg)
    tm._run_bwd_main(q, k, v, z, dz, dy, lse_g, delta_g, lse_s, delta_s, cfg)
    chunks = {s: tm.LAST_CHUNKS[f"{s}_kernel"] for s in ("gather_fwd", "scatter_fwd", "bwd_scatter", "bwd_main")}
    block_n = {"gather_fwd": cfg.gather.block_n, "scatter_fwd": cfg.scatter.block_n,
               "bwd_scatter": cfg.bwd_scatter.block_n, "bwd_main": cfg.bwd_main.block_n}
    print(f"chunks at N = {n_full}: {chunks}", flush=True)
    rows = []
    for N in sorted(int(n) for n in args.ns.split(",")):
        k, v, dy = inputs(N)
        z, lse_g = tm._run_gather(q, k, v, cfg)
        y, lse_s = tm._run_scatter(q, k, z, cfg)
        dz, delta_g, _, delta_s = tm._run_bwd_scatter(q, k, z, y, lse_s, dy, cfg)
        stages = {
            "gather_fwd": lambda: tm._run_gather(q, k, v, cfg, chunks["gather_fwd"]),
            "scatter_fwd": lambda: tm._run_scatter(q, k, z, cfg, chunks["scatter_fwd"]),
            "bwd_scatter": lambda: tm._run_bwd_scatter(q, k, z, y, lse_s, dy, cfg, chunks["bwd_scatter"]),
            "bwd_main": lambda: tm._run_bwd_main(q, k, v, z, dz, dy, lse_g, delta_g, lse_s, delta_s, cfg,
                                                 chunks["bwd_main"]),
        }
        for name, fn in stages.items():
            fn()
            c = tm.LAST_CHUNKS[f"{name}_kernel"]
            tiles = -(-N // block_n[name])
            per_program = -(-tiles // c)
            rows.append({"stage": name, "N": N, "chunks": c, "tiles_per_program": per_program,
                         "ms": graph_replay_ms(fn, args.reps), "device": torch.cuda.get_device_name()})
            print(rows[-1], flush=True)
    write_table(rows, args.out)
    table = pd.DataFrame(rows)
    for name, part in table.groupby("stage", sort=False):
        b, a = np.polyfit(part["tiles_per_program"], part["ms"], 1)
        print(f"{name:>12}: ms = {a * 1e3:.1f} us + {b * 1e3:.2f} us x tiles per program")


if __name__ == "__main__":
    main()
