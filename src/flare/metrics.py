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


def relative_l2_loss_terms(
    error: torch.Tensor, target: torch.Tensor, grid_shape: tuple[int, int], weight: float, eps: float = 1e-12
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(relative_l2_with_gradients(pred, target, ...), relative_l2(pred, target))`` per sample from
    the error ``pred − target`` and ``target`` (decoded values), with fewer operations: one norm of
    the error serves both; central differences are linear, so those of the error are the differences
    of the two fields', taken on the interior only (the zeroed boundary adds nothing to a norm) and
    without the factor 1/2, which cancels in each ratio. Only ``error`` needs a gradient. ``[B]`` each.
    A training step at the paper's Darcy size launches about half as many kernels for its loss."""
    dims = tuple(range(1, error.dim()))
    with torch.no_grad():
        scale = torch.linalg.vector_norm(target, dim=dims).clamp_min(eps)
    rel = torch.linalg.vector_norm(error, dim=dims) / scale
    loss = rel
    if weight:
        nx, ny = grid_shape
        e = error.reshape(error.shape[0], nx, ny, -1)
        t = target.reshape(target.shape[0], nx, ny, -1)
        grid = (1, 2, 3)

        def diff_x(u):
            return u[:, 2:, 1:-1] - u[:, :-2, 1:-1]

        def diff_y(u):
            return u[:, 1:-1, 2:] - u[:, 1:-1, :-2]

        with torch.no_grad():
            scale_x = torch.linalg.vector_norm(diff_x(t), dim=grid).clamp_min(2 * eps)
            scale_y = torch.linalg.vector_norm(diff_y(t), dim=grid).clamp_min(2 * eps)
        loss = rel + weight * (torch.linalg.vector_norm(diff_x(e), dim=grid) / scale_x
                               + torch.linalg.vector_norm(diff_y(e), dim=grid) / scale_y)
    return loss, rel.detach()
