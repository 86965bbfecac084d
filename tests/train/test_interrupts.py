"""A training process killed (SIGKILL) or preempted (SIGTERM) and started again ends with weights
bitwise equal to an uninterrupted run on the CPU."""
import os
import random
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

SETTINGS = ["--set", "model.channel_dim=8", "--set", "model.num_blocks=1", "--set", "model.num_heads=2",
            "--set", "model.num_latents=4", "--set", "train.batch_size=2", "--epochs", "40", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count in every process: identical sums


def command(dataset, out):
    return [sys.executable, "-m", "flare", "train", "--data-dir", str(dataset), "--model", "flare",
            "--seed", "0", "--out", str(out), *SETTINGS]


def weights(run):
    return torch.load(run / "model.pt", weights_only=False)["model"]


def wait_for(path, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def uninterrupted(tiny_darcy, tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run(command(tiny_darcy, run), env=ENV, check=True, capture_output=True)
    return run


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_rerun_is_bitwise_equal(tiny_darcy, tmp_path, uninterrupted):
    run = tmp_path / "run"
    proc = subprocess.Popen(command(tiny_darcy, run), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(run / "ckpt01.pt")
    time.sleep(random.Random().uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model.pt").exists(), "the kill came too late to test anything"
    subprocess.run(command(tiny_darcy, run), env=ENV, check=True, capture_output=True)
    assert_same_weights(weights(uninterrupted), weights(run))


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_state_and_rerun_is_bitwise_equal(tiny_darcy, tmp_path, uninterrupted):
    run = tmp_path / "run"
    proc = subprocess.Popen(command(tiny_darcy, run), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    wait_for(run / "ckpt01.pt")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "run the same command again to resume" in err
    state = torch.load(run / "latest.pt", weights_only=False)
    assert state["step_in_epoch"] > 0  # saved between two steps of an epoch
    subprocess.run(command(tiny_darcy, run), env=ENV, check=True, capture_output=True)
    assert_same_weights(weights(uninterrupted), weights(run))
    # the interrupted epoch's metrics: its steps before and after the stop add up to the same totals
    metrics = ["train_loss", "train_rel_l2", "grad_norm"]
    straight = pd.read_csv(uninterrupted / "history.csv")[metrics]
    pd.testing.assert_frame_equal(pd.read_csv(run / "history.csv")[metrics], straight, check_exact=True)
