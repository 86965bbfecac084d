"""The residual MLP (``flare.models.layers.ResidualMLP``) as one Triton kernel forward and one backward.

At the paper's sizes (C = 64 channels, a few thousand to millions of points) an MLP of five
``Linear`` layers is many tiny launches (matrix product, bias, GELU, residual add, and three matrix
products per layer in the backward), and at millions of points every intermediate makes a round trip
through memory. Here each program takes a tile of tokens through the whole chain in registers::

    h_0     = gelu(x W_inᵀ + b_in)  (+ x          if input_residual)
    h_{l+1} = h_l + gelu(h_l W_lᵀ + b_l)          l = 0 … L-1
    y       = h_L W_outᵀ + b_out    (+ h_L        if output_residual)

GELU is the tanh approximation, as in the model. An optional LayerNorm in front (``norm``) is
computed inside both kernels. The forward saves ``h_0 … h_L`` (the inputs of the
hidden and output layers, in the dot dtype); the backward kernel recomputes each pre-activation from
them with one small dot and runs the chain of input gradients in registers. The weight and bias
gradients are sums over the tokens: with few tokens every backward program writes its tile's share
into its own partial slot; with many, the backward writes the pre-activation gradients and a
split-token kernel sums them per chunk of tokens. Either way the partials are summed afterwards
(deterministic, no atomics; with few tokens through ``flare.ops.deferred_sums.column_sum``, which
inside ``deferred_partial_sums()`` postpones the sums of a whole backward to a few grouped launches).
With 16-bit dots an input narrower than the hidden layers is padded to the hidden tile width inside
the kernels: narrower input tiles miscompile (triton 3.6, sm_90; see benchmarks/NOTES-mlp.md, which
also has the measurements).

Dots run in ``dot_dtype`` (float32 — with TF32 when torch allows it, as ``nn.Linear`` does —
bfloat16 or float16 under autocast) with fp32 accumulation; the residual stream stays fp32 in
registers. With TF32 the backward feeds each pre-activation gradient to its next dot in accumulator
order (``ACC_ORDER``, see ``flare.ops._triton.acc_order``). Widths up to 128 (padded to a power of two
≥ 16 inside the kernel).

``fused_residual_mlp`` runs as the ``flare::fused_mlp_fwd`` / ``flare::fused_mlp_bwd`` operators,
so ``torch.compile`` and CUDA graphs take it whole. Like ``flare.ops.triton_mixer`` the kernels run
on CPU tensors under ``TRITON_INTERPRET=1`` (set before the first import).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

from flare.ops._triton import IMPORT_ERROR as _TRITON_IMPORT_ERROR
from flare.ops._triton import acc_order, acc_order_cols
from flare.ops._triton import fp32_dot_precision
from flare.ops._triton import interpreting as _interpreting
from flare.ops._triton import register_cap
from flare.ops._triton import sm_count as _sm_count
from flare.ops._triton import tl, triton
from flare.ops.deferred_sums import column_sum, settle_unless_kept

__all__ = ["fused_residual_mlp", "fused_residual_mlp_pair", "fused_mlp_available", "fused_mlp_supports", "dot_dtype_for", "MAX_WIDTH"]

# widest layer the kernels take: a [tokens, width] fp32 tile and a [width, width] weight tile live in
# registers at once
MAX_WIDTH = 128
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def fused_mlp_available() -> bool:
    """True when triton imported (the kernels are defined)."""
    return _TRITON_IMPORT_ERROR is None


if _TRITON_IMPORT_ERROR is None:
    # tanh GELU through the logistic function: gelu(a) = a·σ(2u), u = √(2/π)(a + 0.044715 a³), and
    # gelu'(a) = σ(2u)·(1 + 2 a (1 − σ(2u)) √(2/π)(1 + 3·0.044715 a²)). With e = exp(2u) = 2^(a(C1 + C2 a²))
    # and r = 1 / (e + 1): σ(2u) = e·r and 1 − σ(2u) = r, with no cancellation for large |a|. The
    # exponent is capped at 80 (σ is 1 in fp32 long before), so e + 1 stays finite.
    _SQRT_2_OVER_PI = 0.7978845608028654
    _GELU_C = 0.044715
    _LOG2E = 1.4426950408889634
    _C1 = tl.constexpr(2.0 * _SQRT_2_OVER_PI * _LOG2E)
    _C2 = tl.constexpr(2.0 * _SQRT_2_OVER_PI * _GELU_C * _LOG2E)
    _C3 = tl.constexpr(2.0 * _SQRT_2_OVER_PI)
    _C4 = tl.constexpr(6.0 * _SQRT_2_OVER_PI * _GELU_C)
    _EXP2_CAP = tl.constexpr(80.0 * _LOG2E)
    # the interpreter runs no inline PTX
    _APPROX_RCP = tl.constexpr(not _interpreting())

    @triton.jit
    def _rcp(x):
        """1 / x for x >= 1: one MUFU.RCP (rcp.approx, 1 ulp) instead of div.full's range checks."""
        if _APPROX_RCP:
            return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                             is_pure=True, pack=1)
        else:
            return 1.0 / x

    @triton.jit
    def _sigmoid_parts(a):
        """(σ(2u), 1 − σ(2u), a²) of the tanh GELU's argument u."""
        a2 = a * a
        e = tl.exp2(tl.minimum(a * (_C1 + _C2 * a2), _EXP2_CAP))
        r = _rcp(e + 1.0)
        return e * r, r, a2

    @triton.jit
    def _gelu(a):
        s, _, _ = _sigmoid_parts(a)
        return a * s

    @triton.jit
    def _gelu_grad(a):
        s, r, a2 = _sigmoid_parts(a)
        return s + (s * a * r) * (_C3 + _C4 * a2)

    @triton.jit
    def _load_wt(w_ptr, n_out, n_in, BLOCK_IN: tl.constexpr, BLOCK_OUT: tl.constexpr, ORDER: tl.constexpr):
        """Wᵀ as a [BLOCK_IN, BLOCK_OUT] tile of the row-major [n_out, n_in] weight, zero padded; with
        ORDER its rows in acc_order (flare.ops._triton)."""
        i = acc_order(tl.arange(0, BLOCK_IN), ORDER)[:, None]
        o = tl.arange(0, BLOCK_OUT)[None, :]
        return tl.load(w_ptr + o * n_in + i, mask=(i < n_in) & (o < n_out), other=0.0)

    @triton.jit
    def _load_w(w_ptr, n_out, n_in, BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr, ORDER: tl.constexpr):
        """W as a [BLOCK_OUT, BLOCK_IN] tile of the row-major [n_out, n_in] weight, zero padded; with
        ORDER its rows in acc_order (flare.ops._triton)."""
        o = acc_order(tl.arange(0, BLOCK_OUT), ORDER)[:, None]
        i = tl.arange(0, BLOCK_IN)[None, :]
        return tl.load(w_ptr + o * n_in + i, mask=(o < n_out) & (i < n_in), other=0.0)

    @triton.jit
    def _load_b(b_ptr, n, BLOCK: tl.constexpr):
        c = tl.arange(0, BLOCK)
        return tl.load(b_ptr + c, mask=c < n, other=0.0).to(tl.float32)[None, :]

    @triton.jit
    def _linear(h, w_ptr, b_ptr, n_out, n_in, BLOCK_IN: tl.constexpr, BLOCK_OUT: tl.constexpr,
                DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr, ORDER: tl.constexpr):
        """h [T, BLOCK_IN] fp32 -> h Wᵀ + b, fp32 [T, BLOCK_OUT]; operands rounded to DOT_DTYPE. ORDER:
        h is a dot's accumulator and enters this dot in its register order (flare.ops._triton.acc_order)."""
        wt = _load_wt(w_ptr, n_out, n_in, BLOCK_IN, BLOCK_OUT, ORDER).to(DOT_DTYPE)
        return tl.dot(acc_order_cols(h.to(DOT_DTYPE), ORDER), wt, input_precision=DOT_PREC) + _load_b(
            b_ptr, n_out, BLOCK_OUT)

    @triton.jit
    def _layer_norm(x, ln_w, ln_b, eps, IN: tl.constexpr, BLOCK_IN: tl.constexpr):
        """Rows of x [T, BLOCK_IN] (zero beyond IN) -> (LayerNorm(x), x̂, 1/σ, weight), zero beyond IN."""
        ci = tl.arange(0, BLOCK_IN)
        mean = tl.sum(x, 1) / IN
        xc = tl.where(ci[None, :] < IN, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / IN + eps)
        xhat = xc * rstd[:, None]
        g = tl.load(ln_w + ci, mask=ci < IN, other=0.0).to(tl.float32)[None, :]
        b = tl.load(ln_b + ci, mask=ci < IN, other=0.0).to(tl.float32)[None, :]
        return xhat * g + b, xhat, rstd, g

    @triton.jit
    def _mlp_fwd_kernel(
        x_ptr, w_in, b_in, w_hid, b_hid, w_out, b_out, y_ptr, s_ptr, ln_w, ln_b, eps,
        T, IN: tl.constexpr, HID: tl.constexpr, OUT: tl.constexpr,
        L: tl.constexpr, BLOCK_T: tl.constexpr,
        BLOCK_IN: tl.constexpr, BLOCK_HID: tl.constexpr, BLOCK_OUT: tl.constexpr,
        IN_RES: tl.constexpr, OUT_RES: tl.constexpr, ADD_X: tl.constexpr, SAVE: tl.constexpr,
        NORM: tl.constexpr,
        DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr, ACC_ORDER: tl.constexpr,
    ):
        rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)[:, None]
        rmask = rows < T
        ci = tl.arange(0, BLOCK_IN)[None, :]
        ch = tl.arange(0, BLOCK_HID)[None, :]
        co = tl.arange(0, BLOCK_OUT)[None, :]
        hmask = rmask & (ch < HID)
        x = tl.load(x_ptr + rows * IN + ci, mask=rmask & (ci < IN), other=0.0).to(tl.float32)
        x_raw = x
        if NORM:
            x, _, _, _ = _layer_norm(x, ln_w, ln_b, eps, IN, BLOCK_IN)
        h = _gelu(_linear(x, w_in, b_in, HID, IN, BLOCK_IN, BLOCK_HID, DOT_DTYPE, DOT_PREC, False))
        if IN_RES:
            h += x
        # a loop, not unrolled: a third less code, 160 instead of 182 registers (fp32, L = 3) and 12.8
        # against 13.8 µs at the Darcy size (H100); the backward's unrolled chain is faster as it is
        # (a loop there: 35 -> 52 µs)
        for layer in range(L):
            if SAVE:
                tl.store(s_ptr + (layer * T + rows) * HID + ch, h.to(s_ptr.dtype.element_ty), mask=hmask)
            h += _gelu(_linear(h, w_hid + layer * HID * HID, b_hid + layer * HID, HID, HID,
                               BLOCK_HID, BLOCK_HID, DOT_DTYPE, DOT_PREC, ACC_ORDER))
        if SAVE:
            tl.store(s_ptr + (L * T + rows) * HID + ch, h.to(s_ptr.dtype.element_ty), mask=hmask)
        y = _linear(h, w_out, b_out, OUT, HID, BLOCK_HID, BLOCK_OUT, DOT_DTYPE, DOT_PREC, ACC_ORDER)
        if OUT_RES:
            y += h
        if ADD_X:  # the block's skip connection around the (normed) MLP; IN == OUT
            y += x_raw
        tl.store(y_ptr + rows * OUT + co, y.to(y_ptr.dtype.element_ty), mask=rmask & (co < OUT))

    @triton.jit
    def _partial_wgrad(dw_ptr, db_ptr, slot, a, b, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
                       SLOT_A: tl.constexpr, SLOT_B: tl.constexpr, DOT_DTYPE: tl.constexpr,
                       DOT_PREC: tl.constexpr):
        """This tile's aᵀ b [BLOCK_A, BLOCK_B] and Σ_rows a into layer slot ``slot`` ([SLOT_A, SLOT_B])
        of the program's partials row (dw_ptr, db_ptr already offset to it)."""
        acc = tl.dot(tl.trans(a.to(DOT_DTYPE)), b.to(DOT_DTYPE), input_precision=DOT_PREC)
        ra = tl.arange(0, BLOCK_A)
        rb = tl.arange(0, BLOCK_B)
        tl.store(dw_ptr + (slot * SLOT_A + ra[:, None]) * SLOT_B + rb[None, :], acc)
        tl.store(db_ptr + slot * SLOT_A + ra, tl.sum(a, axis=0))

    @triton.jit
    def _mlp_bwd_kernel(
        x_ptr, dy_ptr, s_ptr, w_in, b_in, w_hid, b_hid, w_out, dx_ptr, da_ptr, dw_ptr, db_ptr,
        ln_w, ln_b, eps, xn_ptr, lnp_ptr, part_row, g_ptr, skip_ptr,
        T, IN: tl.constexpr, HID: tl.constexpr, OUT: tl.constexpr,
        L: tl.constexpr, BLOCK_T: tl.constexpr,
        BLOCK_IN: tl.constexpr, BLOCK_HID: tl.constexpr, BLOCK_OUT: tl.constexpr,
        IN_RES: tl.constexpr, OUT_RES: tl.constexpr, ADD_X: tl.constexpr, PARTIALS: tl.constexpr,
        NORM: tl.constexpr, G_OUT: tl.constexpr, G_IN: tl.constexpr,
        SLOT_A: tl.constexpr, SLOT_B: tl.constexpr,
        DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr, ACC_ORDER: tl.constexpr,
    ):
        """dx for one tile of tokens, and either da_l = ∂loss/∂(pre-activation) of the input layer
        (slot 0) and of hidden layer l (slot l + 1), or (PARTIALS) this tile's share of every weight
        and bias gradient, in layer slots 0 (input), 1 + l (hidden), L + 1 (output) of the tile's row
        of partials (rows ``part_row`` elements apart; dw, db and lnp may point into one buffer).
        NORM: the input is LayerNorm(x) computed here; dx is through the norm, the tile's shares of
        the norm's weight and bias gradients go to lnp's row and (not PARTIALS) LayerNorm(x) to xn.
        Two MLPs on one input (a pair, see ``fused_residual_mlp_pair``): G_OUT stops at the gradient
        with respect to the MLP's input (LayerNorm(x) with NORM) and writes it to g_ptr (fp32 [T, IN])
        instead of dx; G_IN adds that gradient of the other MLP before the norm's backward, so the
        norm's gradients and dx are those of both. ADD_X adds skip_ptr's [T, IN] rows to dx (dy for a
        block's own skip connection; for a pair, the gradient of the skip connection around it)."""
        pid = tl.program_id(0)
        rows = (pid * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)[:, None]
        rmask = rows < T
        ci = tl.arange(0, BLOCK_IN)[None, :]
        ch = tl.arange(0, BLOCK_HID)[None, :]
        co = tl.arange(0, BLOCK_OUT)[None, :]
        hmask = rmask & (ch < HID)
        prow = pid.to(tl.int64) * part_row
        dw_ptr += prow
        db_ptr += prow
        lnp_ptr += prow
        dy = tl.load(dy_ptr + rows * OUT + co, mask=rmask & (co < OUT), other=0.0).to(tl.float32)
        if PARTIALS:
            h = tl.load(s_ptr + (L * T + rows) * HID + ch, mask=hmask, other=0.0)
            _partial_wgrad(dw_ptr, db_ptr, L + 1, dy, h, BLOCK_OUT, BLOCK_HID, SLOT_A, SLOT_B,
                           DOT_DTYPE, DOT_PREC)
        w = _load_w(w_out, OUT, HID, BLOCK_OUT, BLOCK_HID, False).to(DOT_DTYPE)
        dh = tl.dot(dy.to(DOT_DTYPE), w, input_precision=DOT_PREC)  # ∂loss/∂h_L
        if OUT_RES:
            dh += dy
        for step in tl.static_range(L):
            layer = L - 1 - step
            h = tl.load(s_ptr + (layer * T + rows) * HID + ch, mask=hmask, other=0.0)
            if DOT_DTYPE == tl.float32:
                # fp32: the weight loaded twice; kept live between its two dots it spills (the
                # Darcy-size MLP backward +5 %, H100)
                a = _linear(h.to(tl.float32), w_hid + layer * HID * HID, b_hid + layer * HID, HID, HID,
                            BLOCK_HID, BLOCK_HID, DOT_DTYPE, DOT_PREC, False)
            else:
                # 16-bit: one load serves the recomputation (h Wᵀ) and the chain (da W): 1M tokens
                # in bf16, 21.9 -> 20.7 ms of MLP backward per step (H100)
                w = _load_w(w_hid + layer * HID * HID, HID, HID, BLOCK_HID, BLOCK_HID, False).to(DOT_DTYPE)
                a = tl.dot(h.to(DOT_DTYPE), tl.trans(w), input_precision=DOT_PREC) + _load_b(
                    b_hid + layer * HID, HID, BLOCK_HID)
            da = dh * _gelu_grad(a)
            if PARTIALS:
                _partial_wgrad(dw_ptr, db_ptr, 1 + layer, da, h, BLOCK_HID, BLOCK_HID, SLOT_A, SLOT_B,
                               DOT_DTYPE, DOT_PREC)
            else:
                tl.store(da_ptr + ((layer + 1) * T + rows) * HID + ch, da.to(da_ptr.dtype.element_ty), mask=hmask)
            if DOT_DTYPE == tl.float32:  # (ACC_ORDER: da from its accumulator registers)
                w = _load_w(w_hid + layer * HID * HID, HID, HID, BLOCK_HID, BLOCK_HID, ACC_ORDER).to(DOT_DTYPE)
                dh += tl.dot(acc_order_cols(da, ACC_ORDER), w, input_precision=DOT_PREC)
            else:
                dh += tl.dot(da.to(DOT_DTYPE), w, input_precision=DOT_PREC)
        xmask = rmask & (ci < IN)
        x = tl.load(x_ptr + rows * IN + ci, mask=xmask, other=0.0).to(tl.float32)
        if NORM:
            x, xhat, rstd, g = _layer_norm(x, ln_w, ln_b, eps, IN, BLOCK_IN)
            if not PARTIALS:
                tl.store(xn_ptr + rows * IN + ci, x.to(xn_ptr.dtype.element_ty), mask=xmask)
        a = _linear(x, w_in, b_in, HID, IN, BLOCK_IN, BLOCK_HID, DOT_DTYPE, DOT_PREC, False)
        da = dh * _gelu_grad(a)
        if PARTIALS:
            _partial_wgrad(dw_ptr, db_ptr, 0, da, x, BLOCK_HID, BLOCK_IN, SLOT_A, SLOT_B, DOT_DTYPE, DOT_PREC)
        else:
            tl.store(da_ptr + rows * HID + ch, da.to(da_ptr.dtype.element_ty), mask=hmask)
        w = _load_w(w_in, HID, IN, BLOCK_HID, BLOCK_IN, ACC_ORDER).to(DOT_DTYPE)
        dx = tl.dot(acc_order_cols(da.to(DOT_DTYPE), ACC_ORDER), w, input_precision=DOT_PREC)
        if IN_RES:
            dx += dh
        if G_IN:  # the other MLP of the pair: its gradient with respect to the same input
            dx += tl.load(g_ptr + rows * IN + ci, mask=xmask, other=0.0)
        if G_OUT:
            tl.store(g_ptr + rows * IN + ci, dx, mask=xmask)
        else:
            if NORM:  # dx is ∂loss/∂LayerNorm(x) so far
                cl = tl.arange(0, BLOCK_IN)
                tl.store(lnp_ptr + cl, tl.sum(dx * xhat, axis=0))
                tl.store(lnp_ptr + BLOCK_IN + cl, tl.sum(dx, axis=0))
                dxhat = dx * g
                c1 = tl.sum(dxhat * xhat, 1) / IN
                c2 = tl.sum(dxhat, 1) / IN
                dx = (dxhat - c2[:, None] - xhat * c1[:, None]) * rstd[:, None]
            if ADD_X:  # the skip connection passes its gradient through (reloaded: live, it costs registers)
                dx += tl.load(skip_ptr + rows * IN + ci, mask=xmask, other=0.0).to(tl.float32)
            tl.store(dx_ptr + rows * IN + ci, dx.to(dx_ptr.dtype.element_ty), mask=xmask)

    @triton.jit
    def _mlp_wgrad_kernel(
        a_ptr, b_ptr, dw_ptr, db_ptr, T, chunk, slot0, part_row,
        A_WIDTH: tl.constexpr, B_WIDTH: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
        DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr,
    ):
        """Partial weight and bias gradients of one layer (axis 1) over one chunk of tokens (axis 0):
        Σ_t aᵀ b and Σ_t a, with a the layer's pre-activation gradients [T, A_WIDTH] and b its input
        [T, B_WIDTH] (row-major; layer j's at offset j·T·width). Written to layer slot slot0 + j
        ([BLOCK_A, BLOCK_B] and [BLOCK_A]) of the chunk's row of partials (``part_row`` apart)."""
        pid = tl.program_id(0)
        j = tl.program_id(1)
        t0 = pid * chunk
        t1 = tl.minimum(t0 + chunk, T)
        a_base = a_ptr + j.to(tl.int64) * T * A_WIDTH
        b_base = b_ptr + j.to(tl.int64) * T * B_WIDTH
        ca = tl.arange(0, BLOCK_A)[None, :]
        cb = tl.arange(0, BLOCK_B)[None, :]
        acc = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.float32)
        bias = tl.zeros([BLOCK_A], dtype=tl.float32)
        for t in range(t0, t1, BLOCK_T):
            rows = (t + tl.arange(0, BLOCK_T)).to(tl.int64)[:, None]
            m = rows < t1
            a = tl.load(a_base + rows * A_WIDTH + ca, mask=m & (ca < A_WIDTH), other=0.0)
            b = tl.load(b_base + rows * B_WIDTH + cb, mask=m & (cb < B_WIDTH), other=0.0)
            acc += tl.dot(tl.trans(a.to(DOT_DTYPE)), b.to(DOT_DTYPE), input_precision=DOT_PREC)
            bias += tl.sum(a.to(tl.float32), axis=0)
        slot = slot0 + j
        prow = pid.to(tl.int64) * part_row
        ra = tl.arange(0, BLOCK_A)
        rb = tl.arange(0, BLOCK_B)
        tl.store(dw_ptr + prow + (slot * BLOCK_A + ra[:, None]) * BLOCK_B + rb[None, :], acc)
        tl.store(db_ptr + prow + slot * BLOCK_A + ra, bias)


