"""FLARE's output projection with its head merge and the block's skip connection, one Triton kernel
forward and one backward: ``out = x + merge(y) Wᵀ + b``.

``y`` is the mixer's output ``[B, H, N, D]`` in any strides; ``merge(y)`` the ``[B·N, H·D]`` matrix of
its tokens (``y.transpose(1, 2).reshape(B·N, H·D)``), which the kernels read in place. In torch this is
a transposed copy, a matrix product, a bias add and the residual add forward, and two matrix products,
a bias-gradient sum and a gradient accumulation backward: at the paper's Darcy size (C = 64, 14 450
tokens) every one of them is a launch of a few microseconds (benchmarks/NOTES-mlp.md).

The backward writes the input gradient token-major (``[B, N, H, D]`` memory, handed back as the
``[B, H, N, D]`` view the mixer's backward reads with its strides) and sums ``doutᵀ merge(y)`` and
``Σ dout`` over each program's share of the tokens into its own row of partials, summed afterwards
(deterministic, no atomics; ``flare.ops.deferred_sums.column_sum``). The skip connection's gradient
is ``dout`` itself.

Dots run in the autocast dtype if autocast is on, else in y's dtype (fp32 with TF32 when torch allows
it, as ``nn.Linear``), with fp32 accumulation; the output has x's dtype. Widths up to 128. Runs as
the ``flare::head_merge_linear_fwd`` / ``_bwd`` operators (``torch.compile`` and CUDA graphs take
them); on CPU tensors under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

from typing import Tuple

import torch

from flare.ops import fused_mlp as _fm
from flare.ops._triton import IMPORT_ERROR as _TRITON_IMPORT_ERROR
from flare.ops._triton import interpreting as _interpreting
from flare.ops._triton import sm_count as _sm_count
from flare.ops._triton import tl, triton
from flare.ops.deferred_sums import column_sum, settle_unless_kept

__all__ = ["fused_head_merge_linear", "head_merge_linear_supports"]

if _TRITON_IMPORT_ERROR is None:

    @triton.jit
    def _merged_tile(y_ptr, rows, cols, rmask, N, sb, sn, sh, sd, CIN: tl.constexpr, D: tl.constexpr):
        """merge(y)[rows, cols] as fp32: token t = (b, n), channel c = (h, d)."""
        offs = (rows // N) * sb + (rows % N) * sn + (cols // D) * sh + (cols % D) * sd
        return tl.load(y_ptr + offs, mask=rmask & (cols < CIN), other=0.0).to(tl.float32)

    @triton.jit
    def _merge_linear_fwd_kernel(
        y_ptr, w_ptr, b_ptr, x_ptr, out_ptr, T, N, sb, sn, sh, sd,
        CIN: tl.constexpr, COUT: tl.constexpr, D: tl.constexpr, BLOCK_T: tl.constexpr,
        BLOCK_IN: tl.constexpr, BLOCK_OUT: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr,
    ):
        rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)[:, None]
        rmask = rows < T
        ci = tl.arange(0, BLOCK_IN)[None, :]
        co = tl.arange(0, BLOCK_OUT)[None, :]
        y = _merged_tile(y_ptr, rows, ci, rmask, N, sb, sn, sh, sd, CIN, D)
        out = _fm._linear(y, w_ptr, b_ptr, COUT, CIN, BLOCK_IN, BLOCK_OUT, DOT_DTYPE, DOT_PREC, False)
        omask = rmask & (co < COUT)
        out += tl.load(x_ptr + rows * COUT + co, mask=omask, other=0.0).to(tl.float32)
        tl.store(out_ptr + rows * COUT + co, out.to(out_ptr.dtype.element_ty), mask=omask)

    @triton.jit
    def _merge_linear_bwd_kernel(
        dout_ptr, y_ptr, w_ptr, dy_ptr, part_ptr, T, N, sb, sn, sh, sd, tiles_per_program, part_row,
        CIN: tl.constexpr, COUT: tl.constexpr, D: tl.constexpr, BLOCK_T: tl.constexpr,
        BLOCK_IN: tl.constexpr, BLOCK_OUT: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr,
    ):
        """dy = dout W for the program's token tiles (token-major [T, CIN]) and their share of
        dW = doutᵀ merge(y) [BLOCK_OUT, BLOCK_IN] and db = Σ dout [BLOCK_OUT] in its partials row."""
        pid = tl.program_id(0)
        ci = tl.arange(0, BLOCK_IN)[None, :]
        co = tl.arange(0, BLOCK_OUT)[None, :]
        w = _fm._load_w(w_ptr, COUT, CIN, BLOCK_OUT, BLOCK_IN, False).to(DOT_DTYPE)
        dw = tl.zeros([BLOCK_OUT, BLOCK_IN], dtype=tl.float32)
        db = tl.zeros([BLOCK_OUT], dtype=tl.float32)
        for i in range(tiles_per_program):
            rows = ((pid * tiles_per_program + i) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)[:, None]
            rmask = rows < T
            do = tl.load(dout_ptr + rows * COUT + co, mask=rmask & (co < COUT), other=0.0).to(tl.float32)
            dy = tl.dot(do.to(DOT_DTYPE), w, input_precision=DOT_PREC)
            tl.store(dy_ptr + rows * CIN + ci, dy.to(dy_ptr.dtype.element_ty), mask=rmask & (ci < CIN))
            y = _merged_tile(y_ptr, rows, ci, rmask, N, sb, sn, sh, sd, CIN, D)
            dw += tl.dot(tl.trans(do.to(DOT_DTYPE)), y.to(DOT_DTYPE), input_precision=DOT_PREC)
            db += tl.sum(do, axis=0)
        prow = part_ptr + pid.to(tl.int64) * part_row
        ro = tl.arange(0, BLOCK_OUT)
        tl.store(prow + ro[:, None] * BLOCK_IN + tl.arange(0, BLOCK_IN)[None, :], dw)
        tl.store(prow + BLOCK_OUT * BLOCK_IN + ro, db)


def _sizes(y: torch.Tensor, w: torch.Tensor) -> Tuple[int, int, int, int, int, int]:
    B, H, N, D = y.shape
    return B, H, N, D, w.shape[1], w.shape[0]


def _blocks(CIN: int, COUT: int, dot: str) -> Tuple[int, int]:
    """(BLOCK_IN, BLOCK_OUT): the fused MLP's padding rule (``_block_in``) both ways, so 16-bit dots get
    one width for both (a 16-bit operand tile narrower than its partner miscompiles, triton 3.6, sm_90)."""
    return _fm._block_in(CIN, COUT, dot), _fm._block_in(COUT, CIN, dot)


def _forward(y, w, b, x, dot):
    B, H, N, D, CIN, COUT = _sizes(y, w)
    T = B * N
    out = torch.empty((T, COUT), device=x.device, dtype=x.dtype)
    if T == 0:
        return out
    bt, warps = _fm._tile(max(CIN, COUT), _interpreting())
    dtl, prec = _fm._dot_args(_fm._DTYPES[dot])
    bi, bo = _blocks(CIN, COUT, dot)
    _merge_linear_fwd_kernel[(triton.cdiv(T, bt),)](
        y, w, b, x, out, T, N, y.stride(0), y.stride(2), y.stride(1), y.stride(3),
        CIN=CIN, COUT=COUT, D=D, BLOCK_T=bt, BLOCK_IN=bi, BLOCK_OUT=bo,
        DOT_DTYPE=dtl, DOT_PREC=prec, num_warps=warps,
    )
    return out


# programs of the backward per SM: every token tile of the paper's Darcy size gets its own program;
# at millions of tokens each program sums the weight gradient over a run of tiles in registers
BWD_PROGRAMS_PER_SM = 2


def _backward(dout, y, w, dot):
    B, H, N, D, CIN, COUT = _sizes(y, w)
    T = B * N
    bi, bo = _blocks(CIN, COUT, dot)
    dy = torch.empty((T, CIN), device=y.device, dtype=y.dtype)
    if T == 0:
        return dy, torch.zeros((bo * bi + bo,), device=y.device, dtype=torch.float32)
    dout = dout.contiguous()
    bt, warps = _fm._tile(max(CIN, COUT), _interpreting())
    dtl, prec = _fm._dot_args(_fm._DTYPES[dot])
    tiles = triton.cdiv(T, bt)
    per_program = triton.cdiv(tiles, max(1, min(tiles, BWD_PROGRAMS_PER_SM * _sm_count(y.device))))
    programs = triton.cdiv(tiles, per_program)
    part = torch.empty((programs, bo * bi + bo), device=y.device, dtype=torch.float32)
    _merge_linear_bwd_kernel[(programs,)](
        dout, y, w, dy, part, T, N, y.stride(0), y.stride(2), y.stride(1), y.stride(3), per_program,
        part.shape[1], CIN=CIN, COUT=COUT, D=D, BLOCK_T=bt, BLOCK_IN=bi, BLOCK_OUT=bo,
        DOT_DTYPE=dtl, DOT_PREC=prec, num_warps=warps,
    )
    return dy, column_sum(part)


@torch.library.custom_op("flare::head_merge_linear_fwd", mutates_args=())
def _fwd_op(y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, dot: str) -> torch.Tensor:
    """x + merge(y) Wᵀ + b as [B·N, COUT] in x's dtype."""
    return _forward(y, w, b, x, dot)


