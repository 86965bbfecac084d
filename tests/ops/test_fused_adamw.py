"""FusedAdamW (flare.ops.fused_adamw) against torch.optim.AdamW with clip_grad_norm_; on the CPU under
the Triton interpreter (see tests/ops/kernels.py)."""
import copy
import math

import pytest
import torch

from flare.ops import fused_adamw as fa
from tests.ops.kernels import DEVICE

pytestmark = pytest.mark.skipif(not fa.fused_adamw_available(), reason="triton is not importable")

# sizes crossing the update's 1024-value chunks and the norm's 4096-value chunks, and tiny ones
SHAPES = [(3,), (5, 7), (1100,), (64, 80), (1,)]
HYPER = dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-6)


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(DEVICE).requires_grad_() for s in SHAPES]


def groups(params, fused_wd=(0.1, 0.0)):
    return [{"params": params[:3], "weight_decay": fused_wd[0]}, {"params": params[3:], "weight_decay": fused_wd[1]}]


def set_grads(params, step, scale=1.0, skip=()):
    g = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        grad = scale * torch.randn(p.shape, generator=g)
        p.grad = None if i in skip else grad.to(DEVICE)


def run_pair(steps, max_norm, gathered, scale=1.0, skip_at=None):
    """Parameters after ``steps`` updates by FusedAdamW and by torch (clip_grad_norm_ + AdamW), and the
    norms each reported."""
    ours, ref = make_params(), make_params()
    opt = fa.FusedAdamW(groups(ours), **HYPER)
    ref_opt = torch.optim.AdamW(groups(ref), foreach=False, **HYPER)
    norms, ref_norms = [], []
    for step in range(steps):
        skip = skip_at.get(step, ()) if skip_at else ()
        set_grads(ours, step, scale, skip)
        set_grads(ref, step, scale, skip)
        if gathered:
            norms.append(float(opt.gather_grads(max_norm)))
            opt.step(gathered=True)
        else:
            opt.step()
        live = [p for p in ref if p.grad is not None]
        ref_norms.append(float(torch.nn.utils.clip_grad_norm_(live, max_norm)) if gathered else 0.0)
        ref_opt.step()
    return ours, ref, opt, ref_opt, norms, ref_norms


@pytest.mark.parametrize("max_norm", [0.5, math.inf])
def test_gathered_steps_match_clipping_and_adamw(max_norm):
    ours, ref, opt, _, norms, ref_norms = run_pair(5, max_norm, gathered=True, scale=3.0)
    for p, r in zip(ours, ref):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=2e-6, atol=2e-7)
    assert norms == pytest.approx(ref_norms, rel=1e-6)
    # clipping was active at 0.5 (gradients of norm ~ 3·√(#values)); off at inf
    expected = min(1.0, max_norm / (norms[-1] + 1e-6))
    assert float(opt.norm_and_coef[1]) == pytest.approx(expected, rel=1e-6)
    assert (expected < 0.1) == (max_norm == 0.5)


def test_plain_step_is_adamw_without_clipping():
    ours, ref, opt, ref_opt, _, _ = run_pair(4, math.inf, gathered=False)
    for p, r in zip(ours, ref):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=2e-6, atol=2e-7)
    for p, r in zip(ours, ref):
        for key in ("exp_avg", "exp_avg_sq"):  # (torch updates m with a lerp: near-zero values differ)
            torch.testing.assert_close(opt.state[p][key], ref_opt.state[r][key], rtol=2e-6, atol=1e-7)
        assert float(opt.state[p]["step"]) == float(ref_opt.state[r]["step"]) == 4.0


def test_a_parameter_without_gradient_is_skipped_as_torch_does():
    # parameter 1 has no gradient at steps 1 and 2: its step count falls behind the others'
    ours, ref, opt, ref_opt, _, _ = run_pair(5, 1.0, gathered=True, scale=0.1, skip_at={1: (1,), 2: (1, 4)})
    for p, r in zip(ours, ref):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=2e-6, atol=2e-7)
        assert float(opt.state[p]["step"]) == float(ref_opt.state[r]["step"])
    assert float(opt.state[ours[1]]["step"]) == 3.0


