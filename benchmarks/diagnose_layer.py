"""Why is the fused mixer slower inside one attention layer than alone? Times the mixer's forward +
backward on contiguous and on strided (projection-view) K and V, and profiles the scaling layer.

    PYTHONPATH=src python benchmarks/diagnose_layer.py --out results/bench
"""
import argparse
from pathlib import Path

import pandas as pd
import torch

from flare.ops import flare_mixer
from flare.report.scaling import attention_layer
from timing import cuda_event_times


def cuda_ms(fn, warmup=3, reps=10):
    times = cuda_event_times(fn, warmup, reps)
    return sorted(times)[len(times) // 2]


def mixer_case(backend, layout, M, N, H=8, D=16, dtype=torch.bfloat16):
    dev = "cuda"
    q = torch.randn(H, M, D, device=dev, dtype=dtype, requires_grad=True)
    if layout == "contiguous":
        k = torch.randn(1, H, N, D, device=dev, dtype=dtype, requires_grad=True)
        v = torch.randn(1, H, N, D, device=dev, dtype=dtype, requires_grad=True)
        kk, vv = k, v
    else:  # what a projection's .view(B, N, H, D).transpose(1, 2) hands over
        k = torch.randn(1, N, H * D, device=dev, dtype=dtype, requires_grad=True)
        v = torch.randn(1, N, H * D, device=dev, dtype=dtype, requires_grad=True)
        kk = k.view(1, N, H, D).transpose(1, 2)
        vv = v.view(1, N, H, D).transpose(1, 2)

    def fwd():
        return flare_mixer(q, kk, vv, backend=backend)

    def fwd_bwd():
        y = flare_mixer(q, kk, vv, backend=backend)
        (y.float().square().mean()).backward()

    with torch.no_grad():
        f = cuda_ms(fwd)
    return {"backend": backend, "layout": layout, "M": M, "N": N, "fwd_ms": f, "fwd_bwd_ms": cuda_ms(fwd_bwd)}


def profile_layer(method, M, N, out: Path):
    layer = attention_layer(method, 128, 8, M).cuda()
    x = torch.randn(1, N, 128, device="cuda")
    target = torch.randn_like(x)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(layer(x).float(), target)
        loss.backward()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=12)
    (out / f"profile_{method}_M{M}.txt").write_text(table)
    print(f"--- {method} M={M} N={N}\n{table}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for M in (128, 2048):
        for layout in ("contiguous", "strided"):
            for backend in ("reference", "triton"):
                rows.append(mixer_case(backend, layout, M, 2**20))
                print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out / "diagnose_layer.csv", index=False)
    for M in (128, 2048):
        profile_layer("flare_triton", M, 2**20, args.out)
    print(frame.to_string(index=False))


if __name__ == "__main__":
    main()
