"""CUDA graphs for training.

At the paper's Darcy size (N = 7225, batch 2) a FLARE training step launches about a thousand small
kernels; eagerly the host cannot launch them as fast as an H100 runs them, and the step is
launch-bound (benchmarks/bench_graph_step.py: 52 ms eager against 13 ms of kernel time). Two ways
of replaying the step from CUDA graphs:

* ``GraphedStep``: the step's forward, loss, backward and gradient clipping as one graph; the host
  copies the batch in, replays it and runs the optimizer. What ``flare train`` uses where it
  applies (no fp16 loss scaling, whose inf checks synchronise with the host): with only the model
  graphed, the host's own work per step (the loss with its derivative terms, the gradients'
  bookkeeping, clipping) took longer than the GPU's, 9.3 ms a Darcy step against 5.4 (H100).
* ``GraphedTraining``: the model's forward and backward only
  (``torch.cuda.make_graphed_callables``); the loss, clipping and optimizer stay eager.

A graph is captured once, for the shapes of the first training batch; batches of other shapes (a
smaller last batch, variable-size samples) run eagerly, as do evaluation and anything without
gradients. A step that cannot be captured (a host synchronisation in the model's forward, say)
falls back to eager execution with a warning.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Tuple

import torch
from torch import nn


class GraphedStep:
    """``step(x, y)`` -> a tuple of tensors, replayed from one CUDA graph on the captured shapes.

    ``step`` runs a training step up to (not including) the optimizer update: forward, loss,
    ``zero_grad(set_to_none=True)``, backward, clipping; it returns a tuple of detached tensors (metrics).
    The first call on CUDA runs it three times on a side stream (compilation, allocator warm-up; the
    gradients are dropped by the next ``zero_grad``), captures it once on static copies of ``x`` and
    ``y`` and replays that: the parameters' ``.grad`` are then tensors of the graph, rewritten by every
    replay (the captured ``zero_grad`` set them to None, so the backward assigns rather than adds).
    Call the optimizer after each call and never ``zero_grad`` in between. Returns the graph's own
    output tensors, overwritten by the next replay.
    """

    def __init__(self, step: Callable[..., Tuple[torch.Tensor, ...]], enabled: bool = True):
        self.step = step
        self.enabled = enabled
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.inputs: Tuple[torch.Tensor, ...] = ()
        self.outputs: Tuple[torch.Tensor, ...] = ()
        self.failed = False

    def applies(self, *args: torch.Tensor) -> bool:
        """Whether ``args`` run through the graph (captured now if need be) rather than eagerly."""
        if not (self.enabled and not self.failed and torch.is_grad_enabled() and all(a.is_cuda for a in args)):
            return False
        return self.graph is None or GraphedTraining._shapes(args) == GraphedTraining._shapes(self.inputs)

    def _capture(self, args) -> None:
        self.inputs = tuple(a.detach().clone() for a in args)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.step(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.outputs = tuple(self.step(*self.inputs))
            self.graph = graph
        except Exception as err:  # any capture problem: train eagerly, say so once
            torch.cuda.current_stream().wait_stream(side)
            self.failed, self.graph, self.inputs, self.outputs = True, None, (), ()
            warnings.warn(f"CUDA graph capture of the training step failed ({type(err).__name__}: {err}); "
                          "training without a graph of the whole step", RuntimeWarning, stacklevel=3)

    def __call__(self, *args: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if not self.applies(*args):
            return tuple(self.step(*args))
        if self.graph is None:
            self._capture(args)
            if self.graph is None:
                return tuple(self.step(*args))
        for static, a in zip(self.inputs, args):
            static.copy_(a)
        self.graph.replay()
        return self.outputs


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
