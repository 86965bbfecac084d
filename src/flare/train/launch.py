"""Start a training command on N GPUs of this machine, with a lock per GPU.

Snakemake counts GPUs (``resources: gpu=N``) but does not say which ones a job may use, so two
concurrent jobs would both land on GPU 0. The launcher takes N free GPUs by locking one file per GPU
(``fcntl.flock``; the kernel drops a lock when its holder dies, so a killed job never leaves a GPU
taken), sets ``CUDA_VISIBLE_DEVICES`` to them and runs the command, under ``torchrun`` with N
processes when N > 1. Under SLURM (``SLURM_JOB_ID`` set) the scheduler has already chosen the
GPUs and no locks are taken.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

GPU_IDS_ENV = "FLARE_GPU_IDS"  # the GPUs the launcher may hand out, e.g. "0,1,2,3"


def available_gpu_ids() -> list[str]:
    """GPUs to hand out: ``$FLARE_GPU_IDS``, else ``$CUDA_VISIBLE_DEVICES``, else all CUDA devices."""
    for var in (GPU_IDS_ENV, "CUDA_VISIBLE_DEVICES"):
        if os.environ.get(var, "").strip():
            return [g.strip() for g in os.environ[var].split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


class GpuLocks:
    """Exclusive locks on ``count`` GPUs out of ``gpu_ids``; waits until that many are free."""

    def __init__(self, count: int, gpu_ids: Sequence[str], lock_dir: str | Path, poll_seconds: float = 2.0,
                 timeout: float | None = None):
        if count > len(gpu_ids):
            raise RuntimeError(
                f"{count} GPUs requested but this machine offers {len(gpu_ids)} ({','.join(gpu_ids) or 'none'}); "
                f"lower the job's gpu resource or set {GPU_IDS_ENV}"
            )
        self.count, self.gpu_ids, self.lock_dir = count, list(gpu_ids), Path(lock_dir)
        self.poll_seconds, self.timeout = poll_seconds, timeout
        self.held: dict[str, int] = {}

    def _try(self, gpu: str) -> bool:
        fd = os.open(self.lock_dir / f"gpu{gpu}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.held[gpu] = fd
        return True

    def acquire(self) -> list[str]:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            for gpu in self.gpu_ids:
                if len(self.held) == self.count:
                    return list(self.held)
                if gpu not in self.held:
                    self._try(gpu)
            if len(self.held) == self.count:
                return list(self.held)
            # not enough free: give back what we hold so two waiting jobs cannot deadlock
            self.release()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no {self.count} free GPUs among {','.join(self.gpu_ids)} within {self.timeout} s")
            time.sleep(self.poll_seconds)

    def release(self) -> None:
        for fd in self.held.values():
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self.held = {}

    def __enter__(self) -> list[str]:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def command_for(gpus: int, flare_args: Sequence[str]) -> list[str]:
    """``python -m flare ARGS``, or the same under ``torchrun`` with ``gpus`` processes."""
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
                "-m", "flare", *flare_args]
    return [sys.executable, "-m", "flare", *flare_args]


def launch(gpus: int, flare_args: Sequence[str], lock_dir: str | Path) -> int:
    """Run ``flare ARGS`` on ``gpus`` locked GPUs (0: as it is); returns the exit code."""
    if gpus < 0:
        raise ValueError(f"--gpus must be >= 0, got {gpus}")
    command = command_for(gpus, flare_args)
    if gpus == 0 or os.environ.get("SLURM_JOB_ID"):
        return subprocess.call(command)
    with GpuLocks(gpus, available_gpu_ids(), lock_dir) as held:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(held)}
        print(f"flare launch: GPUs {','.join(held)}", file=sys.stderr, flush=True)
        return subprocess.call(command, env=env)
