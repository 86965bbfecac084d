"""The fused residual-MLP kernels against the module's torch path (float64); on the CPU under the
Triton interpreter (see tests/ops/kernels.py)."""
import copy

import pytest
import torch

from flare.models import build
from flare.models.layers import ResidualMLP
from flare.ops import fused_mlp as fm
from tests.ops.kernels import DEVICE, INTERPRETED, ON_GPU, gpu_only, no_tf32, rel_err  # noqa: F401 (fixture)

pytestmark = [pytest.mark.skipif(not fm.fused_mlp_available(), reason="triton is not importable"),
              pytest.mark.usefixtures("no_tf32")]

# (in, hidden, out, hidden layers, input residual, output residual, tokens)
SHAPES = [
    (3, 32, 1, 2, False, False, 37),
    (64, 64, 64, 3, True, True, 100),
    (16, 48, 48, 0, False, True, 65),
    (20, 20, 5, 1, True, False, 16),
    (8, 128, 8, 1, False, False, 33),
]


def make_pair(IN, HID, OUT, L, in_res, out_res, seed):
    torch.manual_seed(seed)
    ref = ResidualMLP(IN, HID, OUT, L, in_res, out_res, backend="torch")
    for p in ref.parameters():  # larger than the model's init: GELU's curvature matters
        torch.nn.init.normal_(p, std=0.3)
    fused = copy.deepcopy(ref).to(DEVICE)
    fused.backend = "triton"
    return ref.double(), fused


def compare(shape, dtype=torch.float32, tol=1e-5, lead=(), norm=False, add_input=False):
    """Values and every gradient of the fused MLP against the torch path in float64; ``norm``: with a
    LayerNorm in front (inside the fused kernels); ``add_input``: x + MLP(norm(x))."""
    IN, HID, OUT, L, in_res, out_res, T = shape
    ref, fused = make_pair(IN, HID, OUT, L, in_res, out_res, seed=T)
    ln_ref = ln_fused = None
    if norm:
        ln_ref = torch.nn.LayerNorm(IN, dtype=torch.float64)
        torch.nn.init.normal_(ln_ref.weight, 1.0, 0.3)
        torch.nn.init.normal_(ln_ref.bias, 0.0, 0.3)
        ln_fused = copy.deepcopy(ln_ref).to(DEVICE, dtype)
    g = torch.Generator().manual_seed(T + 1)
    x = 2.0 * torch.randn(*lead, T, IN, generator=g, dtype=torch.float64) + 0.5
    dy = torch.randn(*lead, T, OUT, generator=g, dtype=torch.float64)
    xr = x.clone().requires_grad_()
    yr = ref(xr, norm=ln_ref, add_input=add_input)
    yr.backward(dy)
    xf = x.to(DEVICE, dtype).requires_grad_()
    yf = fused.to(dtype)(xf, norm=ln_fused, add_input=add_input)
    yf.backward(dy.to(DEVICE, dtype))
    assert yf.shape == yr.shape and yf.dtype == dtype
    errs = {"y": rel_err(yf, yr), "dx": rel_err(xf.grad, xr.grad)}
    pairs = list(zip(ref.named_parameters(), fused.parameters()))
    if norm:
        pairs += list(zip(ln_ref.named_parameters(prefix="norm"), ln_fused.parameters()))
    for (name, pr), pf in pairs:
        assert pf.grad is not None and pf.grad.dtype == pf.dtype, name
        errs[name] = rel_err(pf.grad, pr.grad)
    assert max(errs.values()) < tol, errs
    return errs


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "in{}h{}o{}L{}{}{}T{}".format(
    *s[:4], "r" if s[4] else "", "R" if s[5] else "", s[6]))
def test_fp32_values_and_grads(shape):
    compare(shape)


@pytest.mark.parametrize("shape", [(64, 64, 64, 3, True, True, 100), (24, 32, 1, 2, False, False, 37)],
                         ids=["block", "narrow"])
