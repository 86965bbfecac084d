"""CUDA graphs for the training forward and backward.

At the paper's Darcy size (N = 7225, batch 2) a FLARE training step launches about a thousand small
kernels; eagerly the host cannot launch them as fast as an H100 runs them, and the step is
launch-bound (benchmarks/bench_graph_step.py: 52 ms eager against 13 ms of kernel time). Replaying
the forward and backward as CUDA graphs removes that overhead. The optimizer step, the loss and
the metrics stay eager.

A graph is captured once, for the shapes of the first training batch; batches of other shapes (a
smaller last batch, variable-size samples) run eagerly, as do evaluation and anything without
gradients. A model that cannot be captured (a host synchronisation in its forward, say) falls back
to eager execution with a warning.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch import nn


class GraphedTraining:
    """``forward(x, *extra)`` of ``model`` replayed from a CUDA graph when training with gradients on
    the captured shapes, the model's own forward otherwise. The model itself is left unchanged."""

    def __init__(self, model: nn.Module, enabled: bool = True):
        self.model = model
        self.enabled = enabled
        self.graphed: Optional[Callable] = None
        self.shapes: Optional[tuple] = None
        self.failed = False

    @staticmethod
    def _shapes(args) -> tuple:
        return tuple((tuple(a.shape), a.dtype, a.device) for a in args)

    def _capture(self, args) -> None:
        eager_forward = self.model.forward
        try:
            # patches model.forward with the graphed version: keep that, then restore the original
            torch.cuda.make_graphed_callables(self.model, tuple(a.detach() for a in args))
            self.graphed = self.model.forward
            self.shapes = self._shapes(args)
        except Exception as err:  # any capture problem: train eagerly, say so once
            self.failed = True
            warnings.warn(f"CUDA graph capture of {type(self.model).__name__} failed ({type(err).__name__}: "
                          f"{err}); training without CUDA graphs", RuntimeWarning, stacklevel=3)
        finally:
            self.model.forward = eager_forward

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        use = (self.enabled and not self.failed and self.model.training and torch.is_grad_enabled()
               and all(a.is_cuda for a in args))
        if use and self.graphed is None:
            self._capture(args)
        if use and self.graphed is not None and self._shapes(args) == self.shapes:
            return self.graphed(*args)
        return self.model(*args)
