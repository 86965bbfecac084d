"""Transformer baseline: softmax self-attention of every token over all N tokens (SPEC §3).

One layer costs O(N²·C) time, which is why the paper runs it only where N is a few thousand
(elasticity, darcy, airfoil). Pre-norm blocks ``x + Attn(LN(x))``, ``x + MLP(LN(x))``; input and
output projections as in FLARE (SPEC §2), so the two models differ only in their token mixing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flare.models.layers import ResidualMLP, init_linear_and_norm


@dataclass
class TransformerConfig:
    channel_dim: int = 80  # C
    num_blocks: int = 8
    num_heads: int = 5  # H, head dim D = C / H
    mlp_ratio: float = 4.0
    num_layers_in_out_proj: int = 2

    def __post_init__(self):
        if self.channel_dim % self.num_heads:
            raise ValueError(
                f"channel_dim ({self.channel_dim}) must be divisible by num_heads ({self.num_heads})"
            )


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, N, H·D] -> [B, H, N, D]``."""
    B, N, C = x.shape
    return x.view(B, N, num_heads, C // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, D] -> [B, N, H·D]``."""
    B, H, N, D = x.shape
    return x.transpose(1, 2).reshape(B, N, H * D)


class SoftmaxSelfAttention(nn.Module):
    """Multi-head softmax self-attention ``[B, N, C] -> [B, N, C]``.

    Per head ``Y = softmax_N(Q Kᵀ / √D) V`` with ``Q, K, V [B, H, N, D]`` linear maps (no bias) of
    the input; heads are concatenated and mixed by ``Linear(C, C)``.
    """

    def __init__(self, channel_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = 1.0 / math.sqrt(channel_dim // num_heads)
        self.qkv = nn.Linear(channel_dim, 3 * channel_dim, bias=False)
        self.out = nn.Linear(channel_dim, channel_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # [B, H, N, D]
        return self.out(merge_heads(y))


class SelfAttentionBlock(nn.Module):
    """Pre-norm block ``[B, N, C] -> [B, N, C]``: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``.

    MLP = Linear(C, C·mlp_ratio), GELU, Linear(C·mlp_ratio, C).
    """

    def __init__(self, channel_dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        C = channel_dim
        self.norm1 = nn.LayerNorm(C)
        self.attention = SoftmaxSelfAttention(C, num_heads)
        self.norm2 = nn.LayerNorm(C)
        self.mlp = ResidualMLP(C, int(C * mlp_ratio), C, num_layers=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """Softmax-attention transformer ``x [B, N, c_in] -> [B, N, c_out]``; coordinates are ordinary features."""

    def __init__(self, in_channels: int, out_channels: int, **hparams):
        super().__init__()
        cfg = TransformerConfig(**hparams)
        self.config = cfg
        C, L = cfg.channel_dim, cfg.num_layers_in_out_proj
        self.in_proj = ResidualMLP(in_channels, C, C, L, input_residual=False, output_residual=True)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(C, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.num_blocks)
        )
        self.out_norm = nn.LayerNorm(C)
        self.out_proj = ResidualMLP(C, C, out_channels, L, input_residual=True, output_residual=False)
        self.apply(init_linear_and_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"Transformer expects x of shape [B, N, c_in]; got {tuple(x.shape)}")
        h = self.in_proj(x)
        for block in self.blocks:
            h = block(h)
        return self.out_proj(self.out_norm(h))