def test_layer_norm_inside_the_kernels(shape):
    """LayerNorm(x) computed in the kernels: values and the gradients of x, the MLP and the norm."""
    compare(shape, norm=True)


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "norm"])
@pytest.mark.parametrize("partials", [True, False], ids=["partials", "split-token"])
def test_skip_connection_inside_the_kernels(norm, partials, monkeypatch):
    """add_input: the block's x + MLP(LayerNorm(x)) with the sum in the kernels, both backward paths."""
    if not partials:
        monkeypatch.setattr(fm, "PARTIALS_MAX_BYTES", 0)
    errs = compare((16, 32, 16, 1, False, True, 45), norm=norm, add_input=True)
    assert errs["dx"] < 1e-5
    _, fused = make_pair(16, 32, 8, 1, False, False, seed=1)
    with pytest.raises(ValueError, match="add_input needs as many outputs as inputs"):
        fused(torch.randn(3, 16, device=DEVICE), add_input=True)


def test_layer_norm_split_token_path(monkeypatch):
    monkeypatch.setattr(fm, "PARTIALS_MAX_BYTES", 0)
    compare((64, 64, 64, 3, True, True, 300), norm=True)


@pytest.mark.parametrize("partials", [True, False], ids=["partials", "split-token"])
@pytest.mark.parametrize("shape", SHAPES[:3], ids=["narrow", "block", "no-hidden"])
def test_accumulator_order(shape, partials, monkeypatch):
    """Hidden activations and pre-activation gradients fed to their next dot in accumulator order
    with the weights' rows reordered to match (``ACC_ORDER``; the backward's default for TF32 dots):
    forced here with exact dots, so that a misplaced row shows at fp32 accuracy."""
    monkeypatch.setattr(fm, "ACC_ORDER", True)
    if not partials:
        monkeypatch.setattr(fm, "PARTIALS_MAX_BYTES", 0)
    compare(shape, norm=shape[0] == 64)
    assert fm._acc_order(torch.float32, "ieee")
    monkeypatch.setattr(fm, "ACC_ORDER", None)
    assert fm._acc_order(torch.float32, "tf32") and not fm._acc_order(torch.float32, "ieee")
    assert not fm._acc_order(torch.float32, "tf32", backward=False)
    assert not fm._acc_order(torch.bfloat16, "tf32")


def test_leading_dimensions():
    compare((12, 32, 12, 2, False, True, 29), lead=(3,))


def test_fp16():
    compare((64, 64, 64, 3, True, True, 70), dtype=torch.float16, tol=1e-2)


@pytest.mark.skipif(INTERPRETED, reason="the Triton interpreter's tl.dot multiplies bf16 bit patterns; bf16 is tested on GPU")
def test_bf16_autocast_matches_torch_autocast():
    """Under autocast both paths run their dots in bf16 with fp32 sums: within bf16 rounding."""
    ref, fused = make_pair(64, 64, 64, 3, True, True, seed=1)
    ref = ref.float().to(DEVICE)
    x = torch.randn(4096, 64, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        yr, yf = ref(x), fused(x)
    assert yf.dtype == torch.float32
    assert rel_err(yf, yr) < 1e-2
    exact = ref.to(torch.float64)(x.double())
    assert rel_err(yf, exact) < 1e-2


def test_no_grad_forward_matches():
    IN, HID, OUT, L, in_res, out_res, T = SHAPES[1]
    ref, fused = make_pair(IN, HID, OUT, L, in_res, out_res, seed=3)
    x = torch.randn(T, IN, dtype=torch.float64)
    with torch.no_grad():
        y = fused(x.to(DEVICE, torch.float32))
    assert rel_err(y, ref(x)) < 1e-5


def test_flare_model_same_with_either_backend():
    """A whole FLARE model: the fused MLPs give the torch path's outputs and parameter gradients."""
    hp = dict(channel_dim=16, num_blocks=2, num_heads=2, num_latents=8, attn_backend="reference")
    torch.manual_seed(0)
    ref = build("flare", 3, 2, **hp, mlp_backend="torch")
    fused = build("flare", 3, 2, **hp, mlp_backend="triton").to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 40, 3)
    ref(x).square().mean().backward()
    fused(x.to(DEVICE)).square().mean().backward()
    for (name, pr), pf in zip(ref.named_parameters(), fused.parameters()):
        assert rel_err(pf.grad, pr.grad) < 1e-4, name


