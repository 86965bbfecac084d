"""Transolver (Wu et al., ICML 2024), a baseline of SPEC §3: attention among learned physical slices.

Physics attention, per head h with head width D = C / H and G slices:

    f = W_f u,  a = W_a u                          # [B, H, N, D] features and assignment features
    w = softmax_G(W_s a / τ_h)                     # slice weights, each token's sum over slices is 1
    s_g = Σ_n w_ng f_n / Σ_n w_ng                  # slice tokens, weighted means of features [B, H, G, D]
    s' = softmax(q(s) k(s)ᵀ / √D) v(s)             # standard attention among the G slice tokens
    y_n = Σ_g w_ng s'_g                            # scattered back with the same slice weights

W_s is one Linear(D, G) shared by the heads; τ_h is a learned temperature per head, initialised 0.5;
q, k, v are bias-free Linear(D, D) shared by the heads; the heads are concatenated and projected.

The model: ``u = MLP(x) + placeholder`` (a learned per-channel offset, as in the Transolver code),
B pre-norm blocks ``u + Attn(LN(u))``, ``u + MLP(LN(u))``, then ``Linear(LN(u))``.

``transolver_conv`` is Transolver's variant for structured 2-D grids: W_f and W_a, the input
projections of every physics attention, are 3×3 convolutions over the grid (zero padding) instead of
per-token Linear maps, so slice assignment sees each point's neighbourhood. It needs
``grid_shape = [nx, ny]`` with points ordered row-major over (nx, ny). Simplifications: no
``unified_pos`` reference-grid encoding (coordinates are ordinary input features), GELU is the tanh
approximation of ``ResidualMLP``, the temperature is stored as a vector ``[H]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flare.models.layers import ResidualMLP, init_linear_and_norm

SLICE_NORM_EPS = 1e-5  # keeps the weighted mean finite for a slice no token is assigned to


@dataclass
class TransolverConfig:
    channel_dim: int = 128  # C
    num_blocks: int = 8
    num_heads: int = 8  # H, head width D = C / H
    num_slices: int = 64  # G
    mlp_ratio: float = 1.0
    temperature_init: float = 0.5
    grid_shape: Optional[Sequence[int]] = None  # [nx, ny]; only the conv variant uses it

    def __post_init__(self):
        if self.channel_dim % self.num_heads:
            raise ValueError(
                f"channel_dim ({self.channel_dim}) must be divisible by num_heads ({self.num_heads})"
            )


class PhysicsAttention(nn.Module):
    """Slice, attend among slices, deslice: ``[B, N, C] -> [B, N, C]``.

    ``in_proj`` maps ``[B, N, C]`` to ``[B, N, 2C]`` (features f, assignment features a); a Linear for
    point clouds, a 3×3 convolution over the grid for the conv variant.
    """

    def __init__(self, cfg: TransolverConfig, in_proj: nn.Module):
        super().__init__()
        C, H = cfg.channel_dim, cfg.num_heads
        self.num_heads, self.head_dim = H, C // H
        self.in_proj = in_proj
        self.slice_proj = nn.Linear(self.head_dim, cfg.num_slices)
        self.temperature = nn.Parameter(torch.full((H,), cfg.temperature_init))
        self.query = nn.Linear(self.head_dim, self.head_dim, bias=False)
        self.key = nn.Linear(self.head_dim, self.head_dim, bias=False)
        self.value = nn.Linear(self.head_dim, self.head_dim, bias=False)
        self.out = nn.Linear(C, C)

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        return t.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, D]

    def slice_weights(self, a: torch.Tensor) -> torch.Tensor:
        """Soft assignment of every token to the slices, ``[B, H, N, G]``, summing to 1 over G."""
        logits = self.slice_proj(a) / self.temperature.view(1, -1, 1, 1)
        return logits.softmax(dim=-1)

    @staticmethod
    def slice_tokens(f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Weighted means of the token features per slice, ``[B, H, G, D]``."""
        totals = torch.einsum("bhng,bhnd->bhgd", w, f)
        return totals / (w.sum(dim=2).unsqueeze(-1) + SLICE_NORM_EPS)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        B, N, C = u.shape
        f, a = self.in_proj(u).chunk(2, dim=-1)
        f, a = self.split_heads(f), self.split_heads(a)
        w = self.slice_weights(a)
        s = self.slice_tokens(f, w)
        s = F.scaled_dot_product_attention(self.query(s), self.key(s), self.value(s))
        y = torch.einsum("bhng,bhgd->bhnd", w, s)
        return self.out(y.transpose(1, 2).reshape(B, N, C))