def _block(width: int) -> int:
    return max(16, 1 << max(0, (int(width) - 1).bit_length()))


# Below this size of per-tile weight-gradient partials (fp32) the backward kernel writes them itself;
# above it (many tokens) a separate split-token kernel sums the stored pre-activation gradients.
PARTIALS_MAX_BYTES = 32 << 20
# (tokens per program, warps) of the forward and backward kernels instead of the table (benchmarks)
TILE_OVERRIDE: Optional[Tuple[int, int]] = None
# register cap per thread of the forward and backward kernels (ptxas' own choice if None; benchmarks)
MAXNREG: Optional[int] = None
# hidden activations (forward) and pre-activation gradients (backward) enter their next dot in
# accumulator order (flare.ops._triton.acc_order). None: the default, the backward with TF32 dots only;
# True / False to force both kernels (tests, benchmarks). At the Darcy size (H100) the backward went
# 35.5 -> 34.1 µs with it and the forward 12.6 -> 14.3 µs (its loop-carried activations gain register
# moves), so the forward keeps the converting path by default.
ACC_ORDER: Optional[bool] = None


def _acc_order(dot_dtype: torch.dtype, prec: str, backward: bool = True) -> bool:
    if ACC_ORDER is not None:
        return ACC_ORDER
    return backward and dot_dtype == torch.float32 and prec == "tf32"


