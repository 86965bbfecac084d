"""The fused output projection with head merge and skip connection (flare.ops.fused_linear) against
torch in float64; on the CPU under the Triton interpreter (see tests/ops/kernels.py)."""
import pytest
import torch

from flare.models import build
from flare.ops import fused_linear as fl
from flare.ops import fused_mlp as fm
from tests.ops.kernels import DEVICE, INTERPRETED, rel_err  # noqa: F401
from tests.ops.kernels import no_tf32  # noqa: F401 (fixture)

pytestmark = [pytest.mark.skipif(not fm.fused_mlp_available(), reason="triton is not importable"),
              pytest.mark.usefixtures("no_tf32")]


def reference(y, w, b, x):
    B, H, N, D = y.shape
    return x + y.transpose(1, 2).reshape(B, N, H * D) @ w.T + b


@pytest.mark.parametrize("layout", ["head-major", "token-major"])
@pytest.mark.parametrize("B,H,N,D,COUT", [(2, 4, 37, 4, 16), (1, 2, 70, 8, 24)])
def test_values_and_grads(B, H, N, D, COUT, layout, monkeypatch):
    """Every output and gradient; the second shape runs two token tiles per backward program."""
    if N == 70:
        monkeypatch.setattr(fl, "BWD_PROGRAMS_PER_SM", 0)  # one program: it loops over all tiles
    g = torch.Generator().manual_seed(N)
    y64 = torch.randn(B, H, N, D, generator=g, dtype=torch.float64)
    if layout == "token-major":  # [B, N, H, D] memory, as the fused backward hands out
        y64 = y64.transpose(1, 2).contiguous().transpose(1, 2)
    w64 = 0.3 * torch.randn(COUT, H * D, generator=g, dtype=torch.float64)
    b64 = torch.randn(COUT, generator=g, dtype=torch.float64)
    x64 = torch.randn(B, N, COUT, generator=g, dtype=torch.float64)
    dout = torch.randn(B, N, COUT, generator=g, dtype=torch.float64)
    ref = [t.clone().requires_grad_() for t in (y64, w64, b64, x64)]
    reference(*ref).backward(dout)
    ours = [t.to(DEVICE, torch.float32).requires_grad_() for t in (y64, w64, b64, x64)]
    out = fl.fused_head_merge_linear(*ours)
    out.backward(dout.to(DEVICE, torch.float32))
    assert out.shape == (B, N, COUT) and out.dtype == torch.float32
    assert rel_err(out, reference(y64, w64, b64, x64)) < 1e-5
    for name, a, r in zip("ywbx", ours, ref):
        assert a.grad.shape == r.shape, name
        assert rel_err(a.grad, r.grad) < 1e-5, name


def test_fp16_inputs():
    """y, weight and bias in fp16 (dots in fp16, fp32 sums), x fp32: within fp16 rounding; 16 inputs,
    24 outputs (16-bit tiles padded to one width)."""
    g = torch.Generator().manual_seed(3)
    y, w, b = (torch.randn(*shape, generator=g) for shape in ((2, 4, 33, 4), (24, 16), (24,)))
    x = torch.randn(2, 33, 24, generator=g)
    leaves = [t.to(DEVICE, dt).clone().requires_grad_() for t, dt in
              ((y, torch.float16), (w, torch.float16), (b, torch.float16), (x, torch.float32))]
    out = fl.fused_head_merge_linear(*leaves)
    assert out.dtype == torch.float32
    ref = [t.detach().double().requires_grad_() for t in (y, w, b, x)]
    expect = reference(*ref)
    assert rel_err(out, expect) < 1e-2
    dout = torch.randn(out.shape, generator=g)
    out.backward(dout.to(DEVICE))
    expect.backward(dout.double())
    for name, a, r in zip("ywbx", leaves, ref):
        assert a.grad.dtype == a.dtype and rel_err(a.grad, r.grad) < 1e-2, name


@pytest.mark.skipif(INTERPRETED, reason="the Triton interpreter's tl.dot multiplies bf16 bit patterns; bf16 is tested on GPU")
def test_bf16_autocast_matches_torch_autocast():
    """Under autocast (the 1M-point setting) the dots run in bf16: as nn.Linear + add under autocast."""
    g = torch.Generator().manual_seed(4)
    y = torch.randn(1, 8, 5000, 8, generator=g).to(DEVICE, torch.bfloat16)
    lin = torch.nn.Linear(64, 64).to(DEVICE)
    x = torch.randn(1, 5000, 64, generator=g).to(DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        ours = fl.fused_head_merge_linear(y, lin.weight, lin.bias, x)
        theirs = x + lin(y.transpose(1, 2).reshape(1, 5000, 64))
    assert ours.dtype == theirs.dtype == torch.float32
    assert rel_err(ours, theirs) < 1e-2


def test_bad_shapes_named():
    y = torch.randn(1, 2, 5, 4, device=DEVICE)
    with pytest.raises(ValueError, match=r"weight must be \[out, 8\]"):
        fl.fused_head_merge_linear(y, torch.randn(8, 6, device=DEVICE), torch.randn(8, device=DEVICE),
                                   torch.randn(1, 5, 8, device=DEVICE))
    with pytest.raises(ValueError, match="x \\(1, 5, 8\\)"):
        fl.fused_head_merge_linear(y, torch.randn(8, 8, device=DEVICE), torch.randn(8, device=DEVICE),
                                   torch.randn(1, 6, 8, device=DEVICE))


def test_operator_schema_and_fake_tensors():
    y = torch.randn(2, 2, 9, 4, device=DEVICE, requires_grad=True)
    w = torch.randn(8, 8, device=DEVICE, requires_grad=True)
    b = torch.randn(8, device=DEVICE, requires_grad=True)
    x = torch.randn(18, 8, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.flare.head_merge_linear_fwd.default, (y, w, b, x, "float32"),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_flare_block_uses_it_and_matches_torch():
    """A FLARE model with fused MLPs (and so the fused output projection) against the torch path."""
    torch.manual_seed(0)
    kw = dict(channel_dim=16, num_blocks=2, num_heads=4, num_latents=8)
    ref = build("flare", 3, 2, **kw).double()
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.2)
    fused = build("flare", 3, 2, mlp_backend="triton", **kw).to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    calls = []
    monkey = pytest.MonkeyPatch()
    real = fl.fused_head_merge_linear
    monkey.setattr(fl, "fused_head_merge_linear", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 13, 3, dtype=torch.float64)
    try:
        out = fused(x.to(DEVICE, torch.float32))
        out.square().sum().backward()
    finally:
        monkey.undo()
    expect = ref(x)
    expect.square().sum().backward()
    assert len(calls) == 2  # one per block
    assert rel_err(out, expect) < 1e-5
    for (name, pr), pf in zip(ref.named_parameters(), fused.parameters()):
        assert rel_err(pf.grad, pr.grad) < 1e-4, name
