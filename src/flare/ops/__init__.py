"""Attention kernels behind one function. Imports only torch (and triton / flash-attn, lazily)."""
from __future__ import annotations

import torch

from flare.ops.flash import flare_mixer_flash, flash_available
from flare.ops.reference import flare_mixer_explicit, flare_mixer_reference

BACKENDS = ("auto", "reference", "triton", "flash", "explicit")


# Below this many tokens the fused kernels lose to the reference in half precision: each Triton
# launch costs about 90 µs of host time (H100, triton 3.6; benchmarks/NOTES-mixer.md). In fp32 the
# reference runs SDPA's memory-efficient kernel and the fused path won at every N measured.
TRITON_MIN_TOKENS_HALF = 16384


def choose_backend(device_type: str, dtype: torch.dtype, tokens: int, triton_ok: bool) -> str:
    """What ``auto`` picks: the fused Triton kernels on CUDA where they were measured faster, else
    the two-SDPA reference."""
    if device_type != "cuda" or not triton_ok:
        return "reference"
    if dtype == torch.float32 or tokens >= TRITON_MIN_TOKENS_HALF:
        return "triton"
    return "reference"


def resolve_backend(backend: str, k: torch.Tensor) -> str:
    """The concrete backend for ``k`` (``[B, H, N, D]``): ``backend`` itself unless it is ``auto``."""
    if backend != "auto":
        return backend
    triton_ok = False
    if k.is_cuda:
        from flare.ops.triton_mixer import triton_available

        triton_ok = triton_available()
    return choose_backend(k.device.type, k.dtype, k.shape[2], triton_ok)


def _autocast_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Under autocast, every backend computes in the autocast dtype, as SDPA itself does: otherwise a
    float32 residual stream would hand the fused kernels float32 inputs (slow full-precision dots)
    while the reference silently ran in half precision."""
    device_type = k.device.type
    if not torch.is_autocast_enabled(device_type):
        return q, k, v
    dtype = torch.get_autocast_dtype(device_type)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def flare_mixer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "reference") -> torch.Tensor:
    """FLARE token mixer ``Y = softmax_M(K Qᵀ) · softmax_N(Q Kᵀ) · V`` per head (scale 1.0).

    q: latent queries ``[H, M, D]`` (shared over the batch) or ``[B, H, M, D]``;
    k, v: ``[B, H, N, D]``. Returns ``[B, H, N, D]``.
    backend: ``reference`` (two fused SDPA calls), ``triton`` (fused kernels, N split over the GPU),
    ``flash`` (flash-attn, when installed), ``auto`` (the faster of the first two on the device) or
    ``explicit`` (softmax matrices formed, for tests). Under autocast the inputs are cast to the
    autocast dtype first, for every backend.
    """
    if k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"k and v must both be [B, H, N, D]; got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.dim() not in (3, 4) or q.shape[-1] != k.shape[-1] or q.shape[-3] != k.shape[1]:
        raise ValueError(
            f"q must be [H, M, D] or [B, H, M, D] matching k's heads and head dim; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    q, k, v = _autocast_inputs(q, k, v)
    backend = resolve_backend(backend, k)
    if backend == "reference":
        return flare_mixer_reference(q, k, v)
    if backend == "triton":
        from flare.ops.triton_mixer import flare_mixer_triton

        return flare_mixer_triton(q, k, v)
    if backend == "flash":
        return flare_mixer_flash(q, k, v)
    if backend == "explicit":
        return flare_mixer_explicit(q, k, v)
    raise ValueError(f"unknown FLARE mixer backend {backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "choose_backend", "flare_mixer", "flash_available", "resolve_backend"]
