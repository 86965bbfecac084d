"""The fused training loss (flare.ops.fused_loss) against the torch definitions in float64; on the CPU
under the Triton interpreter (see tests/ops/kernels.py)."""
import pytest
import torch

from flare.metrics import relative_l2, relative_l2_with_gradients
from flare.ops import fused_loss as fls
from tests.ops.kernels import DEVICE, rel_err

pytestmark = pytest.mark.skipif(not fls.fused_loss_available(), reason="triton is not importable")


def reference(pred, target, std, mean, grid_shape, weight):
    """(mean loss, mean rel) from the metric definitions on decoded values."""
    decode = lambda v: v * std + mean  # noqa: E731
    p, t = decode(pred), decode(target)
    loss = relative_l2_with_gradients(p, t, grid_shape, weight) if weight else relative_l2(p, t)
    return loss.mean(), relative_l2(p, t).mean()


def inputs(B, nx, ny, C, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(B, nx * ny, C, generator=g, dtype=dtype)
    pred = target + 0.3 * torch.randn(B, nx * ny, C, generator=g, dtype=dtype)
    std = 0.5 + torch.rand(C, generator=g, dtype=dtype)
    mean = torch.randn(C, generator=g, dtype=dtype)
    return pred, target, std, mean


def fused_and_reference(pred64, target64, std64, mean64, grid_shape, weight, dtype=torch.float32):
    """``(loss, rel, ∂loss/∂pred)`` of the fused loss on pred in ``dtype`` and of the float64
    definitions: on pred64 itself for float32, on its rounded values for a 16-bit dtype."""
    ref_pred = (pred64.clone() if dtype == torch.float32 else pred64.to(dtype).double()).requires_grad_()
    ref_loss, ref_rel = reference(ref_pred, target64, std64, mean64, grid_shape, weight)
    ref_loss.backward()
    pred = pred64.to(DEVICE, dtype).requires_grad_()
    loss, rel = fls.fused_relative_l2_loss(pred, target64.to(DEVICE, torch.float32), std64.to(DEVICE),
                                           mean64.to(DEVICE), grid_shape, weight)
    loss.backward()
    return (loss, rel, pred.grad), (ref_loss, ref_rel, ref_pred.grad)


@pytest.mark.parametrize("B,nx,ny,C,weight", [
    (2, 9, 9, 1, 0.1),     # Darcy-like, one chunk per sample
    (3, 40, 33, 2, 0.5),   # two channels, several chunks, nx ≠ ny
    (1, 37, 31, 1, 0.0),   # no difference terms
])
def test_values_and_gradient_match_the_definitions(B, nx, ny, C, weight):
    (loss, rel, grad), (ref_loss, ref_rel, ref_grad) = fused_and_reference(
        *inputs(B, nx, ny, C, seed=nx * ny + C), (nx, ny), weight)
    assert loss.shape == rel.shape == () and not rel.requires_grad
    assert abs(loss.item() - ref_loss.item()) < 1e-5 * ref_loss.item()
    assert abs(rel.item() - ref_rel.item()) < 1e-5 * ref_rel.item()
    assert rel_err(grad, ref_grad) < 1e-5


def test_half_precision_prediction_gets_its_gradient_in_its_dtype():
    (loss, _, grad), (ref_loss, _, ref_grad) = fused_and_reference(*inputs(2, 12, 10, 1, seed=3), (12, 10), 0.1,
                                                                   dtype=torch.bfloat16)
    assert grad.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert abs(loss.item() - ref_loss.item()) < 1e-5 * ref_loss.item()
    assert rel_err(grad, ref_grad) < 1e-2


def test_a_sample_predicted_exactly_adds_zero_and_a_finite_gradient():
    """‖e‖ = 0 for one sample: its terms are 0 and so is its gradient (torch's norm gradient at 0)."""
    pred64, target64, std64, mean64 = inputs(2, 9, 9, 1, seed=4)
    pred64[1] = target64[1]
    (loss, _, grad), (ref_loss, _, ref_grad) = fused_and_reference(pred64, target64, std64, mean64, (9, 9), 0.1)
    assert torch.isfinite(grad).all() and grad[1].abs().max() == 0
    assert rel_err(grad, ref_grad) < 1e-5
    assert abs(loss.item() - ref_loss.item()) < 1e-5 * ref_loss.item()


def test_bad_shapes_are_refused_with_the_shapes_named():
    pred, target, std, mean = (t.to(DEVICE, torch.float32) for t in inputs(2, 9, 9, 1, seed=5))
    with pytest.raises(ValueError, match=r"nx·ny = 81 points; got \(9, 8\)"):
        fls.fused_relative_l2_loss(pred, target, std, mean, (9, 8), 0.1)
    with pytest.raises(ValueError, match=r"\[B, P, c\]; got \(2, 81, 1\) and \(2, 81\)"):
        fls.fused_relative_l2_loss(pred, target[..., 0], std, mean)
    with pytest.raises(ValueError, match=r"one value per channel \(1\); got 2"):
        fls.fused_relative_l2_loss(pred, target, torch.ones(2, device=DEVICE), mean)


def test_operators_pass_opcheck():
    pred, target, std, mean = (t.to(DEVICE, torch.float32) for t in inputs(2, 9, 9, 1, seed=6))
    args = (pred.requires_grad_(), target, std, mean, 9, 9, 0.1, 1e-12)
    torch.library.opcheck(fls._loss_fwd_op, args, test_utils=("test_schema", "test_faketensor",
                                                              "test_autograd_registration"))
