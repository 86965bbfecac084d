"""Model registry: a name maps to a class built as ``cls(in_channels, out_channels, **hparams)``."""
from __future__ import annotations

from typing import Callable

from torch import nn

from flare.settings import model_settings

MODELS: dict[str, type[nn.Module]] = {}

# Input and output channels of the paper's datasets (SPEC §4), so a paper model can be built by name.
PAPER_DATASET_CHANNELS: dict[str, tuple[int, int]] = {
    "elasticity": (2, 1),
    "darcy": (3, 1),
    "airfoil": (2, 1),
    "pipe": (2, 1),
    "drivaerml": (3, 1),
    "lpbf": (3, 1),
}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in MODELS:
            raise ValueError(f"model name {name!r} is registered twice")
        MODELS[name] = cls
        return cls

    return decorator


def build(name: str, in_channels: int, out_channels: int, **hparams) -> nn.Module:
    """Build a registered model ``x [B, N, in_channels] -> [B, N, out_channels]``."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](in_channels, out_channels, **hparams)
    except TypeError as err:  # an unknown hyperparameter name
        raise TypeError(f"model {name!r}: {err}") from err


def paper_model(
    name: str, dataset: str, in_channels: int | None = None, out_channels: int | None = None, **overrides
) -> nn.Module:
    """The model ``name`` with the paper's settings for ``dataset`` (``config/models/<name>.yaml``)."""
    if in_channels is None or out_channels is None:
        if dataset not in PAPER_DATASET_CHANNELS:
            raise KeyError(
                f"dataset {dataset!r} is not one of the paper's ({', '.join(PAPER_DATASET_CHANNELS)}); "
                "pass in_channels and out_channels"
            )
        default_in, default_out = PAPER_DATASET_CHANNELS[dataset]
        in_channels = default_in if in_channels is None else in_channels
        out_channels = default_out if out_channels is None else out_channels
    hparams = {**model_settings(name, dataset)["model"], **overrides}
    return build(name, in_channels, out_channels, **hparams)
