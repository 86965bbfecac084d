"""Mesh graph network (encode–process–decode, after MeshGraphNets, Pfaff et al. 2021), the LPBF
baseline of SPEC §3 that passes messages along the mesh's edges.

    h_i = enc_node(x_i)                                  node latents            [B, N, W]
    e_ij = enc_edge(p_i − p_j, |p_i − p_j|)              edge latents, p = the first space_dim channels
    L times:
        e_ij ← e_ij + mlp_edge([e_ij, h_i, h_j])          edge update (i sends, j receives)
        h_j  ← h_j + mlp_node([h_j, Σ_i e_ij])            node update, sum over the incoming edges
    y_j = dec(h_j)                                       [B, N, c_out]

Every MLP has two hidden layers of width W with ReLU; encoder and processor MLPs end in a LayerNorm,
the decoder does not (as in MeshGraphNets). Edges are directed sender → receiver; with
``add_reverse_edges`` (default) each listed edge also runs backwards, so a mesh's undirected edges are
passed once each. Aggregation is ``scatter_add_`` in plain torch. Defaults: width 128 and 15 message-
passing layers are MeshGraphNets' published choices; the FLARE paper does not state its GNN's sizes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass
class MeshGNNConfig:
    hidden_dim: int = 128  # W
    num_layers: int = 15  # message-passing (processor) layers
    num_mlp_hidden_layers: int = 2
    space_dim: int = 3  # the first space_dim input channels are the node positions
    add_reverse_edges: bool = True  # each listed edge also passes messages backwards

    def __post_init__(self):
        if self.space_dim < 1:
            raise ValueError(f"space_dim must be at least 1, got {self.space_dim}")


def mlp(
    in_dim: int, hidden_dim: int, out_dim: int, num_hidden_layers: int, layer_norm: bool
) -> nn.Sequential:
    """``Linear → ReLU`` repeated ``num_hidden_layers`` times, a last Linear, optionally a LayerNorm."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_hidden_layers):
        layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    if layer_norm:
        layers.append(nn.LayerNorm(out_dim))
    return nn.Sequential(*layers)


def gather_nodes(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``h [B, N, W]`` at the nodes ``index [B, E]``: ``[B, E, W]``."""
    return torch.gather(h, 1, index.unsqueeze(-1).expand(-1, -1, h.shape[-1]))


def sum_at_nodes(values: torch.Tensor, index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Sum of the edge ``values [B, E, W]`` at their nodes ``index [B, E]``: ``[B, N, W]``."""
    out = values.new_zeros(values.shape[0], num_nodes, values.shape[-1])
    return out.scatter_add_(1, index.unsqueeze(-1).expand_as(values), values)


class MessagePassingLayer(nn.Module):
    """One residual edge update and one residual node update with sum aggregation."""

    def __init__(self, cfg: MeshGNNConfig):
        super().__init__()
        W, L = cfg.hidden_dim, cfg.num_mlp_hidden_layers
        self.edge_mlp = mlp(3 * W, W, W, L, layer_norm=True)
        self.node_mlp = mlp(2 * W, W, W, L, layer_norm=True)

    def forward(self, h: torch.Tensor, e: torch.Tensor, senders: torch.Tensor, receivers: torch.Tensor):
        e = e + self.edge_mlp(torch.cat([e, gather_nodes(h, senders), gather_nodes(h, receivers)], dim=-1))
        incoming = sum_at_nodes(e, receivers, h.shape[1])
        h = h + self.node_mlp(torch.cat([h, incoming], dim=-1))
        return h, e


class MeshGNN(nn.Module):
    """Mesh graph network: ``forward(x [B, N, c_in], edges [2, E] or [B, 2, E]) -> [B, N, c_out]``."""

    needs_edges = True  # trainers pass the dataset's mesh edges

    def __init__(self, in_channels: int, out_channels: int, **hparams):
        super().__init__()
        cfg = MeshGNNConfig(**hparams)
        if cfg.space_dim > in_channels:
            raise ValueError(
                f"space_dim ({cfg.space_dim}) exceeds the {in_channels} input channels; the first space_dim "
                "channels must be the node positions"
            )
        self.config = cfg
        W, L = cfg.hidden_dim, cfg.num_mlp_hidden_layers
        self.node_encoder = mlp(in_channels, W, W, L, layer_norm=True)
        self.edge_encoder = mlp(cfg.space_dim + 1, W, W, L, layer_norm=True)
        self.layers = nn.ModuleList(MessagePassingLayer(cfg) for _ in range(cfg.num_layers))
        self.decoder = mlp(W, W, out_channels, L, layer_norm=False)

    def directed_edges(self, edges: Optional[torch.Tensor], batch: int, num_nodes: int):
        """Checked senders and receivers, ``[B, E']`` each (E' = 2E with reverse edges)."""
        if edges is None:
            raise ValueError(
                "mesh_gnn needs the mesh's edges: call model(x, edges) with a LongTensor edges of shape "
                "[2, E] (shared by the batch) or [B, 2, E]"
            )
        if edges.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"edges must hold integer node indices; got dtype {edges.dtype}")
        if edges.dim() == 2:
            edges = edges.unsqueeze(0).expand(batch, -1, -1)
        if edges.dim() != 3 or edges.shape[:2] != (batch, 2):
            raise ValueError(f"edges must have shape [2, E] or [{batch}, 2, E]; got {tuple(edges.shape)}")
        if edges.numel() and (edges.min() < 0 or edges.max() >= num_nodes):
            raise ValueError(f"edges refer to nodes outside 0..{num_nodes - 1}")
        senders, receivers = edges[:, 0].long(), edges[:, 1].long()
        if self.config.add_reverse_edges:
            senders, receivers = torch.cat([senders, receivers], 1), torch.cat([receivers, senders], 1)
        return senders, receivers

    def edge_features(self, x: torch.Tensor, senders: torch.Tensor, receivers: torch.Tensor) -> torch.Tensor:
        """Relative position of sender to receiver and its length, ``[B, E, space_dim + 1]``."""
        pos = x[..., : self.config.space_dim]
        rel = gather_nodes(pos, senders) - gather_nodes(pos, receivers)
        return torch.cat([rel, rel.norm(dim=-1, keepdim=True)], dim=-1)

    def forward(self, x: torch.Tensor, edges: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"MeshGNN expects x of shape [B, N, c_in]; got {tuple(x.shape)}")
        B, N, _ = x.shape
        senders, receivers = self.directed_edges(edges, B, N)
        h = self.node_encoder(x)
        e = self.edge_encoder(self.edge_features(x, senders, receivers))
        for layer in self.layers:
            h, e = layer(h, e, senders, receivers)
        return self.decoder(h)
