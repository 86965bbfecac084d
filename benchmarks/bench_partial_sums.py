"""The column sums that finish the fused kernels' weight gradients: every program of a backward kernel
writes its share into its own row of partials ``[programs, values]`` and one reduction over the rows
gives the gradient (deterministic, no atomics). At the paper's Darcy size this is one launch per MLP
backward (226 rows of 20 928 fp32 values for a C = 64 MLP with three hidden layers) and 34 launches per
training step. Times ways of doing that sum, each replayed from a CUDA graph of ``--reps`` sums (``timing.graph_replay_ms``)
(per-sum GPU time without launch gaps), against ``torch.sum(part, 0)``:

    PYTHONPATH=src python benchmarks/bench_partial_sums.py --out results/bench/partial_sums.csv

With ``--step`` it times instead the 26 sums of one paper Darcy training step (the key/value pairs',
block MLPs', head-merge projections', input and output projections' partials, 513 MB) as 26 torch sums
against the grouped kernel of ``flare.ops.deferred_sums`` under several tilings
(``--configs BLOCK_RxBLOCK_CxWARPSxSTAGES,...``, STAGES 0 for Triton's default).
"""
from __future__ import annotations

import argparse

import torch

from flare.ops import deferred_sums as ds
from timing import graph_replay_ms, write_table

SHAPES = {  # name -> (rows, values)
    "darcy_mlp": (226, 5 * 64 * 64 + 5 * 64 + 2 * 64),
    "darcy_out_proj": (114, 64 * 64 + 64),
}



# the partials of one paper Darcy step (226 programs per backward kernel): (rows, values) x count
STEP_JOBS = [((226, 2 * (5 * 4096 + 5 * 64) + 2 * 64), 8),  # key/value pair with its norm
             ((226, 5 * 4096 + 5 * 64 + 2 * 64), 8),  # block MLP with its norm
             ((226, 64 * 64 + 64), 8),  # head-merge projection
             ((226, 4 * 4096 + 4 * 64 + 2 * 64), 1),  # output projection with its norm
             ((226, 4 * 4096 + 4 * 64), 1)]  # input projection


def step_sums(args) -> list:
    jobs = []
    for (p, n), count in STEP_JOBS:
        for _ in range(count):
            jobs.append((torch.randn(p, n, device="cuda"), torch.empty(n, device="cuda")))
    total = sum(part.numel() * 4 for part, _ in jobs)
    refs = [part.double().sum(0) for part, _ in jobs]

    def torch_sums():
        for part, out in jobs:
            torch.sum(part, 0, out=out)

    ways = {"torch.sum x 26": torch_sums}
    for config in args.configs.split(","):
        r, c, w, st = (int(v) for v in config.split("x"))

        def grouped(r=r, c=c, w=w, st=st):
            ds.BLOCK_R, ds.BLOCK_C, ds.NUM_WARPS, ds.NUM_STAGES = r, c, w, (st or None)
            ds._launch([(part, out, None) for part, out in jobs])  # on the current (capturing) stream
        ways[f"grouped {config}"] = grouped
    rows = []
    for way, fn in ways.items():
        fn()
        err = max(((out.double() - ref).abs().max() / ref.abs().max()).item() for (_, out), ref in zip(jobs, refs))
        ms = graph_replay_ms(fn, args.reps)
        rows.append({"shape": "darcy_step_26", "rows": 226, "values": total // 4 // 226, "way": way, "us": ms * 1e3,
                     "GBps": total / ms / 1e6, "max_rel_err": err, "device": torch.cuda.get_device_name()})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--out", default="results/bench/partial_sums.csv")
    ap.add_argument("--step", action="store_true", help="the 26 sums of a Darcy step, torch against grouped")
    ap.add_argument("--configs", default="16x256x4x0,8x512x4x0,32x128x4x0,16x512x8x0,32x256x8x0,16x256x4x1,"
                                         "16x256x4x2,16x256x4x4,64x128x4x0,8x256x2x0,8x1024x8x0,8x512x4x4,32x256x4x4,16x512x4x4,"
                                         "8x1024x4x4,16x1024x8x4,16x128x4x4")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # gradient sums stay fp32
    if args.step:
        write_table(step_sums(args), args.out)
        return
    rows = []
    for name, (p, n) in SHAPES.items():
        part = torch.randn(p, n, device="cuda")
        out = torch.empty(n, device="cuda")
        ones = torch.ones(p, device="cuda")
        ref = part.double().sum(0)
        ways = {
            "torch.sum(part, 0)": lambda: torch.sum(part, 0, out=out),
            "torch.mv(part.T, ones)": lambda: torch.mv(part.t(), ones, out=out),
            "ones @ part": lambda: torch.matmul(ones, part, out=out),
        }
        for way, fn in ways.items():
            fn()
            err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
            ms = graph_replay_ms(fn, args.reps)
            rows.append({"shape": name, "rows": p, "values": n, "way": way, "us": ms * 1e3,
                         "GBps": p * n * 4 / ms / 1e6, "max_rel_err": err, "device": torch.cuda.get_device_name()})
            print(rows[-1], flush=True)
    write_table(rows, args.out)


if __name__ == "__main__":
    main()
