"""Attention kernels behind one function. Imports only torch (and triton, lazily)."""
from __future__ import annotations

import torch

from flare.ops.reference import flare_mixer_explicit, flare_mixer_reference

BACKENDS = ("reference", "explicit")


def flare_mixer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "reference") -> torch.Tensor:
    """FLARE token mixer ``Y = softmax_M(K Qᵀ) · softmax_N(Q Kᵀ) · V`` per head.

    q: latent queries ``[H, M, D]`` (shared over the batch) or ``[B, H, M, D]``;
    k, v: ``[B, H, N, D]``. Returns ``[B, H, N, D]``.
    backend: ``reference`` (two fused SDPA calls) or ``explicit`` (softmax matrices formed, for tests).
    """
    if k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"k and v must both be [B, H, N, D]; got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.dim() not in (3, 4) or q.shape[-1] != k.shape[-1] or q.shape[-3] != k.shape[1]:
        raise ValueError(
            f"q must be [H, M, D] or [B, H, M, D] matching k's heads and head dim; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if backend == "reference":
        return flare_mixer_reference(q, k, v)
    if backend == "explicit":
        return flare_mixer_explicit(q, k, v)
    raise ValueError(f"unknown FLARE mixer backend {backend!r}; choose one of {', '.join(BACKENDS)}")
