"""Timing helpers shared by the benchmark scripts (run them from the repository root as
``python benchmarks/<script>.py``: this folder is then on the import path)."""
from __future__ import annotations

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