@_fwd_op.register_fake
def _(y, w, b, x, dot):
    return x.new_empty((y.shape[0] * y.shape[2], w.shape[0]))


@torch.library.custom_op("flare::head_merge_linear_bwd", mutates_args=())
def _bwd_op(dout: torch.Tensor, y: torch.Tensor, w: torch.Tensor, dot: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(dy token-major [B·N, H·D] in y's dtype, [dW | db] padded and flat, fp32)."""
    return _backward(dout, y, w, dot)


@_bwd_op.register_fake
def _(dout, y, w, dot):
    bi, bo = _blocks(w.shape[1], w.shape[0], dot)
    return (y.new_empty((y.shape[0] * y.shape[2], w.shape[1])),
            torch.empty((bo * bi + bo,), device=y.device, dtype=torch.float32))


def _setup(ctx, inputs, output):
    y, w, b, x, dot = inputs
    ctx.save_for_backward(y, w, b)
    ctx.dot = dot
    ctx.w_dtype, ctx.b_dtype = w.dtype, b.dtype


def _backward_rule(ctx, dout):
    y, w, b = ctx.saved_tensors
    B, H, N, D, CIN, COUT = _sizes(y, w)
    dy, grads = _bwd_op(dout, y, w, ctx.dot)
    bi, bo = _blocks(CIN, COUT, ctx.dot)
    dw, db = grads[:bo * bi].view(bo, bi)[:COUT, :CIN], grads[bo * bi:][:COUT]
    # postponed partial sums (flare.ops.deferred_sums): computed now if autograd would read them
    settle_unless_kept(((dw, w), (db, b)))
    dw, db = dw.to(ctx.w_dtype), db.to(ctx.b_dtype)
    dy = dy.view(B, N, H, D).transpose(1, 2)  # token-major memory, [B, H, N, D] shape
    return dy, dw, db, dout, None


_fwd_op.register_autograd(_backward_rule, setup_context=_setup)


def head_merge_linear_supports(y: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``fused_head_merge_linear`` runs for this y and weight (triton, CUDA or the interpreter,
    widths up to 128)."""
    return (_TRITON_IMPORT_ERROR is None and (y.is_cuda or _interpreting())
            and max(weight.shape) <= _fm.MAX_WIDTH)


def fused_head_merge_linear(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                            x: torch.Tensor) -> torch.Tensor:
    """``x + y.transpose(1, 2).reshape(B, N, H·D) @ weightᵀ + bias`` with y ``[B, H, N, D]`` (any
    strides), weight ``[COUT, H·D]`` (``nn.Linear`` layout), x ``[B, N, COUT]``; returns ``[B, N, COUT]``
    in x's dtype. Differentiable in all four."""
    if _TRITON_IMPORT_ERROR is not None:
        raise RuntimeError(f"the fused head-merge linear needs triton, which failed to import: "
                           f"{_TRITON_IMPORT_ERROR!r}")
    if y.dim() != 4:
        raise ValueError(f"y must be [B, H, N, D]; got shape {tuple(y.shape)}")
    B, H, N, D = y.shape
    if weight.dim() != 2 or weight.shape[1] != H * D:
        raise ValueError(f"weight must be [out, {H * D}] for y of {H} heads of width {D}; got {tuple(weight.shape)}")
    COUT = weight.shape[0]
    if bias.shape != (COUT,) or x.shape != (B, N, COUT):
        raise ValueError(f"bias must be ({COUT},) and x ({B}, {N}, {COUT}); got {tuple(bias.shape)} and "
                         f"{tuple(x.shape)}")
    if max(COUT, H * D) > _fm.MAX_WIDTH:
        raise ValueError(f"the fused head-merge linear takes widths up to {_fm.MAX_WIDTH}; got in {H * D}, out {COUT}")
    if y.device.type == "cpu" and not _interpreting():
        raise RuntimeError("the fused head-merge linear got CPU tensors; run on a CUDA device or set "
                           "TRITON_INTERPRET=1 before importing flare.ops (CPU interpreter, slow)")
    dot = _fm.dot_name_for(y, "the fused head-merge linear")
    out = _fwd_op(y, weight.contiguous(), bias.contiguous(), x.reshape(B * N, COUT).contiguous(), dot)
    return out.view(B, N, COUT)
