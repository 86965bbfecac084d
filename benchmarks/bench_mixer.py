#!/usr/bin/env python
"""GPU benchmark of the FLARE mixer: reference (two SDPA calls) vs fused Triton kernels,
with plain N×N softmax attention (SDPA(k, k, v)) for scale.

    PYTHONPATH=src python benchmarks/bench_mixer.py                      # sweep N = 2^10 … 2^22
    PYTHONPATH=src python benchmarks/bench_mixer.py --n-max-log2 20 --ms 64,256
    PYTHONPATH=src python benchmarks/bench_mixer.py --paper-darcy         # fp32, B=2 H=16 D=4 M=256 N=7225
    PYTHONPATH=src python benchmarks/bench_mixer.py --tune --ms 64 --n-log2 20   # per-kernel tile sweep

Times are medians of triton.testing.do_bench (CUDA events, warm-up first, L2 flushed before each
repetition).  Peak memory is torch.cuda.max_memory_allocated above what the inputs hold.  The HBM
floor is the bytes that must move (fwd: read K, V, write Y; fwd+bwd adds read K, V, dY, write dK, dV)
over the bandwidth of a large device-to-device copy measured at start.  A CSV goes to --csv and a
short table is printed last.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import os
import sys
import time

import torch
import torch.nn.functional as F

# the repository's package unless PYTHONPATH names another copy first (A/B runs against a baseline)
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from flare.ops.reference import flare_mixer_reference  # noqa: E402
from flare.ops import triton_mixer as tm  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def do_bench(fn, grad_to_none=None, warmup=25, rep=100):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, return_mode="median")


def measure_bandwidth(nbytes=2 << 30):
    a = torch.empty(nbytes // 4, device="cuda", dtype=torch.float32).normal_()
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), warmup=50, rep=200)
    a = b = None  # free before emptying the cache (not del: the lambda above closes over them)
    torch.cuda.empty_cache()
    return 2 * nbytes / (ms * 1e-3)  # bytes read + written per second


def rel_err(a, b):
    a = a.detach().double()
    b = b.detach().double()
    if not torch.isfinite(a).all():
        return float("nan")
    return ((a - b).norm() / b.norm()).item()


def make_inputs(B, H, M, N, D, dtype, shared_q=True, requires_grad=False, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn((H, M, D) if shared_q else (B, H, M, D), device="cuda", dtype=dtype, generator=g)
    k = torch.randn((B, H, N, D), device="cuda", dtype=dtype, generator=g)
    v = torch.randn((B, H, N, D), device="cuda", dtype=dtype, generator=g)
    dy = torch.randn((B, H, N, D), device="cuda", dtype=dtype, generator=g)
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    return q, k, v, dy


def impl_fn(name):
    if name == "reference":
        return flare_mixer_reference
    if name == "triton":
        return tm.flare_mixer_triton
    if name == "sdpa":
        return lambda q, k, v: F.scaled_dot_product_attention(k, k, v)
    raise ValueError(name)


def peak_extra_mib(fn):
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def hbm_floor_ms(B, H, N, D, elt, bw, mode):
    tensors = 3 if mode == "fwd" else 8
    return tensors * B * H * N * D * elt / bw * 1e3


# ------------------------------------------------------------------------------------------ sweep
def run_case(case, impls, modes, args, bw, rows):
    B, H, M, N, D, dtype = case["B"], case["H"], case["M"], case["N"], case["D"], case["dtype"]
    elt = torch.finfo(dtype).bits // 8
    q, k, v, dy = make_inputs(B, H, M, N, D, dtype, requires_grad=True)
    if args.check:
        with torch.no_grad():
            y_ref = flare_mixer_reference(q.float(), k.float(), v.float())
            y_tri = tm.flare_mixer_triton(q, k, v)
            y_low = flare_mixer_reference(q, k, v)
        err = rel_err(y_tri, y_ref)
        err_low = rel_err(y_low, y_ref)
        print(f"  check {case['name']} M={M} N={N}: rel err vs fp32 reference: triton {err:.2e}, "
              f"reference in {dtype} {err_low:.2e}", flush=True)
        del y_ref, y_tri, y_low
    for impl in impls:
        fn = impl_fn(impl)
        for mode in modes:
            if impl == "sdpa" and N > (args.sdpa_max_n_fwd if mode == "fwd" else args.sdpa_max_n_bwd):
                continue
            if impl == "reference" and N > args.ref_max_n:
                continue
            if mode == "fwd":
                def run():
                    with torch.no_grad():
                        fn(q, k, v)
                grads = None
            else:
                def run():
                    fn(q, k, v).backward(dy)
                grads = [q, k, v]
            try:
                run()  # compile / warm
                ms = do_bench(run, grad_to_none=grads, warmup=args.warmup, rep=args.rep)
                for t in (q, k, v):
                    t.grad = None
                peak = peak_extra_mib(run)
            except torch.OutOfMemoryError:
                ms, peak = float("nan"), float("nan")
                torch.cuda.empty_cache()
            for t in (q, k, v):
                t.grad = None
            floor = hbm_floor_ms(B, H, N, D, elt, bw, mode)
            row = dict(case=case["name"], dtype=str(dtype).replace("torch.", ""), B=B, H=H, M=M, N=N, D=D,
                       impl=impl, mode=mode, ms=ms, peak_extra_mib=peak, hbm_floor_ms=floor)
            rows.append(row)
            print(f"  {case['name']:>6} M={M:<5d} N={N:<8d} {impl:>9} {mode:>6}: {ms:9.3f} ms "
                  f"(floor {floor:.3f} ms, peak +{peak:.0f} MiB)", flush=True)
    q = k = v = dy = None
    torch.cuda.empty_cache()


def print_table(rows):
    keyed = {}
    for r in rows:
        keyed[(r["case"], r["M"], r["N"], r["mode"], r["impl"])] = r
    cases = sorted({(r["case"], r["M"], r["N"], r["mode"]) for r in rows}, key=lambda c: (c[0], c[3], c[1], c[2]))
    print()
    print(f"{'case':>6} {'mode':>6} {'M':>5} {'N':>8} {'floor':>7} {'ref ms':>9} {'triton ms':>9} "
          f"{'x':>6} {'sdpa NxN':>9} {'ref MiB':>8} {'tri MiB':>8}")
    for c in cases:
        ref = keyed.get(c + ("reference",))
        tri = keyed.get(c + ("triton",))
        sd = keyed.get(c + ("sdpa",))
        floor = (tri or ref)["hbm_floor_ms"]
        rms = ref["ms"] if ref else float("nan")
        tms = tri["ms"] if tri else float("nan")
        sms = sd["ms"] if sd else float("nan")
        print(f"{c[0]:>6} {c[3]:>6} {c[1]:>5d} {c[2]:>8d} {floor:7.3f} {rms:9.3f} {tms:9.3f} "
              f"{rms / tms if tri and ref else float('nan'):6.1f} {sms:9.3f} "
              f"{ref['peak_extra_mib'] if ref else float('nan'):8.0f} {tri['peak_extra_mib'] if tri else float('nan'):8.0f}")


# ------------------------------------------------------------------------------------------ tuning
KC = tm.KernelCfg


def tune_candidates(M, D, dtype):
    """Per-kernel candidate (block_m, block_n, num_warps, num_stages[, programs per SM]) lists,
    chosen to compile without register spills on sm_90 (checked offline with the resource report)."""
    bm = min(max(16, 1 << (M - 1).bit_length()), 64)
    if dtype == torch.float32:
        return {
            "gather": [KC(64, 64, 4, 3), KC(64, 32, 4, 3), KC(64, 64, 4, 2), KC(64, 128, 4, 3),
                       KC(128, 64, 8, 3), KC(64, 64, 4, 4, 2), KC(64, 32, 4, 3, 2), KC(64, 128, 4, 3, 2),
                       KC(128, 64, 8, 3, 2), KC(64, 64, 8, 3, 2)],
            "scatter": [KC(64, 64, 4, 2), KC(32, 64, 4, 2), KC(64, 128, 8, 2), KC(32, 128, 4, 2),
                        KC(64, 64, 4, 3, 16)],
            "bwd_scatter": [KC(32, 32, 4, 2), KC(64, 16, 4, 2), KC(32, 64, 4, 2), KC(32, 64, 4, 3),
                            KC(64, 64, 4, 2), KC(16, 64, 4, 2), KC(32, 128, 4, 2), KC(64, 32, 4, 3, 8),
                            KC(64, 64, 4, 3, 2), KC(64, 64, 4, 4, 2), KC(64, 32, 4, 3, 2), KC(128, 64, 8, 2, 2),
                            KC(64, 64, 8, 2, 2), KC(32, 64, 4, 2, 2)],
            "bwd_main": [KC(32, 64, 4, 2), KC(32, 32, 4, 2), KC(64, 32, 4, 2), KC(32, 128, 4, 2),
                         KC(64, 64, 4, 2), KC(16, 128, 4, 2), KC(32, 64, 4, 3, 8), KC(64, 64, 4, 3),
                         KC(64, 64, 4, 1), KC(64, 64, 4, 2, 8), KC(64, 64, 8, 2), KC(64, 64, 8, 2, 2),
                         KC(128, 64, 8, 2), KC(64, 128, 8, 2)],
        }
    if M <= 64:
        return {
            "gather": [KC(bm, 128, 4, 3, 2), KC(bm, 64, 4, 3, 2), KC(bm, 128, 4, 3, 1), KC(bm, 64, 4, 3, 4)],
            "scatter": [KC(bm, 128, 4, 2), KC(bm, 64, 4, 3), KC(bm, 128, 4, 3), KC(bm, 256, 8, 2)],
            "bwd_scatter": [KC(bm, 64, 4, 2), KC(bm, 64, 4, 3), KC(bm, 128, 4, 2, 2)],
            "bwd_main": [KC(bm, 64, 4, 2), KC(bm, 64, 4, 3), KC(bm, 32, 4, 2), KC(bm, 64, 8, 2)],
        }
    return {
        "gather": [KC(128, 64, 4, 3), KC(64, 128, 4, 3), KC(128, 128, 8, 3), KC(128, 64, 4, 4),
                   KC(128, 64, 4, 3, 4), KC(128, 64, 4, 3, 16), KC(256, 64, 8, 3, 8), KC(128, 32, 4, 3, 8),
                   KC(64, 64, 4, 3, 8)],
        "scatter": [KC(64, 128, 4, 2, 8), KC(64, 128, 4, 3, 8), KC(128, 64, 4, 2, 8), KC(256, 64, 8, 2),
                    KC(256, 64, 8, 2, 8), KC(256, 32, 4, 2, 8), KC(64, 64, 4, 2, 8), KC(64, 64, 4, 3, 16),
                    KC(128, 128, 8, 2, 8), KC(64, 256, 8, 2, 4), KC(32, 128, 4, 2, 8), KC(64, 128, 4, 2, 16)],
        "bwd_scatter": [KC(128, 64, 8, 2), KC(128, 64, 8, 3), KC(64, 64, 4, 2), KC(256, 64, 8, 2)],
        "bwd_main": [KC(64, 64, 4, 2), KC(64, 64, 4, 3), KC(64, 64, 4, 1), KC(32, 64, 4, 2),
                     KC(64, 32, 4, 3), KC(64, 128, 8, 2), KC(64, 64, 4, 2, 8)],
    }


def launch_report(key):
    h = tm.LAST_LAUNCH.get(key)
    regs = getattr(h, "n_regs", "?")
    spills = getattr(h, "n_spills", "?")
    return f"regs {regs} spills {spills}"


def run_chunk_sweep(case, args, rows, base, stage, names):
    """Time each stage with its default tiles and a forced number of N-chunks (programs per latent tile
    and head), beside the chunk count the launcher picks itself."""
    B, H, M, N, D = case["B"], case["H"], case["M"], case["N"], case["D"]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for name in names:
        fn, _, key = stage[name]
        kc = getattr(base, name)
        others = B * H * (-(-M // kc.block_m) if name in ("gather", "bwd_scatter") else 1)
        tiles = -(-N // kc.block_n)
        counts = [None] + [int(c) for c in args.tune_chunks.split(",") if c]
        for nc in counts:
            if nc is not None and nc > tiles:
                continue
            ms = do_bench(lambda: fn(base, nc), warmup=args.warmup, rep=args.rep)
            grid_c = tm.LAST_CHUNKS.get(key, "?")
            print(f"  {name:>11} chunks={'auto' if nc is None else nc:>5} -> C={grid_c} programs="
                  f"{grid_c * others if isinstance(grid_c, int) else '?'} ({sms} SMs) tiles/head={tiles}: "
                  f"{ms:8.4f} ms  {launch_report(key)}", flush=True)
            rows.append(dict(case=case["name"], dtype=str(case["dtype"]).replace("torch.", ""), B=B, H=H, M=M, N=N,
                             D=D, impl=f"chunks:{name}:{'auto' if nc is None else nc}:C{grid_c}", mode=name, ms=ms,
                             peak_extra_mib=float("nan"), hbm_floor_ms=float("nan")))


def run_tune(case, args, rows):
    B, H, M, N, D, dtype = case["B"], case["H"], case["M"], case["N"], case["D"], case["dtype"]
    print(f"\n== tune {case['name']} B={B} H={H} M={M} N={N} D={D} {dtype}", flush=True)
    q, k, v, dy = make_inputs(B, H, M, N, D, dtype)
    base = tm.default_config(M, D, N, dtype, fp32_precision=tm._dot_precision(dtype))
    z, lse_g = tm._run_gather(q, k, v, base)
    y, lse_s = tm._run_scatter(q, k, z, base)
    dz, delta_g, dq_s, delta_s = tm._run_bwd_scatter(q, k, z, y, lse_s, dy, base)
    dk, dv, dq_g = tm._run_bwd_main(q, k, v, z, dz, dy, lse_g, delta_g, lse_s, delta_s, base)
    ref_out = {"gather": z, "scatter": y, "bwd_scatter": dz, "bwd_main": dk}
    stage = {
        "gather": (lambda c, n=None: tm._run_gather(q, k, v, c, n), lambda o: o[0], "gather_fwd_kernel"),
        "scatter": (lambda c, n=None: tm._run_scatter(q, k, z, c, n), lambda o: o[0], "scatter_fwd_kernel"),
        "bwd_scatter": (lambda c, n=None: tm._run_bwd_scatter(q, k, z, y, lse_s, dy, c, n), lambda o: o[0],
                        "bwd_scatter_kernel"),
        "bwd_main": (lambda c, n=None: tm._run_bwd_main(q, k, v, z, dz, dy, lse_g, delta_g, lse_s, delta_s, c, n),
                     lambda o: o[0], "bwd_main_kernel"),
    }
    cands = tune_candidates(M, D, dtype)
    if args.tune_stages:
        cands = {k_: v_ for k_, v_ in cands.items() if k_ in args.tune_stages.split(",")}
    if args.tune_chunks:
        run_chunk_sweep(case, args, rows, base, stage, list(cands))
        return
    for name, kcs in cands.items():
        fn, pick, key = stage[name]
        default_kc = getattr(base, name)
        variants = list(kcs)
        if name in ("gather", "scatter", "bwd_main"):
            variants += [dataclasses.replace(default_kc, programs_per_sm=p) for p in (2, 8)]
        variants.insert(0, default_kc)
        if args.tune_occupancy:
            # the default tiles under register caps, each with several program counts per SM
            regs = [None if r == "none" else int(r) for r in args.tune_regs.split(",")]
            pps_list = [int(p) for p in args.tune_pps.split(",")]
            variants = [default_kc] + [dataclasses.replace(default_kc, maxnreg=r, programs_per_sm=p)
                                       for r in regs for p in pps_list]
        variants = [(kc, {}) for kc in dict.fromkeys(variants)]  # default first, no repeats
        if name == "bwd_main":
            # the other dQ path of the second pass for tiles where both exist (2 to 4 latent tiles)
            other = 0 if base.bwd_main_dq_tiles else 4
            variants = [v_ for kc, e in variants for v_ in
                        ([(kc, e), (kc, {"bwd_main_dq_tiles": other})] if tm._bwd_main_num_mt(M, kc.block_m, 4) > 1
                         else [(kc, e)])]
        for kc, extra in variants:
            pps = kc.programs_per_sm if kc.programs_per_sm is not None else base.programs_per_sm
            cfg = dataclasses.replace(base, **{name: kc}, **extra)
            try:
                out = fn(cfg)
                err = rel_err(pick(out), ref_out[name])
                ms = do_bench(lambda: fn(cfg), warmup=args.warmup, rep=args.rep)
                rep = launch_report(key)
            except Exception as exc:  # noqa: BLE001 - a config may fail to compile (shared memory)
                ms, err, rep = float("nan"), float("nan"), f"failed: {type(exc).__name__}: {str(exc)[:80]}"
            tag = "*" if kc == default_kc and not extra else " "
            more = "".join(f" {k_}={v_}" for k_, v_ in extra.items())
            print(f"  {tag}{name:>11} bm={kc.block_m:<4d} bn={kc.block_n:<4d} w={kc.num_warps} s={kc.num_stages} "
                  f"pps={pps} maxnreg={kc.maxnreg}{more} C={tm.LAST_CHUNKS.get(key, '?')}: {ms:8.4f} ms  "
                  f"err-vs-default {err:.1e}  {rep}", flush=True)
            rows.append(dict(case=case["name"], dtype=str(dtype).replace("torch.", ""), B=B, H=H, M=M, N=N, D=D,
                             impl=f"tune:{name}:bm{kc.block_m}:bn{kc.block_n}:w{kc.num_warps}:s{kc.num_stages}"
                                  f":pps{pps}:r{kc.maxnreg}" + "".join(f":{k_}{v_}" for k_, v_ in extra.items()),
                             mode=name, ms=ms, peak_extra_mib=float("nan"),
                             hbm_floor_ms=float("nan")))
    # whole pipeline with the default tiles (and, for fp32, other dot precisions), vs float64
    variants = [("default", base)]
    if dtype == torch.float32:
        variants += [("tf32x3", dataclasses.replace(base, fp32_precision="tf32x3")),
                     ("tf32", dataclasses.replace(base, fp32_precision="tf32"))]
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    ref_leaves = [t.detach().double().clone().requires_grad_() for t in (q, k, v)]
    from flare.ops.reference import flare_mixer_explicit
    if B * H * M * N <= (1 << 28):
        y64 = flare_mixer_explicit(*ref_leaves)
        y64.backward(dy.double())
    else:
        y64 = None
    for vname, cfg in variants:
        def fwd():
            with torch.no_grad():
                tm.flare_mixer_triton_impl(q, k, v, config=cfg)

        def fwdbwd():
            tm.flare_mixer_triton_impl(*leaves, config=cfg).backward(dy)

        yv = tm.flare_mixer_triton_impl(*leaves, config=cfg)
        for t in leaves:
            t.grad = None
        yv.backward(dy)
        errs = ""
        if y64 is not None:
            errs = "err y {:.1e} dq {:.1e} dk {:.1e} dv {:.1e}".format(
                rel_err(yv, y64), *[rel_err(a.grad, b.grad) for a, b in zip(leaves, ref_leaves)])
        t_f = do_bench(fwd, warmup=args.warmup, rep=args.rep)
        t_fb = do_bench(fwdbwd, grad_to_none=leaves, warmup=args.warmup, rep=args.rep)
        print(f"  pipeline {vname:>8}: fwd {t_f:8.4f} ms  fwd+bwd {t_fb:8.4f} ms  {errs}", flush=True)
        for mode, t in (("fwd", t_f), ("fwdbwd", t_fb)):
            rows.append(dict(case=case["name"], dtype=str(dtype).replace("torch.", ""), B=B, H=H, M=M, N=N, D=D,
                             impl=f"triton:{vname}", mode=mode, ms=t, peak_extra_mib=float("nan"),
                             hbm_floor_ms=float("nan")))
    q = k = v = dy = z = y = dz = dk = leaves = ref_leaves = y64 = None
    torch.cuda.empty_cache()


def measure_overhead(B=1, H=8, M=64, N=1024, D=16, dtype=torch.bfloat16, calls=200):
    """Host time per call where the GPU work is tiny (launch / Python overhead), plus a profile."""
    import cProfile
    import pstats

    q, k, v, dy = make_inputs(B, H, M, N, D, dtype, requires_grad=True)
    for name, fn in (("reference", flare_mixer_reference), ("triton", tm.flare_mixer_triton)):
        for mode in ("fwd", "fwdbwd"):
            def run():
                if mode == "fwd":
                    with torch.no_grad():
                        fn(q, k, v)
                else:
                    fn(q, k, v).backward(dy)
            for _ in range(10):
                run()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(calls):
                run()
            torch.cuda.synchronize()
            print(f"  overhead {name:>9} {mode:>6}: {(time.perf_counter() - t) / calls * 1e6:7.1f} us per call "
                  f"(host loop, M={M} N={N})", flush=True)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(50):
        tm.flare_mixer_triton(q, k, v).backward(dy)
    torch.cuda.synchronize()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(12)


# ------------------------------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-min-log2", type=int, default=10)
    ap.add_argument("--n-max-log2", type=int, default=22)
    ap.add_argument("--n-step-log2", type=int, default=1, help="step of the N sweep in powers of two")
    ap.add_argument("--n-log2", type=int, default=None, help="a single N = 2^n (overrides min/max)")
    ap.add_argument("--ms", default="64,256,2048", help="comma-separated latent counts M")
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--D", type=int, default=16)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--paper-darcy", action="store_true", help="only the Darcy case: fp32 B=2 H=16 D=4 M=256 N=7225")
    ap.add_argument("--with-darcy", action="store_true", help="the sweep plus the Darcy case")
    ap.add_argument("--modes", default="fwd,fwdbwd")
    ap.add_argument("--impls", default="reference,triton,sdpa")
    ap.add_argument("--sdpa-max-n-fwd", type=int, default=1 << 17)
    ap.add_argument("--sdpa-max-n-bwd", type=int, default=1 << 16)
    ap.add_argument("--ref-max-n", type=int, default=1 << 22)
    ap.add_argument("--warmup", type=int, default=25, help="ms")
    ap.add_argument("--rep", type=int, default=100, help="ms")
    ap.add_argument("--check", action="store_true", help="compare triton with an fp32 reference per case")
    ap.add_argument("--tune", action="store_true", help="per-kernel tile sweep instead of the timing sweep")
    ap.add_argument("--tune-stages", default="", help="comma-separated subset of gather,scatter,bwd_scatter,bwd_main")
    ap.add_argument("--tune-chunks", default="", help="with --tune: sweep these forced N-chunk counts per stage "
                    "(default tiles) instead of the tile sweep, e.g. 4,8,16,32")
    ap.add_argument("--tune-regs", default="none,128,96",
                    help="with --tune-occupancy: register caps to try (comma-separated, 'none' for no cap)")
    ap.add_argument("--tune-pps", default="2,3,4,6", help="with --tune-occupancy: programs per SM to try")
    ap.add_argument("--tune-occupancy", action="store_true",
                    help="with --tune: the default tiles under register caps (maxnreg) x programs per SM")
    ap.add_argument("--overhead", action="store_true", help="host-side time per call at a small size, with a profile")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 for fp32 matmuls (default: off, exact fp32)")
    ap.add_argument("--csv", default="results/bench/mixer.csv")
    args = ap.parse_args()

    if not torch.cuda.is_available():
        sys.exit("bench_mixer.py needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    import triton

    props = torch.cuda.get_device_properties(0)
    bw = measure_bandwidth()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"device: {props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}, triton "
          f"{triton.__version__}; {stamp}")
    print(f"measured copy bandwidth (read+write): {bw / 1e12:.2f} TB/s", flush=True)

    darcy = dict(name="darcy", B=2, H=16, M=256, N=7225, D=4, dtype=torch.float32)
    ms_list = [int(x) for x in args.ms.split(",") if x]
    if args.n_log2 is not None:
        ns = [1 << args.n_log2]
    else:
        ns = [1 << e for e in range(args.n_min_log2, args.n_max_log2 + 1, args.n_step_log2)]
    cases = [] if args.paper_darcy else [
        dict(name="sweep", B=args.B, H=args.H, M=m, N=n, D=args.D, dtype=DTYPES[args.dtype])
        for m in ms_list for n in ns
    ]
    if args.paper_darcy or args.with_darcy:
        cases.append(darcy)

    if args.overhead:
        measure_overhead()
    rows = []
    t0 = time.time()
    if args.tune:
        for case in cases:
            run_tune(case, args, rows)
    else:
        impls = [x for x in args.impls.split(",") if x]
        modes = [x for x in args.modes.split(",") if x]
        for case in cases:
            run_case(case, impls, modes, args, bw, rows)
    for r in rows:
        r.update(device=props.name, date=stamp, bandwidth_tbs=round(bw / 1e12, 3))

    os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
    with open(args.csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()) if rows else ["case"])
        w.writeheader()
        w.writerows(rows)
    print(f"\nwrote {len(rows)} rows to {args.csv} in {time.time() - t0:.0f} s")
    if not args.tune:
        print_table(rows)


if __name__ == "__main__":
    main()
