"""Per-channel Gaussian normaliser fitted on the training split only (SPEC §4)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


class GaussianNormalizer:
    """``encode(v) = (v - mean) / std`` per channel; ``decode`` inverts it.

    One mean and one std per channel over all samples and points of the training split (not
    pointwise). Channels that are not normalised carry mean 0 and std 1.
    """

    def __init__(self, mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray):
        self.mean = torch.as_tensor(np.asarray(mean, dtype=np.float64), dtype=torch.float32)
        self.std = torch.as_tensor(np.asarray(std, dtype=np.float64), dtype=torch.float32)

    @classmethod
    def fit(cls, values: np.ndarray, mask: Sequence[bool] | None = None, eps: float = 1e-8) -> "GaussianNormalizer":
        """Fit on ``values [P, c]`` (all points of all training samples); ``mask[c]`` False skips a channel."""
        values = np.asarray(values, dtype=np.float64)
        mean = values.mean(axis=0)
        std = np.maximum(values.std(axis=0), eps)
        if mask is not None:
            keep = np.asarray(mask, dtype=bool)
            mean = np.where(keep, mean, 0.0)
            std = np.where(keep, std, 1.0)
        return cls(mean, std)

    def to(self, device: torch.device | str) -> "GaussianNormalizer":
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def encode(self, value: torch.Tensor) -> torch.Tensor:
        return (value - self.mean.to(value.dtype)) / self.std.to(value.dtype)

    def decode(self, value: torch.Tensor) -> torch.Tensor:
        return value * self.std.to(value.dtype) + self.mean.to(value.dtype)
