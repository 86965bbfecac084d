"""Which PyTorch operators launch the small kernels of the paper Darcy training step: one eager step
of FLARE (fp32 + TF32, fused kernels), profiled with shapes, operators grouped by name and input
shapes, sorted by GPU time. For finding the copies, adds and reductions between the fused kernels.

    FLARE_CONFIG_DIR=config PYTHONPATH=src python benchmarks/ops_by_shape.py --top 40
"""
from __future__ import annotations

import argparse

import torch

from flare.metrics import relative_l2
from flare.models import paper_model

OPS = ("aten::copy_", "aten::add", "aten::add_", "aten::sum", "aten::cat", "aten::stack", "aten::mm",
       "aten::addmm", "aten::clone", "aten::contiguous", "aten::reshape", "aten::fill_", "aten::zero_",
       "aten::mul", "aten::div")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="darcy")
    ap.add_argument("--points", type=int, default=7225)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--set", action="append", default=["mlp_backend=auto"], metavar="KEY=VALUE")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    overrides = {k: (v if not v.isdigit() else int(v)) for k, v in (s.split("=", 1) for s in args.set)}
    model = paper_model("flare", args.dataset, **overrides).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    c_in = model.in_proj.fc_in.in_features
    x = torch.randn(args.batch, args.points, c_in, device="cuda")
    y = torch.randn(args.batch, args.points, model.out_proj.fc_out.out_features, device="cuda")

    def step():
        loss = relative_l2(model(x), y).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA], record_shapes=True) as prof:
        step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages(group_by_input_shape=True) if e.key in OPS and e.device_time_total > 0]
    print(f"{'GPU ms':>8} {'count':>5}  operator  input shapes")
    for e in sorted(events, key=lambda e: -e.device_time_total)[:args.top]:
        print(f"{e.device_time_total / 1e3:8.3f} {e.count:5d}  {e.key}  {e.input_shapes}")


if __name__ == "__main__":
    main()
