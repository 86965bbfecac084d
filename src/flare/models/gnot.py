"""GNOT baseline (Hao et al. 2023, General Neural Operator Transformer; SPEC §3).

Two token streams: queries ``h`` (evolving through the blocks) and input functions ``s`` (encoded
once). Here both come from the same tokens, through two separate encoders. Each block:

    h = h + CrossAttn(LN(h), LN(s))       # normalised linear attention, queries over input functions
    h = h + LN(MoE₁(h; g))                # 3 expert MLPs mixed by position gates g = softmax(G(pos))
    h = h + SelfAttn(LN(h))               # normalised linear attention among the queries
    h = h + LN(MoE₂(h; g))

(MoE inputs un-normalised, outputs layer-normed, as in GNOT's code.)

Normalised linear attention, per head with ``q = softmax_D(W_q u)``, ``k = softmax_D(W_k w)``:

    y_t = q_t·(Σ_s k_s v_sᵀ) / (q_t·Σ_s k_s)  (+ q_t)

which equals softmax-free attention with weights ``q_t·k_s / Σ_s' q_t·k_s'`` and costs O(N·D²)
per head. The ``+ q_t`` term is in GNOT's public code (and the baseline the FLARE paper ran),
not in the paper's equation; ``query_residual`` switches it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from flare.models.layers import ResidualMLP, gelu_tanh, init_linear_and_norm
from flare.models.transformer import merge_heads, split_heads


@dataclass
class GNOTConfig:
    channel_dim: int = 128  # C
    num_blocks: int = 8
    num_heads: int = 8  # H, head dim D = C / H
    num_experts: int = 3  # expert MLPs per mixture of experts
    mlp_ratio: float = 2.0  # hidden width of experts and gate network: C·mlp_ratio
    space_dim: int = 2  # the first space_dim input channels are the position that drives the gates
    query_residual: bool = True  # y = attention + q, as in GNOT's code

    def __post_init__(self):
        if self.channel_dim % self.num_heads:
            raise ValueError(
                f"channel_dim ({self.channel_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.space_dim < 1 or self.num_experts < 1:
            raise ValueError(f"space_dim and num_experts must be at least 1; got {self.space_dim}, {self.num_experts}")


class NormalizedLinearAttention(nn.Module):
    """GNOT's linear attention ``u [B, N, C], w [B, S, C] -> [B, N, C]`` (self-attention: w = u).

    ``q [B, H, N, D]``, ``k [B, H, S, D]`` are softmaxed over the feature dimension D, so every
    ``q_t·k_s > 0`` and the normaliser ``q_t·Σ_s k_s`` is positive.
    """

    def __init__(self, channel_dim: int, num_heads: int, query_residual: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.query_residual = query_residual
        self.query = nn.Linear(channel_dim, channel_dim)
        self.key = nn.Linear(channel_dim, channel_dim)
        self.value = nn.Linear(channel_dim, channel_dim)
        self.out = nn.Linear(channel_dim, channel_dim)

    def forward(self, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.query(u), self.num_heads).softmax(dim=-1)  # [B, H, N, D]
        k = split_heads(self.key(w), self.num_heads).softmax(dim=-1)  # [B, H, S, D]
        v = split_heads(self.value(w), self.num_heads)  # [B, H, S, D]
        context = k.transpose(-2, -1) @ v  # Σ_s k_s v_sᵀ: [B, H, D, D]
        normaliser = q @ k.sum(dim=-2).unsqueeze(-1)  # q_t·Σ_s k_s: [B, H, N, 1]
        y = (q @ context) / normaliser
        if self.query_residual:
            y = y + q
        return self.out(merge_heads(y))


class MixtureOfExperts(nn.Module):
    """Gated sum of expert MLPs ``h [B, N, C], gates [B, N, E] -> Σ_e gates_e · MLP_e(h) [B, N, C]``."""

    def __init__(self, channel_dim: int, hidden_dim: int, num_experts: int):
        super().__init__()
        self.experts = nn.ModuleList(
            ResidualMLP(channel_dim, hidden_dim, channel_dim, num_layers=0) for _ in range(num_experts)
        )

    def forward(self, h: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        return sum(gates[..., e : e + 1] * expert(h) for e, expert in enumerate(self.experts))


class GNOTBlock(nn.Module):
    """``h [B, N, C], s [B, S, C], pos [B, N, space_dim] -> h [B, N, C]`` (module docstring: the four steps)."""

    def __init__(self, cfg: GNOTConfig):
        super().__init__()
        C, H, E = cfg.channel_dim, cfg.num_heads, cfg.num_experts
        hidden = int(C * cfg.mlp_ratio)
        # gate network G: position -> one logit per expert, shared by both mixtures of the block
        self.gate = nn.Sequential(
            nn.Linear(cfg.space_dim, hidden), gelu_tanh(), nn.Linear(hidden, hidden), gelu_tanh(), nn.Linear(hidden, E)
        )
        self.norm_query = nn.LayerNorm(C)
        self.norm_source = nn.LayerNorm(C)
        self.cross_attention = NormalizedLinearAttention(C, H, cfg.query_residual)
        self.moe1 = MixtureOfExperts(C, hidden, E)
        self.norm_moe1 = nn.LayerNorm(C)
        self.norm_self = nn.LayerNorm(C)
        self.self_attention = NormalizedLinearAttention(C, H, cfg.query_residual)
        self.moe2 = MixtureOfExperts(C, hidden, E)
        self.norm_moe2 = nn.LayerNorm(C)

    def gates(self, pos: torch.Tensor) -> torch.Tensor:
        """Expert weights ``[B, N, E]``, a softmax over experts of the gate network at each position."""
        return self.gate(pos).softmax(dim=-1)

    def forward(self, h: torch.Tensor, s: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        gates = self.gates(pos)
        h = h + self.cross_attention(self.norm_query(h), self.norm_source(s))
        h = h + self.norm_moe1(self.moe1(h, gates))
        u = self.norm_self(h)
        h = h + self.self_attention(u, u)
        return h + self.norm_moe2(self.moe2(h, gates))


class GNOT(nn.Module):
    """GNOT surrogate ``x [B, N, c_in] -> [B, N, c_out]``; ``x[..., :space_dim]`` is the position."""

    def __init__(self, in_channels: int, out_channels: int, **hparams):
        super().__init__()
        cfg = GNOTConfig(**hparams)
        if in_channels < cfg.space_dim:
            raise ValueError(
                f"GNOT gates on the first space_dim={cfg.space_dim} input channels but the input has only "
                f"{in_channels}; set space_dim <= in_channels"
            )
        self.config = cfg
        C = cfg.channel_dim
        # two encoders Linear(c_in, 2C), GELU, Linear(2C, C): the query points and the input functions
        self.query_encoder = ResidualMLP(in_channels, 2 * C, C, num_layers=0)
        self.source_encoder = ResidualMLP(in_channels, 2 * C, C, num_layers=0)
        self.blocks = nn.ModuleList(GNOTBlock(cfg) for _ in range(cfg.num_blocks))
        self.out_proj = ResidualMLP(C, 2 * C, out_channels, num_layers=0)
        self.apply(init_linear_and_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"GNOT expects x of shape [B, N, c_in]; got {tuple(x.shape)}")
        pos = x[..., : self.config.space_dim]
        h = self.query_encoder(x)
        s = self.source_encoder(x)
        for block in self.blocks:
            h = block(h, s, pos)
        return self.out_proj(h)
