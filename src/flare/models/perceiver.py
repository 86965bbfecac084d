"""PerceiverIO baseline: all token mixing goes through one shared array of learned latents (SPEC §3).

encode: the M learned latents attend over the N embedded tokens (softmax over N);
process: B softmax self-attention blocks among the M latents;
decode: every token embedding queries the latents (softmax over M).
Cost O(N·M·C + B·M²·C). Unlike FLARE (fresh latent queries in every block), one latent array
serves the whole model and carries the state between blocks: the token stream is read once and
written once, and a token's own embedding reaches its output only through its decoder query (no
residual around the decoder).

The encoder adds its attention output to the latent array (PerceiverIO's query residual) unless
``encoder_residual`` is off, which gives the FLARE paper's baseline code. Without the residual every
latent starts as nearly the same average of the tokens, so the decoder sees M copies of one vector
and its gradients start a few 1e-6 (C = 128) to 1e-7 (C = 16) times the input projection's. On a
toy fit such models did not improve within 50-100 Adam steps; with the residual they did at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flare.models.layers import ResidualMLP, init_linear_and_norm
from flare.models.transformer import SelfAttentionBlock, merge_heads, split_heads

# The latent array is the encoder's query itself (no projection): unit-variance init, as the
# paper's baseline code does, so the encoder's attention is not uniform from the first step.
LATENT_INIT_STD = 1.0


@dataclass
class PerceiverConfig:
    channel_dim: int = 128  # C, of tokens and latents
    num_blocks: int = 8  # latent self-attention blocks
    num_heads: int = 8  # H, head dim D = C / H
    num_latents: int = 1024  # M
    mlp_ratio: float = 4.0
    num_layers_in_out_proj: int = 2
    encoder_residual: bool = True  # z = latents + CrossAttn(latents, LN(h)); False: z = CrossAttn(...)

    def __post_init__(self):
        if self.channel_dim % self.num_heads:
            raise ValueError(
                f"channel_dim ({self.channel_dim}) must be divisible by num_heads ({self.num_heads})"
            )


class CrossAttention(nn.Module):
    """Multi-head softmax attention of queries over sources: ``[B, M, C], [B, N, C] -> [B, M, C]``.

    Per head ``Y = softmax_N(Q Kᵀ / √D) V``; ``Q = W_q queries`` (or the queries themselves when
    ``project_queries`` is off), ``K = W_k sources``, ``V = W_v sources``, all ``[B, H, ·, D]``.
    """

    def __init__(self, channel_dim: int, num_heads: int, project_queries: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = 1.0 / math.sqrt(channel_dim // num_heads)
        self.query = nn.Linear(channel_dim, channel_dim) if project_queries else nn.Identity()
        self.key = nn.Linear(channel_dim, channel_dim)
        self.value = nn.Linear(channel_dim, channel_dim)
        self.out = nn.Linear(channel_dim, channel_dim)

    def forward(self, queries: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.query(queries), self.num_heads)
        k = split_heads(self.key(sources), self.num_heads)
        v = split_heads(self.value(sources), self.num_heads)
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # [B, H, M, D]
        return self.out(merge_heads(y))


class PerceiverIO(nn.Module):
    """PerceiverIO surrogate ``x [B, N, c_in] -> [B, N, c_out]`` through latents ``[B, M, C]``."""

    def __init__(self, in_channels: int, out_channels: int, **hparams):
        super().__init__()
        cfg = PerceiverConfig(**hparams)
        self.config = cfg
        C, H, L = cfg.channel_dim, cfg.num_heads, cfg.num_layers_in_out_proj
        self.in_proj = ResidualMLP(in_channels, C, C, L, input_residual=False, output_residual=True)
        self.latents = nn.Parameter(torch.empty(cfg.num_latents, C))  # [M, C]
        self.encoder_norm = nn.LayerNorm(C)
        self.encoder = CrossAttention(C, H, project_queries=False)
        self.blocks = nn.ModuleList(SelfAttentionBlock(C, H, cfg.mlp_ratio) for _ in range(cfg.num_blocks))
        self.decoder_query_norm = nn.LayerNorm(C)
        self.decoder_latent_norm = nn.LayerNorm(C)
        self.decoder = CrossAttention(C, H, project_queries=True)
        self.out_norm = nn.LayerNorm(C)
        self.out_proj = ResidualMLP(C, C, out_channels, L, input_residual=True, output_residual=False)
        self.apply(init_linear_and_norm)
        nn.init.normal_(self.latents, mean=0.0, std=LATENT_INIT_STD)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters trained without weight decay beyond biases and norms: the latent array."""
        return {"latents"}

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Latents gather from the token embeddings: ``h [B, N, C] -> z [B, M, C]``."""
        # contiguous: a stride-0 batch dimension can push SDPA onto a slow path (SPEC §7)
        latents = self.latents.to(h.dtype).expand(h.shape[0], -1, -1).contiguous()
        z = self.encoder(latents, self.encoder_norm(h))
        return latents + z if self.config.encoder_residual else z

    def decode(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Tokens read from the latents: ``z [B, M, C], h [B, N, C] -> [B, N, C]``."""
        return self.decoder(self.decoder_query_norm(h), self.decoder_latent_norm(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"PerceiverIO expects x of shape [B, N, c_in]; got {tuple(x.shape)}")
        h = self.in_proj(x)
        z = self.encode(h)
        for block in self.blocks:
            z = block(z)
        return self.out_proj(self.out_norm(self.decode(z, h)))