def _tile(hidden: int, interpret: bool) -> Tuple[int, int]:
    """(tokens per program, warps): a [tokens, width] fp32 tile is ≤ 64 registers per thread."""
    if interpret:
        return 32, 4
    if TILE_OVERRIDE is not None:
        return TILE_OVERRIDE
    return (64, 4) if _block(hidden) <= 64 else (32, 4)


def _dot_args(dot_dtype: torch.dtype):
    if dot_dtype == torch.float32:
        return tl.float32, fp32_dot_precision()
    return (tl.bfloat16 if dot_dtype == torch.bfloat16 else tl.float16), "tf32"


def _dims(x, w_in, w_hid, w_out):
    return x.shape[0], w_in.shape[1], w_in.shape[0], w_out.shape[0], w_hid.shape[0]


def _block_in(IN: int, HID: int, dot: str) -> int:
    """Padded input width of the kernels' tiles. With 16-bit dots an input tile narrower than the
    hidden one miscompiles on sm_90 (triton 3.6: out-of-range shared memory accesses in the backward
    kernel, NaN input gradients or an illegal address; found with compute-sanitizer through
    benchmarks/diagnose_mlp_fault.py), so there the input is padded to the hidden tile width."""
    return _block(IN) if dot == "float32" else max(_block(IN), _block(HID))


