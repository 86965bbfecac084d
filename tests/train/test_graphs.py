"""CUDA graphs in training (flare.train.graphs): same training as eager, eager fallbacks."""
import warnings

import pytest
import torch
from torch import nn

from flare.train.checkpoint import load_latest
from flare.train.graphs import GraphedStep, GraphedTraining
from flare.train.trainer import Trainer, resolve_config, train

TINY = {"model": {"channel_dim": 16, "num_blocks": 2, "num_heads": 2, "num_latents": 8},
        "train": {"epochs": 3, "batch_size": 4, "derivative_loss_weight": 0.0}}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def test_without_cuda_the_model_runs_eagerly():
    model = nn.Linear(3, 2)
    graphs = GraphedTraining(model, enabled=True)
    x = torch.randn(4, 3)
    torch.testing.assert_close(graphs(x), model(x), rtol=0, atol=0)
    assert graphs.graphed is None and not graphs.failed


def test_without_cuda_the_step_runs_eagerly():
    """GraphedStep on CPU tensors: the step function itself, every call, and no graph."""
    calls = []

    def step(x, y):
        calls.append(1)
        return ((x - y).square().mean(),)

    graphed = GraphedStep(step)
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    for _ in range(2):
        (loss,) = graphed(x, y)
        assert loss == (x - y).square().mean()
    assert len(calls) == 2 and graphed.graph is None and not graphed.failed


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("derivative", [0.0, 0.1])
def test_graphed_training_follows_the_eager_run(tiny_darcy, tmp_path, backend, derivative):
    """``cuda_graphs: true`` (forward, loss with its derivative terms, backward and clipping as one
    graph; the optimizer and its one-cycle schedule eager) trains as the eager loop does."""
    runs = {}
    for graphs in (False, True):
        overrides = {"model": {**TINY["model"], "attn_backend": backend},
                     "train": {**TINY["train"], "cuda_graphs": graphs, "device": "cuda", "tf32": False,
                               "derivative_loss_weight": derivative, "clip_grad_norm": 0.5}}
        errors = train(tiny_darcy, "flare", 0, tmp_path / f"graphs{graphs}", overrides, progress=False)
        state = load_latest(tmp_path / f"graphs{graphs}")[1]
        runs[graphs] = (errors, state)
    (eager_err, eager), (graph_err, graphed) = runs[False], runs[True]
    for a, b in zip(eager["history"], graphed["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    for name, value in eager["model"].items():
        torch.testing.assert_close(graphed["model"][name], value, rtol=1e-4, atol=1e-6)
    assert graph_err["test_rel_l2"] == pytest.approx(eager_err["test_rel_l2"], rel=1e-4)


def tiny_trainer(tiny_darcy, tmp_path, **train_settings) -> Trainer:
    config = resolve_config(tiny_darcy, "flare", 0, {"model": {**TINY["model"], "mlp_backend": "triton"},
                                                     "train": {**TINY["train"], "device": "cuda", **train_settings}})
    return Trainer(config, tmp_path / "run", progress=False)


@cuda
@pytest.mark.gpu
def test_the_whole_step_is_one_graph(tiny_darcy, tmp_path):
    """By default on CUDA the step up to the optimizer is captured once and replayed; the parameters'
    gradients are the graph's tensors, rewritten by each replay, and the model itself is not graphed."""
    trainer = tiny_trainer(tiny_darcy, tmp_path)
    trainer.train_epoch(0)
    assert trainer.step_graph.graph is not None and not trainer.step_graph.failed
    assert not trainer.graphs.enabled and trainer.graphs.graphed is None
    grads = {name: p.grad.data_ptr() for name, p in trainer.model.named_parameters()}
    before = {name: p.grad.clone() for name, p in trainer.model.named_parameters()}
    trainer.train_epoch(1)
    for name, p in trainer.model.named_parameters():
        assert p.grad.data_ptr() == grads[name], name  # the same tensors, new values
    assert any(not torch.equal(p.grad, before[name]) for name, p in trainer.model.named_parameters())


@cuda
@pytest.mark.gpu
def test_fp16_loss_scaling_graphs_the_model_only(tiny_darcy, tmp_path):
    """Under fp16 the GradScaler's inf checks synchronise with the host: the model alone is graphed."""
    trainer = tiny_trainer(tiny_darcy, tmp_path, precision="fp16")
    trainer.train_epoch(0)
    assert not trainer.step_graph.enabled and trainer.step_graph.graph is None
    assert trainer.graphs.enabled and trainer.graphs.graphed is not None


@cuda
@pytest.mark.gpu
def test_a_step_that_cannot_be_captured_falls_back_to_the_model_graph(tiny_darcy, tmp_path, monkeypatch):
    """A host synchronisation in the loss breaks the whole-step capture: a warning, that step eagerly,
    then the model's own graphs; training goes on with finite losses."""
    trainer = tiny_trainer(tiny_darcy, tmp_path)
    loss = trainer.loss

    def syncing_loss(pred, target):
        if pred.abs().max().item() > 1e9:  # not capturable
            raise ValueError
        return loss(pred, target)

    monkeypatch.setattr(trainer, "loss", syncing_loss)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        means = trainer.train_epoch(0)
    assert trainer.step_graph.failed and any("training step failed" in str(w.message) for w in caught)
    assert trainer.graphs.enabled and trainer.graphs.graphed is not None
    assert torch.isfinite(torch.tensor(means["train_loss"]))


@cuda
@pytest.mark.gpu
def test_a_model_that_cannot_be_captured_trains_eagerly_with_a_warning():
    class Syncing(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, x):
            if x.abs().max().item() > 1e9:  # a host synchronisation: not capturable
                raise ValueError
            return self.lin(x)

    model = Syncing().cuda()
    graphs = GraphedTraining(model)
    x = torch.randn(4, 3, device="cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = graphs(x)
    assert graphs.failed and any("CUDA graph capture" in str(w.message) for w in caught)
    torch.testing.assert_close(out, model(x))
    out.sum().backward()
    assert model.lin.weight.grad is not None


@cuda
@pytest.mark.gpu
def test_compiled_training_with_its_own_graphs_follows_the_eager_run(tiny_darcy, tmp_path):
    """``train.compile`` on CUDA: torch.compile with CUDA graphs (mode reduce-overhead) and the fused
    mixer as an opaque operator; the same training as eager, to the rounding of fused kernels."""
    runs = {}
    for compiled in (False, True):
        overrides = {"model": {**TINY["model"], "attn_backend": "triton"},
                     "train": {**TINY["train"], "compile": compiled, "cuda_graphs": True, "device": "cuda",
                               "tf32": False}}
        errors = train(tiny_darcy, "flare", 0, tmp_path / f"compiled{compiled}", overrides, progress=False)
        runs[compiled] = (errors, load_latest(tmp_path / f"compiled{compiled}")[1])
    (eager_err, eager), (comp_err, comp) = runs[False], runs[True]
    for a, b in zip(eager["history"], comp["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    assert comp_err["test_rel_l2"] == pytest.approx(eager_err["test_rel_l2"], rel=1e-3)
