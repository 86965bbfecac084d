"""Where the host time of a `flare train` step goes: profiles one epoch of the trainer (after a
warm-up epoch) and prints the operators by host (CPU) time, with the GPU time beside them.

    PYTHONPATH=src python benchmarks/profile_trainer.py --data-dir <prepared dataset> [--set train.compile=true]
        [--sort self_device_time_total] [--shapes]

With ``--shapes`` (best with ``--set train.cuda_graphs=false``: a replayed graph hides its operators)
the table has one row per operator and input shapes, to tell which op launched which small kernel.
"""
import argparse
import time
from pathlib import Path

import torch

from flare.cli import parse_set
from flare.train.trainer import Trainer, resolve_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", default="flare")
    parser.add_argument("--run-dir", default="/tmp/flare-profile-run")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--sort", default="self_cpu_time_total",
                        help="profiler column to sort by, e.g. self_device_time_total for the GPU's kernels")
    parser.add_argument("--shapes", action="store_true", help="group by operator and input shapes")
    args = parser.parse_args()
    config = resolve_config(args.data_dir, args.model, 0, parse_set(args.set))
    trainer = Trainer(config, Path(args.run_dir), progress=False)
    trainer.train_epoch(0)  # warm-up: CUDA graph capture, compilation
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    t0 = time.perf_counter()
    trainer.train_epoch(1)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    plain = time.perf_counter() - t0
    with torch.profiler.profile(activities=activities, record_shapes=args.shapes) as prof:
        trainer.train_epoch(2)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    steps = trainer.steps_per_epoch
    print(f"{steps} steps, {1e3 * plain / steps:.2f} ms per step without the profiler")
    averages = prof.key_averages(group_by_input_shape=args.shapes)
    print(averages.table(sort_by=args.sort, row_limit=args.top, max_name_column_width=60,
                         max_shapes_column_width=70))


if __name__ == "__main__":
    main()