def _grad_blocks(IN: int, HID: int, OUT: int) -> Tuple[int, int]:
    """(A, B): one layer's padded weight-gradient slot is [A, B], fitting every layer of the MLP."""
    return max(_block(HID), _block(OUT)), max(_block(IN), _block(HID))


def _grad_sizes(IN: int, HID: int, OUT: int, L: int, norm: bool, dot: str) -> Tuple[int, int, int]:
    """Lengths of the weight, bias and norm parts of the backward's flat gradient tensor."""
    ba, bb = _grad_blocks(IN, HID, OUT)
    return (L + 2) * ba * bb, (L + 2) * ba, 2 * _block_in(IN, HID, dot) if norm else 0


def split_grads(grads: torch.Tensor, IN: int, HID: int, OUT: int, L: int, norm: bool, dot: str):
    """The flat gradient tensor of the backward -> (dw [L+2, A, B], db [L+2, A], norm [2, IN] or None)
    as views, A and B the padded widths (see ``_backward``)."""
    ba, bb = _grad_blocks(IN, HID, OUT)
    n_w, n_b, _ = _grad_sizes(IN, HID, OUT, L, norm, dot)
    dln = grads[n_w + n_b:].view(2, _block_in(IN, HID, dot))[:, :IN] if norm else None
    return grads[:n_w].view(L + 2, ba, bb), grads[n_w:n_w + n_b].view(L + 2, ba), dln


def _forward(x, w_in, b_in, w_hid, b_hid, w_out, b_out, ln_w, ln_b, eps, input_residual, output_residual,
             add_input, dot, save):
    T, IN, HID, OUT, L = _dims(x, w_in, w_hid, w_out)
    dot_dtype = _DTYPES[dot]
    y = torch.empty((T, OUT), device=x.device, dtype=x.dtype)
    s = torch.empty((L + 1, T, HID) if save else (0,), device=x.device, dtype=dot_dtype)
    if T == 0:
        return y, s
    bt, warps = _tile(HID, _interpreting())
    dtl, prec = _dot_args(dot_dtype)
    norm = ln_w is not None
    _mlp_fwd_kernel[(triton.cdiv(T, bt),)](
        x, w_in, b_in, w_hid, b_hid, w_out, b_out, y, s if save else y,
        ln_w if norm else b_in, ln_b if norm else b_in, float(eps),
        T, IN, HID, OUT,
        L=L, BLOCK_T=bt, BLOCK_IN=_block_in(IN, HID, dot), BLOCK_HID=_block(HID), BLOCK_OUT=_block(OUT),
        IN_RES=input_residual, OUT_RES=output_residual, ADD_X=add_input, SAVE=save, NORM=norm,
        DOT_DTYPE=dtl, DOT_PREC=prec, ACC_ORDER=_acc_order(dot_dtype, prec, backward=False),
        num_warps=warps, **register_cap(MAXNREG),
    )
    return y, s


def _partial_rows(T: int, IN: int, HID: int, OUT: int, L: int) -> Optional[int]:
    """Rows of the per-tile partials the backward kernel writes for T tokens (one per program), or
    None when there are so many tokens that the split-token kernels sum the gradients instead."""
    ba, bb = _grad_blocks(IN, HID, OUT)
    tiles = triton.cdiv(T, _tile(HID, _interpreting())[0])
    return tiles if tiles * (L + 2) * ba * bb * 4 <= PARTIALS_MAX_BYTES else None


