"""The command line: help texts, train -> evaluate round trip, errors a user can act on."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from flare.cli import main, parse_set


def test_help_explains_every_command():
    out = subprocess.run([sys.executable, "-m", "flare", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("train", "evaluate", "mean-field", "aggregate", "data", "models"):
        assert command in out
    train_help = subprocess.run([sys.executable, "-m", "flare", "train", "--help"], capture_output=True,
                                text=True, check=True).stdout
    assert "--set SECTION.KEY=VALUE" in train_help and "--epochs" in train_help and "--config" in train_help


def test_parse_set_reads_yaml_values():
    assert parse_set(["model.num_latents=128", "train.learning_rate=1e-3", "model.attn_backend=reference"]) == {
        "model": {"num_latents": 128, "attn_backend": "reference"}, "train": {"learning_rate": 1e-3}}
    with pytest.raises(SystemExit, match="SECTION.KEY=VALUE"):
        parse_set(["epochs=3"])


def test_train_then_evaluate(tiny_darcy, tmp_path, capsys):
    config = tmp_path / "small.yaml"
    config.write_text("model: {channel_dim: 8, num_blocks: 1, num_heads: 2}\ntrain: {batch_size: 8}\n")
    run = tmp_path / "run"
    assert main(["train", "--data-dir", str(tiny_darcy), "--model", "flare", "--seed", "0", "--out", str(run),
                 "--epochs", "2", "--config", str(config), "--set", "model.num_latents=4", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["test_rel_l2"] > 0
    assert main(["evaluate", "--run", str(run)]) == 0
    summary = json.loads((run / "eval.json").read_text())
    assert summary["model"] == "flare" and summary["dataset"] == "darcy" and summary["test_samples"] == 8
    per_sample = pd.read_csv(run / "per_sample.csv")
    assert len(per_sample) == 24 + 8
    assert per_sample[per_sample.split == "test"].rel_l2.mean() == pytest.approx(summary["test_rel_l2"])


def test_errors_are_one_line_and_name_the_problem(tmp_path, capsys):
    assert main(["train", "--dataset", "nowhere", "--data-root", str(tmp_path), "--model", "flare",
                 "--seed", "0", "--out", str(tmp_path / "run")]) == 1
    assert "nowhere/test.h5 does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path)]) == 1
    assert "holds no finished training run" in capsys.readouterr().err