def test_auto_backend_choice():
    mlp = ResidualMLP(8, 16, 8, 1, backend="auto")
    assert not mlp.uses_fused(torch.zeros(2, 8))  # CPU tensors: torch path
    if ON_GPU:
        assert mlp.uses_fused(torch.zeros(2, 8, device="cuda"))
        assert not ResidualMLP(8, 256, 8, 1, backend="auto").uses_fused(torch.zeros(2, 8, device="cuda"))
        narrow = ResidualMLP(3, 16, 8, 1, backend="auto")
        assert narrow.uses_fused(torch.zeros(2, 3, device="cuda", dtype=torch.float16))
        with torch.autocast("cuda", dtype=torch.bfloat16):  # would turn the residual stream fp32: torch
            assert not narrow.uses_fused(torch.zeros(2, 3, device="cuda"))
    assert not ResidualMLP(8, 16, 8, -1, backend="triton").uses_fused(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="unknown MLP backend"):
        ResidualMLP(8, 16, 8, 1, backend="cuda")


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "norm"])
def test_narrow_input_half_precision_padded(norm):
    """16-bit dots pad an input narrower than the hidden layers to the hidden tile (narrower input
    tiles miscompile on sm_90, see fused_mlp._block_in): values, gradients and the norm's gradients,
    whose slots in the flat gradient tensor follow the padded width."""
    assert fm._block_in(3, 64, "float16") == 64 and fm._block_in(3, 64, "float32") == 16
    compare((3, 64, 64, 2, False, True, 70), dtype=torch.float16, tol=1e-2, norm=norm)


@gpu_only
def test_narrow_input_bf16_many_tokens():
    """FLARE's input projection (3 -> 64) under bf16 autocast at 20 000 tokens: before the input was
    padded this faulted (illegal address) or gave NaN input gradients (H100, triton 3.6)."""
    ref, fused = make_pair(3, 64, 64, 2, False, True, seed=6)
    ref = ref.float().to(DEVICE)
    x = torch.randn(20000, 3, device=DEVICE)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        yr, yf = ref(xr), fused(xf)
    dy = torch.randn_like(yr)
    yr.backward(dy)
    yf.backward(dy)
    assert torch.isfinite(xf.grad).all()
    assert rel_err(yf, yr) < 2e-2 and rel_err(xf.grad, xr.grad) < 2e-2


def test_bad_inputs_named():
    _, fused = make_pair(8, 16, 4, 1, False, False, seed=2)
    with pytest.raises(ValueError, match="8 input features"):
        fused(torch.randn(5, 7, device=DEVICE))
    _, wide = make_pair(8, 160, 4, 1, False, False, seed=2)
    with pytest.raises(ValueError, match="up to 128"):
        wide(torch.randn(5, 8, device=DEVICE))


