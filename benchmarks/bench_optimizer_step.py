"""GPU time of what follows the backward in a training step, for FLARE at the paper's Darcy settings
(about 260 parameter tensors): gradient clipping and the AdamW update, per parameter (the trainer's
way until 2026-11-27: ``clip_grad_norm_`` then fused ``AdamW``, two groups) against the same on flat buffers (the
gradients gathered by one ``torch.cat``, clipped and updated as one tensor per group). Each way is
replayed from a CUDA graph of ``--reps`` updates (``timing.graph_replay_ms``):

    PYTHONPATH=src python benchmarks/bench_optimizer_step.py --out results/bench/optimizer_step.csv

(The trainer has since moved to ``flare.ops.fused_adamw.FusedAdamW``; it is compared with torch's
fused AdamW and ``clip_grad_norm_`` through the trainer itself: ``VARIANTS=graphs,torch_adamw bash
benchmarks/gpu_trainer_step.sh``.)
"""
from __future__ import annotations

import argparse

import torch

from flare.models import paper_model
from flare.train.optim import parameter_groups
from timing import graph_replay_ms, write_table


def per_parameter(model):
    groups = parameter_groups(model, 1e-5)
    opt = torch.optim.AdamW(groups, lr=torch.tensor(1e-4, device="cuda"), fused=True, capturable=True)
    params = [p for g in groups for p in g["params"]]
    for p in params:
        p.grad = torch.randn_like(p)

    def step():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return step


def flat(model):
    groups = parameter_groups(model, 1e-5)
    flats, grads = [], []
    for g in groups:
        n = sum(p.numel() for p in g["params"])
        flats.append(torch.nn.Parameter(torch.zeros(n, device="cuda")))
        grads.append([torch.randn_like(p) for p in g["params"]])
    opt = torch.optim.AdamW([{"params": [f], "weight_decay": g["weight_decay"]} for f, g in zip(flats, groups)],
                            lr=torch.tensor(1e-4, device="cuda"), fused=True, capturable=True)
    for f in flats:
        f.grad = torch.empty_like(f)

    def step():
        for f, gs in zip(flats, grads):
            torch.cat([g.view(-1) for g in gs], out=f.grad)
        torch.nn.utils.clip_grad_norm_(flats, 1.0)
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="results/bench/optimizer_step.csv")
    args = ap.parse_args()
    rows = []
    for way, make in {"per parameter (trainer)": per_parameter, "flat buffers": flat}.items():
        model = paper_model("flare", "darcy").cuda()
        step = make(model)
        ms = graph_replay_ms(step, args.reps)
        rows.append({"way": way, "tensors": sum(1 for _ in model.parameters()), "us": 1e3 * ms,
                     "device": torch.cuda.get_device_name()})
        print(rows[-1], flush=True)
    write_table(rows, args.out)


if __name__ == "__main__":
    main()
