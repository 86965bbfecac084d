"""The training loop: one (model, dataset, seed) run in one folder, resumable from its checkpoints.

A run folder holds ``config.yaml`` (the resolved settings), ``ckpt00.pt … ckpt10.pt`` (evenly
spaced), ``latest.pt`` (every epoch, and mid-epoch on SIGTERM), ``history.csv`` (one row per
epoch), the loss / gradient-norm / learning-rate plots, and once finished ``model.pt``,
``model_stats.json`` and ``rel_error.json``, written in that order, the last marking completion.

Under ``torchrun`` the run is data parallel: every rank sees the same shuffled order and takes its
slice of each global batch, so N processes follow the same loss curve as one process with the
same global batch. Only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import csv
import json
import resource
import logging
import math
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import yaml
from tqdm import tqdm

from flare.data.format import read_meta
from flare.data.loader import load_splits
from flare.inference import check_model_fits_dataset, per_sample_relative_l2, pick_device
from flare.metrics import relative_l2_loss_terms
from flare.models import MODELS, build
from flare.ops.deferred_sums import deferred_partial_sums
from flare.ops.fused_adamw import FusedAdamW
from flare.ops.fused_loss import fused_loss_available, fused_relative_l2_loss
from flare.settings import deep_merge, model_settings
from flare.train.checkpoint import (
    LATEST,
    checkpoint_epochs,
    checkpoint_path,
    load_latest,
    rng_state,
    save_atomic,
    set_rng_state,
)
from flare.train import distributed
from flare.train.config import TrainConfig
from flare.train.graphs import GraphedStep, GraphedTraining
from flare.train.plots import plot_history
from flare.train.optim import make_optimizer, make_scheduler

log = logging.getLogger(__name__)

HISTORY_FIELDS = ["epoch", "train_loss", "train_rel_l2", "grad_norm", "learning_rate", "test_rel_l2", "seconds"]


class RunConfigMismatch(RuntimeError):
    """The run folder already holds a run with other settings."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM arrived (e.g. SLURM preemption); a checkpoint was written and a rerun resumes."""


METRICS = ("train_loss", "train_rel_l2", "grad_norm")  # per-step training metrics, averaged per epoch
DATA_ON_DEVICE_SHARE = 0.1  # the largest training split kept on the GPU, as a share of its memory


def _device_memory(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).total_memory


def resolve_config(dataset_dir: str | Path, model: str, seed: int, overrides: Mapping[str, Any] | None = None) -> dict:
    """The run's full settings: the model's paper settings for the dataset, then ``overrides``.

    ``overrides`` has optional ``model`` and ``train`` sections.
    """
    dataset_dir = Path(dataset_dir)
    meta = read_meta(dataset_dir / "test.h5")
    overrides = dict(overrides or {})
    unknown = set(overrides) - {"model", "train"}
    if unknown:
        raise ValueError(f"unknown override section(s) {sorted(unknown)}; allowed: model, train")
    settings = deep_merge(model_settings(model, meta.name), overrides)
    train_cfg = TrainConfig.from_dict(settings["train"])
    if getattr(MODELS.get(model), "needs_grid_shape", False):  # sized from the data, not from settings
        if len(meta.grid_shape) != 2:
            raise ValueError(f"model {model!r} needs a 2-D structured grid; dataset {meta.name!r} has none")
        settings["model"]["grid_shape"] = list(meta.grid_shape)
    return {
        "dataset": meta.name,
        "dataset_dir": str(dataset_dir),
        "model": model,
        "seed": int(seed),
        "in_channels": meta.in_channels,
        "out_channels": meta.out_channels,
        "model_hparams": dict(settings["model"]),
        "train": train_cfg.to_dict(),
    }


