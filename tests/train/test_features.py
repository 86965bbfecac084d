"""Trainer features: data parallel under torchrun (gloo), bf16 autocast, EMA, plots, statistics."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from flare.train import TrainConfig, train

TINY = {"model": {"channel_dim": 8, "num_blocks": 1, "num_heads": 2, "num_latents": 4},
        "train": {"epochs": 3, "batch_size": 4}}
SETTINGS = ["--set", "model.channel_dim=8", "--set", "model.num_blocks=1", "--set", "model.num_heads=2",
            "--set", "model.num_latents=4", "--set", "train.batch_size=4", "--epochs", "3", "--no-progress"]


@pytest.mark.slow
def test_two_process_gloo_ddp_follows_the_single_process_loss_curve(tiny_darcy, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, double = tmp_path / "single", tmp_path / "ddp"
    # on the CPU everywhere (gloo): on a one-GPU machine a second CUDA process has no device
    base = ["-m", "flare", "train", "--data-dir", str(tiny_darcy), "--model", "flare", "--seed", "0", *SETTINGS,
            "--set", "train.device=cpu"]
    subprocess.run([sys.executable, *base, "--out", str(single)], env=env, check=True, capture_output=True)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         *base, "--out", str(double)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    one = pd.read_csv(single / "history.csv")
    two = pd.read_csv(double / "history.csv")
    for column in ("train_loss", "train_rel_l2"):
        rel = ((one[column] - two[column]).abs() / one[column].abs()).max()
        assert rel < 1e-5, (column, one[column].tolist(), two[column].tolist())
    assert json.loads((double / "model_stats.json").read_text())["processes"] == 2
    a = torch.load(single / "model.pt", weights_only=False)["model"]
    b = torch.load(double / "model.pt", weights_only=False)["model"]
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


def test_bf16_autocast_trains_on_cpu(tiny_darcy, tmp_path):
    overrides = {**TINY, "train": {**TINY["train"], "precision": "bf16"}}
    errors = train(tiny_darcy, "flare", 0, tmp_path / "run", overrides, progress=False)
    assert 0 < errors["test_rel_l2"] < 10
    assert json.loads((tmp_path / "run/model_stats.json").read_text())["precision"] == "bf16"


def test_fp16_on_cpu_is_refused(tiny_darcy, tmp_path):
    overrides = {**TINY, "train": {**TINY["train"], "precision": "fp16", "device": "cpu"}}
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train(tiny_darcy, "flare", 0, tmp_path / "run", overrides, progress=False)


def test_ema_weights_are_the_exported_ones(tiny_darcy, tmp_path):
    overrides = {**TINY, "train": {**TINY["train"], "ema_decay": 0.9}}
    train(tiny_darcy, "flare", 0, tmp_path / "run", overrides, progress=False)
    exported = torch.load(tmp_path / "run/model.pt", weights_only=False)["model"]
    state = torch.load(tmp_path / "run/latest.pt", weights_only=False)
    raw, ema = state["model"], state["ema"]
    key = "blocks.0.mixer.latent_queries"
    assert torch.equal(exported[key], ema[f"module.{key}"]) and not torch.equal(exported[key], raw[key])


def test_run_folder_has_plots_and_statistics(tiny_darcy, tmp_path):
    train(tiny_darcy, "flare", 0, tmp_path / "run", TINY, progress=False)
    run = tmp_path / "run"
    for name in ("losses.png", "grad_norm.png", "learning_rate.png"):
        assert (run / name).stat().st_size > 1000
    stats = json.loads((run / "model_stats.json").read_text())
    assert stats["peak_memory_bytes"] > 0 and stats["seconds_per_step"] > 0 and stats["epochs"] == 3


def test_schema_lists_exactly_the_training_settings():
    schema = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "../../config/schema.yaml")))
    allowed = schema["properties"]["train"]["propertyNames"]["enum"]
    assert sorted(allowed) == sorted(TrainConfig().to_dict())


@pytest.mark.slow
def test_torch_compile_trains_like_eager(tmp_path):
    import numpy as np

    from flare.data.format import write_dataset
    from tests.conftest import point_cloud_meta

    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(16, 2)) for _ in range(8)]
    write_dataset(tmp_path / "d", point_cloud_meta(), (xs, [np.sin(x[:, :1]) for x in xs]), (xs[:2], [x[:, :1] for x in xs[:2]]))
    tiny = {"model": {"channel_dim": 8, "num_blocks": 1, "num_heads": 2, "num_latents": 4},
            "train": {"epochs": 2, "batch_size": 4}}
    eager = train(tmp_path / "d", "flare", 0, tmp_path / "eager", tiny, progress=False)
    compiled_settings = {**tiny, "train": {**tiny["train"], "compile": True}}
    compiled = train(tmp_path / "d", "flare", 0, tmp_path / "compiled", compiled_settings, progress=False)
    assert compiled["test_rel_l2"] == pytest.approx(eager["test_rel_l2"], rel=1e-4)
    a = pd.read_csv(tmp_path / "eager/history.csv")["train_loss"]
    b = pd.read_csv(tmp_path / "compiled/history.csv")["train_loss"]
    assert ((a - b).abs() / a.abs()).max() < 1e-4