def _backward(dy, x, s, w_in, b_in, w_hid, b_hid, w_out, ln_w, ln_b, eps, input_residual, output_residual,
              add_input, dot):
    """dx, and every parameter gradient in one flat fp32 tensor (``split_grads`` takes it apart): the
    weight gradients of every layer zero-padded to [L + 2, A, B] (input layer, hidden layers, output
    layer; A = padded max(HID, OUT), B = padded max(IN, HID)), the bias gradients [L + 2, A], and,
    with a norm, its weight and bias gradients [2, padded IN]."""
    T, IN, HID, OUT, L = _dims(x, w_in, w_hid, w_out)
    dot_dtype = _DTYPES[dot]
    bin_ = _block_in(IN, HID, dot)
    ba, bb = _grad_blocks(IN, HID, OUT)
    f32 = dict(device=x.device, dtype=torch.float32)
    norm = ln_w is not None
    dx = torch.empty_like(x)
    n_w, n_b, n_ln = _grad_sizes(IN, HID, OUT, L, norm, dot)
    if T == 0:
        return dx, torch.zeros((n_w + n_b + n_ln,), **f32)
    dy = dy.contiguous()
    bt, warps = _tile(HID, _interpreting())
    dtl, prec = _dot_args(dot_dtype)
    tiles = triton.cdiv(T, bt)
    common = dict(L=L, BLOCK_T=bt, BLOCK_IN=bin_, BLOCK_HID=_block(HID), BLOCK_OUT=_block(OUT),
                  IN_RES=input_residual, OUT_RES=output_residual, ADD_X=add_input, NORM=norm, SLOT_A=ba, SLOT_B=bb,
                  DOT_DTYPE=dtl, DOT_PREC=prec, ACC_ORDER=_acc_order(dot_dtype, prec), num_warps=warps,
                  **register_cap(MAXNREG))
    ln = (ln_w if norm else b_in, ln_b if norm else b_in, float(eps))

    if _partial_rows(T, IN, HID, OUT, L) is not None:
        # few tokens: every program writes its tile's share of all weight, bias and norm gradients
        # into its own row of one buffer, summed by one torch reduction (no pre-activation gradients written)
        part = torch.empty((tiles, n_w + n_b + n_ln), **f32)
        _mlp_bwd_kernel[(tiles,)](x, dy, s, w_in, b_in, w_hid, b_hid, w_out, dx, dx, part, part[:, n_w:], *ln, dx,
                                  part[:, n_w + n_b:], part.shape[1], dx, dy, T, IN, HID, OUT, PARTIALS=True,
                                  G_OUT=False, G_IN=False, **common)
        return dx, column_sum(part)
    da = torch.empty((L + 1, T, HID), device=x.device, dtype=dot_dtype)
    # with a norm the input layer's weight gradient needs LayerNorm(x): the backward kernel stores it
    xn = torch.empty((T, IN), device=x.device, dtype=dot_dtype) if norm else x
    lnp = torch.empty((tiles, n_ln), **f32)
    _mlp_bwd_kernel[(tiles,)](x, dy, s, w_in, b_in, w_hid, b_hid, w_out, dx, da, dx, dx, *ln, xn, lnp, n_ln, dx,
                              dy, T, IN, HID, OUT, PARTIALS=False, G_OUT=False, G_IN=False, **common)
    # weight gradients: sums over the tokens, split into chunks so that every SM works; the chunks'
    # partials are summed by torch afterwards (deterministic, no atomics). Three launches: the input
    # layer, the hidden layers, the output layer (their operands differ in dtype and width).
    wide = max(ba, bb) > 64
    wt = 32 if _interpreting() or wide else 64
    # fp32: one stage, i.e. no asynchronous copies: fp32 operands must go through registers, since
    # TF32 tensor cores need the token axis contiguous in shared memory and asynchronous copies
    # straight into that transposed layout are 4-byte, uncoalesced ones (24 µs instead of a few per
    # launch at the Darcy size, H200); two programs per SM hide the load latency instead. Both
    # operands 16-bit and as wide as their tiles: three stages (0.50 against 0.75 ms per MLP at 1M
    # tokens with one, H100/H200). They had run one stage while that was suspected of the narrow-input
    # fault, which it was not (see _block_in); pipelined copies of a narrow (masked) 16-bit operand
    # were not run since, so those keep one stage, as do fp32 operands (under autocast the output
    # layer's dy and an un-normed input).
    tiles = triton.cdiv(T, wt)
    chunks = max(1, min(tiles, 2 * _sm_count(x.device)))
    chunk = triton.cdiv(tiles, chunks) * wt
    chunks = triton.cdiv(T, chunk)
    part = torch.empty((chunks, n_w + n_b), **f32)
    for a, b, a_width, b_width, slot0, layers in (
        (da, xn, HID, IN, 0, 1),  # input layer
        (da[1:], s, HID, HID, 1, L),  # hidden layers
        (dy, s[L], OUT, HID, L + 1, 1),  # output layer
    ):
        if layers:
            full = a.element_size() == b.element_size() == 2 and a_width == ba and b_width == bb
            stages = 3 if full else 1
            _mlp_wgrad_kernel[(chunks, layers)](
                a, b, part, part[:, n_w:], T, chunk, slot0, part.shape[1],
                A_WIDTH=a_width, B_WIDTH=b_width, BLOCK_T=wt, BLOCK_A=ba, BLOCK_B=bb,
                DOT_DTYPE=dtl, DOT_PREC=prec, num_warps=4, num_stages=stages,
            )
    grads = torch.empty((n_w + n_b + n_ln,), **f32)
    # summed now even inside deferred_partial_sums(): at this many tokens the sums are a sliver of the
    # step and the partials of every MLP, kept to the end of the backward, would add ~0.6 GB
    torch.sum(part, 0, out=grads[:n_w + n_b])
    if norm:
        torch.sum(lnp, 0, out=grads[n_w + n_b:])
    return dx, grads


