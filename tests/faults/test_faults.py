"""Injected faults: each case of the fault list that is not proven elsewhere, with the outcome asserted.

Proven elsewhere: SIGKILL / SIGTERM during training (tests/train/test_interrupts.py), a corrupted
newest checkpoint (tests/train/test_trainer.py), config errors (tests/workflow/test_workflow.py),
bad samples (tests/data/test_format.py), stalling / 404 / short downloads and hostile archives
(tests/data/test_download.py), a tampered download cache (tests/workflow/test_data_chain.py).
"""
import errno

import h5py
import numpy as np
import pytest
import torch

from flare.data import format as fmt
from flare.data.format import DatasetFormatError, read_split, write_dataset
from flare.evaluate import evaluate
from flare.train import train
from flare.train import checkpoint as ckpt
from flare.train.checkpoint import list_checkpoints, load_latest
from tests.conftest import point_cloud_meta

TINY = {"model": {"channel_dim": 8, "num_blocks": 1, "num_heads": 2, "num_latents": 4},
        "train": {"epochs": 2, "batch_size": 4}}


def test_a_flipped_bit_in_a_dataset_file_is_an_error_naming_it(tiny_darcy, tmp_path):
    target = tmp_path / "train.h5"
    target.write_bytes((tiny_darcy / "train.h5").read_bytes())
    with h5py.File(target, "r") as f:
        offset = f["x"].id.get_offset() if f["x"].chunks is None else f["x"].id.get_chunk_info(0).byte_offset
    data = bytearray(target.read_bytes())
    data[offset + 100] ^= 0x10  # one bit inside the first chunk of x
    target.write_bytes(bytes(data))
    with pytest.raises(DatasetFormatError, match=r"train.h5.*moved to train.h5.corrupt"):
        read_split(target)
    # moved aside, not deleted: the workflow finds the split missing and converts it again
    assert not target.exists()
    assert (tmp_path / "train.h5.corrupt").read_bytes() == bytes(data)


def test_a_crash_while_converting_leaves_no_file_that_looks_complete(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(5, 2)) for _ in range(3)]
    split = (xs, [x[:, :1] for x in xs])
    write_dataset(tmp_path / "d", point_cloud_meta(), split, split)
    before = (tmp_path / "d/train.h5").read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(fmt, "_offsets", crash)  # dies in the middle of writing the first split
    xs2 = [rng.normal(size=(5, 2)) for _ in range(3)]
    split2 = (xs2, [x[:, :1] for x in xs2], [np.array([[0, 1]])] * 3)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(tmp_path / "d", point_cloud_meta(), split2, split2)
    assert (tmp_path / "d/train.h5").read_bytes() == before  # the complete earlier file is untouched
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["meta.json", "test.h5", "train.h5"]


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tiny_darcy, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny_darcy, "flare", 0, run, TINY, progress=False)
    good = {i: p.read_bytes() for i, p in list_checkpoints(run)}
    real_save = torch.save

    def no_space(obj, fh, *args, **kwargs):
        real_save(obj, fh, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", no_space)
    (run / "model.pt").unlink()
    (run / "latest.pt").unlink()
    for i in (9, 10):
        (run / f"ckpt{i:02d}.pt").unlink(missing_ok=True)
    with pytest.raises(OSError, match="No space left"):
        train(tiny_darcy, "flare", 0, run, TINY, progress=False)
    for i, content in good.items():
        path = run / f"ckpt{i:02d}.pt"
        if path.exists():
            assert path.read_bytes() == content
    assert not list(run.glob(".*tmp*"))  # no partial file left behind
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert load_latest(run) is not None


def test_evaluating_on_a_dataset_with_other_channels_fails_before_any_step(tiny_darcy, tmp_path):
    train(tiny_darcy, "flare", 0, tmp_path / "run", TINY, progress=False)
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(81, 2)) for _ in range(3)]
    write_dataset(tmp_path / "other", point_cloud_meta(), (xs, [x[:, :1] for x in xs]), (xs, [x[:, :1] for x in xs]))
    with pytest.raises(ValueError, match=r"other/train.h5 has 2 input / 1 output channels .* trained for 3 / 1"):
        evaluate(tmp_path / "run", dataset_dir=tmp_path / "other")
    assert not (tmp_path / "run/eval.json").exists()


def test_sigkill_during_conversion_then_rerun_converts_cleanly(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = f"""
import numpy as np
from flare.data.format import write_dataset
from tests.conftest import point_cloud_meta
rng = np.random.default_rng(0)
xs = [rng.normal(size=(200_000, 2)) for _ in range(60)]
write_dataset({str(tmp_path / 'd')!r}, point_cloud_meta(), (xs, [x[:, :1] for x in xs]), (xs[:2], [x[:, :1] for x in xs[:2]]))
"""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=repo)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "d").glob(".train.h5.tmp-*")):
        assert proc.poll() is None, "the conversion finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    folder = tmp_path / "d"
    assert not (folder / "train.h5").exists() and not (folder / "test.h5").exists()  # nothing looks complete
    assert list(folder.glob(".train.h5.tmp-*"))  # the torn temporary file is there ...
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(5, 2)) for _ in range(3)]
    write_dataset(folder, point_cloud_meta(), (xs, [x[:, :1] for x in xs]), (xs, [x[:, :1] for x in xs]))
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "test.h5", "train.h5"]  # ... and swept
    assert len(read_split(folder / "train.h5")) == 3
