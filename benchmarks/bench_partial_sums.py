"""The column sums that finish the fused kernels' weight gradients: every program of a backward kernel
writes its share into its own row of partials ``[programs, values]`` and one reduction over the rows
gives the gradient (deterministic, no atomics). At the paper's Darcy size this is one launch per MLP
backward (226 rows of 20 928 fp32 values for a C = 64 MLP with three hidden layers) and 34 launches per
training step. Times ways of doing that sum, each replayed from a CUDA graph of ``--reps`` sums (``timing.graph_replay_ms``)
(per-sum GPU time without launch gaps), against ``torch.sum(part, 0)``:

    PYTHONPATH=src python benchmarks/bench_partial_sums.py --out results/bench/partial_sums.csv
"""
from __future__ import annotations

import argparse

import torch

from timing import graph_replay_ms, write_table

SHAPES = {  # name -> (rows, values)
    "darcy_mlp": (226, 5 * 64 * 64 + 5 * 64 + 2 * 64),
    "darcy_out_proj": (114, 64 * 64 + 64),
}



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--out", default="results/bench/partial_sums.csv")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # gradient sums stay fp32
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
