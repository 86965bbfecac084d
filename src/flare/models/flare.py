"""FLARE: Fast Low-rank Attention Routing Engine (SPEC §2).

Each head routes its N tokens through its own M learnable latent queries: the latents gather from
the tokens (softmax over N), then the tokens read back from the latents (softmax over M).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.utils.checkpoint
from torch import nn

from flare.models.layers import ResidualMLP, init_linear_and_norm
from flare.ops import flare_mixer


@dataclass
class FLAREConfig:
    channel_dim: int = 64  # C
    num_blocks: int = 8  # B
    num_heads: int = 8  # H, head dim D = C / H
    num_latents: int = 64  # M latents per head
    num_layers_kv_proj: int = 3
    num_layers_mlp: int = 3
    num_layers_in_out_proj: int = 2
    mlp_ratio: float = 1.0
    kv_proj_ratio: float = 1.0
    in_out_proj_ratio: float = 1.0
    out_proj_ln: bool = True
    attn_backend: str = "reference"
    # residual MLPs (key / value projections, block MLPs, in / out projections): "torch", "triton"
    # (one fused kernel forward and one backward, flare.ops.fused_mlp) or "auto" (triton on CUDA);
    # where they are fused, so is each mixer's output projection with its skip connection
    # (flare.ops.fused_linear)
    mlp_backend: str = "torch"
    # recompute the in/out projections and each block in the backward instead of keeping their
    # activations: memory of about one block's activations plus the residual stream at each block
    # boundary, for one more forward (how 10M points fit on one 80 GB card)
    activation_checkpointing: bool = False

    def __post_init__(self):
        if self.channel_dim % self.num_heads:
            raise ValueError(
                f"channel_dim ({self.channel_dim}) must be divisible by num_heads ({self.num_heads})"
            )


class FLAREMixer(nn.Module):
    """Key/value projections, per-head latent routing, output projection: ``[B, N, C] -> [B, N, C]``."""

    def __init__(self, cfg: FLAREConfig):
        super().__init__()
        C, H = cfg.channel_dim, cfg.num_heads
        self.num_heads, self.head_dim, self.num_latents = H, C // H, cfg.num_latents
        self.backend = cfg.attn_backend
        kv_hidden = int(C * cfg.kv_proj_ratio)
        mlp = cfg.mlp_backend
        self.key_proj = ResidualMLP(C, kv_hidden, C, cfg.num_layers_kv_proj, True, True, backend=mlp)
        self.value_proj = ResidualMLP(C, kv_hidden, C, cfg.num_layers_kv_proj, True, True, backend=mlp)
        # One [C, M] parameter viewed as [H, D, M]: head h owns its own M latents of width D.
        self.latent_queries = nn.Parameter(torch.empty(C, cfg.num_latents))
        self.out = nn.Linear(C, C)

    def queries(self) -> torch.Tensor:
        """Latent queries ``[H, M, D]``."""
        return self.latent_queries.view(self.num_heads, self.head_dim, self.num_latents).transpose(1, 2)

    def forward(self, u: torch.Tensor, norm: Optional[nn.Module] = None, add_input: bool = False) -> torch.Tensor:
        """``u [B, N, C]``; ``norm`` is applied to u first (inside the fused MLP kernels when they run,
        else once here for both projections); ``add_input`` returns ``u + mixer(norm(u))`` (the block's
        skip connection; with the fused MLPs the output projection, its head merge and this sum are one
        kernel, flare.ops.fused_linear)."""
        skip = u if add_input else None
        if norm is not None and not self.key_proj.fuses_norm(u, norm):
            u, norm = norm(u), None
        B, N, C = u.shape
        if self.key_proj.pairs_with(self.value_proj, u, norm):  # one fused backward for both
            if skip is u:  # u passed through the pair: that backward also adds the skip's gradient
                k, v, skip = self.key_proj.forward_pair(self.value_proj, u, norm=norm, pass_input=True)
            else:
                k, v = self.key_proj.forward_pair(self.value_proj, u, norm=norm)
        else:
            k, v = self.key_proj(u, norm=norm), self.value_proj(u, norm=norm)
        k = k.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, D]
        v = v.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        q = self.queries().to(k.dtype)
        y = flare_mixer(q, k, v, backend=self.backend)  # [B, H, N, D]
        if skip is not None and self.key_proj.uses_fused(skip):
            from flare.ops.fused_linear import fused_head_merge_linear, head_merge_linear_supports  # triton

            if head_merge_linear_supports(y, self.out.weight):
                return fused_head_merge_linear(y, self.out.weight, self.out.bias, skip)
        out = self.out(y.transpose(1, 2).reshape(B, N, C))
        return out if skip is None else skip + out


class FLAREBlock(nn.Module):
    """Pre-norm block: ``x + FLARE(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(self, cfg: FLAREConfig):
        super().__init__()
        C = cfg.channel_dim
        self.norm1 = nn.LayerNorm(C)
        self.mixer = FLAREMixer(cfg)
        self.norm2 = nn.LayerNorm(C)
        self.mlp = ResidualMLP(C, int(C * cfg.mlp_ratio), C, cfg.num_layers_mlp, True, True,
                               backend=cfg.mlp_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mixer(x, norm=self.norm1, add_input=True)  # x + FLARE(LN(x))
        return self.mlp(x, norm=self.norm2, add_input=True)  # x + MLP(LN(x))


class FLARE(nn.Module):
    """FLARE surrogate: ``x [B, N, c_in] -> [B, N, c_out]``; coordinates are ordinary input features."""

    def __init__(self, in_channels: int, out_channels: int, **hparams):
        super().__init__()
        cfg = FLAREConfig(**hparams)
        self.config = cfg
        C = cfg.channel_dim
        proj_hidden = int(C * cfg.in_out_proj_ratio)
        self.in_proj = ResidualMLP(in_channels, proj_hidden, C, cfg.num_layers_in_out_proj, False, True,
                                   backend=cfg.mlp_backend)
        self.blocks = nn.ModuleList(FLAREBlock(cfg) for _ in range(cfg.num_blocks))
        self.out_norm = nn.LayerNorm(C) if cfg.out_proj_ln else nn.Identity()
        self.out_proj = ResidualMLP(C, proj_hidden, out_channels, cfg.num_layers_in_out_proj, True, False,
                                    backend=cfg.mlp_backend)
        self.apply(init_linear_and_norm)
        for block in self.blocks:
            nn.init.normal_(block.mixer.latent_queries, mean=0.0, std=0.1)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters trained without weight decay beyond biases and norms: the latent queries."""
        return {name for name, _ in self.named_parameters() if name.endswith("latent_queries")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"FLARE expects x of shape [B, N, c_in]; got {tuple(x.shape)}")
        if self.config.activation_checkpointing and torch.is_grad_enabled():
            def run(module, h):
                return torch.utils.checkpoint.checkpoint(module, h, use_reentrant=False)
        else:
            def run(module, h):
                return module(h)
        h = run(self.in_proj, x)
        for block in self.blocks:
            h = run(block, h)
        return run(self._head, h)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.out_proj(h, norm=self.out_norm)
