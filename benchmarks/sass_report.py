"""Compile one of the fused kernels for an NVIDIA target without a GPU and report what ptxas made of it:
registers, stack (spills), shared memory and the SASS instruction mix. This is how tile and code
variants were screened before spending device time (benchmarks/NOTES-mixer.md): static counts say
nothing about time, but spills, a register count above 255 / programs per SM, a missing
``LDGSTS`` (no asynchronous copies) or a pile of ``SHFL`` / ``SEL`` (layout conversions) show up here.

    PYTHONPATH=src python benchmarks/sass_report.py bwd_main --dtype fp32 --prec tf32 --D 4 --num-mt 0
    PYTHONPATH=src python benchmarks/sass_report.py bwd_main --dtype bf16 --D 16 --num-mt 4 --stages 2
    PYTHONPATH=src python benchmarks/sass_report.py bwd_scatter --dtype fp32 --prec tf32 --D 4 --acc-order
    PYTHONPATH=src python benchmarks/sass_report.py mlp_bwd --dtype fp32 --prec tf32 --width 64
    PYTHONPATH=src python benchmarks/sass_report.py gather --dtype bf16 --D 16 --block-m 128 --sass out.sass

Needs triton's bundled ``ptxas`` and ``cuobjdump`` (in the PyPI wheel); runs on any machine. Strides of
the innermost dimension are compiled as the constant 1, as triton specialises them at launch.
"""
import argparse
import collections
import inspect
import os
import re
import subprocess
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from flare.ops import fused_mlp as fm
from flare.ops import triton_mixer as tm

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
TL_DTYPES = {"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16}

# per kernel: the jit function, its pointer arguments in the input dtype (the others are fp32), and
# the stride arguments compiled as 1
MIXER = {
    "gather": (lambda: tm._gather_fwd_kernel, "Q K V", "sqd skd svd"),
    "scatter": (lambda: tm._scatter_fwd_kernel, "Q K Y", "sqd skd"),
    "bwd_scatter": (lambda: tm._bwd_scatter_kernel, "Q K DY Y", "sqd skd sdd"),
    "bwd_main": (lambda: tm._bwd_main_kernel, "Q K V DY DK DV", "sqd skd svd sdd"),
}


# integer arguments compiled as multiples of 16, as triton specializes them at launch (--div16)
DIV16: set = set()


def signature(fn, consts, typed_ptrs, other_ptrs, ones, ptr_type):
    names = list(inspect.signature(fn.fn).parameters)
    sig, attrs = {}, {}
    for i, name in enumerate(names):
        if name in consts or name in ones:
            sig[name] = "constexpr"
        elif name in typed_ptrs or name in other_ptrs:
            sig[name] = ptr_type if name in typed_ptrs else "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "fp32" if name == "eps" else "i32"
            if name in DIV16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, {**consts, **{n: 1 for n in ones}}, attrs


def mixer_kernel(args):
    get_fn, typed, ones = MIXER[args.kernel]
    fn = get_fn()
    params = set(inspect.signature(fn.fn).parameters)
    consts = dict(D=args.D, BLOCK_M=args.block_m, BLOCK_N=args.block_n, BLOCK_D=max(16, tm._next_pow2(args.D)),
                  DOT_PREC=args.prec, ONE_M_TILE=args.one_m_tile, NUM_MT=args.num_mt, EVEN_M=True,
                  GRAD_TOKEN_MAJOR=args.token_major, ACC_ORDER=args.acc_order)
    consts = {k: v for k, v in consts.items() if k in params}
    ptrs = {n for n in params if n.isupper()} - set(consts) - {"H", "M", "N", "C"}  # those four are sizes
    return fn, signature(fn, consts, set(typed.split()), ptrs - set(typed.split()), set(ones.split()),
                         "*" + args.dtype)


def mlp_kernel(args):
    fn = fm._mlp_fwd_kernel if args.kernel == "mlp_fwd" else fm._mlp_bwd_kernel
    params = list(inspect.signature(fn.fn).parameters)
    w = args.width
    win, wout = args.in_width or w, args.out_width or w
    block = fm._block(w)
    dot = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[args.dtype]
    slot_a, slot_b = fm._grad_blocks(win, w, wout)
    # the kernels' own constants for these widths (residuals only where the widths match, as ResidualMLP)
    consts = dict(IN=win, HID=w, OUT=wout, L=args.layers, BLOCK_T=args.block_t, BLOCK_IN=fm._block_in(win, w, dot),
                  BLOCK_HID=block, BLOCK_OUT=fm._block(wout), IN_RES=win == w, OUT_RES=wout == w, ADD_X=args.add_x,
                  SAVE=True, NORM=True, PARTIALS=True, G_OUT=False, G_IN=False, SLOT_A=slot_a, SLOT_B=slot_b, DOT_DTYPE=TL_DTYPES[args.dtype],
                  DOT_PREC=args.prec, ACC_ORDER=args.acc_order)
    consts = {k: v for k, v in consts.items() if k in params}
    ptrs = {n for n in params if n.endswith("_ptr") or n in ("w_in", "b_in", "w_hid", "b_hid", "w_out", "b_out",
                                                               "ln_w", "ln_b")}
    # the saved activations are in the dot dtype, everything else fp32 (the autocast layout)
    return fn, signature(fn, consts, {"s_ptr"}, ptrs - {"s_ptr"}, set(), "*" + args.dtype)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kernel", choices=sorted(MIXER) + ["mlp_fwd", "mlp_bwd"])
    ap.add_argument("--dtype", default="bf16", choices=sorted(TL_DTYPES), help="input dtype (mlp: dot dtype)")
    ap.add_argument("--prec", default="tf32", choices=["tf32", "tf32x3", "ieee"], help="fp32 dot precision")
    ap.add_argument("--D", type=int, default=16, help="mixer head dim")
    ap.add_argument("--block-m", type=int, default=64)
    ap.add_argument("--block-n", type=int, default=64)
    ap.add_argument("--one-m-tile", action="store_true", help="scatter: all latents in one tile")
    ap.add_argument("--num-mt", type=int, default=0, help="bwd_main: latent tiles with dQ in registers (0: memory)")
    ap.add_argument("--token-major", action="store_true", help="bwd_main: dK and dV in [B, N, H, D] memory")
    ap.add_argument("--acc-order", action="store_true",
                    help="TF32: dot operands taken from accumulators in their register order (ACC_ORDER)")
    ap.add_argument("--width", type=int, default=64, help="mlp: channel width")
    ap.add_argument("--in-width", type=int, default=None, help="mlp: input width (default: --width)")
    ap.add_argument("--out-width", type=int, default=None, help="mlp: output width (default: --width)")
    ap.add_argument("--add-x", action="store_true", help="mlp: with the block's skip connection (ADD_X)")
    ap.add_argument("--layers", type=int, default=2, help="mlp: hidden layers")
    ap.add_argument("--block-t", type=int, default=64, help="mlp: tokens per program")
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--maxnreg", type=int, default=None, help="register cap per thread")
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (H100 / H200)")
    ap.add_argument("--top", type=int, default=30, help="instruction kinds to list")
    ap.add_argument("--div16", default="", help="integer arguments (e.g. strides) taken as multiples of 16, "
                    "as triton specializes them at launch; comma-separated")
    ap.add_argument("--sass", default=None, help="also write the SASS listing here")
    ap.add_argument("--ptx", default=None, help="also write the PTX here")
    args = ap.parse_args()
    DIV16.update(n for n in args.div16.split(",") if n)

    fn, (sig, consts, attrs) = (mlp_kernel if args.kernel.startswith("mlp") else mixer_kernel)(args)
    compiled = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", args.arch, 32),
                              options=dict(num_warps=args.warps, num_stages=args.stages,
                                           **({"maxnreg": args.maxnreg} if args.maxnreg else {})))
    if args.ptx:
        with open(args.ptx, "w") as f:
            f.write(compiled.asm["ptx"])
    cubin = f"/tmp/sass_report_{os.getpid()}.cubin"
    with open(cubin, "wb") as f:
        f.write(compiled.asm["cubin"])
    try:
        res = subprocess.run([os.path.join(BIN, "cuobjdump"), "-res-usage", cubin], capture_output=True, text=True,
                             check=True).stdout
        sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", cubin], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.remove(cubin)
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", res)
    ops = collections.Counter()
    for line in sass.splitlines():
        m = re.match(r"\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)", line)
        if m:
            ops[m.group(1).split(".")[0]] += 1
    if args.sass:
        with open(args.sass, "w") as f:
            f.write(sass)
    regs, stack, shared = (int(g) for g in usage.groups()) if usage else ("?", "?", "?")
    print(f"{args.kernel} sm_{args.arch} {args.dtype} warps={args.warps} stages={args.stages}: registers {regs}, "
          f"stack {stack} B, static shared {shared} B, {sum(ops.values())} instructions")
    print("  " + ", ".join(f"{k}:{v}" for k, v in ops.most_common(args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
