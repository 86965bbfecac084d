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
  3. ``_scatter_fwd_kernel``  grid (N-tiles, B·H): online softmax over M -> Y and lse_scatter.
backward
  4. ``_bwd_scatter_kernel``  grid (chunks, M-tiles, B·H): per-chunk partial dZ = Pᵀ dY and
     dQ_scatter = dSᵀ K; also writes Δ_s = rowsum(dY ∘ Y).  Partials summed with torch.
  5. ``_bwd_main_kernel``     grid (chunks, B·H): needs the full dZ; for each N-tile and every
     latent tile recomputes S = K Qᵀ once and from it both softmax matrices, giving
     dK = dK_scatter + dK_gather, dV, and per-chunk partial dQ_gather.

All log-sum-exp values kept between kernels are in base 2 (``lse2 = max·log2(e) + log2(sum)``)
so that the kernels use ``exp2`` only.  Partials are written to private fp32 buffers and
summed afterwards: results are deterministic (no atomics).

Importing this module never fails when triton is missing; ``triton_available()`` says whether
the kernels can run.  The kernels are defined when the module is imported, so the environment
variable ``TRITON_INTERPRET=1`` (CPU interpreter) must be set before the first import.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

try:  # pragma: no cover - exercised by whichever environment runs the tests
    import triton
    import triton.language as tl

    _TRITON_IMPORT_ERROR: Optional[BaseException] = None
except Exception as _exc:  # noqa: BLE001 - any failure means "no triton"
    triton = None
    tl = None
    _TRITON_IMPORT_ERROR = _exc

__all__ = ["flare_mixer_triton", "flare_mixer_triton_impl", "triton_available", "MixerConfig", "default_config"]


def triton_available() -> bool:
    """True when triton imported and its kernels were defined."""
    return _TRITON_IMPORT_ERROR is None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
