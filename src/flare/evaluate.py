"""Evaluation of trained runs and of the mean-field baseline: ``eval.json`` + ``per_sample.csv``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from flare.data.format import read_split
from flare.data.loader import StandardDataset
from flare.inference import check_model_fits_dataset, per_sample_relative_l2, pick_device
from flare.metrics import relative_l2
from flare.models import build


def _write_results(out_dir: Path, summary: dict, per_sample: dict[str, np.ndarray]) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = [pd.DataFrame({"split": split, "sample": np.arange(len(err)), "rel_l2": err})
              for split, err in per_sample.items()]
    pd.concat(frames).to_csv(out_dir / "per_sample.csv", index=False)
    for split, err in per_sample.items():
        summary[f"{split}_rel_l2"] = float(err.mean())
        summary[f"{split}_rel_l2_std_over_samples"] = float(err.std())
        summary[f"{split}_samples"] = int(len(err))
    tmp = out_dir / ".eval.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out_dir / "eval.json")
    return summary


def load_run(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The trained model of the finished run in ``run_dir`` (its ``model.pt``), on ``device`` and in
    eval mode, with the run's config (dataset, model, seed, channels, hyper-parameters)."""
    run_dir = Path(run_dir)
    model_file = run_dir / "model.pt"
    if not model_file.is_file():
        raise FileNotFoundError(f"{model_file} not found: {run_dir} holds no finished training run")
    saved = torch.load(model_file, map_location="cpu", weights_only=False)
    config = saved["config"]
    model = build(config["model"], config["in_channels"], config["out_channels"], **config["model_hparams"])
    model.load_state_dict(saved["model"])
    return model.to(device).eval(), config


def check_run_fits_dataset(run_dir: str | Path, config: dict, data: StandardDataset) -> None:
    """The split ``data`` has the channel counts the run in ``run_dir`` (its ``config``) was trained for."""
    if (data.meta.in_channels, data.meta.out_channels) != (config["in_channels"], config["out_channels"]):
        raise ValueError(
            f"{data.path} has {data.meta.in_channels} input / {data.meta.out_channels} "
            f"output channels but the model in {run_dir} was trained for "
            f"{config['in_channels']} / {config['out_channels']}"
        )


def evaluate(run_dir: str | Path, dataset_dir: str | Path | None = None, device: str = "auto",
             batch_size: int = 8) -> dict:
    """Relative L2 (decoded values) of the trained model in ``run_dir`` on its dataset's train and test splits.

    ``dataset_dir`` defaults to the folder the run was trained on.
    """
    run_dir = Path(run_dir)
    model, config = load_run(run_dir)
    dataset_dir = Path(dataset_dir or config["dataset_dir"])
    dev = pick_device(device)
    model.to(dev)
    per_sample = {}
    for split in ("train", "test"):
        data = StandardDataset(dataset_dir / f"{split}.h5")
        check_run_fits_dataset(run_dir, config, data)
        check_model_fits_dataset(model, data)
        per_sample[split] = per_sample_relative_l2(model, data, dev, batch_size)
    summary = {"dataset": config["dataset"], "model": config["model"], "seed": config["seed"],
               "parameters": sum(p.numel() for p in model.parameters())}
    return _write_results(run_dir, summary, per_sample)


def mean_field(dataset_dir: str | Path, out_dir: str | Path) -> dict:
    """The baseline that predicts the training mean: pointwise over samples when all samples share
    their points, else one value per channel. Shows what learning bought."""
    dataset_dir = Path(dataset_dir)
    train = read_split(dataset_dir / "train.h5")
    if train.fixed_size:
        mean = train.y.reshape(len(train), -1, train.y.shape[1]).mean(axis=0)  # [N, c]
    else:
        mean = train.y.mean(axis=0, keepdims=True)  # [1, c]
    per_sample = {}
    for split in ("train", "test"):
        data = train if split == "train" else read_split(dataset_dir / "test.h5")
        errors = []
        for i in range(len(data)):
            _, y = data.sample(i)
            pred = np.array(np.broadcast_to(mean, y.shape))
            errors.append(relative_l2(torch.from_numpy(pred)[None], torch.from_numpy(y)[None]).item())
        per_sample[split] = np.asarray(errors)
    summary = {"dataset": train.meta.name, "model": "mean_field", "seed": 0, "parameters": 0}
    return _write_results(Path(out_dir), summary, per_sample)