@torch.library.custom_op("flare::fused_mlp_fwd", mutates_args=())
def _mlp_fwd_op(x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor, w_hid: torch.Tensor,
                b_hid: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor, ln_w: Optional[torch.Tensor],
                ln_b: Optional[torch.Tensor], eps: float, input_residual: bool, output_residual: bool,
                add_input: bool, dot: str, save: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(y [T, OUT] in x's dtype, saved h_0 … h_L [L+1, T, HID] in the dot dtype, or empty); with
    ``ln_w`` / ``ln_b`` the MLP runs on LayerNorm(x) (weight, bias, eps) computed in the kernel;
    ``add_input``: y is x + MLP(...)."""
    return _forward(x, w_in, b_in, w_hid, b_hid, w_out, b_out, ln_w, ln_b, eps, input_residual,
                    output_residual, add_input, dot, save)


@_mlp_fwd_op.register_fake
def _(x, w_in, b_in, w_hid, b_hid, w_out, b_out, ln_w, ln_b, eps, input_residual, output_residual, add_input,
      dot, save):
    T, _, HID, OUT, L = _dims(x, w_in, w_hid, w_out)
    return (x.new_empty((T, OUT)),
            x.new_empty((L + 1, T, HID) if save else (0,), dtype=_DTYPES[dot]))


@torch.library.custom_op("flare::fused_mlp_bwd", mutates_args=())
def _mlp_bwd_op(dy: torch.Tensor, x: torch.Tensor, s: torch.Tensor, w_in: torch.Tensor,
                b_in: torch.Tensor, w_hid: torch.Tensor, b_hid: torch.Tensor, w_out: torch.Tensor,
                ln_w: Optional[torch.Tensor], ln_b: Optional[torch.Tensor], eps: float,
                input_residual: bool, output_residual: bool, add_input: bool, dot: str
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(dx, every parameter gradient in one flat fp32 tensor); see ``_backward`` and ``split_grads``."""
    return _backward(dy, x, s, w_in, b_in, w_hid, b_hid, w_out, ln_w, ln_b, eps, input_residual,
                     output_residual, add_input, dot)


@_mlp_bwd_op.register_fake
def _(dy, x, s, w_in, b_in, w_hid, b_hid, w_out, ln_w, ln_b, eps, input_residual, output_residual, add_input,
      dot):
    _, IN, HID, OUT, L = _dims(x, w_in, w_hid, w_out)
    return x.new_empty(x.shape), x.new_empty((sum(_grad_sizes(IN, HID, OUT, L, ln_w is not None, dot)),),
                                             dtype=torch.float32)


_FWD_ARGS = 15  # inputs of flare::fused_mlp_fwd


def _setup(ctx, inputs, output):
    (x, w_in, b_in, w_hid, b_hid, w_out, b_out, ln_w, ln_b, eps, input_residual, output_residual, add_input, dot,
     save) = inputs
    if not save:
        raise RuntimeError("fused_residual_mlp: the forward ran without saving activations "
                           "but a gradient was requested")
    ctx.save_for_backward(x, output[1], w_in, b_in, w_hid, b_hid, w_out, ln_w, ln_b, b_out)
    ctx.flags = (eps, input_residual, output_residual, add_input, dot)
    # the saved activations are an output only to be saved: no zero-filled gradient for them
    # (512 MB of zeros per MLP at 1M points in bf16)
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _backward_rule(ctx, dy, _ds):
    if dy is None:  # the output did not reach the loss
        return (None,) * _FWD_ARGS
    x, s, w_in, b_in, w_hid, b_hid, w_out, ln_w, ln_b, b_out = ctx.saved_tensors
    eps, input_residual, output_residual, add_input, dot = ctx.flags
    dx, grads = _mlp_bwd_op(dy, x, s, w_in, b_in, w_hid, b_hid, w_out, ln_w, ln_b, eps,
                            input_residual, output_residual, add_input, dot)
    L, HID, IN, OUT = w_hid.shape[0], w_in.shape[0], w_in.shape[1], w_out.shape[0]
    param_grads = _param_grads(grads, IN, HID, OUT, L, ln_w is not None, dot)
    # postponed partial sums (flare.ops.deferred_sums): computed now if autograd would read them
    settle_unless_kept(zip(param_grads, (w_in, b_in, w_hid, b_hid, w_out, b_out, ln_w, ln_b)))
    return (dx,) + param_grads + (None,) * (_FWD_ARGS - 9)


def _param_grads(grads: torch.Tensor, IN: int, HID: int, OUT: int, L: int, norm: bool, dot: str) -> tuple:
    """The backward's flat gradient tensor -> gradients of (w_in, b_in, w_hid, b_hid, w_out, b_out, ln_w,
    ln_b), the last two None without a norm."""
    dw, db, dln = split_grads(grads, IN, HID, OUT, L, norm, dot)
    dln_w, dln_b = (dln[0], dln[1]) if norm else (None, None)
    return (dw[0, :HID, :IN], db[0, :HID], dw[1:L + 1, :HID, :HID], db[1:L + 1, :HID],
            dw[L + 1, :OUT, :HID], db[L + 1, :OUT], dln_w, dln_b)


_mlp_fwd_op.register_autograd(_backward_rule, setup_context=_setup)


# --------------------------------------------------------------------------------------------
# Two MLPs of one shape on one input (FLARE's key and value projections, both behind norm1). The
# forward is the single MLP's kernel twice; the backward runs the second MLP's kernel up to the
# gradient with respect to the shared (normed) input, which the first MLP's kernel adds before the
# norm's backward (G_OUT / G_IN), and both write their partials into one buffer. Against two single
# MLPs that saves per pair an addition of the input gradients, the two additions of the shared
# norm's weight and bias gradients, one norm backward and one partials sum; with a skip connection
# around the pair passed through it (pass_input), also the addition of the skip's gradient.
# --------------------------------------------------------------------------------------------
_PAIR_PARAMS = 12  # w_in, b_in, w_hid, b_hid, w_out, b_out of each MLP
# False: fused_residual_mlp_pair runs its two MLPs separately (benchmarks)
PAIRS = True


def _pair_grad_sizes(IN: int, HID: int, OUT: int, L: int, norm: bool, dot: str) -> Tuple[int, int]:
    """(per-MLP weight + bias length, norm length) of the pair backward's flat gradient tensor."""
    n_w, n_b, n_ln = _grad_sizes(IN, HID, OUT, L, norm, dot)
    return n_w + n_b, n_ln


def _backward_pair(dys, x, ss, params, ln_w, ln_b, eps, input_residual, output_residual, dot, dskip=None):
    """(dx of both, flat fp32 gradients [first MLP's weights and biases | second's | the norm's]);
    ``dskip`` (the gradient of a skip connection around the pair, see ``fused_residual_mlp_pair``) is
    added to dx inside the last kernel."""
    (w_in, b_in, w_hid, b_hid, w_out, _), _ = params[:6], params[6:]
    T, IN, HID, OUT, L = _dims(x, w_in, w_hid, w_out)
    dot_dtype = _DTYPES[dot]
    norm = ln_w is not None
    n_mlp, n_ln = _pair_grad_sizes(IN, HID, OUT, L, norm, dot)
    n_w = _grad_sizes(IN, HID, OUT, L, norm, dot)[0]
    dx = torch.empty_like(x)
    f32 = dict(device=x.device, dtype=torch.float32)
    if T == 0:
        return dx, torch.zeros((2 * n_mlp + n_ln,), **f32)
    bt, warps = _tile(HID, _interpreting())
    dtl, prec = _dot_args(dot_dtype)
    tiles = triton.cdiv(T, bt)
    ba, bb = _grad_blocks(IN, HID, OUT)
    part = torch.empty((tiles, 2 * n_mlp + n_ln), **f32)
    g = torch.empty((T, IN), **f32)  # the second MLP's gradient with respect to the shared input
    ln = (ln_w if norm else params[1], ln_b if norm else params[1], float(eps))
    common = dict(L=L, BLOCK_T=bt, BLOCK_IN=_block_in(IN, HID, dot), BLOCK_HID=_block(HID), BLOCK_OUT=_block(OUT),
                  IN_RES=input_residual, OUT_RES=output_residual, NORM=norm, SLOT_A=ba, SLOT_B=bb,
                  PARTIALS=True, DOT_DTYPE=dtl, DOT_PREC=prec, ACC_ORDER=_acc_order(dot_dtype, prec),
                  num_warps=warps, **register_cap(MAXNREG))
    skip = dx if dskip is None else dskip.contiguous()
    for which, g_out in ((1, True), (0, False)):  # the second MLP first: the first adds its gradient
        w_in, b_in, w_hid, b_hid, w_out, _ = params[6 * which:6 * which + 6]
        col = which * n_mlp
        _mlp_bwd_kernel[(tiles,)](
            x, dys[which].contiguous(), ss[which], w_in, b_in, w_hid, b_hid, w_out, dx, dx, part[:, col:],
            part[:, col + n_w:], *ln, dx, part[:, 2 * n_mlp:], part.shape[1], g, skip, T, IN, HID, OUT,
            G_OUT=g_out, G_IN=not g_out, ADD_X=not g_out and dskip is not None, **common)
    return dx, column_sum(part)


@torch.library.custom_op("flare::fused_mlp_pair_fwd", mutates_args=())
def _pair_fwd_op(x: torch.Tensor, wa_in: torch.Tensor, ba_in: torch.Tensor, wa_hid: torch.Tensor,
                 ba_hid: torch.Tensor, wa_out: torch.Tensor, ba_out: torch.Tensor, wb_in: torch.Tensor,
                 bb_in: torch.Tensor, wb_hid: torch.Tensor, bb_hid: torch.Tensor, wb_out: torch.Tensor,
                 bb_out: torch.Tensor, ln_w: Optional[torch.Tensor], ln_b: Optional[torch.Tensor], eps: float,
                 input_residual: bool, output_residual: bool, dot: str, save: bool
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y_a, y_b, saved activations of a, of b): the two MLPs (a, b) on one x (and its LayerNorm)."""
    ya, sa = _forward(x, wa_in, ba_in, wa_hid, ba_hid, wa_out, ba_out, ln_w, ln_b, eps, input_residual,
                      output_residual, False, dot, save)
    yb, sb = _forward(x, wb_in, bb_in, wb_hid, bb_hid, wb_out, bb_out, ln_w, ln_b, eps, input_residual,
                      output_residual, False, dot, save)
    return ya, yb, sa, sb


@_pair_fwd_op.register_fake
def _(x, wa_in, ba_in, wa_hid, ba_hid, wa_out, ba_out, wb_in, bb_in, wb_hid, bb_hid, wb_out, bb_out, ln_w, ln_b,
      eps, input_residual, output_residual, dot, save):
    T, _, HID, OUT, L = _dims(x, wa_in, wa_hid, wa_out)
    s_shape = (L + 1, T, HID) if save else (0,)
    return (x.new_empty((T, OUT)), x.new_empty((T, OUT)), x.new_empty(s_shape, dtype=_DTYPES[dot]),
            x.new_empty(s_shape, dtype=_DTYPES[dot]))


@torch.library.custom_op("flare::fused_mlp_pair_bwd", mutates_args=())
def _pair_bwd_op(dya: torch.Tensor, dyb: torch.Tensor, x: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor,
                 wa_in: torch.Tensor, ba_in: torch.Tensor, wa_hid: torch.Tensor, ba_hid: torch.Tensor,
                 wa_out: torch.Tensor, ba_out: torch.Tensor, wb_in: torch.Tensor, bb_in: torch.Tensor,
                 wb_hid: torch.Tensor, bb_hid: torch.Tensor, wb_out: torch.Tensor, bb_out: torch.Tensor,
                 ln_w: Optional[torch.Tensor], ln_b: Optional[torch.Tensor], eps: float, input_residual: bool,
                 output_residual: bool, dot: str, dskip: Optional[torch.Tensor] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(dx, flat gradients: a's weights and biases, b's, the norm's); see ``_backward_pair``."""
    params = (wa_in, ba_in, wa_hid, ba_hid, wa_out, ba_out, wb_in, bb_in, wb_hid, bb_hid, wb_out, bb_out)
    return _backward_pair((dya, dyb), x, (sa, sb), params, ln_w, ln_b, eps, input_residual, output_residual, dot,
                          dskip)


@_pair_bwd_op.register_fake
def _(dya, dyb, x, sa, sb, wa_in, ba_in, wa_hid, ba_hid, wa_out, ba_out, wb_in, bb_in, wb_hid, bb_hid, wb_out,
      bb_out, ln_w, ln_b, eps, input_residual, output_residual, dot, dskip=None):
    _, IN, HID, OUT, L = _dims(x, wa_in, wa_hid, wa_out)
    n_mlp, n_ln = _pair_grad_sizes(IN, HID, OUT, L, ln_w is not None, dot)
    return x.new_empty(x.shape), x.new_empty((2 * n_mlp + n_ln,), dtype=torch.float32)


_PAIR_FWD_ARGS = 20  # inputs of flare::fused_mlp_pair_fwd


def _pair_setup(ctx, inputs, output):
    x = inputs[0]
    params = inputs[1:1 + _PAIR_PARAMS]
    ln_w, ln_b, eps, input_residual, output_residual, dot, save = inputs[1 + _PAIR_PARAMS:]
    if not save:
        raise RuntimeError("fused_residual_mlp_pair: the forward ran without saving activations "
                           "but a gradient was requested")
    ctx.save_for_backward(x, output[2], output[3], *params, ln_w, ln_b)
    ctx.flags = (eps, input_residual, output_residual, dot)
    ctx.mark_non_differentiable(output[2], output[3])
    ctx.set_materialize_grads(False)


def _pair_grads(saved, flags, dya, dyb, dskip=None) -> tuple:
    """(dx, the first MLP's six parameter gradients, the second's, the norm's weight and bias) from the
    pair forward's saved tensors (x, saved activations of a and b, the 12 parameters, ln_w, ln_b)."""
    x, sa, sb, *rest = saved
    params, (ln_w, ln_b) = tuple(rest[:_PAIR_PARAMS]), rest[_PAIR_PARAMS:]
    eps, input_residual, output_residual, dot = flags
    ya_shape = (x.shape[0], params[4].shape[0])
    dya = torch.zeros(ya_shape, device=x.device, dtype=x.dtype) if dya is None else dya
    dyb = torch.zeros(ya_shape, device=x.device, dtype=x.dtype) if dyb is None else dyb
    dx, grads = _pair_bwd_op(dya, dyb, x, sa, sb, *params, ln_w, ln_b, eps, input_residual, output_residual, dot,
                             dskip)
    w_in, _, w_hid, _, w_out, _ = params[:6]
    L, HID, IN, OUT = w_hid.shape[0], w_in.shape[0], w_in.shape[1], w_out.shape[0]
    norm = ln_w is not None
    n_mlp, n_ln = _pair_grad_sizes(IN, HID, OUT, L, norm, dot)
    # each MLP's part laid out as a single MLP's flat tensor without its norm part
    ga = _param_grads(grads[:n_mlp], IN, HID, OUT, L, False, dot)[:6]
    gb = _param_grads(grads[n_mlp:2 * n_mlp], IN, HID, OUT, L, False, dot)[:6]
    if norm:
        dln = grads[2 * n_mlp:].view(2, _block_in(IN, HID, dot))[:, :IN]
        dln_w, dln_b = dln[0], dln[1]
    else:
        dln_w = dln_b = None
    settle_unless_kept(zip(ga + gb + (dln_w, dln_b), params + (ln_w, ln_b)))
    return (dx,) + ga + gb + (dln_w, dln_b)


def _pair_backward_rule(ctx, dya, dyb, _dsa, _dsb):
    if dya is None and dyb is None:
        return (None,) * _PAIR_FWD_ARGS
    return _pair_grads(ctx.saved_tensors, ctx.flags, dya, dyb) + (None,) * (_PAIR_FWD_ARGS - 1 - _PAIR_PARAMS - 2)


class _PairWithSkip(torch.autograd.Function):
    """The pair and a skip connection around it: ``(y_a, y_b, x)``, the third output x itself (a view).
    Whatever consumes it as the skip connection hands its gradient to this backward, which adds it to
    dx inside the pair's last kernel: autograd then has one gradient for x, not two to sum with an
    addition kernel of its own (one per FLARE block)."""

    @staticmethod
    def forward(ctx, x, ln_w, ln_b, eps, input_residual, output_residual, dot, *params):
        ya, yb, sa, sb = _pair_fwd_op(x, *params, ln_w, ln_b, eps, input_residual, output_residual, dot, True)
        ctx.save_for_backward(x, sa, sb, *params, ln_w, ln_b)
        ctx.flags = (eps, input_residual, output_residual, dot)
        ctx.mark_non_differentiable(sa, sb)
        ctx.set_materialize_grads(False)
        return ya, yb, x.view_as(x)

    @staticmethod
    def backward(ctx, dya, dyb, dskip):
        if dya is None and dyb is None:
            return (dskip,) + (None,) * (6 + _PAIR_PARAMS)
        dx, *grads = _pair_grads(ctx.saved_tensors, ctx.flags, dya, dyb, dskip)
        ga, gb, (dln_w, dln_b) = grads[:6], grads[6:12], grads[12:]
        return (dx, dln_w, dln_b, None, None, None, None, *ga, *gb)


_pair_fwd_op.register_autograd(_pair_backward_rule, setup_context=_pair_setup)


def fused_residual_mlp_pair(x: torch.Tensor, a: Sequence[torch.Tensor], b: Sequence[torch.Tensor],
                            input_residual: bool, output_residual: bool,
                            norm: Optional[Tuple[torch.Tensor, torch.Tensor, float]] = None,
                            pass_input: bool = False) -> tuple:
    """``(fused_residual_mlp(x, *a, ...), fused_residual_mlp(x, *b, ...))`` for two MLPs of the same
    widths and depth on one ``x`` (and one ``norm``), with one backward for both: ``a`` and ``b`` are
    (w_in, b_in, w_hid, b_hid, w_out, b_out) as ``fused_residual_mlp`` takes them. At many tokens
    (where the backward takes the split-token path), or with ``PAIRS`` off, it runs the two MLPs
    separately. With ``pass_input`` a third output is x itself, to use as the skip connection around
    the pair: where the pair runs fused, its gradient is added to x's inside the pair's backward."""
    a, b = (tuple(m[:2]) + (_stacked(m[2], m[0].new_empty((0,) + 2 * (m[0].shape[0],))),
                            _stacked(m[3], m[1].new_empty((0, m[0].shape[0])))) + tuple(m[4:]) for m in (a, b))
    shapes = [tuple(t.shape) for t in a]
    if [tuple(t.shape) for t in b] != shapes:
        raise ValueError(f"the two MLPs of a pair must have the same shapes; got {shapes} and "
                         f"{[tuple(t.shape) for t in b]}")
    w_in, _, w_hid, _, w_out, _ = a
    HID, L = w_in.shape[0], w_hid.shape[0]
    T = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if not PAIRS or _partial_rows(T, w_in.shape[1], HID, w_out.shape[0], L) is None:
        return (fused_residual_mlp(x, *a, input_residual, output_residual, norm=norm),
                fused_residual_mlp(x, *b, input_residual, output_residual, norm=norm)) + ((x,) if pass_input else ())
    _check(x, [w_in, w_hid, w_out], L)
    if input_residual and w_in.shape[1] != HID or output_residual and w_out.shape[0] != HID:
        raise ValueError("a residual connection needs equal widths on both sides")
    dot = dot_name_for(x, "the fused MLP pair")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    ln_w, ln_b, eps = norm if norm is not None else (None, None, 0.0)
    if norm is not None and (ln_w.shape != (x.shape[-1],) or ln_b.shape != (x.shape[-1],)):
        raise ValueError(f"the norm's weight and bias must have shape ({x.shape[-1]},); got "
                         f"{tuple(ln_w.shape)} and {tuple(ln_b.shape)}")
    params = tuple(p.contiguous() for p in tuple(a) + tuple(b))
    save = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)
                                        or (norm is not None and (ln_w.requires_grad or ln_b.requires_grad)))
    if pass_input and save and not torch.compiler.is_compiling():
        ya, yb, skip = _PairWithSkip.apply(x2, ln_w, ln_b, float(eps), bool(input_residual), bool(output_residual),
                                           dot, *params)
        return ya.view(*lead, w_out.shape[0]), yb.view(*lead, w_out.shape[0]), skip.view(x.shape)
    ya, yb, _, _ = _pair_fwd_op(x2, *params, ln_w, ln_b, float(eps), bool(input_residual), bool(output_residual),
                                dot, save)
    return (ya.view(*lead, w_out.shape[0]), yb.view(*lead, w_out.shape[0])) + ((x,) if pass_input else ())