def _compare_configs(saved: dict, resolved: dict, run_dir: Path) -> None:
    ignore = {("train", "device")}
    diffs = []
    for key in sorted(set(saved) | set(resolved)):
        a, b = saved.get(key), resolved.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if (key, sub) not in ignore and a.get(sub) != b.get(sub):
                    diffs.append(f"{key}.{sub}: {a.get(sub)!r} -> {b.get(sub)!r}")
        elif key != "dataset_dir" and a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    if diffs:
        raise RunConfigMismatch(
            f"{run_dir} holds a run with other settings ({'; '.join(diffs)}); "
            "delete the folder or choose another --out to start afresh"
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _sum_rows(start: list[float], rows: torch.Tensor) -> list[float]:
    """``start`` plus the rows of ``rows`` added one after another in float64 on the host: the order
    of an uninterrupted epoch's additions, so a resumed epoch's totals are the same numbers."""
    totals = list(start)
    for row in rows.cpu().tolist():
        totals = [t + v for t, v in zip(totals, row)]
    return totals


class Trainer:
    """Trains one model on one dataset, writing checkpoints and metrics into ``run_dir``."""

    def __init__(self, config: dict, run_dir: str | Path, progress: bool = True):
        self.config = config
        self.run_dir = Path(run_dir)
        self.cfg = TrainConfig.from_dict(config["train"])
        device = pick_device(self.cfg.device)
        self.dist = distributed.setup(device.type)
        if device.type == "cuda" and self.dist.enabled:
            device = torch.device("cuda", self.dist.local_rank)
        self.device = device
        self.progress = progress and self.dist.is_main
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.cfg.tf32
            torch.backends.cudnn.allow_tf32 = self.cfg.tf32
        if self.cfg.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("training setting precision=fp16 needs a CUDA device; use bf16 or fp32 on the CPU")

        seed_everything(config["seed"])
        self.train_set, self.test_set = load_splits(config["dataset_dir"])
        meta = self.train_set.meta
        if (meta.in_channels, meta.out_channels) != (config["in_channels"], config["out_channels"]):
            raise ValueError(
                f"dataset {config['dataset_dir']} has {meta.in_channels} input / {meta.out_channels} output "
                f"channels, the run was configured for {config['in_channels']} / {config['out_channels']}"
            )
        self.grid_shape = tuple(meta.grid_shape)
        if self.cfg.derivative_loss_weight and len(self.grid_shape) != 2:
            raise ValueError(
                f"derivative_loss_weight needs a 2-D structured grid; dataset {meta.name!r} has grid_shape "
                f"{list(self.grid_shape)}. Set train.derivative_loss_weight: 0 for this dataset"
            )
        if self.cfg.batch_size % self.dist.world_size:
            raise ValueError(
                f"the global batch_size {self.cfg.batch_size} must be divisible by the {self.dist.world_size} "
                "processes"
            )
        self.local_batch_size = self.cfg.batch_size // self.dist.world_size
        self.steps_per_epoch = len(self.train_set) // self.cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size {self.cfg.batch_size} exceeds the {len(self.train_set)} training samples of "
                f"{config['dataset_dir']}"
            )
        self.model = build(config["model"], meta.in_channels, meta.out_channels, **config["model_hparams"])
        check_model_fits_dataset(self.model, self.train_set)
        self.needs_edges = getattr(self.model, "needs_edges", False)
        self.model.to(self.device)
        self.net = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        # CUDA graphs for one process on fixed-size samples (DDP's hooks do not mix with them;
        # variable sizes never repeat a shape). With torch.compile, its own CUDA graphs
        # (mode "reduce-overhead") replace ours.
        use_graphs = (self.cfg.cuda_graphs and self.device.type == "cuda" and not self.dist.enabled
                      and self.train_set.data.fixed_size)
        self.compiled_graphs = bool(self.cfg.compile and use_graphs)
        if self.cfg.compile:
            self.net = torch.compile(self.net, mode="reduce-overhead" if self.compiled_graphs else None)
        # the whole step up to the optimizer as one graph, except under fp16 loss scaling (its inf
        # checks synchronise with the host); there, or if that capture fails, the model alone
        self.step_graph = GraphedStep(self._forward_backward,
                                      enabled=use_graphs and not self.cfg.compile and self.cfg.precision != "fp16")
        self.graphs = GraphedTraining(self.model, enabled=use_graphs and not self.cfg.compile
                                      and not self.step_graph.enabled)
        self.ema = None
        if self.cfg.ema_decay > 0:
            self.ema = torch.optim.swa_utils.AveragedModel(
                self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(self.cfg.ema_decay))
        self.optimizer = make_optimizer(self.model, self.cfg)
        self.fused_optimizer = isinstance(self.optimizer, FusedAdamW)
        # the fused kernels' weight-gradient partials summed together after the backward (a few
        # launches instead of 26 at the Darcy size; flare.ops.deferred_sums); one process, no compile
        self.defer_sums = self.device.type == "cuda" and not self.dist.enabled and not self.cfg.compile
        self.scheduler = make_scheduler(self.optimizer, self.cfg, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.precision == "fp16")
        self.y_norm = self.train_set.y_normalizer.to(self.device)
        # the loss as three Triton kernels on a GPU (flare.ops.fused_loss; the same numbers as the
        # torch operations, which take two dozen launches each way at the paper's Darcy size)
        self.fused_loss = self.device.type == "cuda" and fused_loss_available()
        # A fixed-size training split small next to the GPU's memory lives on the GPU: batches are
        # gathered there, so no step waits on a host-to-device copy (a copy from pageable memory
        # blocks the host until the GPU has finished the previous step).
        self.data_on_device = (self.device.type == "cuda" and self.train_set.data.fixed_size
                               and self.train_set.nbytes <= DATA_ON_DEVICE_SHARE * _device_memory(self.device))
        if self.data_on_device:
            self.train_set.to(self.device)
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0  # completed steps of the current epoch (non-zero only after SIGTERM)
        self.epoch_totals: dict[str, float] = {}
        # steps between host synchronisations on a GPU: the metrics add up on the device and the
        # loss is checked for NaN / Inf there, read every sync_every steps, at the end of each epoch
        # and before any save (so a bad step is still named, and no checkpoint holds its weights)
        self.sync_every = 50 if self.device.type == "cuda" else 1
        self.history: list[dict] = []
        self._stop_requested = False

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "epoch_totals": dict(self.epoch_totals),
            "rng": rng_state(),
            "history": self.history,
            "config": self.config,
        }

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.step_in_epoch = state.get("step_in_epoch", 0)
        self.epoch_totals = dict(state.get("epoch_totals", {}))
        self.history = list(state["history"])
        set_rng_state(state["rng"])

    def save(self, path: Path) -> None:
        """Rank 0 writes ``path`` atomically; the other ranks wait for it."""
        if self.dist.is_main:
            save_atomic(self.state(), path)
        distributed.barrier(self.dist)

    def resume(self) -> bool:
        """Continue from the latest loadable checkpoint, if there is one."""
        found = load_latest(self.run_dir)
        if found is None:
            return False
        path, state = found
        self.load_state(state)
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step_in_epoch)
        return True

    # -- training ----------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> torch.Tensor:
        """Shuffled sample order of ``epoch``, a function of (seed, epoch) only, so a resumed run sees
        the same batches as an uninterrupted one and every rank sees the same order."""
        generator = torch.Generator().manual_seed(self.config["seed"] * 1_000_003 + epoch)
        return torch.randperm(len(self.train_set), generator=generator)

    def autocast(self):
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        # no cast cache: CUDA graphs capture the casts with the rest (and results are the same)
        return torch.autocast(self.device.type, dtype=dtype, cache_enabled=False)

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss on decoded values and the plain relative L2, both averaged over the batch
        (``relative_l2_with_gradients`` and ``relative_l2``, computed together)."""
        if self.fused_loss:
            return fused_relative_l2_loss(pred, target, self.y_norm.std, self.y_norm.mean, self.grid_shape,
                                          self.cfg.derivative_loss_weight)
        # decode(pred) - decode(target): the normaliser's mean cancels
        error = (pred.float() - target) * self.y_norm.std.to(target.dtype)
        with torch.no_grad():
            target = self.y_norm.decode(target)
        per_sample, rel = relative_l2_loss_terms(error, target, self.grid_shape, self.cfg.derivative_loss_weight)
        return per_sample.mean(), rel.mean()

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor, *edges: torch.Tensor
                          ) -> tuple[torch.Tensor]:
        """One step up to the optimizer update (forward, loss, backward, unscaling, clipping): a
        1-tuple of the step's METRICS (loss, relative L2, gradient norm before clipping) as one float64
        row, detached; ``edges`` for a mesh model. Replayed from one CUDA graph by
        ``self.step_graph`` where that applies."""
        with self.autocast():
            if self.graphs.enabled:
                pred = self.graphs(x, *edges)
            else:
                pred = self.net(x, **({"edges": edges[0]} if edges else {}))
        loss, rel = self.loss(pred, y)
        self.optimizer.zero_grad(set_to_none=True)
        scaled = self.scaler.scale(loss)
        with deferred_partial_sums(scaled, enabled=self.defer_sums):
            scaled.backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.clip_grad_norm if self.cfg.clip_grad_norm > 0 else math.inf
        if self.fused_optimizer:  # the norm now, the clipping inside step(gathered=True)
            grad_norm = self.optimizer.gather_grads(max_norm)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        return (torch.stack([loss.detach(), rel.detach(), grad_norm.detach()]).double(),)

    def train_epoch(self, epoch: int) -> dict:
        """Run the steps of ``epoch`` from ``self.step_in_epoch`` on; returns the epoch's mean metrics.

        On SIGTERM the state after the current step is saved to ``latest.pt`` and
        :class:`TrainingInterrupted` is raised; a rerun continues with the next step.
        """
        self.net.train()
        order = self.epoch_order(epoch)
        saved = [float((self.epoch_totals or {}).get(name, 0.0)) for name in METRICS]
        # each step's METRICS row, written on the device (one copy per step, no host sync); read back
        # every sync_every steps to find a non-finite loss, and summed on the host in step order
        record = torch.zeros((self.steps_per_epoch, len(METRICS)), dtype=torch.float64, device=self.device)
        first, checked = self.step_in_epoch, self.step_in_epoch  # first step of this call, first unchecked
        bs, local = self.cfg.batch_size, self.local_batch_size
        order_on_device = order.to(self.device) if self.data_on_device else None
        for step in range(self.step_in_epoch, self.steps_per_epoch):
            start = step * bs + self.dist.rank * local
            indices = order[start : start + local].tolist()
            x, y = self.train_set.batch(indices if order_on_device is None else order_on_device[start : start + local])
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            edges = (self.train_set.batch_edges(indices).to(self.device),) if self.needs_edges else ()
            if self.compiled_graphs:  # the previous step's graph outputs are no longer needed
                torch.compiler.cudagraph_mark_step_begin()
            (metrics,) = self.step_graph(x, y, *edges)
            if self.step_graph.failed and not self.graphs.enabled:
                self.graphs.enabled = True  # the whole step did not capture: try the model alone
            record[step].copy_(metrics)
            if (step + 1) % self.sync_every == 0:  # every step on the CPU: before its update
                checked = self._check_finite(record, checked, step + 1, epoch)
            self.scaler.step(self.optimizer, **({"gathered": True} if self.fused_optimizer else {}))
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            if distributed.any_rank(self._stop_requested, self.dist, self.device):
                self._check_finite(record, checked, step + 1, epoch)
                self.step_in_epoch = step + 1
                self.epoch_totals = dict(zip(METRICS, _sum_rows(saved, record[first : step + 1])))
                self.save(self.run_dir / LATEST)
                raise TrainingInterrupted(
                    f"stopped by SIGTERM at epoch {epoch + 1}, step {step + 1}; state saved to "
                    f"{self.run_dir / LATEST}, run the same command again to resume"
                )
        self._check_finite(record, checked, self.steps_per_epoch, epoch)
        totals = _sum_rows(saved, record[first:])
        self.step_in_epoch, self.epoch_totals = 0, {}
        means = {name: value / self.steps_per_epoch for name, value in zip(METRICS, totals)}
        return distributed.mean_over_ranks(means, self.dist, self.device)

    def _check_finite(self, record: torch.Tensor, start: int, stop: int, epoch: int) -> int:
        """Raise, naming the step, if the loss of a step in [start, stop) of this epoch was NaN or Inf
        (a host sync); returns ``stop``, the first step not yet checked."""
        losses = record[start:stop, 0].cpu()
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            step = start + int(bad[0])
            raise FloatingPointError(
                f"loss is {float(losses[int(bad[0])])} at epoch {epoch + 1}, step {step + 1}; the latest good "
                f"checkpoint in {self.run_dir} is kept"
            )
        return stop

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True

    def fit(self) -> dict:
        """Train to the configured number of epochs (resuming if possible) and write the results."""
        try:
            return self._fit()
        finally:
            distributed.teardown(self.dist)

    def _fit(self) -> dict:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config_file = self.run_dir / "config.yaml"
        if config_file.exists():
            _compare_configs(yaml.safe_load(config_file.read_text()), self.config, self.run_dir)
        if self.dist.is_main:
            config_file.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.resume()

        ckpt_at = checkpoint_epochs(self.cfg.epochs, self.cfg.num_checkpoints)
        if self.epoch == 0 and self.step_in_epoch == 0:
            self.save(checkpoint_path(self.run_dir, 0))
        bar = tqdm(
            total=self.cfg.epochs, initial=self.epoch, desc=f"{self.config['model']}/{self.config['dataset']}",
            unit="epoch", file=sys.stderr, disable=not self.progress, mininterval=1.0,
        )
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous_handler = signal.signal(signal.SIGTERM, self._request_stop) if in_main_thread else None
        try:
            while self.epoch < self.cfg.epochs:
                start = time.perf_counter()
                row = {"epoch": self.epoch + 1, **self.train_epoch(self.epoch)}
                row["learning_rate"] = self.scheduler.get_last_lr()[0]
                self.epoch += 1
                row["seconds"] = time.perf_counter() - start
                checkpoints_now = [k for k, e in enumerate(ckpt_at) if e == self.epoch and k > 0]
                row["test_rel_l2"] = self.test_error() if checkpoints_now else float("nan")
                self.history.append(row)
                for k in checkpoints_now[-1:]:
                    self.save(checkpoint_path(self.run_dir, k))
                self.save(self.run_dir / LATEST)
                bar.set_postfix(loss=f"{row['train_loss']:.4f}", test=f"{row['test_rel_l2']:.4f}")
                bar.update(1)
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous_handler)
            bar.close()
        return self.finish()

    def eval_model(self) -> torch.nn.Module:
        """The weights that are evaluated and exported: the moving average when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def test_error(self) -> float:
        return float(per_sample_relative_l2(self.eval_model(), self.test_set, self.device,
                                            self.cfg.eval_batch_size).mean())

    def peak_memory_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB

    def finish(self) -> dict:
        """Write history, plots, final weights, statistics and the relative errors (the last marks completion)."""
        errors = {
            "train_rel_l2": float(per_sample_relative_l2(self.eval_model(), self.train_set, self.device,
                                                         self.cfg.eval_batch_size).mean()),
            "test_rel_l2": self.test_error(),
        }
        if not self.dist.is_main:
            return errors
        with open(self.run_dir / "history.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
            writer.writeheader()
            writer.writerows(self.history)
        if self.cfg.plots and self.history:
            plot_history(self.history, self.run_dir)
        save_atomic({"model": self.eval_model().state_dict(), "config": self.config}, self.run_dir / "model.pt")
        seconds = [row["seconds"] for row in self.history]
        stats = {
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "device": str(self.device),
            "processes": self.dist.world_size,
            "precision": self.cfg.precision,
            "epochs": self.epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "seconds_per_epoch": float(np.median(seconds)) if seconds else None,
            "seconds_per_step": float(np.median(seconds)) / self.steps_per_epoch if seconds else None,
            "peak_memory_bytes": self.peak_memory_bytes(),
            "peak_memory_kind": "CUDA allocated" if self.device.type == "cuda" else "process max RSS",
        }
        (self.run_dir / "model_stats.json").write_text(json.dumps(stats, indent=2))
        tmp = self.run_dir / ".rel_error.json.tmp"
        tmp.write_text(json.dumps(errors, indent=2))
        tmp.replace(self.run_dir / "rel_error.json")
        return errors


def train(
    dataset_dir: str | Path,
    model: str,
    seed: int,
    out_dir: str | Path,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict:
    """Train ``model`` on the dataset in ``dataset_dir`` with ``seed``; resumes a run found in ``out_dir``."""
    config = resolve_config(dataset_dir, model, seed, overrides)
    return Trainer(config, out_dir, progress=progress).fit()
