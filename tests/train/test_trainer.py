"""Trainer: checkpoints, exact resume, optimiser groups, schedule, losses, guards."""
import json
import math
import os

import pytest
import torch
import yaml

from flare.metrics import grid_gradients, relative_l2, relative_l2_loss_terms, relative_l2_with_gradients
from flare.models import build
from flare.train import TrainConfig, Trainer, resolve_config, train
from flare.train.checkpoint import checkpoint_epochs, list_checkpoints
from flare.train.optim import make_optimizer, make_scheduler, parameter_groups
from flare.train.trainer import RunConfigMismatch

TINY = {"model": {"channel_dim": 8, "num_blocks": 1, "num_heads": 2, "num_latents": 4},
        "train": {"epochs": 4, "batch_size": 4, "eval_batch_size": 8}}


def final_weights(run_dir):
    return torch.load(run_dir / "model.pt", weights_only=False)["model"]


def test_run_writes_checkpoints_and_results(tiny_darcy, tmp_path):
    overrides = {**TINY, "train": {**TINY["train"], "epochs": 10}}
    errors = train(tiny_darcy, "flare", 0, tmp_path / "run", overrides, progress=False)
    run = tmp_path / "run"
    assert [i for i, _ in list_checkpoints(run)] == list(range(11))
    state = torch.load(run / "ckpt05.pt", weights_only=False)
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "history", "config"} <= set(state)
    assert state["epoch"] == 5 and torch.load(run / "ckpt10.pt", weights_only=False)["epoch"] == 10
    assert json.loads((run / "rel_error.json").read_text()) == errors
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model_hparams"]["num_latents"] == 4 and config["train"]["derivative_loss_weight"] == 0.1
    stats = json.loads((run / "model_stats.json").read_text())
    assert stats["parameters"] == sum(p.numel() for p in build("flare", 3, 1, **TINY["model"]).parameters())
    assert len((run / "history.csv").read_text().splitlines()) == 11


def test_checkpoint_epochs_are_evenly_spaced():
    assert checkpoint_epochs(500) == [0, 50, 100, 150, 200, 250, 300, 350, 400, 450, 500]
    assert checkpoint_epochs(4) == [0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4]