def dot_dtype_for(x: torch.Tensor) -> torch.dtype:
    """The dtype the fused MLP's dots run in for input ``x``: the autocast dtype, else x's dtype."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def dot_name_for(x: torch.Tensor, what: str) -> str:
    """``dot_dtype_for(x)`` as the operators' ``dot`` argument ("float32", "bfloat16", "float16");
    a ValueError naming ``what`` for any other dtype."""
    dot_dtype = dot_dtype_for(x)
    if dot_dtype not in _DTYPES.values():
        raise ValueError(f"unsupported dtype {dot_dtype} for {what}")
    return str(dot_dtype).removeprefix("torch.")


def fused_mlp_supports(x: torch.Tensor, in_dim: int, hidden_dim: int, out_dim: int) -> bool:
    """Whether ``fused_residual_mlp`` runs an MLP of these widths on ``x`` (triton imported, CUDA or
    the interpreter, widths up to MAX_WIDTH)."""
    return (fused_mlp_available() and (x.is_cuda or _interpreting())
            and max(in_dim, hidden_dim, out_dim) <= MAX_WIDTH)


def _check(x: torch.Tensor, weights: List[torch.Tensor], L: int) -> None:
    if not fused_mlp_available():
        raise RuntimeError(f"the fused MLP needs triton, which failed to import: {_TRITON_IMPORT_ERROR!r}")
    if x.device.type == "cpu" and not _interpreting():
        raise RuntimeError("the fused MLP got CPU tensors; run on a CUDA device or set TRITON_INTERPRET=1 "
                           "before importing flare.ops.fused_mlp (CPU interpreter, slow)")
    w_in, w_hid, w_out = weights
    IN, HID, OUT = w_in.shape[1], w_in.shape[0], w_out.shape[0]
    if x.shape[-1] != IN:
        raise ValueError(f"the fused MLP expects {IN} input features, got x of shape {tuple(x.shape)}")
    if max(IN, HID, OUT) > MAX_WIDTH:
        raise ValueError(f"the fused MLP takes widths up to {MAX_WIDTH}; got in {IN}, hidden {HID}, out {OUT}")
    if w_hid.shape != (L, HID, HID) or w_out.shape[1] != HID:
        raise ValueError(f"inconsistent MLP weights: in {tuple(w_in.shape)}, hidden {tuple(w_hid.shape)}, "
                         f"out {tuple(w_out.shape)}")


def _stacked(t, empty: torch.Tensor) -> torch.Tensor:
    if t is None:
        return empty
    if isinstance(t, torch.Tensor):
        return t
    return torch.stack(list(t)) if len(t) else empty


def fused_residual_mlp(x: torch.Tensor, w_in: torch.Tensor, b_in: torch.Tensor,
                       w_hid: Union[torch.Tensor, Sequence[torch.Tensor], None],
                       b_hid: Union[torch.Tensor, Sequence[torch.Tensor], None], w_out: torch.Tensor,
                       b_out: torch.Tensor, input_residual: bool, output_residual: bool,
                       norm: Optional[Tuple[torch.Tensor, torch.Tensor, float]] = None,
                       add_input: bool = False) -> torch.Tensor:
    """The residual MLP above on ``x [..., IN]`` -> ``[..., OUT]`` in x's dtype.

    Weights are ``nn.Linear`` layout (``[out, in]``); the hidden layers' weights ``w_hid`` [L, HID,
    HID] and biases ``b_hid`` [L, HID] stacked (as ``ResidualMLP`` keeps them; a list of per-layer
    tensors is stacked here, one more copy per call; None for no hidden layers).
    ``input_residual`` needs IN == HID and ``output_residual`` HID == OUT. ``norm = (weight, bias,
    eps)`` applies a LayerNorm over the IN features first, inside the kernels (the MLP's input and
    its residual are the normalised x). ``add_input`` returns ``x + MLP(...)`` (the un-normalised x;
    IN == OUT): a block's skip connection, added in the kernel. Under autocast the dots run in the
    autocast dtype, otherwise in x's dtype. Differentiable in x and every weight and bias.
    """
    HID = w_in.shape[0]
    w_stack = _stacked(w_hid, w_in.new_empty((0, HID, HID)))
    b_stack = _stacked(b_hid, b_in.new_empty((0, HID)))
    L = w_stack.shape[0]
    if b_stack.shape != (L, HID):
        raise ValueError(f"the hidden biases must have shape ({L}, {HID}); got {tuple(b_stack.shape)}")
    _check(x, [w_in, w_stack, w_out], L)
    if input_residual and w_in.shape[1] != HID or output_residual and w_out.shape[0] != HID:
        raise ValueError("a residual connection needs equal widths on both sides")
    if add_input and w_in.shape[1] != w_out.shape[0]:
        raise ValueError(f"add_input needs as many outputs as inputs; got in {w_in.shape[1]}, out {w_out.shape[0]}")
    dot = dot_name_for(x, "the fused MLP")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    ln_w, ln_b, eps = norm if norm is not None else (None, None, 0.0)
    if norm is not None and (ln_w.shape != (x.shape[-1],) or ln_b.shape != (x.shape[-1],)):
        raise ValueError(f"the norm's weight and bias must have shape ({x.shape[-1]},); got "
                         f"{tuple(ln_w.shape)} and {tuple(ln_b.shape)}")
    params = (w_in, b_in, w_stack, b_stack, w_out, b_out) + ((ln_w, ln_b) if norm is not None else ())
    save = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
    params = tuple(p.contiguous() for p in params)
    if norm is None:
        params += (None, None)
    y, _ = _mlp_fwd_op(x2, *params, float(eps), bool(input_residual), bool(output_residual), bool(add_input),
                       dot, save)
    return y.view(*lead, w_out.shape[0])
