"""Timing helpers shared by the benchmark scripts (run them from the repository root as
``python benchmarks/<script>.py``: this folder is then on the import path)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch


def cuda_event_times(fn, warmup: int, reps: int) -> list[float]:
    """Milliseconds of ``reps`` calls of ``fn`` after ``warmup`` calls, each between two CUDA events
    with a synchronisation after it."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def profiled_kernels(fn):
    """Run ``fn`` once under the profiler: (its kernels' total GPU milliseconds, number of launches,
    the profiler's per-kernel events with GPU time)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events) / 1e3
    return total, sum(e.count for e in events), events


def graph_replay_ms(fn, reps: int) -> float:
    """Milliseconds per call of ``fn``, ``reps`` calls captured in one CUDA graph and replayed (median of
    5 replays): the GPU time of a sequence of launches without host gaps, as inside a graphed step."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compiles, allocator) off the capture
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return sorted(times)[len(times) // 2]


def write_table(rows: list[dict], out: str) -> None:
    """The result rows as a csv at ``out`` and as a markdown table on stdout (without the device column)."""
    table = pd.DataFrame(rows)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(table.drop(columns=["device"], errors="ignore").to_markdown(index=False, floatfmt=".4g"))
