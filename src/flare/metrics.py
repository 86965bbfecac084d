"""Error measures as small pure functions on ``[B, N, c]`` tensors of decoded (physical) values."""
from __future__ import annotations

import torch


def relative_l2(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample ``‖pred − target‖₂ / ‖target‖₂`` over all points and channels: ``[B]``."""
    diff = (pred - target).flatten(1).norm(dim=1)
    return diff / target.flatten(1).norm(dim=1).clamp_min(eps)


def grid_gradients(u: torch.Tensor, grid_shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences of ``u [B, nx·ny, c]`` on a structured grid, boundary rows zeroed.

    Points are ordered row-major over ``grid_shape = (nx, ny)``. The grid spacing is left out:
    it cancels in a relative error. Returns ``(∂x u, ∂y u)`` each ``[B, nx, ny, c]``.
    """
    nx, ny = grid_shape
    u = u.reshape(u.shape[0], nx, ny, -1)
    dx = torch.zeros_like(u)
    dy = torch.zeros_like(u)
    dx[:, 1:-1, 1:-1] = (u[:, 2:, 1:-1] - u[:, :-2, 1:-1]) / 2
    dy[:, 1:-1, 1:-1] = (u[:, 1:-1, 2:] - u[:, 1:-1, :-2]) / 2
    return dx, dy


def relative_l2_with_gradients(
    pred: torch.Tensor, target: torch.Tensor, grid_shape: tuple[int, int], weight: float
) -> torch.Tensor:
    """Darcy's training loss per sample: ``relL2(u) + weight·(relL2(∂x u) + relL2(∂y u))``: ``[B]``."""
    loss = relative_l2(pred, target)
    if weight:
        pdx, pdy = grid_gradients(pred, grid_shape)
        tdx, tdy = grid_gradients(target, grid_shape)
        loss = loss + weight * (relative_l2(pdx, tdx) + relative_l2(pdy, tdy))
    return loss
