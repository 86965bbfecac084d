"""LNO: Latent Neural Operator (Wang & Wang, NeurIPS 2024), a baseline of SPEC §3.

The N tokens are projected onto M latent modes and all global mixing happens among the modes:

    k = trunk(x)                      # [B, N, C], embedding that decides the mode assignment
    u = branch(x)                     # [B, N, C], embedding that is transported
    s = mode_proj(k)                  # [B, N, M], scores of each token against M learned mode queries
    z = softmax_N(s)ᵀ u               # encode: each mode is a weighted mean over the tokens  [B, M, C]
    z = latent_blocks(z)              # softmax self-attention among the M modes
    y = out(softmax_M(s) z)           # decode: each token reads a mixture of the modes       [B, N, c_out]

The same score matrix serves the encoder (softmax over N) and the decoder (softmax over M), as in
the paper's Physics-Cross-Attention. The last Linear of ``mode_proj`` holds the learned mode queries
(its weight rows, one per mode). As in the FLARE reference's LNO runs, trunk and branch both see all
input channels (coordinates are ordinary input features). Simplifications: GELU is the tanh
approximation of ``ResidualMLP``; initialisation is PyTorch's default (as the LNO code leaves it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flare.models.layers import ResidualMLP


@dataclass
class LNOConfig:
    channel_dim: int = 128  # n_dim (192 on elasticity in the paper runs)
    num_modes: int = 256  # M latent modes
    num_blocks: int = 8  # latent self-attention blocks (4 to 8 in the paper runs)
    num_heads: int = 8  # heads of the latent self-attention
    num_layers_proj: int = 2  # n_layer: residual hidden layers of the trunk/branch/mode/out MLPs
    mlp_ratio: float = 2.0  # hidden width of the latent blocks' MLP, relative to C

    def __post_init__(self):
        if self.channel_dim % self.num_heads:
            raise ValueError(
                f"channel_dim ({self.channel_dim}) must be divisible by num_heads ({self.num_heads})"
            )


class LatentSelfAttention(nn.Module):
    """Multi-head softmax self-attention (scale 1/√D) among the modes: ``[B, M, C] -> [B, M, C]``."""

    def __init__(self, cfg: LNOConfig):
        super().__init__()
        C = cfg.channel_dim
        self.num_heads, self.head_dim = cfg.num_heads, C // cfg.num_heads
        self.query = nn.Linear(C, C)
        self.key = nn.Linear(C, C)
        self.value = nn.Linear(C, C)
        self.out = nn.Linear(C, C)

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        B, M, _ = t.shape
        return t.view(B, M, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, M, D]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        B, M, C = z.shape
        q, k, v = (self.split_heads(proj(z)) for proj in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(B, M, C))


class LatentBlock(nn.Module):
    """Pre-norm transformer block on the modes: ``z + Attn(LN(z))`` then ``z + MLP(LN(z))``."""

    def __init__(self, cfg: LNOConfig):
        super().__init__()
        C = cfg.channel_dim
        self.norm1 = nn.LayerNorm(C)
        self.attn = LatentSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(C)
        self.mlp = ResidualMLP(C, int(C * cfg.mlp_ratio), C, num_layers=0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z + self.attn(self.norm1(z))
        return z + self.mlp(self.norm2(z))


class LNO(nn.Module):
    """Latent Neural Operator: ``x [B, N, c_in] -> [B, N, c_out]`` through M latent modes."""

    def __init__(self, in_channels: int, out_channels: int, **hparams):
        super().__init__()
        cfg = LNOConfig(**hparams)
        self.config = cfg
        C, L = cfg.channel_dim, cfg.num_layers_proj
        self.trunk = ResidualMLP(in_channels, C, C, L)
        self.branch = ResidualMLP(in_channels, C, C, L)
        self.mode_proj = ResidualMLP(C, C, cfg.num_modes, L)
        self.blocks = nn.ModuleList(LatentBlock(cfg) for _ in range(cfg.num_blocks))
        self.out_proj = ResidualMLP(C, C, out_channels, L)

    def mode_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of every token against every mode, ``[B, N, M]`` (before either softmax)."""
        return self.mode_proj(self.trunk(x))

    def encode(self, scores: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Modes as weighted means of the token features: ``softmax_N(scores)ᵀ u``, ``[B, M, C]``."""
        return torch.einsum("bnm,bnc->bmc", scores.softmax(dim=1), u)

    def decode(self, scores: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Each token's mixture of the modes: ``softmax_M(scores) z``, ``[B, N, C]``."""
        return torch.einsum("bnm,bmc->bnc", scores.softmax(dim=2), z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"LNO expects x of shape [B, N, c_in]; got {tuple(x.shape)}")
        scores = self.mode_scores(x)
        z = self.encode(scores, self.branch(x))
        for block in self.blocks:
            z = block(z)
        return self.out_proj(self.decode(scores, z))
