"""The scaling experiment (SPEC §7): time and memory of one attention layer against the number of
points N, for FLARE (reference and fused mixers), softmax attention and Transolver's physics
attention at the same number of latents / slices M.

One layer with its projections, ``C`` channels, ``H`` heads, batch 1; forward + backward of an MSE
loss; median of repeated runs after warm-up (CUDA events on a GPU, wall clock on the CPU) and peak
allocated memory (GPU only).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from flare.models.flare import FLAREConfig, FLAREMixer  # noqa: E402
from flare.models.transformer import SoftmaxSelfAttention  # noqa: E402
from flare.models.transolver import PhysicsAttention, TransolverConfig  # noqa: E402

METHODS = ("flare_reference", "flare_triton", "softmax", "physics")
LABELS = {"flare_reference": "FLARE (two SDPA calls)", "flare_triton": "FLARE (fused Triton)",
          "softmax": "softmax attention", "physics": "Transolver physics attention"}


def attention_layer(method: str, channels: int, heads: int, latents: int) -> nn.Module:
    """One mixing layer with its projections, ``[B, N, C] -> [B, N, C]``."""
    if method.startswith("flare_"):
        backend = method.removeprefix("flare_")
        return FLAREMixer(FLAREConfig(channel_dim=channels, num_heads=heads, num_latents=latents,
                                      attn_backend=backend))
    if method == "softmax":
        return SoftmaxSelfAttention(channels, heads)
    if method == "physics":
        cfg = TransolverConfig(channel_dim=channels, num_heads=heads, num_slices=latents)
        return PhysicsAttention(cfg, nn.Linear(channels, 2 * channels))
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def time_layer(layer: nn.Module, points: int, channels: int, device: torch.device, dtype: torch.dtype,
               warmup: int = 3, reps: int = 10) -> tuple[float, float]:
    """Median milliseconds of forward + backward (MSE loss) and peak allocated GiB (NaN on the CPU)."""
    x = torch.randn(1, points, channels, device=device)
    target = torch.randn_like(x)
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext())

    def step():
        with autocast:
            loss = nn.functional.mse_loss(layer(x).float(), target)
        loss.backward()

    for _ in range(warmup):
        step()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        return float(np.median(times)), torch.cuda.max_memory_allocated(device) / 2**30
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)), float("nan")


def run_scaling(points: Sequence[int], latents: Sequence[int], methods: Sequence[str], channels: int = 128,
                heads: int = 8, precision: str = "bf16", device: str = "auto", max_softmax_points: int = 65536,
                warmup: int = 3, reps: int = 10) -> pd.DataFrame:
    """Time every (method, M, N); softmax attention (no M) runs once per N up to ``max_softmax_points``.
    Methods that cannot run here (fused kernels without CUDA) and out-of-memory cases are recorded,
    not raised."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dev.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32
    # one throwaway measurement first: thread pools, allocators and kernel caches start up here, not
    # inside the first timed configuration
    time_layer(attention_layer("physics", channels, heads, latents[0]).to(dev), points[0], channels, dev, dtype,
               warmup, 1)
    rows = []
    for method in methods:
        for m in ([latents[0]] if method == "softmax" else latents):
            for n in points:
                row = {"method": method, "latents": m if method != "softmax" else None, "points": n,
                       "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                       "precision": str(dtype).removeprefix("torch.")}
                if method == "softmax" and n > max_softmax_points:
                    rows.append({**row, "status": "skipped: quadratic"})
                    continue
                if method == "flare_triton" and dev.type != "cuda":
                    rows.append({**row, "status": "skipped: needs CUDA"})
                    continue
                torch.manual_seed(0)
                layer = attention_layer(method, channels, heads, m).to(dev)
                try:
                    ms, gib = time_layer(layer, n, channels, dev, dtype, warmup, reps)
                    rows.append({**row, "ms": ms, "peak_gib": gib, "status": "ok"})
                except torch.OutOfMemoryError:
                    rows.append({**row, "status": "out of memory"})
                del layer
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    return pd.DataFrame(rows)


def scaling_figures(frame: pd.DataFrame, time_figures: Sequence[str | Path], memory_figures: Sequence[str | Path]) -> None:
    """Log-log time (and, on a GPU, memory) against N, one line per method and M."""
    ok = frame[frame["status"] == "ok"].copy()
    ok["series"] = [LABELS[m] + ("" if pd.isna(k) else f", M={int(k)}") for m, k in zip(ok["method"], ok["latents"])]
    for column, label, outputs in (("ms", "forward + backward (ms)", time_figures),
                                   ("peak_gib", "peak memory (GiB)", memory_figures)):
        fig, ax = plt.subplots(figsize=(6, 4))
        data = ok.dropna(subset=[column]) if column in ok else ok.iloc[:0]
        if len(data):
            sns.lineplot(data=data, x="points", y=column, hue="series", marker="o", ax=ax)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.legend(fontsize="small", frameon=False)
        else:
            ax.text(0.5, 0.5, "not measured on this device", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("points N")
        ax.set_ylabel(label)
        fig.tight_layout()
        for out in outputs:
            fig.savefig(out, dpi=150)
        plt.close(fig)