def kill_in_epoch_three_then_resume(data, seed, run, overrides, monkeypatch, after_kill=lambda: None):
    """A run killed at the start of its third epoch, then rerun to the end; ``after_kill`` inspects the
    run folder in between."""
    original = Trainer.train_epoch

    def crash_in_epoch_three(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt("simulated kill")
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", crash_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        train(data, "flare", seed, run, overrides, progress=False)
    after_kill()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    train(data, "flare", seed, run, overrides, progress=False)


def test_interrupted_run_resumes_to_identical_weights(tiny_darcy, tmp_path, monkeypatch):
    train(tiny_darcy, "flare", 3, tmp_path / "straight", TINY, progress=False)

    def killed():
        assert not (tmp_path / "resumed" / "model.pt").exists()
        assert max(i for i, _ in list_checkpoints(tmp_path / "resumed")) == 6  # ckpt06: epoch 2 of 4

    kill_in_epoch_three_then_resume(tiny_darcy, 3, tmp_path / "resumed", TINY, monkeypatch, killed)

    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_different_seeds_give_different_runs(tiny_darcy, tmp_path):
    train(tiny_darcy, "flare", 0, tmp_path / "s0", TINY, progress=False)
    train(tiny_darcy, "flare", 1, tmp_path / "s1", TINY, progress=False)
    a, b = final_weights(tmp_path / "s0"), final_weights(tmp_path / "s1")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_corrupted_latest_checkpoint_falls_back_with_warning(tiny_darcy, tmp_path):
    run = tmp_path / "run"
    train(tiny_darcy, "flare", 0, run, TINY, progress=False)
    reference = final_weights(run)
    (run / "model.pt").unlink()
    (run / "latest.pt").write_bytes(b"torn write")
    (run / "ckpt10.pt").write_bytes(b"torn write")
    with pytest.warns(UserWarning, match="ckpt10.pt is unreadable"):
        train(tiny_darcy, "flare", 0, run, TINY, progress=False)
    resumed = final_weights(run)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_changed_settings_in_an_existing_run_folder_are_refused(tiny_darcy, tmp_path):
    train(tiny_darcy, "flare", 0, tmp_path / "run", TINY, progress=False)
    other = {**TINY, "model": {**TINY["model"], "num_latents": 8}}
    with pytest.raises(RunConfigMismatch, match=r"model_hparams.num_latents: 4 -> 8"):
        train(tiny_darcy, "flare", 0, tmp_path / "run", other, progress=False)


def poison_targets_of_step(trainer, step, epoch=0):
    """Make the targets of the samples of ``step`` (0-based) of ``epoch`` NaN, so that step's loss is NaN.
    Through the data, not a patched loss: a CUDA graph of the step captures the loss once."""
    order, bs = trainer.epoch_order(epoch), trainer.cfg.batch_size
    for i in order[step * bs : (step + 1) * bs].tolist():
        trainer.train_set[i][1].fill_(math.nan)  # a view into the split's target tensor


def test_nan_loss_stops_with_the_step_named(tiny_darcy, tmp_path):
    config = resolve_config(tiny_darcy, "flare", 0, TINY)
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.sync_every = 1  # checked at once (the CPU default; a GPU checks every 50 steps)
    poison_targets_of_step(trainer, 0)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 1, step 1;"):
        trainer.fit()
    assert (tmp_path / "run" / "ckpt00.pt").exists()
    after = trainer.model.state_dict()  # checked before the update: the weights are untouched
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_nan_loss_found_at_a_later_synchronisation_still_names_its_step(tiny_darcy, tmp_path, monkeypatch):
    """On a GPU the loss is checked every ``sync_every`` steps, not after each: the check at the end of
    the epoch still names the first bad step, and no checkpoint is written after it."""
    config = resolve_config(tiny_darcy, "flare", 0, TINY)
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.sync_every = 1000
    poison_targets_of_step(trainer, 1)
    steps, batch = [], trainer.train_set.batch
    monkeypatch.setattr(trainer.train_set, "batch", lambda indices: (steps.append(1), batch(indices))[1])
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 1, step 2;"):
        trainer.fit()
    assert len(steps) == trainer.steps_per_epoch > 2  # ran on to the end-of-epoch check
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pt")) == ["ckpt00.pt"]


def test_no_weight_decay_on_biases_norms_and_latents():
    model = build("flare", 3, 1, channel_dim=8, num_blocks=2, num_heads=2, num_latents=4)
    decay, no_decay = parameter_groups(model, 1e-5)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert {n for n in no_decay_names if "latent" in n} == {"blocks.0.mixer.latent_queries",
                                                             "blocks.1.mixer.latent_queries"}
    assert all(n.endswith(("bias", "weight", "latent_queries")) for n in no_decay_names)
    assert all(names[id(p)].endswith("weight") and p.ndim in (2, 3) for p in decay["params"])
    # the residual MLPs' stacked hidden layers: weights [L, C, C] decay, biases [L, C] do not
    assert "blocks.0.mlp.hidden_weight" in {names[id(p)] for p in decay["params"]}
    assert "blocks.0.mlp.hidden_bias" in no_decay_names
    assert not any("norm" in names[id(p)] for p in decay["params"])
    assert decay["weight_decay"] == 1e-5 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_one_cycle_schedule_follows_the_paper_settings():
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(epochs=10, learning_rate=1e-3)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3 / 1e4)
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) in (9, 10)  # peak after 10%
    assert lrs[-1] == pytest.approx(1e-7 / 1e4, rel=0.5, abs=1e-9)


def test_train_config_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(TypeError, match="'batch_size' must be int"):
        TrainConfig.from_dict({"batch_size": "2"})
    assert TrainConfig.from_dict({"learning_rate": 1}).learning_rate == 1.0


def test_relative_l2_and_grid_gradients():
    target = torch.tensor([[[3.0], [4.0]]])
    assert relative_l2(torch.zeros_like(target), target).item() == pytest.approx(1.0)
    assert relative_l2(target * 1.1, target).item() == pytest.approx(0.1)
    xs, ys = torch.meshgrid(torch.arange(5.0), torch.arange(4.0), indexing="ij")
    u = (2 * xs + 3 * ys).reshape(1, 20, 1)
    dx, dy = grid_gradients(u, (5, 4))
    assert (dx[0, 1:-1, 1:-1] == 2).all() and (dy[0, 1:-1, 1:-1] == 3).all()
    assert dx[0, 0].abs().sum() == 0 and dy[0, :, -1].abs().sum() == 0  # boundary zeroed
    pred = u + 1.0  # a constant shift leaves the gradients untouched
    torch.testing.assert_close(relative_l2_with_gradients(pred, u, (5, 4), 0.1), relative_l2(pred, u))


