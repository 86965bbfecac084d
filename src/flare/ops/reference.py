"""Reference FLARE mixer: two fused scaled-dot-product-attention calls (SPEC §1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def expand_latents(q: torch.Tensor, batch: int) -> torch.Tensor:
    """Broadcast latent queries ``[H, M, D]`` to ``[B, H, M, D]`` as a contiguous tensor.

    A stride-0 expanded query can push SDPA onto a slow kernel, so the copy is deliberate.
    """
    if q.dim() == 3:
        return q.unsqueeze(0).expand(batch, *q.shape).contiguous()
    return q


def flare_mixer_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Gather (latents attend over tokens) then scatter (tokens attend over latents).

    q: ``[H, M, D]`` or ``[B, H, M, D]``; k, v: ``[B, H, N, D]``. Returns ``[B, H, N, D]``.
    Both softmaxes use scale 1.0.
    """
    q = expand_latents(q, k.shape[0])
    z = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # gather  [B, H, M, D]
    return F.scaled_dot_product_attention(k, q, z, scale=1.0)  # scatter [B, H, N, D]


def flare_mixer_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same function with the two softmax matrices formed explicitly (for tests, O(N·M) memory)."""
    q = expand_latents(q, k.shape[0])
    scores = q @ k.transpose(-1, -2)  # [B, H, M, N]
    z = torch.softmax(scores, dim=-1) @ v  # softmax over the N tokens
    return torch.softmax(scores.transpose(-1, -2), dim=-1) @ z  # softmax over the M latents