if _TRITON_IMPORT_ERROR is None:

    @triton.jit
    def _gather_fwd_kernel(
        Q, K, V, MP, LP, AP,
        sqb, sqh, sqm, sqd,
        skb, skh, skn, skd,
        svb, svh, svn, svd,
        H, M, N, D: tl.constexpr, chunk_len, C,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        DOT_PREC: tl.constexpr,
    ):
        """Partial gather of one latent tile over one chunk of tokens (online softmax over N)."""
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
        k_ptrs = (K + b * skb + h * skh + n_start.to(tl.int64) * skn
                  + offs_n[:, None] * skn + offs_d[None, :] * skd)
        v_ptrs = (V + b * svb + h * svh + n_start.to(tl.int64) * svn
                  + offs_n[:, None] * svn + offs_d[None, :] * svd)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(n_start, n_end, BLOCK_N):
            n_mask = (start + offs_n) < n_end
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
            v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * 1.4426950408889634
            s = tl.where(n_mask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # a row whose max is still -inf has seen no token: keep it at exactly zero
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
            m_i = m_new
            k_ptrs += BLOCK_N * skn
            v_ptrs += BLOCK_N * svn

        row = (pid_bh.to(tl.int64) * C + pid_c) * M + offs_m
        tl.store(MP + row, m_i, mask=m_mask)
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
        H, M, N, D: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        DOT_PREC: tl.constexpr,
    ):
        """Y = softmax_M(K Qᵀ) Z for one tile of tokens (online softmax over latent tiles)."""
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)

        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        offs_mt = tl.arange(0, BLOCK_M)
        n_mask = offs_n < N
        d_mask = offs_d < D
        nd_mask = n_mask[:, None] & d_mask[None, :]

        k = tl.load(K + b * skb + h * skh + offs_n.to(tl.int64)[:, None] * skn + offs_d[None, :] * skd,
                    mask=nd_mask, other=0.0)
        q_base = Q + b * sqb + h * sqh
        z_base = Z + pid_bh.to(tl.int64) * M * D

        m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_N], tl.float32)
        acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for start_m in range(0, M, BLOCK_M):
            offs_m = start_m + offs_mt
            m_mask = offs_m < M
            md_mask = m_mask[:, None] & d_mask[None, :]
            q = tl.load(q_base + offs_m[:, None] * sqm + offs_d[None, :] * sqd, mask=md_mask, other=0.0)
            z = tl.load(z_base + offs_m[:, None] * D + offs_d[None, :], mask=md_mask, other=0.0).to(k.dtype)
            s = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * 1.4426950408889634
            s = tl.where(m_mask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(k.dtype), z, acc, input_precision=DOT_PREC)
            m_i = m_new

        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        y = acc / l_safe[:, None]
        row = pid_bh.to(tl.int64) * N + offs_n
        tl.store(Y + row[:, None] * D + offs_d[None, :], y.to(Y.dtype.element_ty), mask=nd_mask)
        tl.store(LSE_S + row, m_i + tl.log2(l_safe), mask=n_mask)

    @triton.jit
    def _bwd_scatter_kernel(
        Q, K, Z, DY, Y, LSE_S, DELTA_S, DZP, DQP,
        sqb, sqh, sqm, sqd,
        skb, skh, skn, skd,
        sdb, sdh, sdn, sdd,
        H, M, N, D: tl.constexpr, chunk_len, C,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        DOT_PREC: tl.constexpr,
    ):
        """Backward of the scatter, reduced over one chunk of tokens for one latent tile.

        P = 2^(S·log2e − lse2_s), dP = dY Zᵀ, dS = P ∘ (dP − Δ_s):
        partial dZ = Pᵀ dY and partial dQ_scatter = dSᵀ K.  Programs of latent tile 0 also
        write Δ_s = rowsum(dY ∘ Y) for the main backward kernel.
        """
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
        md_mask = m_mask[:, None] & d_mask[None, :]

        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                    mask=md_mask, other=0.0)
        zrow = pid_bh.to(tl.int64) * M + offs_m
        z = tl.load(Z + zrow[:, None] * D + offs_d[None, :], mask=md_mask, other=0.0).to(q.dtype)

        n_start = pid_c * chunk_len
        n_end = tl.minimum(n_start + chunk_len, N)
        n0 = n_start.to(tl.int64)
        k_ptrs = K + b * skb + h * skh + n0 * skn + offs_n[:, None] * skn + offs_d[None, :] * skd
        dy_ptrs = DY + b * sdb + h * sdh + n0 * sdn + offs_n[:, None] * sdn + offs_d[None, :] * sdd
        tok0 = pid_bh.to(tl.int64) * N + n0
        y_ptrs = Y + tok0 * D + offs_n[:, None] * D + offs_d[None, :]
        lse_ptrs = LSE_S + tok0 + offs_n
        delta_ptrs = DELTA_S + tok0 + offs_n

        first_tile = (offs_n * 0 + pid_m) == 0  # only latent tile 0 writes Δ_s
        dz_acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        dq_acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(n_start, n_end, BLOCK_N):
            n_mask = (start + offs_n) < n_end
            nd_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(k_ptrs, mask=nd_mask, other=0.0)
            dy = tl.load(dy_ptrs, mask=nd_mask, other=0.0).to(q.dtype)
            y = tl.load(y_ptrs, mask=nd_mask, other=0.0)
            lse = tl.load(lse_ptrs, mask=n_mask, other=0.0)
            delta = tl.sum(dy.to(tl.float32) * y.to(tl.float32), 1)
            tl.store(delta_ptrs, delta, mask=n_mask & first_tile)

            # transposed orientation [latents, tokens]: no register tile needs transposing
            st = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * 1.4426950408889634
            pt = tl.exp2(st - lse[None, :])
            pt = tl.where(m_mask[:, None] & n_mask[None, :], pt, 0.0)
            dz_acc = tl.dot(pt.to(q.dtype), dy, dz_acc, input_precision=DOT_PREC)
            dpt = tl.dot(z, tl.trans(dy), input_precision=DOT_PREC)
            dst = pt * (dpt - delta[None, :])
            dq_acc = tl.dot(dst.to(q.dtype), k, dq_acc, input_precision=DOT_PREC)

            k_ptrs += BLOCK_N * skn
            dy_ptrs += BLOCK_N * sdn
            y_ptrs += BLOCK_N * D
            lse_ptrs += BLOCK_N
            delta_ptrs += BLOCK_N

        prow = (pid_bh.to(tl.int64) * C + pid_c) * M + offs_m
        tl.store(DZP + prow[:, None] * D + offs_d[None, :], dz_acc, mask=md_mask)
        tl.store(DQP + prow[:, None] * D + offs_d[None, :], dq_acc, mask=md_mask)

    @triton.jit
    def _bwd_tile(k, v, dy, lse_s, delta_s, n_mask,
                  q, z, dz, lse_g, delta_g, m_mask,
                  dk, dv, dq, DOT_PREC: tl.constexpr):
        """Both backward contributions of one (token tile, latent tile) pair; S computed once.

        Ordered so that at most three [BLOCK_N, BLOCK_M] fp32 tiles are live at a time.
        """
        s = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * 1.4426950408889634  # [BN, BM]
        valid = n_mask[:, None] & m_mask[None, :]
        # gather (transposed): A = softmax over tokens, columns = latents
        a = tl.where(valid, tl.exp2(s - lse_g[None, :]), 0.0)
        dv = tl.dot(a.to(k.dtype), dz, dv, input_precision=DOT_PREC)
        da = tl.dot(v, tl.trans(dz), input_precision=DOT_PREC)
        dsg = (a * (da - delta_g[None, :])).to(k.dtype)
        dq = tl.dot(tl.trans(dsg), k, dq, input_precision=DOT_PREC)
        dk = tl.dot(dsg, q, dk, input_precision=DOT_PREC)
        # scatter: P = softmax over latents, rows = tokens
        p = tl.where(valid, tl.exp2(s - lse_s[:, None]), 0.0)
        dp = tl.dot(dy, tl.trans(z), input_precision=DOT_PREC)
        ds = (p * (dp - delta_s[:, None])).to(k.dtype)
        dk = tl.dot(ds, q, dk, input_precision=DOT_PREC)
        return dk, dv, dq

    @triton.jit
    def _bwd_main_kernel(
        Q, K, V, Z, DZ, DY, LSE_G, DELTA_G, LSE_S, DELTA_S, DK, DV, DQP,
        sqb, sqh, sqm, sqd,
        skb, skh, skn, skd,
        svb, svh, svn, svd,
        sdb, sdh, sdn, sdd,
        H, M, N, D: tl.constexpr, chunk_len, C,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        ONE_M_TILE: tl.constexpr, DOT_PREC: tl.constexpr,
    ):
        """dK (scatter + gather), dV and a partial dQ_gather for one chunk of tokens.

        With ONE_M_TILE all latents sit in one tile kept in registers and dQ accumulates in
        registers; otherwise the chunk's private fp32 dQ partial is updated in place per tile.
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
        n0 = n_start.to(tl.int64)
        k_ptrs = K + b * skb + h * skh + n0 * skn + offs_n[:, None] * skn + offs_d[None, :] * skd
        v_ptrs = V + b * svb + h * svh + n0 * svn + offs_n[:, None] * svn + offs_d[None, :] * svd
        dy_ptrs = DY + b * sdb + h * sdh + n0 * sdn + offs_n[:, None] * sdn + offs_d[None, :] * sdd
        tok0 = bh * N + n0
        out_off = tok0 * D + offs_n[:, None] * D + offs_d[None, :]
        lse_ptrs = LSE_S + tok0 + offs_n
        delta_ptrs = DELTA_S + tok0 + offs_n

        q_base = Q + b * sqb + h * sqh
        zrow0 = bh * M
        dq_base = DQP + (bh * C + pid_c) * M * D

        if ONE_M_TILE:
            m_mask = offs_mt < M
            md_mask = m_mask[:, None] & d_mask[None, :]
            q = tl.load(q_base + offs_mt[:, None] * sqm + offs_d[None, :] * sqd, mask=md_mask, other=0.0)
            zoff = (zrow0 + offs_mt)[:, None] * D + offs_d[None, :]
            z = tl.load(Z + zoff, mask=md_mask, other=0.0).to(q.dtype)
            dz = tl.load(DZ + zoff, mask=md_mask, other=0.0).to(q.dtype)
            lse_g = tl.load(LSE_G + zrow0 + offs_mt, mask=m_mask, other=0.0)
            delta_g = tl.load(DELTA_G + zrow0 + offs_mt, mask=m_mask, other=0.0)
            dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            for start in range(n_start, n_end, BLOCK_N):
                n_mask = (start + offs_n) < n_end
                nd_mask = n_mask[:, None] & d_mask[None, :]
                k = tl.load(k_ptrs, mask=nd_mask, other=0.0)
                v = tl.load(v_ptrs, mask=nd_mask, other=0.0)
                dy = tl.load(dy_ptrs, mask=nd_mask, other=0.0).to(k.dtype)
                lse_s = tl.load(lse_ptrs, mask=n_mask, other=0.0)
                delta_s = tl.load(delta_ptrs, mask=n_mask, other=0.0)
                dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
                dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
                dk, dv, dq = _bwd_tile(k, v, dy, lse_s, delta_s, n_mask,
                                       q, z, dz, lse_g, delta_g, m_mask,
                                       dk, dv, dq, DOT_PREC)
                tl.store(DK + out_off, dk.to(DK.dtype.element_ty), mask=nd_mask)
                tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=nd_mask)
                k_ptrs += BLOCK_N * skn
                v_ptrs += BLOCK_N * svn
                dy_ptrs += BLOCK_N * sdn
                lse_ptrs += BLOCK_N
                delta_ptrs += BLOCK_N
                out_off += BLOCK_N * D
            tl.store(dq_base + offs_mt[:, None] * D + offs_d[None, :], dq, mask=md_mask)
        else:
            for start in range(n_start, n_end, BLOCK_N):
                n_mask = (start + offs_n) < n_end
                nd_mask = n_mask[:, None] & d_mask[None, :]
                k = tl.load(k_ptrs, mask=nd_mask, other=0.0)
                v = tl.load(v_ptrs, mask=nd_mask, other=0.0)
                dy = tl.load(dy_ptrs, mask=nd_mask, other=0.0).to(k.dtype)
                lse_s = tl.load(lse_ptrs, mask=n_mask, other=0.0)
                delta_s = tl.load(delta_ptrs, mask=n_mask, other=0.0)
                dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
                dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
                for start_m in range(0, M, BLOCK_M):
                    offs_m = start_m + offs_mt
                    m_mask = offs_m < M
                    md_mask = m_mask[:, None] & d_mask[None, :]
                    q = tl.load(q_base + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                                mask=md_mask, other=0.0)
                    zoff = (zrow0 + offs_m)[:, None] * D + offs_d[None, :]
                    z = tl.load(Z + zoff, mask=md_mask, other=0.0).to(k.dtype)
                    dz = tl.load(DZ + zoff, mask=md_mask, other=0.0).to(k.dtype)
                    lse_g = tl.load(LSE_G + zrow0 + offs_m, mask=m_mask, other=0.0)
                    delta_g = tl.load(DELTA_G + zrow0 + offs_m, mask=m_mask, other=0.0)
                    dq_ptrs = dq_base + offs_m[:, None] * D + offs_d[None, :]
                    dq = tl.load(dq_ptrs, mask=md_mask, other=0.0)
                    dk, dv, dq = _bwd_tile(k, v, dy, lse_s, delta_s, n_mask,
                                           q, z, dz, lse_g, delta_g, m_mask,
                                           dk, dv, dq, DOT_PREC)
                    tl.store(dq_ptrs, dq, mask=md_mask)
                    # the next visit of this tile may be made by other threads of the program
                    tl.debug_barrier()
                tl.store(DK + out_off, dk.to(DK.dtype.element_ty), mask=nd_mask)
                tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=nd_mask)
                k_ptrs += BLOCK_N * skn
                v_ptrs += BLOCK_N * svn
                dy_ptrs += BLOCK_N * sdn
                lse_ptrs += BLOCK_N
                delta_ptrs += BLOCK_N
                out_off += BLOCK_N * D


# --------------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelCfg:
    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2


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


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _clamp_pow2(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, _next_pow2(x)))


def default_config(M: int, D: int, N: int, dtype: torch.dtype, interpret: bool = False) -> MixerConfig:
    """Heuristic table (tuned on H100, see benchmarks/NOTES-mixer.md)."""
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
        # fp32 dots run on FMA units ("ieee"), which need many registers: small tiles, no spills
        bm = _clamp_pow2(M, 16, 64)
        return MixerConfig(
            gather=KernelCfg(bm, 64 if bd <= 16 else 32, 4, 3),
            scatter=KernelCfg(bm, 64 if bd <= 16 else 32, 4, 2),
            bwd_scatter=KernelCfg(bm, 16, 4, 2),
            bwd_main=KernelCfg(_clamp_pow2(M, 16, 32), 32 if bd <= 16 else 16, 4, 2),
        )
    wide = bd >= 64  # [tile, D] operands twice as large: halve the token tiles
    g_bm = _clamp_pow2(M, 16, 128)
    if wide:
        gather = KernelCfg(g_bm, 64, 4 if g_bm <= 64 else 8, 3)
    else:
        gather = KernelCfg(g_bm, 128, 4 if g_bm <= 64 else 8, 3)
    scatter = KernelCfg(_clamp_pow2(M, 16, 64), 128, 8, 2)
    b1_bm = _clamp_pow2(M, 16, 64 if wide else 128)
    bwd_scatter = KernelCfg(b1_bm, 32 if wide else 64, 4 if b1_bm <= 64 else 8, 2)
    b2_bm = _clamp_pow2(M, 16, 64)
    if wide:
        bwd_main = KernelCfg(b2_bm, 32, 4, 2)
    elif M <= b2_bm:  # all latents in one tile: dQ stays in registers
        bwd_main = KernelCfg(b2_bm, 64, 8, 2)
    else:
        bwd_main = KernelCfg(b2_bm, 64, 4, 2)
    return MixerConfig(gather=gather, scatter=scatter, bwd_scatter=bwd_scatter, bwd_main=bwd_main)


_SM_COUNT: dict = {}
# last compiled kernel handle per stage (register / spill report for the benchmark script)
LAST_LAUNCH: dict = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def _split_n(N: int, block_n: int, want: int) -> Tuple[int, int]:
    """(number of chunks, chunk length): chunk length a multiple of block_n, every chunk non-empty."""
    tiles = -(-N // block_n)
    c = max(1, min(int(want), tiles))
    chunk_len = -(-tiles // c) * block_n
    return -(-N // chunk_len), chunk_len


def _want_chunks(cfg: MixerConfig, kc: KernelCfg, N: int, other_programs: int, sms: int) -> int:
    tiles = -(-N // kc.block_n)
    by_sm = -(-cfg.programs_per_sm * sms // max(1, other_programs))
    by_len = max(1, tiles // max(1, cfg.min_tiles_per_chunk))
    return max(1, min(by_sm, by_len))


def _dot_precision(dtype: torch.dtype, cfg: Optional["MixerConfig"] = None) -> str:
    if dtype != torch.float32:
        return "tf32"  # ignored by tl.dot for 16-bit inputs
    if cfg is not None and cfg.fp32_precision is not None:
        return cfg.fp32_precision
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _q_strides(q: torch.Tensor) -> Tuple[int, int, int, int]:
    if q.dim() == 3:
        return (0,) + tuple(q.stride())
    return tuple(q.stride())


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
    LAST_LAUNCH["gather_fwd_kernel"] = _gather_fwd_kernel[(C, n_mt, BH)](
        q, k, v, mp, lp, ap,
        *_q_strides(q), *k.stride(), *v.stride(),
        H, M, N, D, chunk_len, C,
        BLOCK_M=g.block_m, BLOCK_N=g.block_n, BLOCK_D=bd, DOT_PREC=_dot_precision(k.dtype, cfg),
        num_warps=g.num_warps, num_stages=g.num_stages,
    )
    z = torch.empty((BH, M, D), **f32)
    lse_g = torch.empty((BH, M), **f32)
    mbm = cfg.merge_block_m
    _gather_merge_kernel[(-(-M // mbm), BH)](
        mp, lp, ap, z, lse_g, M, D, C, BLOCK_M=mbm, BLOCK_D=bd, num_warps=4,
    )
    return z, lse_g


def _run_scatter(q, k, z, cfg: MixerConfig):
    """Y = softmax_M(K Qᵀ) Z -> Y [B, H, N, D] (input dtype), lse2_scatter [B·H, N] fp32."""
    B, H, M, N, D, bd = _dims(q, k)
    s = cfg.scatter
    y = torch.empty((B, H, N, D), device=k.device, dtype=k.dtype)
    lse_s = torch.empty((B * H, N), device=k.device, dtype=torch.float32)
    LAST_LAUNCH["scatter_fwd_kernel"] = _scatter_fwd_kernel[(-(-N // s.block_n), B * H)](
        q, k, z, y, lse_s,
        *_q_strides(q), *k.stride(),
        H, M, N, D,
        BLOCK_M=s.block_m, BLOCK_N=s.block_n, BLOCK_D=bd, DOT_PREC=_dot_precision(k.dtype, cfg),
        num_warps=s.num_warps, num_stages=s.num_stages,
    )
    return y, lse_s


def _run_bwd_scatter(q, k, z, y, lse_s, dy, cfg: MixerConfig, num_chunks: Optional[int] = None):
    """Pass 1 -> dZ [B·H, M, D], Δ_gather [B·H, M], dQ_scatter [B·H, M, D] (fp32), Δ_scatter [B·H, N]."""
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
    LAST_LAUNCH["bwd_scatter_kernel"] = _bwd_scatter_kernel[(C1, n_mt, BH)](
        q, k, z, dy, y, lse_s, delta_s, dzp, dqp,
        *_q_strides(q), *k.stride(), *dy.stride(),
        H, M, N, D, chunk1, C1,
        BLOCK_M=c1.block_m, BLOCK_N=c1.block_n, BLOCK_D=bd, DOT_PREC=_dot_precision(k.dtype, cfg),
        num_warps=c1.num_warps, num_stages=c1.num_stages,
    )
    dz = (dzp.sum(1) if C1 > 1 else dzp[:, 0]).contiguous()
    dq_s = dqp.sum(1) if C1 > 1 else dqp[:, 0]
    delta_g = (dz * z).sum(-1).contiguous()  # Δ_g = rowsum(dZ ∘ Z)
    return dz, delta_g, dq_s, delta_s


def _run_bwd_main(q, k, v, z, dz, dy, lse_g, delta_g, lse_s, delta_s, cfg: MixerConfig,
                  num_chunks: Optional[int] = None):
    """Pass 2 -> dK, dV [B, H, N, D] (input dtype), dQ_gather [B·H, M, D] fp32."""
    B, H, M, N, D, bd = _dims(q, k)
    BH = B * H
    c2 = cfg.bwd_main
    one_tile = M <= c2.block_m
    want = num_chunks if num_chunks is not None else _want_chunks(cfg, c2, N, BH, _sm_count(k.device))
    C2, chunk2 = _split_n(N, c2.block_n, want)
    dk = torch.empty((B, H, N, D), device=k.device, dtype=k.dtype)
    dv = torch.empty((B, H, N, D), device=k.device, dtype=v.dtype)
    dqp = (torch.empty if one_tile else torch.zeros)((BH, C2, M, D), device=k.device, dtype=torch.float32)
    LAST_LAUNCH["bwd_main_kernel"] = _bwd_main_kernel[(C2, BH)](
        q, k, v, z, dz, dy, lse_g, delta_g, lse_s, delta_s, dk, dv, dqp,
        *_q_strides(q), *k.stride(), *v.stride(), *dy.stride(),
        H, M, N, D, chunk2, C2,
        BLOCK_M=c2.block_m, BLOCK_N=c2.block_n, BLOCK_D=bd, ONE_M_TILE=one_tile,
        DOT_PREC=_dot_precision(k.dtype, cfg),
        num_warps=c2.num_warps, num_stages=c2.num_stages,
    )
    dq_g = dqp.sum(1) if C2 > 1 else dqp[:, 0]
    return dk, dv, dq_g


def _forward(q, k, v, cfg: MixerConfig, num_chunks: Optional[int]):
    z, lse_g = _run_gather(q, k, v, cfg, num_chunks)
    y, lse_s = _run_scatter(q, k, z, cfg)
    return y, z, lse_g, lse_s


def _backward(q, k, v, y, z, lse_g, lse_s, dy, cfg: MixerConfig, num_chunks: Optional[int]):
    if dy.dtype != k.dtype:
        dy = dy.to(k.dtype)
    dz, delta_g, dq_s, delta_s = _run_bwd_scatter(q, k, z, y, lse_s, dy, cfg, num_chunks)
    dk, dv, dq_g = _run_bwd_main(q, k, v, z, dz, dy, lse_g, delta_g, lse_s, delta_s, cfg, num_chunks)
    B, H, N, D = k.shape
    dq = (dq_s + dq_g).view(B, H, q.shape[-2], D)
    if q.dim() == 3:
        dq = dq.sum(0)
    return dq.to(q.dtype), dk, dv


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
    if config is None:
        config = default_config(q.shape[-2], k.shape[-1], k.shape[2], k.dtype, interpret=_interpreting())
    return _FlareMixerTriton.apply(q, k, v, config, num_chunks)


def flare_mixer_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """FLARE mixer with fused Triton kernels; same contract as ``flare_mixer_reference``.

    q: ``[H, M, D]`` (shared over the batch) or ``[B, H, M, D]``; k, v: ``[B, H, N, D]``;
    dtypes float32 / bfloat16 / float16 (fp32 accumulation inside).  Returns ``[B, H, N, D]``
    in the input dtype.  Differentiable in q, k and v.
    """
    return flare_mixer_triton_impl(q, k, v)
