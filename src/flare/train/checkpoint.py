"""Checkpoints ``ckpt00 … ckpt10``: plain dicts written atomically, the latest loadable one resumed."""
from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_PATTERN = re.compile(r"^ckpt(\d{2})\.pt$")


def checkpoint_path(run_dir: str | Path, index: int) -> Path:
    return Path(run_dir) / f"ckpt{index:02d}.pt"


def checkpoint_epochs(epochs: int, num_checkpoints: int = 10) -> list[int]:
    """Epoch after which checkpoint k (0 … num_checkpoints) is written: evenly spaced, k=0 before training."""
    return [round(k * epochs / num_checkpoints) for k in range(num_checkpoints + 1)]


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, flushed, then renamed over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for path in run_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


LATEST = "latest.pt"


def _progress(state: dict[str, Any]) -> tuple[int, int]:
    return state["epoch"], state.get("step_in_epoch", 0)


def _try_load(path: Path) -> dict[str, Any] | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a torn or corrupted file: fall back to an earlier one
        warnings.warn(f"checkpoint {path} is unreadable ({err}); falling back to an earlier one")
        return None


def load_latest(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The most advanced loadable checkpoint, as ``(path, state)``.

    Candidates are ``latest.pt`` (written every epoch and on SIGTERM, possibly mid-epoch) and the
    newest readable ``ckptNN.pt``; unreadable files are skipped with a warning.
    """
    found = []
    latest = Path(run_dir) / LATEST
    if latest.exists():
        state = _try_load(latest)
        if state is not None:
            found.append((latest, state))
    for _, path in reversed(list_checkpoints(run_dir)):
        state = _try_load(path)
        if state is not None:
            found.append((path, state))
            break
    if not found:
        return None
    return max(found, key=lambda item: _progress(item[1]))
