"""The training loss as three Triton kernels: relative L2 of the decoded prediction, plus (on a 2-D
structured grid) the relative L2 of its central differences, averaged over the batch.

For normalised ``pred`` and ``target`` ``[B, P, c]`` and the output normaliser's per-channel ``std`` and
``mean``, the error is ``e = (pred − target)·std`` and the decoded target ``u = target·std + mean``. Per
sample ``b`` (norms over all points and channels)::

    rel_b  = ‖e‖ / max(‖u‖, eps)
    loss_b = rel_b + weight·(‖Dx e‖ / max(‖Dx u‖, 2 eps) + ‖Dy e‖ / max(‖Dy u‖, 2 eps))

with ``(Dx f)[i, j] = f[i+1, j] − f[i−1, j]`` and ``(Dy f)[i, j] = f[i, j+1] − f[i, j−1]`` on the
interior of the ``nx × ny`` grid (points row-major): ``flare.metrics.relative_l2_loss_terms`` (the factor
1/2 of a central difference cancels in each ratio). Returns ``(mean_b loss_b, mean_b rel_b)``; only the
first has a gradient, with respect to ``pred``.

In torch this is two dozen small launches forward and as many backward (norms, slices, their zero-filled
gradients, clamps, divisions) at a few microseconds each; here the forward is one kernel writing six
sums per chunk of a sample and one single-program kernel finishing them (the loss, and per sample the
three factors the gradient needs), and the backward one kernel (the differences' adjoints read the
error two points away). The sums are fixed-order partials: deterministic, no atomics. Runs as the
``flare::relative_l2_loss_fwd`` / ``_bwd`` operators (CUDA graphs and ``torch.compile`` take them); on
CPU tensors under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from flare.ops._triton import IMPORT_ERROR as _TRITON_IMPORT_ERROR
from flare.ops._triton import interpreting as _interpreting
from flare.ops._triton import tl, triton

__all__ = ["fused_relative_l2_loss", "fused_loss_available"]

BLOCK = 1024  # values of one sample per program
_SUMS = 8  # partial sums per (sample, chunk): Σe², Σu², Σ(Dx e)², Σ(Dx u)², Σ(Dy e)², Σ(Dy u)², 2 unused

if _TRITON_IMPORT_ERROR is None:

    @triton.jit
    def _error_and_target(p_ptr, t_ptr, std_ptr, mean_ptr, offs, mask, C: tl.constexpr):
        """(e, u) at flat offsets ``offs`` of one sample; 0 where masked."""
        ch = offs % C
        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s = tl.load(std_ptr + ch, mask=mask, other=0.0)
        m = tl.load(mean_ptr + ch, mask=mask, other=0.0)
        return (p - t) * s, t * s + m

    @triton.jit
    def _loss_sums_kernel(p_ptr, t_ptr, std_ptr, mean_ptr, part_ptr, L, NX, NY, chunks,
                          C: tl.constexpr, GRID: tl.constexpr, BLOCK: tl.constexpr):
        """The six sums of squares over one chunk of BLOCK values of sample program_id(0)."""
        b = tl.program_id(0)
        chunk = tl.program_id(1)
        offs = chunk * BLOCK + tl.arange(0, BLOCK)
        mask = offs < L
        base = b.to(tl.int64) * L
        p0 = p_ptr + base
        t0 = t_ptr + base
        e, u = _error_and_target(p0, t0, std_ptr, mean_ptr, offs, mask, C)
        out = part_ptr + (b * chunks + chunk) * 8
        tl.store(out, tl.sum(e * e, axis=0))
        tl.store(out + 1, tl.sum(u * u, axis=0))
        if GRID:
            sx = NY * C  # one grid row further
            i = offs // sx
            j = (offs // C) % NY
            inner = mask & (i >= 1) & (i <= NX - 2) & (j >= 1) & (j <= NY - 2)
            e1, u1 = _error_and_target(p0, t0, std_ptr, mean_ptr, offs + sx, inner, C)
            e0, u0 = _error_and_target(p0, t0, std_ptr, mean_ptr, offs - sx, inner, C)
            tl.store(out + 2, tl.sum((e1 - e0) * (e1 - e0), axis=0))
            tl.store(out + 3, tl.sum((u1 - u0) * (u1 - u0), axis=0))
            e1, u1 = _error_and_target(p0, t0, std_ptr, mean_ptr, offs + C, inner, C)
            e0, u0 = _error_and_target(p0, t0, std_ptr, mean_ptr, offs - C, inner, C)
            tl.store(out + 4, tl.sum((e1 - e0) * (e1 - e0), axis=0))
            tl.store(out + 5, tl.sum((u1 - u0) * (u1 - u0), axis=0))

    @triton.jit
    def _chunk_sum(part_ptr, k: tl.constexpr, rows, cols, mask, chunks):
        return tl.sum(tl.load(part_ptr + (rows * chunks + cols) * 8 + k, mask=mask, other=0.0), axis=1)

    @triton.jit
    def _inverse_or_zero(n_err, n_ref, scale):
        """scale / (n_err · n_ref), 0 where n_err is 0."""
        return tl.where(n_err > 0, scale / tl.where(n_err > 0, n_err * n_ref, 1.0), 0.0)

    @triton.jit
    def _loss_finish_kernel(part_ptr, loss_ptr, rel_ptr, coef_ptr, B, chunks, weight, eps,
                            GRID: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
        """One program: the per-sample sums in chunk order, the batch means of loss and rel, and per
        sample the gradient factors (1/(‖e‖ max(‖u‖, eps)), weight/(‖Dx e‖ …), weight/(‖Dy e‖ …); 0 where
        a norm of the error is 0, as torch's norm gradient)."""
        samples = tl.arange(0, BLOCK_B)
        rows = samples[:, None]
        cols = tl.arange(0, BLOCK_C)[None, :]
        s0 = tl.zeros([BLOCK_B], tl.float32)
        s1 = tl.zeros([BLOCK_B], tl.float32)
        s2 = tl.zeros([BLOCK_B], tl.float32)
        s3 = tl.zeros([BLOCK_B], tl.float32)
        s4 = tl.zeros([BLOCK_B], tl.float32)
        s5 = tl.zeros([BLOCK_B], tl.float32)
        for c0 in range(0, chunks, BLOCK_C):
            mask = (rows < B) & (c0 + cols < chunks)
            s0 += _chunk_sum(part_ptr, 0, rows, c0 + cols, mask, chunks)
            s1 += _chunk_sum(part_ptr, 1, rows, c0 + cols, mask, chunks)
            if GRID:
                s2 += _chunk_sum(part_ptr, 2, rows, c0 + cols, mask, chunks)
                s3 += _chunk_sum(part_ptr, 3, rows, c0 + cols, mask, chunks)
                s4 += _chunk_sum(part_ptr, 4, rows, c0 + cols, mask, chunks)
                s5 += _chunk_sum(part_ptr, 5, rows, c0 + cols, mask, chunks)
        valid = samples < B
        ne = tl.sqrt(s0)
        nu = tl.maximum(tl.sqrt(s1), eps)
        rel = ne / nu
        loss = rel
        tl.store(coef_ptr + samples * 4, _inverse_or_zero(ne, nu, 1.0), mask=valid)
        if GRID:
            nxe = tl.sqrt(s2)
            nxu = tl.maximum(tl.sqrt(s3), 2 * eps)
            nye = tl.sqrt(s4)
            nyu = tl.maximum(tl.sqrt(s5), 2 * eps)
            loss = rel + weight * (nxe / nxu + nye / nyu)
            tl.store(coef_ptr + samples * 4 + 1, _inverse_or_zero(nxe, nxu, weight), mask=valid)
            tl.store(coef_ptr + samples * 4 + 2, _inverse_or_zero(nye, nyu, weight), mask=valid)
        tl.store(loss_ptr, tl.sum(tl.where(valid, loss, 0.0), axis=0) / B)
        tl.store(rel_ptr, tl.sum(tl.where(valid, rel, 0.0), axis=0) / B)

    @triton.jit
    def _difference_adjoint(p0, t0, std_ptr, mean_ptr, offs, e, s, lo, hi, C: tl.constexpr):
        """Dᵀ(D e) at offs for the difference of stride s: (D e)[n − s] where n − s is inner (lo),
        minus (D e)[n + s] where n + s is inner (hi)."""
        e_lo, _ = _error_and_target(p0, t0, std_ptr, mean_ptr, offs - 2 * s, lo, C)
        e_hi, _ = _error_and_target(p0, t0, std_ptr, mean_ptr, offs + 2 * s, hi, C)
        return tl.where(lo, e - e_lo, 0.0) - tl.where(hi, e_hi - e, 0.0)

    @triton.jit
    def _loss_bwd_kernel(g_ptr, p_ptr, t_ptr, std_ptr, mean_ptr, coef_ptr, dp_ptr, L, NX, NY, inv_B,
                         C: tl.constexpr, GRID: tl.constexpr, BLOCK: tl.constexpr):
        """∂(mean loss)/∂pred for one chunk of one sample."""
        b = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < L
        base = b.to(tl.int64) * L
        p0 = p_ptr + base
        t0 = t_ptr + base
        e, _ = _error_and_target(p0, t0, std_ptr, mean_ptr, offs, mask, C)
        de = tl.load(coef_ptr + b * 4) * e
        if GRID:
            sx = NY * C
            i = offs // sx
            j = (offs // C) % NY
            i_in = (i >= 1) & (i <= NX - 2)
            j_in = (j >= 1) & (j <= NY - 2)
            lo = mask & j_in & (i >= 2) & (i <= NX - 1)  # i − 1 inner
            hi = mask & j_in & (i >= 0) & (i <= NX - 3)  # i + 1 inner
            de += tl.load(coef_ptr + b * 4 + 1) * _difference_adjoint(p0, t0, std_ptr, mean_ptr, offs, e, sx,
                                                                       lo, hi, C)
            lo = mask & i_in & (j >= 2) & (j <= NY - 1)
            hi = mask & i_in & (j >= 0) & (j <= NY - 3)
            de += tl.load(coef_ptr + b * 4 + 2) * _difference_adjoint(p0, t0, std_ptr, mean_ptr, offs, e, C,
                                                                       lo, hi, C)
        g = tl.load(g_ptr).to(tl.float32) * inv_B
        s = tl.load(std_ptr + offs % C, mask=mask, other=0.0)
        tl.store(dp_ptr + base + offs, (g * de * s).to(dp_ptr.dtype.element_ty), mask=mask)


def fused_loss_available() -> bool:
    return _TRITON_IMPORT_ERROR is None


def _grid(nx: int, ny: int) -> bool:
    return nx > 0 and ny > 0


@torch.library.custom_op("flare::relative_l2_loss_fwd", mutates_args=())
def _loss_fwd_op(pred: torch.Tensor, target: torch.Tensor, std: torch.Tensor, mean: torch.Tensor,
                 nx: int, ny: int, weight: float, eps: float
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, mean rel, per-sample gradient factors [B, 4]); pred, target contiguous [B, P, c]."""
    B, P, C = pred.shape
    L = P * C
    chunks = -(-L // BLOCK)
    f32 = dict(device=pred.device, dtype=torch.float32)
    part = torch.empty((B, chunks, _SUMS), **f32)
    # coef: column 0 always written, 1 and 2 with GRID (read only then), 3 padding: no memset needed
    loss, rel, coef = torch.empty((), **f32), torch.empty((), **f32), torch.empty((B, 4), **f32)
    grid = _grid(nx, ny)
    _loss_sums_kernel[(B, chunks)](pred, target, std, mean, part, L, nx, ny, chunks,
                                   C=C, GRID=grid, BLOCK=BLOCK, num_warps=4)
    _loss_finish_kernel[(1,)](part, loss, rel, coef, B, chunks, weight, eps, GRID=grid,
                              BLOCK_B=max(triton.next_power_of_2(B), 2), BLOCK_C=32, num_warps=4)
    return loss, rel, coef


@_loss_fwd_op.register_fake
def _(pred, target, std, mean, nx, ny, weight, eps):
    f32 = dict(device=pred.device, dtype=torch.float32)
    return torch.empty((), **f32), torch.empty((), **f32), torch.empty((pred.shape[0], 4), **f32)


@torch.library.custom_op("flare::relative_l2_loss_bwd", mutates_args=())
def _loss_bwd_op(grad: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, std: torch.Tensor,
                 mean: torch.Tensor, coef: torch.Tensor, nx: int, ny: int) -> torch.Tensor:
    """∂/∂pred of the mean loss times ``grad`` (a 0-d tensor)."""
    B, P, C = pred.shape
    L = P * C
    dpred = torch.empty_like(pred)
    _loss_bwd_kernel[(B, -(-L // BLOCK))](grad, pred, target, std, mean, coef, dpred, L, nx, ny, 1.0 / B,
                                          C=C, GRID=_grid(nx, ny), BLOCK=BLOCK, num_warps=4)
    return dpred


@_loss_bwd_op.register_fake
def _(grad, pred, target, std, mean, coef, nx, ny):
    return torch.empty_like(pred)


def _setup(ctx, inputs, output):
    pred, target, std, mean, nx, ny, _weight, _eps = inputs
    ctx.save_for_backward(pred, target, std, mean, output[2])
    ctx.grid = (nx, ny)
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)


def _backward(ctx, dloss, _drel, _dcoef):
    if dloss is None:
        return (None,) * 8
    pred, target, std, mean, coef = ctx.saved_tensors
    return (_loss_bwd_op(dloss.float().contiguous(), pred, target, std, mean, coef, *ctx.grid),
            None, None, None, None, None, None, None)


_loss_fwd_op.register_autograd(_backward, setup_context=_setup)


def fused_relative_l2_loss(pred: torch.Tensor, target: torch.Tensor, std: torch.Tensor, mean: torch.Tensor,
                           grid_shape: Optional[Tuple[int, int]] = None, weight: float = 0.0,
                           eps: float = 1e-12) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(mean loss, mean relative L2)`` over the batch of normalised ``pred`` and ``target [B, P, c]``
    (see the module docstring); ``std``, ``mean`` ``[c]`` decode them. The difference terms need
    ``grid_shape = (nx, ny)`` with ``nx·ny = P`` and run when ``weight`` is non-zero. Only the loss has
    a gradient (in pred's dtype)."""
    if not fused_loss_available():
        raise RuntimeError(f"fused_relative_l2_loss needs triton, which failed to import: {_TRITON_IMPORT_ERROR!r}")
    if pred.dim() != 3 or target.shape != pred.shape:
        raise ValueError(f"pred and target must both be [B, P, c]; got {tuple(pred.shape)} and {tuple(target.shape)}")
    C = pred.shape[2]
    if std.numel() != C or mean.numel() != C:
        raise ValueError(f"std and mean need one value per channel ({C}); got {std.numel()} and {mean.numel()}")
    if pred.is_cuda == _interpreting():
        raise RuntimeError("fused_relative_l2_loss runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1; "
                           f"got {pred.device} tensors with TRITON_INTERPRET={int(_interpreting())}")
    nx, ny = 0, 0
    if weight:
        if grid_shape is None or len(grid_shape) != 2 or grid_shape[0] * grid_shape[1] != pred.shape[1]:
            raise ValueError(f"the difference terms need grid_shape (nx, ny) with nx·ny = {pred.shape[1]} points; "
                             f"got {grid_shape}")
        nx, ny = (int(n) for n in grid_shape)
    f32 = dict(device=pred.device, dtype=torch.float32)
    return _loss_fwd_op(pred.contiguous(), target.float().contiguous(), std.to(**f32).reshape(C).contiguous(),
                        mean.to(**f32).reshape(C).contiguous(), nx, ny, float(weight), float(eps))[:2]
