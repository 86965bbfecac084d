"""Fused Triton kernels for the FLARE mixer (gather over tokens, then scatter over latents).

Per batch ``b`` and head ``h``, with latent queries ``Q [M, D]``, keys ``K [N, D]`` and values ``V [N, D]``::

    Z = softmax_N(Q Kᵀ) V      # gather  [M, D]
    Y = softmax_M(K Qᵀ) Z      # scatter [N, D]

Both softmaxes use scale 1.0.  ``flare_mixer_triton(q, k, v)`` has the contract of
``flare.ops.reference.flare_mixer_reference``.

Layout of the work (all reductions over N are split so that the whole GPU is busy at any B·H):

forward
  1. ``_gather_fwd_kernel``   grid (chunks, M-tiles, B·H): online softmax over one chunk of N,
     writes per-chunk partials (row max, row sum, unnormalised Z) in fp32.
  2. ``_gather_merge_kernel`` grid (M-tiles, B·H): exact log-sum-exp merge of the chunks
     (as in flash-decoding) -> Z (fp32) and lse_gather.
  3. ``_scatter_fwd_kernel``  grid (chunks, B·H): each program loops over its token tiles;
     plain softmax when all latents fit one tile, else online softmax over latent tiles
     -> Y and lse_scatter.
backward
  4. ``_bwd_scatter_kernel``  grid (chunks, M-tiles, B·H): per-chunk partial dZ = Pᵀ dY and
     dQ_scatter = dSᵀ K; also writes Δ_s = rowsum(dY ∘ Y).
  5. ``_dz_finish_kernel``    grid (M-tiles, B·H): dZ = sum of the partials, Δ_g = rowsum(dZ ∘ Z).
  6. ``_bwd_main_kernel``     grid (chunks, B·H): needs the full dZ; for each N-tile and every
     latent tile recomputes S = K Qᵀ once and from it both softmax matrices, giving
     dK = dK_scatter + dK_gather, dV, and per-chunk partial dQ_gather.
  7. ``_dq_finish_kernel``    grid (blocks of a head's M·D values, heads of q): dQ = sum of both
     passes' partials (and over the batch when q is shared).

All log-sum-exp values kept between kernels are in base 2 (``lse2 = max·log2(e) + log2(sum)``)
so that the kernels use ``exp2`` only.  Partials are written to private fp32 buffers and
summed afterwards in a fixed order: results are deterministic (no atomics).

With fp32 inputs and TF32 dots (``MixerConfig.acc_order``) the softmax weights and score gradients
enter their next dot straight from the accumulator registers: the contraction axis is relabelled and
the other operand's rows are taken in the same order (``flare.ops._triton.acc_order``), which saves
the register shuffles a TF32 operand otherwise needs (benchmarks/NOTES-mixer.md, v9).

Tile sizes come from ``default_config`` (a heuristic table tuned on an H100, see
benchmarks/NOTES-mixer.md); ``flare_mixer_triton_impl`` accepts a ``MixerConfig`` and a forced
number of N-chunks.  For fp32 inputs the dots use ``input_precision="ieee"`` unless
``torch.backends.cuda.matmul.allow_tf32`` is set ("tf32"); ``MixerConfig.fp32_precision`` overrides
(e.g. "tf32x3": fp32-level accuracy on tensor cores).

Importing this module never fails when triton is missing; ``triton_available()`` says whether
the kernels can run.  The kernels are defined when the module is imported, so the environment
variable ``TRITON_INTERPRET=1`` (CPU interpreter) must be set before the first import.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from flare.ops._triton import IMPORT_ERROR as _TRITON_IMPORT_ERROR
from flare.ops._triton import acc_order, acc_order_cols, acc_order_rows
from flare.ops._triton import fp32_dot_precision
from flare.ops._triton import interpreting as _interpreting
from flare.ops._triton import register_cap
from flare.ops._triton import sm_count as _sm_count
from flare.ops._triton import tl, triton

__all__ = ["flare_mixer_triton", "flare_mixer_triton_impl", "triton_available", "MixerConfig", "KernelCfg", "default_config"]


def triton_available() -> bool:
    """True when triton imported and its kernels were defined."""
    return _TRITON_IMPORT_ERROR is None


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
if _TRITON_IMPORT_ERROR is None:

    # log2(e): scores are kept in natural units and scaled inside one FMA, exp2(s·log2e − lse2)
    _LOG2E = tl.constexpr(1.4426950408889634)

    @triton.jit
    def _gather_tile(q, k_base, v_base, tile_k, tile_v, rel, skn, svn, n_mask, nv_mask, d_mask,
                     m_i, l_i, acc, MASK_N: tl.constexpr, ACC_ORDER: tl.constexpr,
                     DOT_PREC: tl.constexpr):
        """One token tile of the gather's online softmax (m_i in natural units). With ACC_ORDER the
        rows of v (tile_v, nv_mask) are in acc_order, so P feeds the dot from its accumulator registers."""
        if MASK_N:
            k_mask = n_mask[:, None] & d_mask[None, :]
            v_mask = nv_mask[:, None] & d_mask[None, :]
        else:
            k_mask = d_mask[None, :]
            v_mask = d_mask[None, :]
        k = tl.load(k_base + rel * skn + tile_k, mask=k_mask, other=0.0)
        v = tl.load(v_base + rel * svn + tile_v, mask=v_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        if MASK_N:
            s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row whose max is still -inf has seen no token: keep it at exactly zero
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new) * _LOG2E
        alpha = tl.exp2(m_i * _LOG2E - m_safe)
        p = tl.exp2(s * _LOG2E - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(acc_order_cols(p, ACC_ORDER).to(v.dtype), v, acc, input_precision=DOT_PREC)
        return m_new, l_i, acc

    @triton.jit
    def _gather_fwd_kernel(
        Q, K, V, MP, LP, AP,
        sqb, sqh, sqm, sqd,
        skb, skh, skn, skd,
        svb, svh, svn, svd,
        H, M, N, D: tl.constexpr, chunk_len, C,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        ACC_ORDER: tl.constexpr, DOT_PREC: tl.constexpr,
    ):
        """Partial gather of one latent tile over one chunk of tokens (online softmax over N).

        Writes the chunk's row max (base 2), row sum and unnormalised accumulator."""
        pid_c = tl.program_id(0)
        pid_m = tl.program_id(1)
        pid_bh = tl.program_id(2)
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        m_mask = offs_m < M
        d_mask = offs_d < D

        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                    mask=m_mask[:, None] & d_mask[None, :], other=0.0)

        n_start = pid_c * chunk_len
        n_end = tl.minimum(n_start + chunk_len, N)
        n_full = n_start + ((n_end - n_start) // BLOCK_N) * BLOCK_N
        k_base = K + b * skb + h * skh + n_start.to(tl.int64) * skn
        v_base = V + b * svb + h * svh + n_start.to(tl.int64) * svn
        tile_k = offs_n[:, None] * skn + offs_d[None, :] * skd
        offs_nv = acc_order(offs_n, ACC_ORDER)
        tile_v = offs_nv[:, None] * svn + offs_d[None, :] * svd

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(n_start, n_full, BLOCK_N):
            rel = (start - n_start).to(tl.int64)
            m_i, l_i, acc = _gather_tile(q, k_base, v_base, tile_k, tile_v, rel, skn, svn, offs_n < BLOCK_N,
                                         offs_n < BLOCK_N, d_mask, m_i, l_i, acc, False, ACC_ORDER, DOT_PREC)
        if n_full < n_end:
            rel = (n_full - n_start).to(tl.int64)
            m_i, l_i, acc = _gather_tile(q, k_base, v_base, tile_k, tile_v, rel, skn, svn,
                                         (n_full + offs_n) < n_end, (n_full + offs_nv) < n_end, d_mask,
                                         m_i, l_i, acc, True, ACC_ORDER, DOT_PREC)

        row = (pid_bh.to(tl.int64) * C + pid_c) * M + offs_m
        tl.store(MP + row, m_i * _LOG2E, mask=m_mask)
        tl.store(LP + row, l_i, mask=m_mask)
        tl.store(AP + row[:, None] * D + offs_d[None, :], acc, mask=m_mask[:, None] & d_mask[None, :])

    @triton.jit
    def _gather_merge_kernel(
        MP, LP, AP, Z, LSE,
        M, D: tl.constexpr, C,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Exact merge of the per-chunk partials: Z = Σ acc_c 2^(m_c-m) / Σ l_c 2^(m_c-m)."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        m_mask = offs_m < M
        md_mask = m_mask[:, None] & (offs_d < D)[None, :]

        m_run = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_run = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        base = pid_bh.to(tl.int64) * C
        for c in range(0, C):
            row = (base + c) * M + offs_m
            m_c = tl.load(MP + row, mask=m_mask, other=0.0)
            l_c = tl.load(LP + row, mask=m_mask, other=1.0)
            a_c = tl.load(AP + row[:, None] * D + offs_d[None, :], mask=md_mask, other=0.0)
            m_new = tl.maximum(m_run, m_c)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_run - m_safe)
            beta = tl.exp2(m_c - m_safe)
            l_run = l_run * alpha + l_c * beta
            acc = acc * alpha[:, None] + a_c * beta[:, None]
            m_run = m_new
        l_safe = tl.where(l_run > 0.0, l_run, 1.0)
        z = acc / l_safe[:, None]
        lse = m_run + tl.log2(l_safe)
        out = pid_bh.to(tl.int64) * M + offs_m
        tl.store(Z + out[:, None] * D + offs_d[None, :], z, mask=md_mask)
        tl.store(LSE + out, lse, mask=m_mask)

    @triton.jit
    def _scatter_fwd_kernel(
        Q, K, Z, Y, LSE_S,
        sqb, sqh, sqm, sqd,
        skb, skh, skn, skd,
        H, M, N, D: tl.constexpr, chunk_len,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        ONE_M_TILE: tl.constexpr, EVEN_M: tl.constexpr, ACC_ORDER: tl.constexpr, DOT_PREC: tl.constexpr,
    ):
        """Y = softmax_M(K Qᵀ) Z for the token tiles of one chunk.

        ONE_M_TILE: all latents in one register tile (plain softmax, Q and Z loaded once);
        otherwise an online softmax over latent tiles.  Rows are independent, so padded tokens
        need no masking except at the store; padded latents (EVEN_M false) get -inf scores. With
        ACC_ORDER the rows of Z are loaded in acc_order (P feeds its dot from the accumulator)."""
        pid_c = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)
        bh = pid_bh.to(tl.int64)

        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        offs_mt = tl.arange(0, BLOCK_M)
        offs_mz = acc_order(offs_mt, ACC_ORDER)
        d_mask = offs_d < D

        n_start = pid_c * chunk_len
        n_end = tl.minimum(n_start + chunk_len, N)
        k_base = K + b * skb + h * skh + n_start.to(tl.int64) * skn
        tile_k = offs_n[:, None] * skn + offs_d[None, :] * skd
        tok0 = bh * N + n_start
        q_base = Q + b * sqb + h * sqh
        z_base = Z + bh * M * D

        if ONE_M_TILE:
            m_mask = offs_mt < M
            md_mask = m_mask[:, None] & d_mask[None, :]
            q1 = tl.load(q_base + offs_mt[:, None] * sqm + offs_d[None, :] * sqd, mask=md_mask, other=0.0)
            z1 = tl.load(z_base + offs_mz[:, None] * D + offs_d[None, :], mask=(offs_mz < M)[:, None] & d_mask[None, :],
                         other=0.0).to(q1.dtype)

        for start in range(n_start, n_end, BLOCK_N):
            rel = (start - n_start).to(tl.int64)
            n_mask = (start + offs_n) < n_end
            nd_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(k_base + rel * skn + tile_k, mask=nd_mask, other=0.0)
            if ONE_M_TILE:
                s = tl.dot(k, tl.trans(q1), input_precision=DOT_PREC)
                if not EVEN_M:
                    s = tl.where(m_mask[None, :], s, float("-inf"))
                m_i = tl.max(s, 1) * _LOG2E
                p = tl.exp2(s * _LOG2E - m_i[:, None])
                l_i = tl.sum(p, 1)
                acc = tl.dot(acc_order_cols(p, ACC_ORDER).to(k.dtype), z1, input_precision=DOT_PREC)
            else:
                m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)
                l_i = tl.zeros([BLOCK_N], tl.float32)
                acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
                for start_m in range(0, M, BLOCK_M):
                    offs_m = start_m + offs_mt
                    m_mask = offs_m < M
                    md_mask = m_mask[:, None] & d_mask[None, :]
                    q = tl.load(q_base + offs_m[:, None] * sqm + offs_d[None, :] * sqd, mask=md_mask, other=0.0)
                    offs_z = start_m + offs_mz
                    z = tl.load(z_base + offs_z[:, None] * D + offs_d[None, :],
                                mask=(offs_z < M)[:, None] & d_mask[None, :], other=0.0).to(k.dtype)
                    s = tl.dot(k, tl.trans(q), input_precision=DOT_PREC)
                    if not EVEN_M:
                        s = tl.where(m_mask[None, :], s, float("-inf"))
                    m_new = tl.maximum(m_i, tl.max(s, 1) * _LOG2E)  # base 2
                    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                    alpha = tl.exp2(m_i - m_safe)
                    p = tl.exp2(s * _LOG2E - m_safe[:, None])
                    l_i = l_i * alpha + tl.sum(p, 1)
                    acc = acc * alpha[:, None]
                    acc = tl.dot(acc_order_cols(p, ACC_ORDER).to(k.dtype), z, acc,
                                 input_precision=DOT_PREC)
                    m_i = m_new
            l_safe = tl.where(l_i > 0.0, l_i, 1.0)
            y = acc / l_safe[:, None]
            rows = tok0 + rel + offs_n
            tl.store(Y + rows[:, None] * D + offs_d[None, :], y.to(Y.dtype.element_ty), mask=nd_mask)
            tl.store(LSE_S + rows, m_i + tl.log2(l_safe), mask=n_mask)

    @triton.jit
    def _bwd_scatter_kernel(
        Q, K, Z, DY, Y, LSE_S, DELTA_S, DZP, DQP,
        sqb, sqh, sqm, sqd,
        skb, skh, skn, skd,
        sdb, sdh, sdn, sdd,
        H, M, N, D: tl.constexpr, chunk_len, C,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        ACC_ORDER: tl.constexpr, DOT_PREC: tl.constexpr,
    ):
        """Backward of the scatter, reduced over one chunk of tokens for one latent tile.

        In [latent, token] orientation: Pᵀ = 2^(Sᵀ·log2e − lse2_s), dPᵀ = Z dYᵀ,
        dSᵀ = Pᵀ ∘ (dPᵀ − Δ_s): partial dZ = Pᵀ dY and partial dQ_scatter = dSᵀ K.
        Programs of latent tile 0 also write Δ_s = rowsum(dY ∘ Y).
        No score masking is needed: padded tokens load lse = +inf (so Pᵀ = 0 there) and padded
        latent rows only ever reach their own (never stored) output rows. With ACC_ORDER, Pᵀ and dSᵀ
        feed their dots from the accumulator registers, against copies of the loaded dY and K with their
        rows permuted into acc_order (in registers: reloading them so took 230 instead of 198 registers).
        """
        pid_c = tl.program_id(0)
        pid_m = tl.program_id(1)
        pid_bh = tl.program_id(2)
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)
        bh = pid_bh.to(tl.int64)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        m_mask = offs_m < M
        d_mask = offs_d < D
        md_mask = m_mask[:, None] & d_mask[None, :]

        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                    mask=md_mask, other=0.0)
        zrow = bh * M + offs_m
        z = tl.load(Z + zrow[:, None] * D + offs_d[None, :], mask=md_mask, other=0.0).to(q.dtype)

        n_start = pid_c * chunk_len
        n_end = tl.minimum(n_start + chunk_len, N)
        n0 = n_start.to(tl.int64)
        k_base = K + b * skb + h * skh + n0 * skn
        dy_base = DY + b * sdb + h * sdh + n0 * sdn
        tile_k = offs_n[:, None] * skn + offs_d[None, :] * skd
        tile_dy = offs_n[:, None] * sdn + offs_d[None, :] * sdd
        tok0 = bh * N + n0
        first_tile = (offs_n * 0 + pid_m) == 0  # only latent tile 0 writes Δ_s

        dz_acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        dq_acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(n_start, n_end, BLOCK_N):
            rel = (start - n_start).to(tl.int64)
            n_mask = (start + offs_n) < n_end
            nd_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(k_base + rel * skn + tile_k, mask=nd_mask, other=0.0)
            dy = tl.load(dy_base + rel * sdn + tile_dy, mask=nd_mask, other=0.0).to(q.dtype)
            rows = tok0 + rel + offs_n
            y = tl.load(Y + rows[:, None] * D + offs_d[None, :], mask=nd_mask, other=0.0)
            lse = tl.load(LSE_S + rows, mask=n_mask, other=float("inf"))
            delta = tl.sum(dy.to(tl.float32) * y.to(tl.float32), 1)
            tl.store(DELTA_S + rows, delta, mask=n_mask & first_tile)

            ko = acc_order_rows(k, ACC_ORDER)
            dyo = acc_order_rows(dy, ACC_ORDER)

            st = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
            pt = tl.exp2(st * _LOG2E - lse[None, :])
            dz_acc = tl.dot(acc_order_cols(pt, ACC_ORDER).to(q.dtype), dyo, dz_acc,
                            input_precision=DOT_PREC)
            dpt = tl.dot(z, tl.trans(dy), input_precision=DOT_PREC)
            dst = pt * (dpt - delta[None, :])
            dq_acc = tl.dot(acc_order_cols(dst, ACC_ORDER).to(q.dtype), ko, dq_acc,
                            input_precision=DOT_PREC)

        prow = (bh * C + pid_c) * M + offs_m
        tl.store(DZP + prow[:, None] * D + offs_d[None, :], dz_acc, mask=md_mask)
        tl.store(DQP + prow[:, None] * D + offs_d[None, :], dq_acc, mask=md_mask)

    @triton.jit
    def _bwd_tile(k, v, dy, lse_s, delta_s, n_mask,
                  q, z, dz, lse_g, delta_g, m_mask, qo, dzo,
                  dk, dv, dq, MASK: tl.constexpr, ACC_ORDER: tl.constexpr, DOT_PREC: tl.constexpr):
        """Both backward contributions of one (token tile, latent tile) pair; S computed once.

        Ordered so that at most three [BLOCK_N, BLOCK_M] fp32 tiles are live at a time; both score
        gradients go into dK through one dot, (dS_scatter + dS_gather) Q.  MASK zeroes padded tokens /
        latents (needed only for a ragged tile: 2^(−lse) of a padded entry can overflow and meet a
        zero operand). qo and dzo are q and dz with their rows in acc_order when ACC_ORDER (A and the
        score gradients then feed the dV and dK dots from their accumulator registers), else q and dz."""
        s = tl.dot(k, tl.trans(q), input_precision=DOT_PREC)  # [BN, BM], natural units
        # scatter: P = softmax over latents, rows = tokens
        p = tl.exp2(s * _LOG2E - lse_s[:, None])
        if MASK:
            p = tl.where(n_mask[:, None] & m_mask[None, :], p, 0.0)
        dp = tl.dot(dy, tl.trans(z), input_precision=DOT_PREC)
        ds = p * (dp - delta_s[:, None])
        # gather (transposed): A = softmax over tokens, columns = latents
        a = tl.exp2(s * _LOG2E - lse_g[None, :])
        if MASK:
            a = tl.where(n_mask[:, None] & m_mask[None, :], a, 0.0)
        dv = tl.dot(acc_order_cols(a, ACC_ORDER).to(k.dtype), dzo, dv, input_precision=DOT_PREC)
        da = tl.dot(v, tl.trans(dz), input_precision=DOT_PREC)
        dsg = a * (da - delta_g[None, :])
        dq = tl.dot(tl.trans(dsg.to(k.dtype)), k, dq, input_precision=DOT_PREC)
        dk = tl.dot(acc_order_cols(ds + dsg, ACC_ORDER).to(k.dtype), qo, dk,
                    input_precision=DOT_PREC)
        return dk, dv, dq

    @triton.jit
    def _latent_tile(q_base, sqm, sqd, Z, DZ, LSE_G, DELTA_G, zrow0, offs_m, offs_d, d_mask, M,
                     D: tl.constexpr, DTYPE: tl.constexpr, ACC_ORDER: tl.constexpr):
        """The pass-2 operands of one latent tile: q, z, dz (as DTYPE), lse_g, Δ_g, the latent mask, and
        q and dz with their rows in acc_order (with ACC_ORDER; else q and dz again)."""
        m_mask = offs_m < M
        md_mask = m_mask[:, None] & d_mask[None, :]
        qt = tl.load(q_base + offs_m[:, None] * sqm + offs_d[None, :] * sqd, mask=md_mask, other=0.0)
        zoff = (zrow0 + offs_m)[:, None] * D + offs_d[None, :]
        zt = tl.load(Z + zoff, mask=md_mask, other=0.0).to(DTYPE)
        dzt = tl.load(DZ + zoff, mask=md_mask, other=0.0).to(DTYPE)
        lse_gt = tl.load(LSE_G + zrow0 + offs_m, mask=m_mask, other=float("inf"))
        delta_gt = tl.load(DELTA_G + zrow0 + offs_m, mask=m_mask, other=0.0)
        qo = acc_order_rows(qt, ACC_ORDER)
        dzo = acc_order_rows(dzt, ACC_ORDER)
        return qt, zt, dzt, lse_gt, delta_gt, m_mask, qo, dzo

    @triton.jit
    def _bwd_latent_tile(k, v, dy, lse_s, delta_s, n_mask, dk, dv, dq, offs_m, q_base, sqm, sqd,
                         Z, DZ, LSE_G, DELTA_G, zrow0, offs_d, d_mask, M, D: tl.constexpr,
                         MASK: tl.constexpr, ACC_ORDER: tl.constexpr, DOT_PREC: tl.constexpr):
        """Loads the latent tile at offs_m and adds its (token tile, latent tile) pair to dk, dv, dq."""
        qt, zt, dzt, lse_gt, delta_gt, m_mask, qo, dzo = _latent_tile(
            q_base, sqm, sqd, Z, DZ, LSE_G, DELTA_G, zrow0, offs_m, offs_d, d_mask, M, D, k.dtype, ACC_ORDER)
        return _bwd_tile(k, v, dy, lse_s, delta_s, n_mask, qt, zt, dzt, lse_gt, delta_gt, m_mask, qo, dzo,
                         dk, dv, dq, MASK, ACC_ORDER, DOT_PREC)

    @triton.jit
    def _bwd_main_ntile(
        start, n_start, n_end, offs_n, offs_d, d_mask,
        k_base, v_base, dy_base, tile_k, tile_v, tile_dy, skn, svn, sdn,
        tok0, LSE_S, DELTA_S, dk_base, dv_base, tile_g, sgn,
        q, z, dz, lse_g, delta_g, qo, dzo, dq, dq1, dq2, dq3,
        q_base, sqm, sqd, Z, DZ, LSE_G, DELTA_G, zrow0, dq_base, M,
        D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        NUM_MT: tl.constexpr, MASK: tl.constexpr, ACC_ORDER: tl.constexpr, DOT_PREC: tl.constexpr,
    ):
        """One token tile of the main backward: loads, every latent tile, dK / dV stores.

        NUM_MT = 1: q, z, dz, lse_g, delta_g (and qo, dzo, see _bwd_tile) are the register-resident
        operands of the one latent tile and dq its running accumulator. NUM_MT = 2 … 4: that many
        latent tiles, each loaded here, with their dQ accumulators dq, dq1, dq2, dq3 in registers.
        NUM_MT = 0: a loop over the latent tiles, each tile's dQ partial updated in memory. Returns
        the accumulators."""
        rel = (start - n_start).to(tl.int64)
        n_mask = (start + offs_n) < n_end
        nd_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_base + rel * skn + tile_k, mask=nd_mask, other=0.0)
        v = tl.load(v_base + rel * svn + tile_v, mask=nd_mask, other=0.0)
        dy = tl.load(dy_base + rel * sdn + tile_dy, mask=nd_mask, other=0.0).to(k.dtype)
        rows = tok0 + rel + offs_n
        lse_s = tl.load(LSE_S + rows, mask=n_mask, other=float("inf"))
        delta_s = tl.load(DELTA_S + rows, mask=n_mask, other=0.0)
        dk = tl.zeros_like(k.to(tl.float32))
        dv = tl.zeros_like(dk)
        offs_mt = tl.arange(0, BLOCK_M)
        if NUM_MT == 1:
            dk, dv, dq = _bwd_tile(k, v, dy, lse_s, delta_s, n_mask, q, z, dz, lse_g, delta_g, offs_mt < M,
                                   qo, dzo, dk, dv, dq, MASK, ACC_ORDER, DOT_PREC)
        elif NUM_MT > 1:
            dk, dv, dq = _bwd_latent_tile(k, v, dy, lse_s, delta_s, n_mask, dk, dv, dq, offs_mt, q_base, sqm, sqd,
                                          Z, DZ, LSE_G, DELTA_G, zrow0, offs_d, d_mask, M, D, MASK, ACC_ORDER,
                                          DOT_PREC)
            dk, dv, dq1 = _bwd_latent_tile(k, v, dy, lse_s, delta_s, n_mask, dk, dv, dq1, BLOCK_M + offs_mt, q_base,
                                           sqm, sqd, Z, DZ, LSE_G, DELTA_G, zrow0, offs_d, d_mask, M, D, MASK,
                                           ACC_ORDER, DOT_PREC)
            if NUM_MT > 2:
                dk, dv, dq2 = _bwd_latent_tile(k, v, dy, lse_s, delta_s, n_mask, dk, dv, dq2, 2 * BLOCK_M + offs_mt,
                                               q_base, sqm, sqd, Z, DZ, LSE_G, DELTA_G, zrow0, offs_d, d_mask, M, D,
                                               MASK, ACC_ORDER, DOT_PREC)
            if NUM_MT > 3:
                dk, dv, dq3 = _bwd_latent_tile(k, v, dy, lse_s, delta_s, n_mask, dk, dv, dq3, 3 * BLOCK_M + offs_mt,
                                               q_base, sqm, sqd, Z, DZ, LSE_G, DELTA_G, zrow0, offs_d, d_mask, M, D,
                                               MASK, ACC_ORDER, DOT_PREC)
        else:
            for start_m in range(0, M, BLOCK_M):
                offs_m = start_m + offs_mt
                qt, zt, dzt, lse_gt, delta_gt, m_mask, qot, dzot = _latent_tile(
                    q_base, sqm, sqd, Z, DZ, LSE_G, DELTA_G, zrow0, offs_m, offs_d, d_mask, M, D, k.dtype, ACC_ORDER)
                md_mask = m_mask[:, None] & d_mask[None, :]
                dq_ptrs = dq_base + offs_m[:, None] * D + offs_d[None, :]
                # the chunk's first token tile finds the partial unwritten: start from zero there
                seen = (offs_m * 0 + start) > n_start
                dqt = tl.load(dq_ptrs, mask=md_mask & seen[:, None], other=0.0)
                dk, dv, dqt = _bwd_tile(k, v, dy, lse_s, delta_s, n_mask, qt, zt, dzt, lse_gt, delta_gt, m_mask,
                                        qot, dzot, dk, dv, dqt, MASK, ACC_ORDER, DOT_PREC)
                tl.store(dq_ptrs, dqt, mask=md_mask)
                # the next visit of this tile may be made by other threads of the program
                tl.debug_barrier()
        out = rel * sgn + tile_g
        tl.store(dk_base + out, dk.to(dk_base.dtype.element_ty), mask=nd_mask)
        tl.store(dv_base + out, dv.to(dv_base.dtype.element_ty), mask=nd_mask)
        return dq, dq1, dq2, dq3

    @triton.jit
    def _store_dq_tile(dq_base, dq, offs_m, offs_d, d_mask, M, D: tl.constexpr):
        tl.store(dq_base + offs_m[:, None] * D + offs_d[None, :], dq, mask=(offs_m < M)[:, None] & d_mask[None, :])

    @triton.jit
    def _bwd_main_kernel(
        Q, K, V, Z, DZ, DY, LSE_G, DELTA_G, LSE_S, DELTA_S, DK, DV, DQP,
        sqb, sqh, sqm, sqd,
        skb, skh, skn, skd,
        svb, svh, svn, svd,
        sdb, sdh, sdn, sdd,
        H, M, N, D: tl.constexpr, chunk_len, C,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        NUM_MT: tl.constexpr, EVEN_M: tl.constexpr, GRAD_TOKEN_MAJOR: tl.constexpr, ACC_ORDER: tl.constexpr,
        DOT_PREC: tl.constexpr,
    ):
        """dK (scatter + gather), dV and a partial dQ_gather for one chunk of tokens. dK and dV are
        written contiguous [B, H, N, D], or with GRAD_TOKEN_MAJOR in [B, N, H, D] memory.

        NUM_MT = 1: all latents sit in one tile kept in registers; NUM_MT = 2 … 4: that many latent
        tiles, reloaded per token tile, their dQ accumulating in registers; NUM_MT = 0 (more latent
        tiles): the chunk's private fp32 dQ partial is updated in place per tile pair. Full token
        tiles run unmasked when EVEN_M (M a multiple of BLOCK_M); the ragged last tile of the chunk
        runs masked after the loop. ACC_ORDER: see _bwd_tile.
        """
        pid_c = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)
        bh = pid_bh.to(tl.int64)

        offs_d = tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        offs_mt = tl.arange(0, BLOCK_M)
        d_mask = offs_d < D

        n_start = pid_c * chunk_len
        n_end = tl.minimum(n_start + chunk_len, N)
        n_full = n_start + ((n_end - n_start) // BLOCK_N) * BLOCK_N
        n0 = n_start.to(tl.int64)
        k_base = K + b * skb + h * skh + n0 * skn
        v_base = V + b * svb + h * svh + n0 * svn
        dy_base = DY + b * sdb + h * sdh + n0 * sdn
        tile_k = offs_n[:, None] * skn + offs_d[None, :] * skd
        tile_v = offs_n[:, None] * svn + offs_d[None, :] * svd
        tile_dy = offs_n[:, None] * sdn + offs_d[None, :] * sdd
        if GRAD_TOKEN_MAJOR:  # (D a constexpr: the compiler sees the rows' alignment)
            g0 = ((b * N + n0) * H + h) * D
            sgn = H * D
        else:
            g0 = (bh * N + n0) * D
            sgn = D
        dk_base = DK + g0
        dv_base = DV + g0
        tile_g = offs_n[:, None] * sgn + offs_d[None, :]
        tok0 = bh * N + n0

        q_base = Q + b * sqb + h * sqh
        zrow0 = bh * M
        dq_base = DQP + (bh * C + pid_c) * M * D

        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        dq1 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        dq2 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        dq3 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        if NUM_MT == 1:  # the one latent tile, loaded once for the whole chunk
            q, z, dz, lse_g, delta_g, _, qo, dzo = _latent_tile(q_base, sqm, sqd, Z, DZ, LSE_G, DELTA_G, zrow0,
                                                                offs_mt, offs_d, d_mask, M, D, Q.dtype.element_ty,
                                                                ACC_ORDER)
        else:  # unused placeholders
            q = 0
            z = 0
            dz = 0
            lse_g = 0
            delta_g = 0
            qo = 0
            dzo = 0

        for start in range(n_start, n_full, BLOCK_N):
            dq, dq1, dq2, dq3 = _bwd_main_ntile(
                start, n_start, n_end, offs_n, offs_d, d_mask,
                k_base, v_base, dy_base, tile_k, tile_v, tile_dy, skn, svn, sdn,
                tok0, LSE_S, DELTA_S, dk_base, dv_base, tile_g, sgn,
                q, z, dz, lse_g, delta_g, qo, dzo, dq, dq1, dq2, dq3,
                q_base, sqm, sqd, Z, DZ, LSE_G, DELTA_G, zrow0, dq_base, M,
                D, BLOCK_M, BLOCK_N, NUM_MT, not EVEN_M, ACC_ORDER, DOT_PREC)
        if n_full < n_end:
            dq, dq1, dq2, dq3 = _bwd_main_ntile(
                n_full, n_start, n_end, offs_n, offs_d, d_mask,
                k_base, v_base, dy_base, tile_k, tile_v, tile_dy, skn, svn, sdn,
                tok0, LSE_S, DELTA_S, dk_base, dv_base, tile_g, sgn,
                q, z, dz, lse_g, delta_g, qo, dzo, dq, dq1, dq2, dq3,
                q_base, sqm, sqd, Z, DZ, LSE_G, DELTA_G, zrow0, dq_base, M,
                D, BLOCK_M, BLOCK_N, NUM_MT, True, ACC_ORDER, DOT_PREC)
        if NUM_MT > 0:
            _store_dq_tile(dq_base, dq, offs_mt, offs_d, d_mask, M, D)
        if NUM_MT > 1:
            _store_dq_tile(dq_base, dq1, BLOCK_M + offs_mt, offs_d, d_mask, M, D)
        if NUM_MT > 2:
            _store_dq_tile(dq_base, dq2, 2 * BLOCK_M + offs_mt, offs_d, d_mask, M, D)
        if NUM_MT > 3:
            _store_dq_tile(dq_base, dq3, 3 * BLOCK_M + offs_mt, offs_d, d_mask, M, D)

    @triton.jit
    def _dz_finish_kernel(DZP, Z, DZ, DELTA_G, M, D: tl.constexpr, C,
                          BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
        """dZ = Σ over the pass-1 chunks of the partial dZ (BLOCK_C chunks per load, so the loads
        are in flight together), and Δ_g = rowsum(dZ ∘ Z), in one launch."""
        pid_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        md_mask = (offs_m < M)[:, None] & (offs_d < D)[None, :]
        tile = offs_m[:, None] * D + offs_d[None, :]
        offs_c = tl.arange(0, BLOCK_C)[:, None, None]
        dz = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + offs_c
            part = tl.load(DZP + (bh * C + c) * M * D + tile[None, :, :], mask=(c < C) & md_mask[None, :, :],
                           other=0.0)
            dz += tl.sum(part, 0)
        z = tl.load(Z + bh * M * D + tile, mask=md_mask, other=0.0)
        tl.store(DZ + bh * M * D + tile, dz, mask=md_mask)
        tl.store(DELTA_G + bh * M + offs_m, tl.sum(dz * z, 1), mask=offs_m < M)

    @triton.jit
    def _sum_partials(P, q_head, H, C, BATCHES, MD, cols, cmask, acc, BLOCK_R: tl.constexpr):
        """acc + Σ over batches b < BATCHES and chunks c < C of P[(b·H + q_head)·C + c, cols], each
        partial a row of MD values; BLOCK_R rows per load."""
        rows = BATCHES * C
        for r0 in range(0, rows, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            row = ((r // C) * H + q_head).to(tl.int64) * C + r % C
            part = tl.load(P + row[:, None] * MD + cols[None, :], mask=(r < rows)[:, None] & cmask[None, :],
                           other=0.0)
            acc += tl.sum(part, 0)
        return acc

    @triton.jit
    def _dq_finish_kernel(DQP1, DQP2, DQ, H, MD, C1, C2, BATCHES, M, D,
                          BLOCK: tl.constexpr, BLOCK_R: tl.constexpr, TRANSPOSED: tl.constexpr):
        """dQ of one query head (BLOCK of its M·D values): the partials of both backward passes summed
        over their chunks and, when q is shared over the batch (BATCHES = B), over the batch. Stored
        [M, D] per head, or with TRANSPOSED = D (a power of two dividing BLOCK; 0: off) in [D, M] memory,
        the layout of FLARE's [C, M] parameter."""
        cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        q_head = tl.program_id(1)  # b·H + h when q has a batch dim (BATCHES = 1), else h
        cmask = cols < MD
        dq = tl.zeros([BLOCK], tl.float32)
        dq = _sum_partials(DQP1, q_head, H, C1, BATCHES, MD, cols, cmask, dq, BLOCK_R)
        dq = _sum_partials(DQP2, q_head, H, C2, BATCHES, MD, cols, cmask, dq, BLOCK_R)
        out = DQ + q_head.to(tl.int64) * MD
        if TRANSPOSED:  # [BLOCK / D, D] transposed in registers: D rows of contiguous latents stored
            R: tl.constexpr = BLOCK // TRANSPOSED
            dq_t = tl.trans(tl.reshape(dq, (R, TRANSPOSED)))
            m = tl.program_id(0) * R + tl.arange(0, R)[None, :]
            d = tl.arange(0, TRANSPOSED)[:, None]
            tl.store(out + d * M + m, dq_t.to(DQ.dtype.element_ty), mask=(m < M) & (d < TRANSPOSED))
        else:
            tl.store(out + cols, dq.to(DQ.dtype.element_ty), mask=cmask)


# --------------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelCfg:
    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2
    # programs per SM to aim for on a split-N kernel (None: MixerConfig.programs_per_sm)
    programs_per_sm: Optional[int] = None
    # register cap per thread handed to ptxas (None: its own choice); fewer registers let more
    # programs reside on an SM, which pays where a kernel is latency-bound, at the price of spills
    maxnreg: Optional[int] = None


@dataclass(frozen=True)
class MixerConfig:
    """Tile sizes per kernel and how many programs to aim for per SM on the split-N kernels."""

    gather: KernelCfg
    scatter: KernelCfg
    bwd_scatter: KernelCfg
    bwd_main: KernelCfg
    merge_block_m: int = 64
    programs_per_sm: int = 4
    min_tiles_per_chunk: int = 2
    # tl.dot input precision for fp32 inputs; None: "ieee" unless torch allows TF32 matmuls
    fp32_precision: Optional[str] = None
    # the backward's second pass keeps the dQ of up to this many latent tiles (at most 4) in registers;
    # with more latent tiles it updates a dQ partial in memory per (token tile, latent tile) pair
    bwd_main_dq_tiles: int = 4
    # feed the softmax weights and score gradients to their dots straight from the accumulator
    # registers, the contraction axis relabelled (flare.ops._triton.acc_order); None: on for fp32
    # inputs with TF32 dots, the one case where it saves layout conversions (16-bit dots need none)
    acc_order: Optional[bool] = None


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _clamp_pow2(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, _next_pow2(x)))


@functools.lru_cache(maxsize=256)
def default_config(M: int, D: int, N: int, dtype: torch.dtype, interpret: bool = False,
                   fp32_precision: str = "ieee") -> MixerConfig:
    """Heuristic table (tuned on H100 and H200 at N = 2^20 and at the paper's Darcy size, see
    benchmarks/NOTES-mixer.md). ``fp32_precision`` is the dot precision fp32 inputs will run with."""
    bd = max(16, _next_pow2(D))
    if interpret:
        # small tiles: the interpreter's cost is per element, and the loops get exercised
        bm = _clamp_pow2(M, 16, 32)
        return MixerConfig(
            gather=KernelCfg(bm, 32), scatter=KernelCfg(bm, 32),
            bwd_scatter=KernelCfg(bm, 32), bwd_main=KernelCfg(bm, 32),
            merge_block_m=32, programs_per_sm=1, min_tiles_per_chunk=1,
        )
    if dtype == torch.float32:
        # fp32 "ieee" dots run on FMA units and need many registers: small tiles, few spills
        if bd <= 16:
            bm = _clamp_pow2(M, 16, 64)
            # TF32 dots need fewer registers than the FMA-path "ieee" ones: twice the latent tile
            # in the backward's first pass (0.30 -> 0.15 ms at the Darcy size). Two programs per SM
            # for the split over tokens of the gather and this pass: at the Darcy size that is 3
            # chunks, one full wave of 384 programs at 3 resident per SM, where 4 programs per SM
            # meant 1.3 or 1.6 waves (gather 0.064 -> 0.055 ms, pass 1 0.143 -> 0.125 ms, H100)
            # With the dots' operands in accumulator order (the TF32 default, MixerConfig.acc_order) this
            # pass needs 198 registers, i.e. 2 programs per SM: capped at 168 (no spills) for 3.
            bwd_scatter = (KernelCfg(bm, 64, 4, 2, programs_per_sm=2, maxnreg=168) if fp32_precision == "tf32"
                           else KernelCfg(_clamp_pow2(M, 16, 32), 32, 4, 2))
            # scatter with TF32 dots: capped at 128 registers (161 otherwise; 2 spilled), 4 programs
            # per SM: 0.0714 -> 0.0653 ms at the Darcy size (H100)
            scatter = (KernelCfg(bm, 64, 4, 2, programs_per_sm=4, maxnreg=128) if fp32_precision == "tf32"
                       else KernelCfg(bm, 64, 4, 2, programs_per_sm=8))
            # the backward's second pass updates its dQ partial in memory: with the four latent tiles'
            # dQ in registers it spills (0.200 against 0.163 ms at the Darcy size, H100)
            return MixerConfig(
                gather=KernelCfg(bm, 64, 4, 3, programs_per_sm=2), scatter=scatter,
                bwd_scatter=bwd_scatter, bwd_main=KernelCfg(bm, 64, 4, 2), bwd_main_dq_tiles=0,
            )
        bm = _clamp_pow2(M, 16, 32)
        return MixerConfig(
            gather=KernelCfg(bm, 32 if bd <= 32 else 16, 4, 2), scatter=KernelCfg(bm, 32, 4, 2),
            bwd_scatter=KernelCfg(bm, 16, 4, 2), bwd_main=KernelCfg(bm, 16, 4, 2), bwd_main_dq_tiles=0,
        )
    if bd >= 64:  # [tile, D] operands twice as large: halve the token tiles
        bm = _clamp_pow2(M, 16, 64)
        return MixerConfig(
            gather=KernelCfg(bm, 64, 4, 3), scatter=KernelCfg(bm, 64, 4, 2),
            bwd_scatter=KernelCfg(bm, 32, 4, 2), bwd_main=KernelCfg(bm, 32, 8, 2), bwd_main_dq_tiles=0,
        )
    if M <= 64:
        bm = _clamp_pow2(M, 16, 64)
        gather = KernelCfg(bm, 128, 4, 3, programs_per_sm=2)
        scatter = KernelCfg(bm, 128, 4, 3)
        bwd_scatter = KernelCfg(bm, 64, 4, 3)
    elif D <= 4:  # the paper's H = 16 at C = 64: many cheap heads
        gather = KernelCfg(64, 64, 4, 3, programs_per_sm=8)
        scatter = KernelCfg(64, 64, 4, 3, programs_per_sm=16)
        bwd_scatter = KernelCfg(_clamp_pow2(M, 16, 256), 64, 8, 2)
    elif D <= 8:
        gather = KernelCfg(128, 128, 8, 3)
        scatter = KernelCfg(128, 128, 8, 2, programs_per_sm=8)
        bwd_scatter = KernelCfg(_clamp_pow2(M, 16, 256), 64, 8, 2)
    else:
        # (2 programs per SM, i.e. 17 chunks at N = 2^20, M = 256, H = 8, put 3 programs on 8 SMs and
        # cost 0.37 ms; 16 chunks, 256 programs, measured 0.872 against 0.903 ms for gather + merge)
        gather = KernelCfg(128, 64, 4, 3, programs_per_sm=8)
        # D <= 16: the scatter capped at 128 registers (167 otherwise; 6 spilled) with 4 programs per
        # SM: 1.117 -> 1.070 ms at N = 2^20, M = 256, bf16 (H100)
        scatter = (KernelCfg(64, 128, 4, 2, programs_per_sm=4, maxnreg=128) if bd == 16
                   else KernelCfg(64, 128, 4, 2, programs_per_sm=8))
        bwd_scatter = KernelCfg(128, 64, 8, 3)
    bm = _clamp_pow2(M, 16, 64)
    if 64 < M <= 4 * bm and D <= 16:
        # 2 to 4 latent tiles keep their dQ in registers (NUM_MT > 1). N = 2^20, M = 256, bf16, H100,
        # against the dQ partial in memory with 3 stages (8 programs per SM for D <= 8): D = 16 (H = 8)
        # 3.87 -> 3.03 ms; without pipelining the loads, which spills least, D = 8 3.70 -> 3.34 ms and
        # D = 4 (H = 16) 7.19 -> 6.86 ms
        bwd_main = KernelCfg(bm, 64, 4, 2, programs_per_sm=8) if D > 8 else KernelCfg(bm, 64, 4, 1)
        dq_tiles = 4
    else:
        # small heads: more, shorter chunks in the backward's second pass (D = 8: 3.92 -> 3.75 ms, H100)
        bwd_main = KernelCfg(bm, 64, 4, 3, programs_per_sm=8 if M > 64 and D <= 8 else None)
        dq_tiles = 0
    return MixerConfig(gather=gather, scatter=scatter, bwd_scatter=bwd_scatter, bwd_main=bwd_main,
                       bwd_main_dq_tiles=dq_tiles)


# last compiled kernel handle per stage (register / spill report for the benchmark script)
LAST_LAUNCH: dict = {}
# number of N-chunks of the last launch per stage (benchmarks)
LAST_CHUNKS: dict = {}


def _split_n(N: int, block_n: int, want: int) -> Tuple[int, int]:
    """(number of chunks, chunk length): chunk length a multiple of block_n, every chunk non-empty."""
    tiles = -(-N // block_n)
    c = max(1, min(int(want), tiles))
    chunk_len = -(-tiles // c) * block_n
    return -(-N // chunk_len), chunk_len


def _want_chunks(cfg: MixerConfig, kc: KernelCfg, N: int, other_programs: int, sms: int) -> int:
    tiles = -(-N // kc.block_n)
    pps = kc.programs_per_sm if kc.programs_per_sm is not None else cfg.programs_per_sm
    by_sm = -(-pps * sms // max(1, other_programs))
    by_len = max(1, tiles // max(1, cfg.min_tiles_per_chunk))
    return max(1, min(by_sm, by_len))


def _dot_precision(dtype: torch.dtype, cfg: Optional["MixerConfig"] = None) -> str:
    if dtype != torch.float32:
        return "tf32"  # ignored by tl.dot for 16-bit inputs
    if cfg is not None and cfg.fp32_precision is not None:
        return cfg.fp32_precision
    return fp32_dot_precision()


def _acc_order(dtype: torch.dtype, cfg: MixerConfig) -> bool:
    """Whether the kernels take the contraction axis in accumulator order (``MixerConfig.acc_order``)."""
    if cfg.acc_order is not None:
        return cfg.acc_order
    return dtype == torch.float32 and _dot_precision(dtype, cfg) == "tf32"


def _config_for(q: torch.Tensor, k: torch.Tensor) -> MixerConfig:
    """The tile table's choice for these inputs (and the fp32 dot precision torch allows now)."""
    return default_config(q.shape[-2], k.shape[-1], k.shape[2], k.dtype, interpret=_interpreting(),
                          fp32_precision=_dot_precision(k.dtype))


def _q_strides(q: torch.Tensor) -> Tuple[int, int, int, int]:
    if q.dim() == 3:
        return (0,) + tuple(q.stride())
    return tuple(q.stride())


def _opts(kc: KernelCfg) -> dict:
    """Launch options of a kernel configuration (warps, stages and, if set, the register cap)."""
    return dict(num_warps=kc.num_warps, num_stages=kc.num_stages, **register_cap(kc.maxnreg))


# --------------------------------------------------------------------------------------------
# Forward / backward drivers
# --------------------------------------------------------------------------------------------
def _dims(q, k):
    B, H, N, D = k.shape
    return B, H, q.shape[-2], N, D, max(16, _next_pow2(D))


def _run_gather(q, k, v, cfg: MixerConfig, num_chunks: Optional[int] = None):
    """Split-N gather + merge -> Z [B·H, M, D] fp32, lse2_gather [B·H, M] fp32."""
    B, H, M, N, D, bd = _dims(q, k)
    BH = B * H
    f32 = dict(device=k.device, dtype=torch.float32)
    g = cfg.gather
    n_mt = -(-M // g.block_m)
    want = num_chunks if num_chunks is not None else _want_chunks(cfg, g, N, BH * n_mt, _sm_count(k.device))
    C, chunk_len = _split_n(N, g.block_n, want)
    mp = torch.empty((BH, C, M), **f32)
    lp = torch.empty((BH, C, M), **f32)
    ap = torch.empty((BH, C, M, D), **f32)
    LAST_CHUNKS["gather_fwd_kernel"] = C
    LAST_LAUNCH["gather_fwd_kernel"] = _gather_fwd_kernel[(C, n_mt, BH)](
        q, k, v, mp, lp, ap,
        *_q_strides(q), *k.stride(), *v.stride(),
        H, M, N, D, chunk_len, C,
        BLOCK_M=g.block_m, BLOCK_N=g.block_n, BLOCK_D=bd, ACC_ORDER=_acc_order(k.dtype, cfg),
        DOT_PREC=_dot_precision(k.dtype, cfg),
        **_opts(g),
    )
    z = torch.empty((BH, M, D), **f32)
    lse_g = torch.empty((BH, M), **f32)
    mbm = cfg.merge_block_m
    _gather_merge_kernel[(-(-M // mbm), BH)](
        mp, lp, ap, z, lse_g, M, D, C, BLOCK_M=mbm, BLOCK_D=bd, num_warps=4,
    )
    return z, lse_g


def _run_scatter(q, k, z, cfg: MixerConfig, num_chunks: Optional[int] = None):
    """Y = softmax_M(K Qᵀ) Z -> Y [B, H, N, D] (input dtype), lse2_scatter [B·H, N] fp32."""
    B, H, M, N, D, bd = _dims(q, k)
    s = cfg.scatter
    y = torch.empty((B, H, N, D), device=k.device, dtype=k.dtype)
    lse_s = torch.empty((B * H, N), device=k.device, dtype=torch.float32)
    want = num_chunks if num_chunks is not None else _want_chunks(cfg, s, N, B * H, _sm_count(k.device))
    C, chunk_len = _split_n(N, s.block_n, want)
    LAST_CHUNKS["scatter_fwd_kernel"] = C
    LAST_LAUNCH["scatter_fwd_kernel"] = _scatter_fwd_kernel[(C, B * H)](
        q, k, z, y, lse_s,
        *_q_strides(q), *k.stride(),
        H, M, N, D, chunk_len,
        BLOCK_M=s.block_m, BLOCK_N=s.block_n, BLOCK_D=bd,
        ONE_M_TILE=M <= s.block_m, EVEN_M=M % s.block_m == 0, ACC_ORDER=_acc_order(k.dtype, cfg),
        DOT_PREC=_dot_precision(k.dtype, cfg),
        **_opts(s),
    )
    return y, lse_s


def _run_bwd_scatter(q, k, z, y, lse_s, dy, cfg: MixerConfig, num_chunks: Optional[int] = None):
    """Pass 1 -> dZ [B·H, M, D], Δ_gather [B·H, M], the chunks' dQ_scatter partials [B·H, C1, M, D]
    (fp32), Δ_scatter [B·H, N]."""
    B, H, M, N, D, bd = _dims(q, k)
    BH = B * H
    f32 = dict(device=k.device, dtype=torch.float32)
    c1 = cfg.bwd_scatter
    n_mt = -(-M // c1.block_m)
    want = num_chunks if num_chunks is not None else _want_chunks(cfg, c1, N, BH * n_mt, _sm_count(k.device))
    C1, chunk1 = _split_n(N, c1.block_n, want)
    delta_s = torch.empty((BH, N), **f32)
    dzp = torch.empty((BH, C1, M, D), **f32)
    dqp = torch.empty((BH, C1, M, D), **f32)
    LAST_CHUNKS["bwd_scatter_kernel"] = C1
    LAST_LAUNCH["bwd_scatter_kernel"] = _bwd_scatter_kernel[(C1, n_mt, BH)](
        q, k, z, dy, y, lse_s, delta_s, dzp, dqp,
        *_q_strides(q), *k.stride(), *dy.stride(),
        H, M, N, D, chunk1, C1,
        BLOCK_M=c1.block_m, BLOCK_N=c1.block_n, BLOCK_D=bd, ACC_ORDER=_acc_order(k.dtype, cfg),
        DOT_PREC=_dot_precision(k.dtype, cfg),
        **_opts(c1),
    )
    dz = torch.empty((BH, M, D), **f32)
    delta_g = torch.empty((BH, M), **f32)
    fbm = cfg.merge_block_m
    _dz_finish_kernel[(-(-M // fbm), BH)](dzp, z, dz, delta_g, M, D, C1, BLOCK_M=fbm, BLOCK_D=bd,
                                          BLOCK_C=min(8, _next_pow2(C1)), num_warps=4)
    return dz, delta_g, dqp, delta_s


def _run_bwd_main(q, k, v, z, dz, dy, lse_g, delta_g, lse_s, delta_s, cfg: MixerConfig,
                  num_chunks: Optional[int] = None):
    """Pass 2 -> dK, dV [B, H, N, D] (input dtype), the chunks' dQ_gather partials [B·H, C2, M, D] fp32."""
    B, H, M, N, D, bd = _dims(q, k)
    BH = B * H
    c2 = cfg.bwd_main
    num_mt = _bwd_main_num_mt(M, c2.block_m, cfg.bwd_main_dq_tiles)
    want = num_chunks if num_chunks is not None else _want_chunks(cfg, c2, N, BH, _sm_count(k.device))
    C2, chunk2 = _split_n(N, c2.block_n, want)
    # both in k's layout when k is token-major and small (_token_major): the model's projections hand
    # k and v out so, and gradients of that layout need no transposed copy before their backward
    token_major = _token_major(k)
    dk = _grad_like(k, k.dtype, token_major)
    dv = _grad_like(k, v.dtype, token_major)
    dqp = torch.empty((BH, C2, M, D), device=k.device, dtype=torch.float32)
    LAST_CHUNKS["bwd_main_kernel"] = C2
    LAST_LAUNCH["bwd_main_kernel"] = _bwd_main_kernel[(C2, BH)](
        q, k, v, z, dz, dy, lse_g, delta_g, lse_s, delta_s, dk, dv, dqp,
        *_q_strides(q), *k.stride(), *v.stride(), *dy.stride(),
        H, M, N, D, chunk2, C2,
        BLOCK_M=c2.block_m, BLOCK_N=c2.block_n, BLOCK_D=bd, NUM_MT=num_mt, EVEN_M=M % c2.block_m == 0,
        GRAD_TOKEN_MAJOR=token_major, ACC_ORDER=_acc_order(k.dtype, cfg),
        DOT_PREC=_dot_precision(k.dtype, cfg),
        **_opts(c2),
    )
    return dk, dv, dqp


# dK and dV follow a token-major k up to this size (bytes of k). Above it the strided stores cost more
# than the transposed copies they save: H100, the 1M-point step (bf16, H = 8, D = 8) went 132.9 ->
# 134.0 ms with them (pass 2 +1.7 ms), while the paper Darcy step (fp32, 3.7 MB) went 6.35 -> 6.26 ms.
GRAD_TOKEN_MAJOR_MAX_BYTES = 32 << 20


def _token_major(k: torch.Tensor) -> bool:
    """Whether dK and dV are written token-major: k [B, H, N, D] lies in [B, N, H, D] memory (the
    model's projections hand it out so) and is small enough (GRAD_TOKEN_MAJOR_MAX_BYTES)."""
    B, H, N, D = k.shape
    return (k.stride() == (N * H * D, D, H * D, 1)
            and k.numel() * k.element_size() <= GRAD_TOKEN_MAJOR_MAX_BYTES)


def _grad_like(k: torch.Tensor, dtype: torch.dtype, token_major: bool) -> torch.Tensor:
    """A gradient buffer of k's shape: token-major like k (then the projections' backward needs no
    transposed copy) or contiguous."""
    B, H, N, D = k.shape
    if token_major:
        return torch.empty((B, N, H, D), device=k.device, dtype=dtype).transpose(1, 2)
    return torch.empty((B, H, N, D), device=k.device, dtype=dtype)


def _bwd_main_num_mt(M: int, block_m: int, dq_tiles: int) -> int:
    """NUM_MT of the backward's second pass: 1 for one latent tile, the number of latent tiles when
    their dQ stays in registers (at most ``dq_tiles``, and the kernel has four accumulators), else 0
    (the dQ partial in memory)."""
    m_tiles = -(-M // block_m)
    return m_tiles if m_tiles == 1 or m_tiles <= min(dq_tiles, 4) else 0


def _forward(q, k, v, cfg: MixerConfig, num_chunks: Optional[int]):
    z, lse_g = _run_gather(q, k, v, cfg, num_chunks)
    y, lse_s = _run_scatter(q, k, z, cfg, num_chunks)
    return y, z, lse_g, lse_s


DQ_FINISH_BLOCK = 256  # dQ values per program of the finishing kernel: a few programs per head


def _dq_buffer(q: torch.Tensor, transposed: bool) -> torch.Tensor:
    """dQ's buffer, q's shape; with ``transposed`` in [H, D, M] memory (a shared q whose D is a power
    of two dividing DQ_FINISH_BLOCK: the finishing kernel transposes tiles of whole latents)."""
    D = q.shape[-1]
    if transposed and q.dim() == 3 and D & (D - 1) == 0 and DQ_FINISH_BLOCK % D == 0:
        H, M, D = q.shape
        return torch.empty((H, D, M), device=q.device, dtype=q.dtype).transpose(1, 2)
    return torch.empty(q.shape, device=q.device, dtype=q.dtype)


def _backward(q, k, v, y, z, lse_g, lse_s, dy, cfg: MixerConfig, num_chunks: Optional[int],
              dq_transposed: bool = False):
    if dy.dtype != k.dtype:
        dy = dy.to(k.dtype)
    dz, delta_g, dqp1, delta_s = _run_bwd_scatter(q, k, z, y, lse_s, dy, cfg, num_chunks)
    dk, dv, dqp2 = _run_bwd_main(q, k, v, z, dz, dy, lse_g, delta_g, lse_s, delta_s, cfg, num_chunks)
    B, H, M, N, D, _ = _dims(q, k)
    shared = q.dim() == 3
    block = DQ_FINISH_BLOCK  # 16 partial rows per load
    dq = _dq_buffer(q, dq_transposed)
    _dq_finish_kernel[(-(-(M * D) // block), H if shared else B * H)](
        dqp1, dqp2, dq, H, M * D, dqp1.shape[1], dqp2.shape[1], B if shared else 1, M, D,
        BLOCK=block, BLOCK_R=16, TRANSPOSED=D if dq.stride(-1) != 1 else 0, num_warps=4,
    )
    return dq, dk, dv


class _FlareMixerTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cfg, num_chunks):
        y, z, lse_g, lse_s = _forward(q, k, v, cfg, num_chunks)
        ctx.save_for_backward(q, k, v, y, z, lse_g, lse_s)
        ctx.cfg = cfg
        ctx.num_chunks = num_chunks
        return y

    @staticmethod
    def backward(ctx, dy):
        q, k, v, y, z, lse_g, lse_s = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, y, z, lse_g, lse_s, dy, ctx.cfg, ctx.num_chunks)
        return dq, dk, dv, None, None


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if not triton_available():
        raise RuntimeError(f"flare_mixer_triton needs triton, which failed to import: {_TRITON_IMPORT_ERROR!r}")
    if k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"k and v must both be [B, H, N, D]; got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.dim() not in (3, 4) or q.shape[-1] != k.shape[-1] or q.shape[-3] != k.shape[1]:
        raise ValueError(
            f"q must be [H, M, D] or [B, H, M, D] matching k's heads and head dim; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if q.dim() == 4 and q.shape[0] != k.shape[0]:
        raise ValueError(f"q's batch {q.shape[0]} does not match k's batch {k.shape[0]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"unsupported dtype {k.dtype}; use float32, bfloat16 or float16")
    if not (q.device == k.device == v.device):
        raise ValueError("q, k, v must be on one device")
    if k.shape[2] == 0 or q.shape[-2] == 0:
        raise ValueError("N and M must be positive")
    if k.shape[-1] > 128:
        raise ValueError(f"head dim {k.shape[-1]} > 128 is not supported")
    if k.device.type == "cpu" and not _interpreting():
        raise RuntimeError(
            "flare_mixer_triton got CPU tensors; run on a CUDA device or set TRITON_INTERPRET=1 "
            "before importing flare.ops.triton_mixer (CPU interpreter, slow)"
        )
    if k.device.type == "cuda" and _interpreting():
        raise RuntimeError("TRITON_INTERPRET=1 is set but the inputs are on CUDA; the interpreter needs CPU tensors")


def flare_mixer_triton_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    num_chunks: Optional[int] = None,
    config: Optional[MixerConfig] = None,
) -> torch.Tensor:
    """``flare_mixer_triton`` with the internals exposed: ``num_chunks`` forces the number of
    N-chunks of every split-N kernel (clamped to the number of token tiles); ``config`` replaces
    the heuristic tile table."""
    _check_inputs(q, k, v)
    # The kernels reload latent tiles for every token tile; a strided q (the model's [C, M] parameter
    # viewed as [H, M, D] is transposed) made the backward 5-10x slower on an H100. q is tiny: copy it.
    q = q.contiguous()
    if config is None:
        config = _config_for(q, k)
    return _FlareMixerTriton.apply(q, k, v, config, num_chunks)


# --------------------------------------------------------------------------------------------
# The same kernels as PyTorch operators: torch.compile treats them as opaque nodes (no graph
# break, Inductor fuses the projections and norms around them) and CUDA graphs capture them.
# Tile sizes come from ``default_config``; overrides go through ``flare_mixer_triton_impl``.
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("flare::triton_mixer_fwd", mutates_args=())
def _mixer_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dq_transposed: bool = False
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Y, Z, lse_gather, lse_scatter) of the fused forward; q contiguous. ``dq_transposed``: the
    backward writes a shared q's gradient in [H, D, M] memory (see ``flare_mixer_triton``)."""
    return _forward(q, k, v, _config_for(q, k), None)


@_mixer_fwd_op.register_fake
def _(q, k, v, dq_transposed=False):
    B, H, N, D = k.shape
    M = q.shape[-2]
    f32 = dict(device=k.device, dtype=torch.float32)
    return (k.new_empty((B, H, N, D)), torch.empty((B * H, M, D), **f32),
            torch.empty((B * H, M), **f32), torch.empty((B * H, N), **f32))


@torch.library.custom_op("flare::triton_mixer_bwd", mutates_args=())
def _mixer_bwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                  lse_g: torch.Tensor, lse_s: torch.Tensor, dy: torch.Tensor, dq_transposed: bool = False
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dQ, dK, dV) of the fused backward."""
    return _backward(q, k, v, y, z, lse_g, lse_s, dy, _config_for(q, k), None, dq_transposed)


@_mixer_bwd_op.register_fake
def _(q, k, v, y, z, lse_g, lse_s, dy, dq_transposed=False):
    token_major = _token_major(k)
    return _dq_buffer(q, dq_transposed), _grad_like(k, k.dtype, token_major), _grad_like(k, v.dtype, token_major)


def _mixer_op_setup(ctx, inputs, output):
    q, k, v, ctx.dq_transposed = inputs
    y, z, lse_g, lse_s = output
    ctx.save_for_backward(q, k, v, y, z, lse_g, lse_s)
    ctx.mark_non_differentiable(z, lse_g, lse_s)  # saved for the backward only: no zero-filled grads
    ctx.set_materialize_grads(False)


def _mixer_op_backward(ctx, dy, _dz, _dlse_g, _dlse_s):
    if dy is None:  # Y did not reach the loss
        return None, None, None, None
    q, k, v, y, z, lse_g, lse_s = ctx.saved_tensors
    return *_mixer_bwd_op(q, k, v, y, z, lse_g, lse_s, dy, ctx.dq_transposed), None


_mixer_fwd_op.register_autograd(_mixer_op_backward, setup_context=_mixer_op_setup)


def flare_mixer_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """FLARE mixer with fused Triton kernels; same contract as ``flare_mixer_reference``.

    q: ``[H, M, D]`` (shared over the batch) or ``[B, H, M, D]``; k, v: ``[B, H, N, D]``;
    dtypes float32 / bfloat16 / float16 (fp32 accumulation inside).  Returns ``[B, H, N, D]``
    in the input dtype.  Differentiable in q, k and v; runs as the ``flare::triton_mixer_fwd`` /
    ``_bwd`` operators, so ``torch.compile`` and CUDA graphs take it whole.
    """
    _check_inputs(q, k, v)
    # The kernels want q contiguous (one small copy). FLARE's queries are a [C, M] parameter viewed as
    # [H, M, D] (transposed): the backward then writes dQ in that memory order, so its gradient reaches
    # the parameter without a second, transposing copy.
    H, M, D = q.shape[-3:]
    transposed = q.dim() == 3 and M > 1 and D > 1 and q.stride() == (M * D, 1, M)
    return _mixer_fwd_op(q.contiguous(), k, v, transposed)[0]