@pytest.mark.parametrize("weight", [0.0, 0.1])
def test_loss_terms_equal_the_definitions(weight):
    """The trainer's loss from the error alone: the same values and gradients as
    relative_l2_with_gradients and relative_l2 on the two fields (float64, two samples, two channels)."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 7 * 6, 2, generator=g, dtype=torch.float64)
    pred = (target + 0.3 * torch.randn(target.shape, generator=g, dtype=torch.float64)).requires_grad_()
    expect = relative_l2_with_gradients(pred, target, (7, 6), weight)
    (d_expect,) = torch.autograd.grad(expect.sum(), pred)
    loss, rel = relative_l2_loss_terms(pred - target, target, (7, 6), weight)
    (d_loss,) = torch.autograd.grad(loss.sum(), pred)
    torch.testing.assert_close(loss, expect, rtol=1e-12, atol=0)
    torch.testing.assert_close(rel, relative_l2(pred, target).detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(d_loss, d_expect, rtol=1e-10, atol=1e-14)
    assert not rel.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the fused loss runs on CUDA or under the Triton interpreter")
def test_fused_loss_gives_the_torch_loss(tiny_darcy, tmp_path):
    """The trainer's loss through flare.ops.fused_loss (its default on a GPU) and through torch's
    operations: the same loss, relative L2 and gradient on a batch of the Darcy set."""
    trainer = Trainer(resolve_config(tiny_darcy, "flare", 0, TINY), tmp_path / "run", progress=False)
    x, y = trainer.train_set.batch([0, 1, 2])
    x, y = x.to(trainer.device), y.to(trainer.device)
    results = []
    for fused in (False, True):
        trainer.fused_loss = fused
        pred = trainer.net(x).detach().requires_grad_()
        loss, rel = trainer.loss(pred, y)
        loss.backward()
        results.append((loss.detach(), rel, pred.grad))
    (loss_t, rel_t, grad_t), (loss_f, rel_f, grad_f) = results
    assert trainer.cfg.derivative_loss_weight > 0
    torch.testing.assert_close(loss_f, loss_t, rtol=1e-5, atol=0)
    torch.testing.assert_close(rel_f, rel_t, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad_f, grad_t, rtol=1e-4, atol=1e-7)


def fused_optimizer_everywhere(monkeypatch):
    """The trainer builds FusedAdamW (its default on a GPU) on any device; on the CPU under the
    Triton interpreter."""
    from flare.ops.fused_adamw import FusedAdamW, fused_adamw_supports
    from flare.train import trainer as trainer_module

    def make(model, cfg):
        groups = parameter_groups(model, cfg.weight_decay)
        assert fused_adamw_supports([p for g in groups for p in g["params"]])
        return FusedAdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)

    monkeypatch.setattr(trainer_module, "make_optimizer", make)


def test_fused_optimizer_trains_like_adamw_and_resumes_exactly(tiny_darcy, tmp_path, monkeypatch):
    """FusedAdamW with its folded-in clipping: the same run as torch's AdamW with clip_grad_norm_ (to
    float rounding), the same gradient norms in the history, and an interrupted run resumes to the
    same weights bit for bit."""
    clipped = {**TINY, "train": {**TINY["train"], "clip_grad_norm": 0.5}}  # clips every step here
    train(tiny_darcy, "flare", 2, tmp_path / "torch", clipped, progress=False)
    fused_optimizer_everywhere(monkeypatch)
    trainer = Trainer(resolve_config(tiny_darcy, "flare", 2, clipped), tmp_path / "probe", progress=False)
    assert trainer.fused_optimizer
    train(tiny_darcy, "flare", 2, tmp_path / "fused", clipped, progress=False)
    a, b = final_weights(tmp_path / "torch"), final_weights(tmp_path / "fused")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    norms = [[row["grad_norm"] for row in torch.load(run / "ckpt10.pt", weights_only=False)["history"]]
             for run in (tmp_path / "torch", tmp_path / "fused")]
    assert len(norms[0]) == 4 and norms[1] == pytest.approx(norms[0], rel=1e-4)

    kill_in_epoch_three_then_resume(tiny_darcy, 2, tmp_path / "resumed", clipped, monkeypatch)
    c = final_weights(tmp_path / "resumed")
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_postponed_partial_sums_give_the_same_gradients(tiny_darcy, tmp_path):
    """The trainer's backward with the fused MLPs' partial sums postponed (its default on a GPU,
    flare.ops.deferred_sums) and summed at once: the same gradients and gradient norm."""
    overrides = {**TINY, "model": {**TINY["model"], "mlp_backend": "triton"}}
    trainer = Trainer(resolve_config(tiny_darcy, "flare", 0, overrides), tmp_path / "run", progress=False)
    x, y = trainer.train_set.batch([0, 1, 2, 3])
    x, y = x.to(trainer.device), y.to(trainer.device)
    runs = []
    for defer in (False, True):
        trainer.defer_sums = defer
        (metrics,) = trainer._forward_backward(x, y)
        runs.append((metrics.clone(), [p.grad.clone() for p in trainer.model.parameters()]))
    (m0, g0), (m1, g1) = runs
    torch.testing.assert_close(m1, m0, rtol=1e-5, atol=0)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-8)