class GridConv(nn.Module):
    """3×3 convolution over a row-major (nx, ny) grid of tokens: ``[B, nx·ny, c_in] -> [B, nx·ny, c_out]``.

    Zero padding at the grid's edges.
    """

    def __init__(self, in_dim: int, out_dim: int, grid_shape: Sequence[int]):
        super().__init__()
        self.nx, self.ny = (int(n) for n in grid_shape)
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        B, N, C = u.shape
        grid = u.transpose(1, 2).reshape(B, C, self.nx, self.ny)
        return self.conv(grid).flatten(2).transpose(1, 2)


class TransolverBlock(nn.Module):
    """Pre-norm block: ``u + PhysicsAttention(LN(u))`` then ``u + MLP(LN(u))``."""

    def __init__(self, cfg: TransolverConfig, in_proj: nn.Module):
        super().__init__()
        C = cfg.channel_dim
        self.norm1 = nn.LayerNorm(C)
        self.attn = PhysicsAttention(cfg, in_proj)
        self.norm2 = nn.LayerNorm(C)
        self.mlp = ResidualMLP(C, int(C * cfg.mlp_ratio), C, num_layers=0)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        u = u + self.attn(self.norm1(u))
        return u + self.mlp(self.norm2(u))


class Transolver(nn.Module):
    """Transolver on point clouds: ``x [B, N, c_in] -> [B, N, c_out]``."""

    def __init__(self, in_channels: int, out_channels: int, **hparams):
        super().__init__()
        cfg = TransolverConfig(**hparams)
        self.config = cfg
        C = cfg.channel_dim
        self.in_proj = ResidualMLP(in_channels, 2 * C, C, num_layers=0)
        self.placeholder = nn.Parameter(torch.rand(C) / C)
        self.blocks = nn.ModuleList(
            TransolverBlock(cfg, self.attention_in_proj(cfg)) for _ in range(cfg.num_blocks)
        )
        self.out_norm = nn.LayerNorm(C)
        self.out_proj = nn.Linear(C, out_channels)
        self.apply(init_linear_and_norm)
        for block in self.blocks:
            nn.init.orthogonal_(block.attn.slice_proj.weight)

    def attention_in_proj(self, cfg: TransolverConfig) -> nn.Module:
        """The per-token map to (features, assignment features) of each physics attention."""
        return nn.Linear(cfg.channel_dim, 2 * cfg.channel_dim)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 3:
            raise ValueError(f"{type(self).__name__} expects x of shape [B, N, c_in]; got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        u = self.in_proj(x) + self.placeholder
        for block in self.blocks:
            u = block(u)
        return self.out_proj(self.out_norm(u))


class TransolverConv(Transolver):
    """Transolver on a structured 2-D grid (3×3 convolutional attention input projections).

    ``x [B, nx·ny, c_in] -> [B, nx·ny, c_out]`` with points ordered row-major over ``grid_shape``.
    """

    needs_grid_shape = True  # trainers fill grid_shape from the dataset's metadata

    def __init__(self, in_channels: int, out_channels: int, **hparams):
        grid_shape = hparams.get("grid_shape")
        if grid_shape is None or len(grid_shape) != 2 or any(int(n) < 1 for n in grid_shape):
            raise ValueError(
                f"transolver_conv needs grid_shape: [nx, ny] (the structured grid, points row-major); "
                f"got {grid_shape!r}"
            )
        super().__init__(in_channels, out_channels, **hparams)

    def attention_in_proj(self, cfg: TransolverConfig) -> nn.Module:
        return GridConv(cfg.channel_dim, 2 * cfg.channel_dim, cfg.grid_shape)

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        nx, ny = self.config.grid_shape
        if x.shape[1] != nx * ny:
            raise ValueError(
                f"transolver_conv was built for a {nx}×{ny} grid ({nx * ny} points) but got "
                f"N = {x.shape[1]} points; set grid_shape to the dataset's grid"
            )
