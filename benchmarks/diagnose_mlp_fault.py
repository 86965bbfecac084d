"""Reproduce the fused MLP's known 16-bit fault (benchmarks/NOTES-mlp.md): an MLP whose input is narrower
than its hidden width (FLARE's input projection, 3 -> 64) with bf16 dots, forward + backward at many
tokens. Calls the kernels' drivers directly, past the guard in ``fused_residual_mlp``, one stage at a
time with a synchronisation after each, so the failing launch is the one named. Run it under
``compute-sanitizer`` to get the faulting address and instruction:

    PYTHONPATH=src python benchmarks/diagnose_mlp_fault.py --tokens 1048576
    PYTHONPATH=src compute-sanitizer --tool memcheck python benchmarks/diagnose_mlp_fault.py --tokens 800000

Exits 0 when every stage finished; a CUDA error ends the process (the context is lost after one).
"""
import argparse
import sys

import torch

from flare.ops import fused_mlp as fm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1 << 20)
    ap.add_argument("--in-dim", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--out-dim", type=int, default=None, help="default: the hidden width")
    ap.add_argument("--layers", type=int, default=2, help="hidden layers")
    ap.add_argument("--input-residual", action="store_true", help="h_0 += x (needs in-dim == hidden)")
    ap.add_argument("--dot", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--partials-max-mib", type=int, default=None,
                    help="override PARTIALS_MAX_BYTES (large: the backward kernel writes the partials itself)")
    ap.add_argument("--min-block", type=int, default=None,
                    help="pad every width inside the kernels to at least this many columns (tries a fix)")
    args = ap.parse_args()
    if args.min_block is not None:
        block = fm._block
        fm._block = lambda width: max(args.min_block, block(width))
    if args.partials_max_mib is not None:
        fm.PARTIALS_MAX_BYTES = args.partials_max_mib << 20
    T, IN, HID, L = args.tokens, args.in_dim, args.hidden, args.layers
    OUT = HID if args.out_dim is None else args.out_dim
    in_res, out_res = args.input_residual, OUT == HID
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: under TRITON_INTERPRET=1 only
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape, scale=1.0):
        return torch.randn(shape, device=dev, generator=g) * scale

    x = rnd(T, IN)
    w_in, b_in = rnd(HID, IN, scale=IN ** -0.5), rnd(HID, scale=0.1)
    w_hid, b_hid = rnd(L, HID, HID, scale=HID ** -0.5), rnd(L, HID, scale=0.1)
    w_out, b_out = rnd(OUT, HID, scale=HID ** -0.5), rnd(OUT, scale=0.1)
    print(f"T={T} in={IN} hidden={HID} out={OUT} L={L} residuals in={in_res} out={out_res} dot={args.dot} "
          f"partials<= {fm.PARTIALS_MAX_BYTES >> 20} MiB", flush=True)
    y, s = fm._forward(x, w_in, b_in, w_hid, b_hid, w_out, b_out, None, None, 0.0, in_res, out_res, False, args.dot, True)
    if dev == "cuda":
        torch.cuda.synchronize()
    print(f"forward ok: y {tuple(y.shape)} finite={bool(torch.isfinite(y).all())}, saved {tuple(s.shape)}", flush=True)
    dy = torch.randn_like(y)
    dx, grads = fm._backward(dy, x, s, w_in, b_in, w_hid, b_hid, w_out, None, None, 0.0, in_res, out_res, False, args.dot)
    if dev == "cuda":
        torch.cuda.synchronize()
    print(f"backward ok: dx finite={bool(torch.isfinite(dx).all())}, grads finite={bool(torch.isfinite(grads).all())}",
          flush=True)
    # the same MLP in fp32 torch: 16-bit dots should be within about 1e-2, garbage is not
    xr = x.clone().requires_grad_()
    gelu = lambda a: torch.nn.functional.gelu(a, approximate="tanh")  # noqa: E731
    h = gelu(xr @ w_in.T + b_in) + (xr if in_res else 0)
    for layer in range(L):
        h = h + gelu(h @ w_hid[layer].T + b_hid[layer])
    y_ref = h @ w_out.T + b_out + (h if out_res else 0)
    y_ref.backward(dy)
    errs = {name: ((a.float() - b).norm() / b.norm()).item() for name, a, b in (("y", y, y_ref), ("dx", dx, xr.grad))}
    bad_rows = int((~torch.isclose(dx.float(), xr.grad, rtol=0.1, atol=0.1 * xr.grad.abs().max().item())).any(1).sum())
    print("relative error vs fp32 torch: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items())
          + f"; rows of dx off by > 10 %: {bad_rows}", flush=True)
    return 0 if max(errs.values()) < 5e-2 and bad_rows == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
