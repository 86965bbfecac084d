"""Torch datasets over the standard format, yielding normalised samples."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from flare.data.format import SplitData, read_split


class StandardDataset(Dataset):
    """One split as a torch dataset: item ``i`` is ``(x [N_i, c_in], y [N_i, c_out])``, both normalised.

    Inputs are normalised with the train-fitted input normaliser (identity on channels that are
    not normalised), outputs with the output normaliser; decode predictions with ``y_normalizer``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data: SplitData = read_split(self.path)
        self.meta = self.data.meta
        self.x_normalizer = self.data.x_normalizer
        self.y_normalizer = self.data.y_normalizer
        x = self.x_normalizer.encode(torch.from_numpy(self.data.x))
        y = self.y_normalizer.encode(torch.from_numpy(self.data.y))
        self.offsets = self.data.offsets.tolist()
        if self.data.fixed_size:  # one [S, N, c] tensor: batches are views, not copies
            n = self.offsets[1]
            self._x, self._y = x.view(len(self), n, -1), y.view(len(self), n, -1)
        else:
            self._x = [x[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]
            self._y = [y[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._x[i], self._y[i]

    @property
    def has_edges(self) -> bool:
        return self.data.edges is not None

    def batch_edges(self, indices) -> torch.Tensor:
        """Mesh edges of samples ``indices`` as ``[B, 2, E]`` (sender row, receiver row); edge counts must agree."""
        edges = [torch.from_numpy(self.data.sample_edges(i).T.copy()) for i in indices]
        if len({e.shape[1] for e in edges}) > 1:
            raise ValueError(f"{self.path}: samples {list(indices)} have different edge counts; use batch_size 1")
        return torch.stack(edges)

    def to(self, device: torch.device | str) -> "StandardDataset":
        """Keep the (normalised) samples of a fixed-size split on ``device``: batches are then gathered
        there, with no host-to-device copy per step. Variable-size splits stay where they are."""
        if self.data.fixed_size:
            self._x, self._y = self._x.to(device), self._y.to(device)
        return self

    @property
    def nbytes(self) -> int:
        """Bytes of the normalised inputs and targets held by this split."""
        tensors = [self._x, self._y] if self.data.fixed_size else self._x + self._y
        return sum(t.numel() * t.element_size() for t in tensors)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack samples ``indices`` into ``([B, N, c_in], [B, N, c_out])``; sizes must agree.
        ``indices`` may be a tensor on the samples' device (no copy of the indices then)."""
        if self.data.fixed_size:
            idx = indices if torch.is_tensor(indices) else torch.as_tensor(list(indices))
            return self._x[idx], self._y[idx]
        indices = [int(i) for i in indices]
        sizes = {len(self._x[i]) for i in indices}
        if len(sizes) > 1:
            raise ValueError(
                f"{self.path}: samples {indices} have different point counts {sorted(sizes)}; "
                "use batch_size 1 for variable-size datasets"
            )
        return torch.stack([self._x[i] for i in indices]), torch.stack([self._y[i] for i in indices])


def load_splits(dataset_dir: str | Path) -> tuple[StandardDataset, StandardDataset]:
    dataset_dir = Path(dataset_dir)
    return StandardDataset(dataset_dir / "train.h5"), StandardDataset(dataset_dir / "test.h5")