def test_checkpoints_move_between_fused_and_torch_adamw():
    """A state dict of either optimizer loads into the other, and training continues identically."""
    ours, ref, opt, ref_opt, _, _ = run_pair(3, math.inf, gathered=False)
    # deep copies, as a checkpoint file holds: state_dict() returns the live state tensors
    saved_ours, saved_ref = copy.deepcopy(opt.state_dict()), copy.deepcopy(ref_opt.state_dict())
    # fused -> torch, and torch -> fused, on fresh parameters with the trained values
    a = [p.detach().clone().requires_grad_() for p in ours]
    b = [p.detach().clone().requires_grad_() for p in ref]
    torch_from_fused = torch.optim.AdamW(groups(a), foreach=False, **HYPER)
    torch_from_fused.load_state_dict(saved_ours)
    fused_from_torch = fa.FusedAdamW(groups(b), **HYPER)
    fused_from_torch.load_state_dict(saved_ref)
    for step in range(3, 6):
        for params, optimizer in ((a, torch_from_fused), (b, fused_from_torch), (ours, opt), (ref, ref_opt)):
            set_grads(params, step)
            optimizer.step()
    for x, y, p, r in zip(a, b, ours, ref):
        torch.testing.assert_close(x.detach(), r.detach(), rtol=2e-6, atol=2e-7)
        torch.testing.assert_close(y.detach(), r.detach(), rtol=2e-6, atol=2e-7)
        torch.testing.assert_close(p.detach(), r.detach(), rtol=2e-6, atol=2e-7)
    # the loaded moments went into the flat buffers the kernel updates: the state tensors are views
    state = fused_from_torch.state[b[3]]
    assert state["exp_avg"].data_ptr() == fused_from_torch._flat_m.data_ptr() + 4 * (3 + 35 + 1100)
    assert float(state["step"]) == 6.0


def test_state_dict_survives_torch_save(tmp_path):
    _, _, opt, _, _, _ = run_pair(2, math.inf, gathered=False)
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    fresh = fa.FusedAdamW(groups(make_params(1)), **HYPER)
    fresh.load_state_dict(torch.load(tmp_path / "opt.pt"))
    for p, q in zip(fresh._groups[0].params + fresh._groups[1].params, opt._groups[0].params + opt._groups[1].params):
        torch.testing.assert_close(fresh.state[p]["exp_avg_sq"], opt.state[q]["exp_avg_sq"], rtol=0, atol=0)
    assert float(fresh.state[p]["step"]) == 2.0


def test_updates_are_deterministic():
    first = run_pair(3, 0.5, gathered=True)[0]
    second = run_pair(3, 0.5, gathered=True)[0]
    for p, q in zip(first, second):
        assert torch.equal(p, q)


def test_unsupported_parameters_are_refused():
    double = [torch.zeros(3, dtype=torch.float64, device=DEVICE, requires_grad=True)]
    assert not fa.fused_adamw_supports(double)
    with pytest.raises(ValueError, match="float32"):
        fa.FusedAdamW(double)
    with pytest.raises(ValueError, match="learning rate"):
        fa.FusedAdamW(make_params(), lr=-1.0)
    opt = fa.FusedAdamW(make_params())
    with pytest.raises(NotImplementedError, match="new optimizer"):
        opt.add_param_group({"params": [torch.zeros(2, device=DEVICE, requires_grad=True)]})


def test_a_state_dict_of_another_adam_variant_is_refused():
    params = make_params()
    amsgrad = torch.optim.AdamW(groups(params), amsgrad=True, **HYPER)
    set_grads(params, 0)
    amsgrad.step()
    with pytest.raises(ValueError, match="amsgrad=True"):
        fa.FusedAdamW(groups(make_params()), **HYPER).load_state_dict(amsgrad.state_dict())


def test_a_parameter_missing_from_a_loaded_state_starts_afresh():
    """Loading a state dict without state for one parameter (torch's AdamW before that parameter's
    first update) zeroes its moments and step count instead of keeping the old ones."""
    ours, _, opt, _, _, _ = run_pair(2, math.inf, gathered=False)
    saved = copy.deepcopy(opt.state_dict())
    del saved["state"][4]  # parameter 4: shape (1,)
    opt.load_state_dict(saved)
    state = opt.state[ours[4]]
    assert float(state["step"]) == 0.0 and float(state["exp_avg"]) == 0.0 and float(state["exp_avg_sq"]) == 0.0
    assert float(opt.state[ours[0]]["step"]) == 2.0 and float(opt.state[ours[0]]["exp_avg"].abs().sum()) > 0
    # the counts differ now: the next update goes parameter by parameter, each with its own count
    set_grads(ours, 5)
    opt.step()
    assert float(opt.state[ours[4]]["step"]) == 1.0 and float(opt.state[ours[0]]["step"]) == 3.0
