"""How much of FLARE's paper Darcy training step is launch overhead? Times the step eagerly and with
the model's forward and backward captured in CUDA graphs (torch.cuda.make_graphed_callables), and
sums the kernels' own GPU time from a profile.

    PYTHONPATH=src python benchmarks/bench_graph_step.py --out results/bench
"""
import argparse
from pathlib import Path

import pandas as pd
import torch

from flare.metrics import relative_l2
from flare.models import PAPER_DATASET_CHANNELS, paper_model
from timing import cuda_event_times, profiled_kernels


def median_ms(step, warmup=5, reps=20):
    times = cuda_event_times(step, warmup, reps)
    return sorted(times)[len(times) // 2]


def bench(backend: str, mode: str) -> dict:
    torch.manual_seed(0)
    c_in, c_out = PAPER_DATASET_CHANNELS["darcy"]
    model = paper_model("flare", "darcy", attn_backend=backend).cuda()
    x = torch.randn(2, 85 * 85, c_in, device="cuda")
    y = torch.randn(2, 85 * 85, c_out, device="cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=mode != "eager")
    forward = model
    if mode == "graphed":
        forward = torch.cuda.make_graphed_callables(model, (x,))

    def step():
        loss = relative_l2(forward(x), y).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ms = median_ms(step)
    return {"backend": backend, "mode": mode, "step_ms": ms, "kernel_ms": profiled_kernels(step)[0]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True  # the paper trains fp32 with TF32
    torch.backends.cudnn.allow_tf32 = True
    rows = []
    for backend in ("reference", "triton"):
        for mode in ("eager", "eager_fused_adamw", "graphed"):
            try:
                rows.append(bench(backend, mode))
            except Exception as err:  # report, keep measuring the others
                rows.append({"backend": backend, "mode": mode, "error": f"{type(err).__name__}: {err}"[:300]})
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "graph_step.csv", index=False)
    print(frame.to_string(index=False))


if __name__ == "__main__":
    main()