def test_operator_schema_and_fake_tensors():
    _, fused = make_pair(12, 16, 4, 2, False, False, seed=5)
    x = torch.randn(21, 12, device=DEVICE, requires_grad=True)
    p = [t.detach().clone().requires_grad_() for t in (
        fused.fc_in.weight, fused.fc_in.bias, fused.hidden_weight, fused.hidden_bias,
        fused.fc_out.weight, fused.fc_out.bias)]
    torch.library.opcheck(torch.ops.flare.fused_mlp_fwd.default, (x, *p, None, None, 0.0, False, False, False, "float32", True),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    ln = [torch.randn(12, device=DEVICE, requires_grad=True) for _ in range(2)]
    torch.library.opcheck(torch.ops.flare.fused_mlp_fwd.default, (x, *p, *ln, 1e-5, False, False, True, "float32", True),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    q = [(t.detach() + 0.1).requires_grad_() for t in p]
    torch.library.opcheck(torch.ops.flare.fused_mlp_pair_fwd.default, (x, *p, *q, *ln, 1e-5, False, False, "float32",
                                                                        True),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_compiles_without_graph_break():
    ref, fused = make_pair(16, 16, 16, 2, True, True, seed=6)
    x = torch.randn(30, 16, device=DEVICE, requires_grad=True)
    eager = fused(x)
    eager.sum().backward()
    g_eager = [p.grad.clone() for p in fused.parameters()]
    fused.zero_grad()
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    y.sum().backward()
    assert rel_err(y, eager) < 1e-6
    for a, p in zip(g_eager, fused.parameters()):
        assert rel_err(p.grad, a) < 1e-6


def test_pair_compiles_without_graph_break():
    _, a = make_pair(16, 16, 16, 1, True, True, seed=6)
    _, b = make_pair(16, 16, 16, 1, True, True, seed=7)
    x = torch.randn(30, 16, device=DEVICE)

    def both(x):
        ya, yb = a.forward_pair(b, x)
        return ya * yb

    eager = both(x)
    eager.sum().backward()
    g_eager = [p.grad.clone() for p in list(a.parameters()) + list(b.parameters())]
    a.zero_grad()
    b.zero_grad()
    y = torch.compile(both, backend="aot_eager", fullgraph=True)(x)
    y.sum().backward()
    assert rel_err(y, eager) < 1e-6
    for g, p in zip(g_eager, list(a.parameters()) + list(b.parameters())):
        assert rel_err(p.grad, g) < 1e-6


@gpu_only
def test_large_token_count_tf32():
    """Many programs, TF32 dots as the paper trains: within TF32 rounding of the float64 result."""
    torch.backends.cuda.matmul.allow_tf32 = True
    errs = compare((64, 64, 64, 3, True, True, 200_003), tol=5e-3)
    assert max(errs.values()) > 0  # TF32 really rounds: the test would notice an exact path


def test_split_token_weight_gradients(monkeypatch):
    """Many tokens: the pre-activation gradients are stored and summed by the split-token kernel
    (here forced, with chunks of several tiles) instead of per-tile partials; same results."""
    monkeypatch.setattr(fm, "PARTIALS_MAX_BYTES", 0)
    compare((64, 64, 64, 3, True, True, 300))
    compare((3, 32, 1, 2, False, False, 37))


def test_activation_checkpointing_recomputes_the_same():
    """FLARE with activation checkpointing around fused MLPs (forward run twice): same gradients."""
    hp = dict(channel_dim=16, num_blocks=2, num_heads=2, num_latents=8, attn_backend="reference",
              mlp_backend="triton")
    torch.manual_seed(0)
    plain = build("flare", 3, 2, **hp).to(DEVICE)
    ckpt = build("flare", 3, 2, **hp, activation_checkpointing=True).to(DEVICE)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 40, 3, device=DEVICE)
    plain(x).square().mean().backward()
    ckpt(x).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert rel_err(b.grad, a.grad) < 1e-6, name


def compare_pair(shape, dtype=torch.float32, tol=1e-5, norm=True, monkeypatch=None, skip=False):
    """Two MLPs on one x through ``forward_pair`` (one fused backward) against the torch path of each
    in float64: both outputs, dx, every parameter gradient of both and the shared norm's. ``skip``:
    also x passed through the pair (``pass_input``) and used as a skip connection."""
    IN, HID, OUT, L, in_res, out_res, T = shape
    ref_a, fused_a = make_pair(IN, HID, OUT, L, in_res, out_res, seed=T)
    ref_b, fused_b = make_pair(IN, HID, OUT, L, in_res, out_res, seed=T + 7)
    ln_ref = ln_fused = None
    if norm:
        ln_ref = torch.nn.LayerNorm(IN, dtype=torch.float64)
        torch.nn.init.normal_(ln_ref.weight, 1.0, 0.3)
        torch.nn.init.normal_(ln_ref.bias, 0.0, 0.3)
        ln_fused = copy.deepcopy(ln_ref).to(DEVICE, dtype)
    g = torch.Generator().manual_seed(T + 2)
    x = 2.0 * torch.randn(2, T, IN, generator=g, dtype=torch.float64) + 0.5
    dya, dyb = (torch.randn(2, T, OUT, generator=g, dtype=torch.float64) for _ in range(2))
    dys = torch.randn(2, T, IN, generator=g, dtype=torch.float64) if skip else torch.zeros(())
    xr = x.clone().requires_grad_()
    ((ref_a(xr, norm=ln_ref) * dya).sum() + (ref_b(xr, norm=ln_ref) * dyb).sum() + (xr * dys).sum()).backward()
    xf = x.to(DEVICE, dtype).requires_grad_()
    fused_a, fused_b = fused_a.to(dtype), fused_b.to(dtype)
    assert fused_a.pairs_with(fused_b, xf, ln_fused)
    if skip:
        ya, yb, xs = fused_a.forward_pair(fused_b, xf, norm=ln_fused, pass_input=True)
        assert torch.equal(xs, xf) and xs.shape == xf.shape
        if fm._partial_rows(2 * T, IN, HID, OUT, L) is not None and fm.PAIRS:
            # dx summed inside the pair's kernel: x's gradient comes from the pair's node alone
            assert type(xs.grad_fn.next_functions[0][0]).__name__ == "_PairWithSkipBackward"
    else:
        (ya, yb), xs = fused_a.forward_pair(fused_b, xf, norm=ln_fused), xf
    ((ya * dya.to(DEVICE, dtype)).sum() + (yb * dyb.to(DEVICE, dtype)).sum()
     + (xs * dys.to(DEVICE, dtype)).sum()).backward()
    errs = {"ya": rel_err(ya, ref_a(x, norm=ln_ref)), "yb": rel_err(yb, ref_b(x, norm=ln_ref)),
            "dx": rel_err(xf.grad, xr.grad)}
    params = [(f"a.{n}", p, q) for (n, p), q in zip(ref_a.named_parameters(), fused_a.parameters())]
    params += [(f"b.{n}", p, q) for (n, p), q in zip(ref_b.named_parameters(), fused_b.parameters())]
    if norm:
        params += [(f"norm.{n}", p, q) for (n, p), q in zip(ln_ref.named_parameters(), ln_fused.parameters())]
    for name, pr, pf in params:
        assert pf.grad is not None and pf.grad.shape == pr.shape, name
        errs[name] = rel_err(pf.grad, pr.grad)
    assert max(errs.values()) < tol, errs
    return errs


@pytest.mark.parametrize("norm", [True, False], ids=["norm", "plain"])
@pytest.mark.parametrize("shape", [(16, 16, 16, 2, True, True, 45), (12, 24, 8, 0, False, False, 33)],
                         ids=["kv", "narrow"])
def test_pair_values_and_grads(shape, norm):
    """A pair (FLARE's key and value projections): the second MLP's input gradient is added inside
    the first's backward kernel before the norm's backward; ragged token count, two samples."""
    compare_pair(shape, norm=norm)


@pytest.mark.parametrize("norm", [True, False], ids=["norm", "plain"])
def test_pair_adds_the_gradient_of_a_skip_connection_around_it(norm):
    """x passed through the pair (FLARE's skip connection around its mixer): its gradient reaches x
    through the pair's backward kernel, with every other gradient unchanged."""
    compare_pair((16, 16, 16, 2, True, True, 45), norm=norm, skip=True)


def test_pair_runs_singly_when_switched_off_or_at_many_tokens(monkeypatch):
    """PAIRS = False, or so many tokens that the backward takes the split-token path: two single
    MLPs, the same results."""
    calls = []
    monkeypatch.setattr(fm, "_pair_fwd_op", lambda *a: calls.append(1))
    monkeypatch.setattr(fm, "PAIRS", False)
    compare_pair((16, 16, 16, 1, True, True, 20), skip=True)
    monkeypatch.setattr(fm, "PAIRS", True)
    monkeypatch.setattr(fm, "PARTIALS_MAX_BYTES", 0)
    compare_pair((16, 16, 16, 1, True, True, 20), skip=True)
    assert calls == []


def test_flare_uses_the_pair_with_the_same_gradients(monkeypatch):
    """FLARE's mixer runs its key and value projections as a pair; the model's output and gradients
    equal those of two single fused MLPs (up to the order of one sum)."""
    torch.manual_seed(0)
    model = build("flare", 3, 2, channel_dim=16, num_blocks=1, num_heads=2, num_latents=8,
                  mlp_backend="triton", attn_backend="reference").to(DEVICE)
    mixer = model.blocks[0].mixer
    x = torch.randn(2, 40, 3, device=DEVICE)
    assert mixer.key_proj.pairs_with(mixer.value_proj, torch.zeros(1, 16, device=DEVICE), model.blocks[0].norm1)
    runs = []
    for pairs in (True, False):
        monkeypatch.setattr(fm, "PAIRS", pairs)
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.square().mean().backward()
        runs.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out_pair, g_pair), (out_single, g_single) = runs
    assert torch.equal(out_pair, out_single)
    for name in g_single:
        assert rel_err(g_pair[name], g_single[name]) < 1e-5, name


def test_pair_shapes_must_match():
    a = ResidualMLP(8, 16, 8, 1, True, True, backend="triton").to(DEVICE)
    b = ResidualMLP(8, 32, 8, 1, True, True, backend="triton").to(DEVICE)
    x = torch.randn(5, 8, device=DEVICE)
    assert not a.pairs_with(b, x, None)
    with pytest.raises(ValueError, match="same shapes"):
        fm.fused_residual_mlp_pair(x, a.fused_params(), b.fused_params(), True, True)
