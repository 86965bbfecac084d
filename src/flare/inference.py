"""Running a trained model over a dataset split."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from flare.data.loader import StandardDataset
from flare.metrics import relative_l2


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


@torch.no_grad()
def per_sample_relative_l2(
    model: nn.Module, dataset: StandardDataset, device: torch.device, batch_size: int = 8
) -> np.ndarray:
    """Relative L2 of every sample of ``dataset``, on decoded (physical) values: ``[S]``."""
    model.eval()
    y_norm = dataset.y_normalizer.to(device)
    errors = []
    step = batch_size if dataset.data.fixed_size else 1
    for start in range(0, len(dataset), step):
        x, y = dataset.batch(range(start, min(start + step, len(dataset))))
        x, y = x.to(device), y.to(device)
        pred = y_norm.decode(model(x).float())
        errors.append(relative_l2(pred, y_norm.decode(y)).double().cpu())
    return torch.cat(errors).numpy()
