"""The reference FLARE mixer against explicit softmax matrices in float64 (SPEC §1)."""
import pytest
import torch

from flare.ops import flare_mixer


def explicit_float64(q, k, v):
    """Y = softmax_M(K Qᵀ) softmax_N(Q Kᵀ) V written out, per batch and head, in float64."""
    B, H, N, D = k.shape
    q = q.expand(B, *q.shape[-3:]) if q.dim() == 3 else q
    out = torch.empty(B, H, N, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            s = q[b, h] @ k[b, h].T  # [M, N]
            gather = torch.exp(s - s.max(dim=1, keepdim=True).values)
            gather = gather / gather.sum(dim=1, keepdim=True)  # rows sum to one over N
            st = s.T  # [N, M]
            scatter = torch.exp(st - st.max(dim=1, keepdim=True).values)
            scatter = scatter / scatter.sum(dim=1, keepdim=True)  # rows sum to one over M
            out[b, h] = scatter @ (gather @ v[b, h])
    return out


@pytest.mark.parametrize("batched_q", [False, True])
@pytest.mark.parametrize("B,H,M,N,D", [(1, 1, 4, 7, 3), (2, 3, 16, 50, 8), (2, 2, 33, 17, 4)])
@pytest.mark.parametrize("backend", ["reference", "explicit"])
def test_mixer_matches_explicit_softmax_values_and_gradients(backend, B, H, M, N, D, batched_q):
    g = torch.Generator().manual_seed(B * 100 + N)
    q_shape = (B, H, M, D) if batched_q else (H, M, D)
    q = torch.randn(q_shape, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, H, N, D, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, H, N, D, generator=g, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(B, H, N, D, generator=g, dtype=torch.float64)

    y = flare_mixer(q, k, v, backend=backend)
    grads = torch.autograd.grad(y, (q, k, v), dy)
    y_ref = explicit_float64(q, k, v)
    grads_ref = torch.autograd.grad(y_ref, (q, k, v), dy)

    assert y.shape == (B, H, N, D)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_mixer_uses_unit_scale_not_inverse_sqrt_d():
    # With one latent, the gather is a softmax over tokens of q·k at scale 1: check a hand value.
    q = torch.tensor([[[2.0, 0.0]]], dtype=torch.float64)  # [H=1, M=1, D=2]
    k = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)  # [1, 1, N=2, 2]
    v = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    y = flare_mixer(q, k, v)
    w = torch.softmax(torch.tensor([2.0, 0.0], dtype=torch.float64), 0)  # scale 1: logits 2 and 0
    # one latent: the scatter softmax over M=1 is 1, so every token receives z
    torch.testing.assert_close(y[0, 0], w.expand(2, 2))


def test_mixer_rank_is_at_most_m():
    # The implied N×N mixing matrix has rank ≤ M: mixing N one-hot value vectors spans ≤ M dims.
    M, N = 3, 12
    q = torch.randn(1, M, N, dtype=torch.float64)
    k = torch.randn(1, 1, N, N, dtype=torch.float64)
    v = torch.eye(N, dtype=torch.float64)[None, None]
    mixing = flare_mixer(q, k, v)[0, 0]
    assert torch.linalg.matrix_rank(mixing).item() == M


def test_mixer_rejects_bad_shapes_and_backends():
    k = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="q must be"):
        flare_mixer(torch.randn(3, 6, 4), k, k)
    with pytest.raises(ValueError, match="k and v"):
        flare_mixer(torch.randn(2, 6, 4), k, k[..., :3])
    with pytest.raises(ValueError, match="unknown FLARE mixer backend 'nope'"):
        flare_mixer(torch.randn(2, 6, 4), k, k, backend="nope")


def test_auto_is_the_reference_on_cpu_and_flash_explains_how_to_install():
    from flare.ops import resolve_backend

    k = torch.randn(1, 2, 5, 4)
    assert resolve_backend("auto", k) == "reference"
    q = torch.randn(2, 3, 4)
    torch.testing.assert_close(flare_mixer(q, k, k, backend="auto"), flare_mixer(q, k, k))
    with pytest.raises(RuntimeError, match="pip install flash-attn|fp16/bf16 CUDA"):
        flare_mixer(q, k, k, backend="flash")


def test_flare_model_takes_the_backend_as_a_setting():
    from flare.models import build

    torch.manual_seed(0)
    model = build("flare", 2, 1, channel_dim=8, num_blocks=1, num_heads=2, num_latents=4, attn_backend="auto")
    assert model.blocks[0].mixer.backend == "auto" and model(torch.randn(1, 6, 2)).shape == (1, 6, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_flash_backend_matches_reference_in_bf16():
    from flare.ops import flash_available

    if not flash_available():
        pytest.skip("flash-attn is not installed (pip install 'flare[flash]')")
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(4, 64, 16, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(2, 4, 1000, 16, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(2, 4, 1000, 16, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(2, 4, 1000, 16, device="cuda", generator=g, dtype=torch.bfloat16)
    outs = {}
    for backend in ("reference", "flash"):
        y = flare_mixer(q, k, v, backend=backend)
        outs[backend] = (y, *torch.autograd.grad(y, (q, k, v), dy))
    for got, want in zip(outs["flash"], outs["reference"]):
        assert ((got.float() - want.float()).norm() / want.float().norm()).item() < 1e-2


def test_auto_picks_the_fused_kernels_where_they_were_measured_faster():
    from flare.ops import choose_backend

    assert choose_backend("cpu", torch.float32, 10**6, triton_ok=True) == "reference"
    assert choose_backend("cuda", torch.bfloat16, 10**6, triton_ok=False) == "reference"
    assert choose_backend("cuda", torch.bfloat16, 2**20, triton_ok=True) == "triton"
    assert choose_backend("cuda", torch.bfloat16, 1024, triton_ok=True) == "reference"  # launch-bound
    assert choose_backend("cuda", torch.float32, 7225, triton_ok=True) == "triton"  # Darcy, fp32
