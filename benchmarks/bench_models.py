"""Time one training step (forward, relative-L2 loss, backward, AdamW step) of models at paper settings.

    python benchmarks/bench_models.py                       # every model, paper Darcy setting
    python benchmarks/bench_models.py --models flare --backends reference,triton --points 1048576 \
        --batch 1 --precision bf16 --checkpointing         # FLARE at 1M points
    python benchmarks/bench_models.py --models flare --backends triton \
        --modes eager,graphs,compile,compile-graphs --profile 12   # how the step is run

Modes: ``eager``; ``graphs`` (the model's forward and backward replayed from CUDA graphs:
``flare.train.graphs.GraphedTraining``); ``graphs-step`` (forward, loss and backward as one CUDA
graph, the optimizer eager: ``GraphedStep``, as ``flare train`` does by default on a GPU);
``compile`` (``torch.compile``, Inductor fuses the pointwise chains); ``compile-graphs``
(``torch.compile(mode="reduce-overhead")``: compiled and replayed from CUDA graphs, as
``flare train`` does with ``train.compile: true`` on a GPU); ``compile-max`` and
``compile-max-graphs`` (``max-autotune``: Inductor also generates the matrix products, with the
pointwise chains fused into them).

Medians of CUDA-event timings after warm-up (each step between two events, synchronised after it),
the mean of steps issued back to back (``step_ms_back_to_back``: one synchronisation at the end, as
in a training loop), peak allocated memory; writes a CSV and prints a table.
On the CPU it runs too (wall clock), for a quick check.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from flare.metrics import relative_l2
from flare.models import MODELS, PAPER_DATASET_CHANNELS, paper_model
from flare.train.graphs import GraphedStep
from timing import cuda_event_times, profiled_kernels

GRIDS = {"darcy": (85, 85), "airfoil": (221, 51), "pipe": (129, 129)}


def grid_points(dataset: str, points: int | None) -> tuple[int, tuple[int, int] | None]:
    if points:
        return points, None
    nx, ny = GRIDS.get(dataset, (0, 0))
    sizes = {"elasticity": 972, "drivaerml": 40_000, "lpbf": 47_542}
    return (nx * ny, (nx, ny)) if nx else (sizes[dataset], None)


# bench mode -> torch.compile mode
COMPILE_MODES = {"compile": None, "compile-graphs": "reduce-overhead",
                 "compile-max": "max-autotune-no-cudagraphs", "compile-max-graphs": "max-autotune"}


def bench_one(name: str, args, backend: str | None, device: torch.device, mode: str = "eager") -> dict:
    n, grid = grid_points(args.dataset, args.points)
    overrides = {}
    if name == "flare" and backend:
        overrides["attn_backend"] = backend
    if name == "flare" and args.checkpointing:
        overrides["activation_checkpointing"] = True
    if name == "flare":
        for item in args.set:
            key, _, value = item.partition("=")
            overrides[key] = yaml.safe_load(value)
    if name == "transolver_conv":
        if grid is None:
            return {"model": name, "status": "needs a structured grid"}
        overrides["grid_shape"] = list(grid)
    c_in, c_out = PAPER_DATASET_CHANNELS[args.dataset]
    model = paper_model(name, args.dataset, **overrides).to(device)
    if args.checkpointing and name != "flare" and hasattr(model, "blocks"):
        for block in model.blocks:
            forward = block.forward
            block.forward = lambda h, f=forward: torch.utils.checkpoint.checkpoint(f, h, use_reentrant=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randn(args.batch, n, c_in, device=device)
    y = torch.randn(args.batch, n, c_out, device=device)
    kwargs = {}
    if getattr(model, "needs_edges", False):  # a chain over the points stands in for the mesh edges
        idx = torch.arange(n - 1, device=device)
        kwargs["edges"] = torch.stack([idx, idx + 1])
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())

    forward = model
    if mode.startswith("compile"):
        if mode not in COMPILE_MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from eager, graphs, {', '.join(COMPILE_MODES)}")
        forward = torch.compile(model, mode=COMPILE_MODES[mode])
    elif mode not in ("eager", "graphs", "graphs-step"):
        raise ValueError(f"unknown mode {mode!r}")

    def forward_backward(x, y):
        if mode in ("compile-graphs", "compile-max-graphs"):
            torch.compiler.cudagraph_mark_step_begin()
        with autocast:
            pred = forward(x, **kwargs)
        loss = relative_l2(pred.float(), y).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        return (loss.detach(),)

    graphed_step = GraphedStep(forward_backward, enabled=mode == "graphs-step")

    def step():
        graphed_step(x, y)
        opt.step()

    base = {"model": name, "backend": backend or "", "mode": mode, "points": n,
            "settings": " ".join(args.set) if name == "flare" else ""}
    try:
        if mode.startswith("graphs") and (kwargs or device.type != "cuda"):
            return {**base, "status": "graphs need CUDA and a single input"}
        if mode == "graphs":
            with autocast:
                forward = torch.cuda.make_graphed_callables(model, (x,))
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        warmup_s = time.perf_counter() - t0
        stream_ms = float("nan")
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            times = cuda_event_times(step, 0, args.reps)
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            stream_ms = back_to_back_ms(step, args.reps)
        else:
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                step()
                times.append((time.perf_counter() - t0) * 1e3)
            peak = float("nan")
        kernels = profile_step(step, args.profile, f"{name}/{backend}/{mode}") if args.profile else {}
    except torch.OutOfMemoryError:
        return {**base, "status": "out of memory"}
    except Exception as err:  # noqa: BLE001 - a mode that fails (capture, compile) is a result too
        return {**base, "status": f"failed: {type(err).__name__}: {str(err)[:120]}"}
    return {**base, "batch": args.batch, "precision": args.precision,
            "parameters": sum(p.numel() for p in model.parameters()),
            "step_ms_median": float(pd.Series(times).median()), "step_ms_back_to_back": stream_ms, "peak_gib": peak,
            "warmup_s": warmup_s, **kernels, "status": "ok"}


def back_to_back_ms(step, reps: int) -> float:
    """Milliseconds per step of ``reps`` steps issued back to back with one synchronisation at the end
    (the host runs ahead where it can, as in a training loop); against the per-step median this shows
    how much of a step the host's own time is."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def profile_step(step, top: int, label: str) -> dict:
    """GPU time of the kernels of one step (profiler), the number of kernel launches, and the
    ``top`` kernels by time printed."""
    if not torch.cuda.is_available():
        return {}
    total, launches, events = profiled_kernels(step)
    print(f"-- {label}: {total:.2f} ms of kernels in {launches} launches; top {top}:")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:top]:
        print(f"   {e.self_device_time_total / 1e3:8.3f} ms  x{e.count:<4d} {e.key[:110]}")
    return {"kernel_ms": total, "kernel_launches": launches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="darcy", choices=sorted(PAPER_DATASET_CHANNELS))
    parser.add_argument("--models", default="all", help="comma-separated registered names, or all")
    parser.add_argument("--backends", default="reference", help="FLARE mixer backends to compare")
    parser.add_argument("--points", type=int, help="N (default: the dataset's)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing per block")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="FLARE hyperparameter over its paper setting, e.g. --set num_heads=8 (repeatable)")
    parser.add_argument("--modes", default="eager", help="comma-separated: eager, graphs, graphs-step, compile, compile-graphs, compile-max, "
                        "compile-max-graphs")
    parser.add_argument("--profile", type=int, default=0, help="print the top K kernels of one profiled step")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", default="results/bench/models.csv")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True  # the paper trains fp32 with TF32
    torch.backends.cudnn.allow_tf32 = True
    names = sorted(MODELS) if args.models == "all" else args.models.split(",")
    rows = []
    for name in names:
        backends = args.backends.split(",") if name == "flare" else [None]
        for backend in backends:
            for mode in args.modes.split(","):
                torch.manual_seed(0)
                row = bench_one(name, args, backend, device, mode)
                rows.append(row)
                print(row, flush=True)
                torch._dynamo.reset()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    table = pd.DataFrame(rows)
    table["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.drop(columns=["device"]).to_markdown(index=False))


if __name__ == "__main__":
    main()
