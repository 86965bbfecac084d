"""Faults met by the workflow itself: a dataset file damaged between prepare and training."""
import h5py
import numpy as np
import pytest
import yaml

from tests.workflow.test_workflow import REPO, snakemake


@pytest.mark.slow
def test_a_corrupted_dataset_file_fails_the_job_and_the_rerun_converts_it_again(tmp_path):
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config.update(seeds=[0], ablations={"sweeps": {}}, scaling={"enabled": False})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    args = ("--cores", "2", "--configfile", str(tmp_path / "config.yaml"))
    train_h5 = tmp_path / "results/datasets/darcy/train.h5"
    snakemake(tmp_path, "results/datasets/darcy/train.h5", *args)
    with h5py.File(train_h5, "r") as f:
        original = f["x"][:]
        offset = f["x"].id.get_chunk_info(0).byte_offset
    data = bytearray(train_h5.read_bytes())
    data[offset + 64] ^= 0x04  # a flipped bit in the stored inputs: the Fletcher-32 checksum fails
    train_h5.write_bytes(bytes(data))

    failed = snakemake(tmp_path, *args, check=False)
    assert failed.returncode != 0
    # whichever job read the file first (training, or the mean-field baseline) named it and moved it
    logs = " ".join(p.read_text() for p in (tmp_path / "results/logs").rglob("*.log"))
    assert "results/datasets/darcy/train.h5: not a readable dataset file" in logs
    assert "moved to train.h5.corrupt" in logs
    assert not train_h5.exists() and (tmp_path / "results/datasets/darcy/train.h5.corrupt").exists()

    rerun = snakemake(tmp_path, *args)
    assert "rule prepare" in rerun.stdout + rerun.stderr  # converted again, then trained
    with h5py.File(train_h5, "r") as f:
        np.testing.assert_array_equal(f["x"][:], original)
    assert (tmp_path / "results/runs/darcy/flare/seed0/eval.json").exists()
