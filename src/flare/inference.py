"""Running a trained model over a dataset split."""
from __future__ import annotations

from typing import Iterator

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


def check_model_fits_dataset(model: nn.Module, dataset: StandardDataset) -> None:
    """Graph models need a dataset with mesh edges: say so before any step runs."""
    if getattr(model, "needs_edges", False) and not dataset.has_edges:
        raise ValueError(
            f"model {type(model).__name__} passes messages along mesh edges, but {dataset.path} holds none; "
            "prepare the dataset with edges or choose a point-cloud model"
        )


def predict(model: nn.Module, dataset: StandardDataset, indices, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised predictions and targets ``[B, N, c]`` of samples ``indices``."""
    x, y = dataset.batch(indices)
    x = x.to(device, non_blocking=True)
    if getattr(model, "needs_edges", False):
        return model(x, edges=dataset.batch_edges(indices).to(device)), y.to(device)
    return model(x), y.to(device)


@torch.no_grad()
def decoded_predictions(
    model: nn.Module, dataset: StandardDataset, device: torch.device, batch_size: int = 8
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Run ``model`` over every sample of ``dataset`` in order, yielding ``(indices, pred, target)``
    per batch with ``pred`` and ``target`` decoded to physical units, ``[B, N, c]`` on ``device``.

    Variable-size datasets go one sample at a time (their samples cannot be stacked).
    """
    model.eval()
    y_norm = dataset.y_normalizer.to(device)
    step = batch_size if dataset.data.fixed_size else 1
    for start in range(0, len(dataset), step):
        indices = list(range(start, min(start + step, len(dataset))))
        pred, y = predict(model, dataset, indices, device)
        yield indices, y_norm.decode(pred.float()), y_norm.decode(y)


@torch.no_grad()
def per_sample_relative_l2(
    model: nn.Module, dataset: StandardDataset, device: torch.device, batch_size: int = 8
) -> np.ndarray:
    """Relative L2 of every sample of ``dataset``, on decoded (physical) values: ``[S]``."""
    batches = decoded_predictions(model, dataset, device, batch_size)
    errors = [relative_l2(pred, y).double().cpu() for _, pred, y in batches]
    return torch.cat(errors).numpy()
