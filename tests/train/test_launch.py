"""GPU assignment: concurrent jobs get distinct GPUs; torchrun starts N processes."""
import os
import subprocess
import sys
import threading
import time

import pytest

from flare.train.launch import GpuLocks, command_for


def test_concurrent_jobs_get_distinct_gpus_and_a_third_waits(tmp_path):
    first = GpuLocks(2, ["0", "1", "2"], tmp_path)
    assert first.acquire() == ["0", "1"]
    second = GpuLocks(1, ["0", "1", "2"], tmp_path)
    assert second.acquire() == ["2"]
    third = GpuLocks(1, ["0", "1", "2"], tmp_path, poll_seconds=0.05)
    got = []
    waiter = threading.Thread(target=lambda: got.append(third.acquire()))
    waiter.start()
    time.sleep(0.3)
    assert not got  # every GPU is taken: it waits
    second.release()
    waiter.join(timeout=5)
    assert got == [["2"]]
    first.release()
    third.release()


def test_a_killed_holder_frees_its_gpu(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from flare.train.launch import GpuLocks; "
        f"GpuLocks(1, ['0'], {str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(TimeoutError):
        GpuLocks(1, ["0"], tmp_path, poll_seconds=0.05, timeout=0.3).acquire()
    holder.kill()
    holder.wait()
    assert GpuLocks(1, ["0"], tmp_path, poll_seconds=0.05, timeout=5).acquire() == ["0"]


def test_too_many_gpus_requested_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="3 GPUs requested but this machine offers 2"):
        GpuLocks(3, ["0", "1"], tmp_path)


def test_more_than_one_gpu_runs_torchrun():
    assert command_for(1, ["train"])[1:] == ["-m", "flare", "train"]
    cmd = command_for(4, ["train", "--seed", "0"])
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert cmd[-4:] == ["flare", "train", "--seed", "0"]


def test_launch_sets_cuda_visible_devices_for_the_command(tmp_path):
    env = {**os.environ, "FLARE_GPU_IDS": "5,7"}
    env.pop("SLURM_JOB_ID", None)
    result = subprocess.run([sys.executable, "-m", "flare", "launch", "--gpus", "1", "--lock-dir", str(tmp_path),
                             "--", "models"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "flare launch: GPUs 5" in result.stderr and "flare" in result.stdout.split()
