"""One residual MLP of the FLARE block (C = 64, three hidden layers, input and output residuals),
forward + backward: nn.Linear modules (eager and torch.compile) against the fused Triton kernels
(``flare.ops.fused_mlp``), at the paper's Darcy size (fp32 + TF32) and at 1M points (bf16 autocast).

Per case: the wall time per call (CUDA events, median), the GPU time of its kernels and their number
(profiler). Run from the repository root:

    PYTHONPATH=src python benchmarks/bench_mlp.py --out results/bench/mlp.csv
"""
from __future__ import annotations

import argparse
import contextlib
import copy

import pandas as pd
import torch

from flare.models.layers import ResidualMLP
from flare.ops import fused_mlp
from timing import cuda_event_times, profiled_kernels, write_table

CASES = {  # name -> (tokens, autocast dtype or None)
    "darcy_fp32_tf32": (2 * 85 * 85, None),
    "1m_bf16": (1 << 20, torch.bfloat16),
}


def run_case(name: str, tokens: int, dtype, impl: str, args) -> dict:
    """impl: torch, compiled, fused or fused:<tokens per program>x<warps>[x<register cap>], either
    fused one optionally with @acc / @plain (TF32 operands in accumulator order or not)."""
    label = impl
    impl, _, order = impl.partition("@")
    fused_mlp.ACC_ORDER = {"": None, "acc": True, "plain": False}[order]
    impl, _, tile = impl.partition(":")
    parts = [int(v) for v in tile.split("x")] if tile else []
    fused_mlp.TILE_OVERRIDE = tuple(parts[:2]) if parts else None
    fused_mlp.MAXNREG = parts[2] if len(parts) > 2 else None
    torch.manual_seed(0)
    ref = ResidualMLP(args.width, args.width, args.width, args.layers, True, True, backend="torch").cuda()
    mlp = copy.deepcopy(ref)
    mlp.backend = "triton" if impl == "fused" else "torch"
    fn = torch.compile(mlp) if impl == "compiled" else mlp
    x = torch.randn(tokens, args.width, device="cuda", requires_grad=True)
    dy = torch.randn(tokens, args.width, device="cuda")
    autocast = torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext()

    def step():
        with autocast:
            y = fn(x)
        y.backward(dy)

    with autocast:
        y_ref = ref(x).float()
        y = fn(x).float()
    err = ((y - y_ref).norm() / y_ref.norm()).item()
    times = cuda_event_times(step, args.warmup, args.reps)
    kernel_ms, launches, events = profiled_kernels(step)
    if args.profile:
        print(f"-- {name} {label}: {kernel_ms:.3f} ms of kernels in {launches} launches")
        for e in sorted(events, key=lambda e: -e.self_device_time_total)[:args.profile]:
            print(f"   {e.self_device_time_total / 1e3:8.4f} ms  x{e.count:<4d} {e.key[:100]}")
    fused_mlp.ACC_ORDER = None
    return {"case": name, "impl": label, "tokens": tokens, "ms_median": float(pd.Series(times).median()),
            "kernel_ms": kernel_ms, "launches": launches, "rel_err_vs_torch": err,
            "device": torch.cuda.get_device_name()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--impls", default="torch,compiled,fused",
                    help="comma-separated: torch, compiled, fused, fused:<tokens>x<warps>[x<register cap>] (tile "
                    "sweep); a fused one may end in @acc or @plain (TF32 operands in accumulator order or not)")
    ap.add_argument("--tokens", type=int, help="tokens of every case instead of the case's own")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--profile", type=int, default=0, help="print the top K kernels of each case")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default="results/bench/mlp.csv")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True  # the paper trains fp32 with TF32
    rows = []
    for name in args.cases.split(","):
        tokens, dtype = CASES[name]
        tokens = args.tokens or tokens
        for impl in args.impls.split(","):
            rows.append(run_case(name, tokens, dtype, impl, args))
            print(rows[-1], flush=True)
    write_table(rows, args.out)


if __name__ == "__main__":
    main()
