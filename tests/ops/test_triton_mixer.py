"""Correctness of the fused Triton FLARE mixer against the explicit float64 reference; on the CPU
under the Triton interpreter (see tests/ops/kernels.py)."""
import dataclasses

import pytest
import torch

from flare.ops.reference import flare_mixer_explicit
from flare.ops import triton_mixer as tm
from tests.ops.kernels import DEVICE, INTERPRETED, gpu_only, no_tf32, rel_err  # noqa: F401 (fixture)

pytestmark = [pytest.mark.skipif(not tm.triton_available(), reason="triton is not importable"),
              pytest.mark.usefixtures("no_tf32")]

# (B, H, M, N, D, q shared over the batch)
SHAPES = [
    (1, 1, 16, 37, 4, True),
    (2, 3, 20, 64, 8, False),
    (1, 2, 33, 100, 16, True),
    (2, 1, 16, 129, 32, False),
    (1, 1, 17, 50, 64, True),
]


def make_inputs(B, H, M, N, D, shared_q, dtype, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn((H, M, D) if shared_q else (B, H, M, D), generator=g)
    k = torch.randn((B, H, N, D), generator=g)
    v = torch.randn((B, H, N, D), generator=g)
    dy = torch.randn((B, H, N, D), generator=g)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v, dy)]


def run_triton(q, k, v, dy, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    y = tm.flare_mixer_triton_impl(*leaves, **kw)
    y.backward(dy)
    return y.detach(), [t.grad for t in leaves]


def run_reference(q, k, v, dy):
    leaves = [t.detach().double().clone().requires_grad_() for t in (q, k, v)]
    y = flare_mixer_explicit(*leaves)
    y.backward(dy.double())
    return y.detach(), [t.grad for t in leaves]


def check(q, k, v, dy, tol, **kw):
    y, grads = run_triton(q, k, v, dy, **kw)
    y_ref, grads_ref = run_reference(q, k, v, dy)
    assert y.shape == y_ref.shape and y.dtype == k.dtype
    errs = {"y": rel_err(y, y_ref)}
    for name, g, gr, inp in zip("qkv", grads, grads_ref, (q, k, v)):
        assert g.shape == inp.shape and g.dtype == inp.dtype, name
        errs["d" + name] = rel_err(g, gr)
    assert max(errs.values()) < tol, errs
    return y, grads


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}M{}N{}D{}{}".format(*s[:5], "q3" if s[5] else "q4"))
def test_fp32_values_and_grads(shape):
    q, k, v, dy = make_inputs(*shape, torch.float32, seed=hash(shape) % 1000)
    check(q, k, v, dy, tol=1e-5)


@pytest.mark.parametrize("shared_q", [True, False])
def test_q_layouts(shared_q):
    q, k, v, dy = make_inputs(2, 2, 24, 70, 16, shared_q, torch.float32, seed=7)
    check(q, k, v, dy, tol=1e-5)


def test_split_n_merge_matches_single_chunk():
    q, k, v, dy = make_inputs(2, 2, 20, 100, 16, True, torch.float32, seed=11)
    y1, g1 = run_triton(q, k, v, dy, num_chunks=1)
    for chunks in (3, 5):
        yc, gc = run_triton(q, k, v, dy, num_chunks=chunks)
        assert rel_err(yc, y1) < 1e-6
        for a, b in zip(gc, g1):
            assert rel_err(a, b) < 1e-6
    check(q, k, v, dy, tol=1e-5, num_chunks=5)


def test_chunk_split_covers_all_tokens():
    for N in (1, 37, 128, 129, 1000, 4097):
        for bn in (16, 64):
            for want in (1, 2, 3, 7, 1000):
                c, chunk_len = tm._split_n(N, bn, want)
                assert chunk_len % bn == 0 and c >= 1
                assert (c - 1) * chunk_len < N <= c * chunk_len


SMALL_TILES = tm.MixerConfig(
    gather=tm.KernelCfg(16, 16), scatter=tm.KernelCfg(16, 32),
    bwd_scatter=tm.KernelCfg(16, 16), bwd_main=tm.KernelCfg(16, 16),
    merge_block_m=16, programs_per_sm=1, min_tiles_per_chunk=1,
)


# dQ tiles of pass 2 in registers (3 or 4 latent tiles of 16 here) or in memory (the path for more tiles)
DQ_TILES = {"dq-registers": 4, "dq-memory": 0}


@pytest.mark.parametrize("dq_tiles", DQ_TILES.values(), ids=DQ_TILES.keys())
@pytest.mark.parametrize("M", [48, 50])
def test_many_latent_tiles_config(M, dq_tiles):
    """Latents spread over several tiles in every kernel (both multi-tile dQ paths of the main
    backward), with M a multiple of the tile (unmasked path) and ragged."""
    q, k, v, dy = make_inputs(1, 2, M, 90, 8, False, torch.float32, seed=3)
    cfg = dataclasses.replace(SMALL_TILES, bwd_main_dq_tiles=dq_tiles)
    check(q, k, v, dy, tol=1e-5, config=cfg, num_chunks=3)


def test_dq_tiles_beyond_the_kernels_four_accumulators():
    """Asking for more register dQ tiles than the kernel has accumulators falls back to the dQ partial
    in memory instead of dropping the latent tiles past the fourth."""
    assert [tm._bwd_main_num_mt(M, 16, 16) for M in (16, 50, 64, 65, 130)] == [1, 4, 4, 0, 0]
    assert [tm._bwd_main_num_mt(M, 16, 0) for M in (16, 50)] == [1, 0]
    q, k, v, dy = make_inputs(1, 1, 130, 70, 8, True, torch.float32, seed=12)
    check(q, k, v, dy, tol=1e-5, config=dataclasses.replace(SMALL_TILES, bwd_main_dq_tiles=16), num_chunks=2)


@pytest.mark.parametrize("dq_tiles", DQ_TILES.values(), ids=DQ_TILES.keys())
@pytest.mark.parametrize("shared_q", [True, False])
def test_backward_finishing_sums_many_partials(shared_q, dq_tiles):
    """More pass-1 chunks than dZ's finishing kernel loads at once (9 > 8) and, with q shared over
    a batch of 2, more dQ partial rows than its finishing kernel loads at once (18 > 16); chunks of
    several token tiles, so pass 2 (dQ in memory) overwrites each dQ partial tile on its first visit
    and adds later, or (dQ in registers) stores every latent tile's dQ once at the end."""
    q, k, v, dy = make_inputs(2, 1, 50, 400, 8, shared_q, torch.float32, seed=5)
    assert tm._split_n(400, SMALL_TILES.bwd_main.block_n, 12) == (9, 48)
    cfg = dataclasses.replace(SMALL_TILES, bwd_main_dq_tiles=dq_tiles)
    check(q, k, v, dy, tol=1e-5, config=cfg, num_chunks=12)


def test_acc_order_indices_invert_the_column_relabelling():
    """acc_order(c) is the column that acc_order_cols moves to position c: relabelling a matrix's
    columns and reading its rows in acc_order leaves a product unchanged (checked in numbers below)."""
    import numpy as np

    c = np.arange(32)
    src = (c // 8) * 8 + (c % 4) * 2 + (c % 8) // 4
    x = np.arange(3 * 32).reshape(3, 32)
    relabelled = x.reshape(3, 4, 4, 2).transpose(0, 1, 3, 2).reshape(3, 32)
    assert sorted(src) == list(range(32)) and (relabelled == x[:, src]).all()


@pytest.mark.parametrize("dq_tiles", DQ_TILES.values(), ids=DQ_TILES.keys())
@pytest.mark.parametrize("M,N,shared_q", [(16, 37, True), (48, 90, False), (50, 131, True)])
def test_accumulator_order_matches_reference(M, N, shared_q, dq_tiles):
    """Every kernel with its dots' contraction axis in accumulator order (``MixerConfig.acc_order``,
    the default for TF32 dots on the GPU): one latent tile and several, ragged latents and tokens,
    forced on here with exact dots so that any misplaced row shows up at fp32 accuracy."""
    q, k, v, dy = make_inputs(2, 2, M, N, 8, shared_q, torch.float32, seed=M + N)
    cfg = dataclasses.replace(SMALL_TILES, bwd_main_dq_tiles=dq_tiles, acc_order=True)
    check(q, k, v, dy, tol=1e-5, config=cfg, num_chunks=3)
    assert tm._acc_order(torch.float32, cfg) and not tm._acc_order(torch.float32, SMALL_TILES)


def test_non_contiguous_inputs():
    B, H, M, N, D = 2, 2, 20, 60, 16
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn((B, N, 2, H, D), generator=g).to(DEVICE)  # [B, N, (k|v), H, D] like a fused projection
    k = qkv[:, :, 0].transpose(1, 2)
    v = qkv[:, :, 1].transpose(1, 2)
    q = torch.randn((M, H, D), generator=g).to(DEVICE).transpose(0, 1)
    dy = torch.randn((B, H, N, D), generator=g).to(DEVICE)
    assert not k.is_contiguous() and not q.is_contiguous()
    check(q, k, v, dy, tol=1e-5)


@pytest.mark.parametrize("M", [16, 20])
def test_large_logits_no_overflow(M):
    """Logits of size ~100 with ragged N (and ragged M): no inf/NaN, padded entries stay zero.

    fp32 rounding of logits this large (~1e-5 absolute) bounds the attainable accuracy, hence 1e-4."""
    q, k, v, dy = make_inputs(1, 1, M, 83, 16, True, torch.float32, seed=9)
    check(q * 3.0, k * 3.0, v, dy, tol=1e-4, config=SMALL_TILES, num_chunks=2)
    check(q * 3.0 - 2.0, k * 3.0 + 2.0, v, dy, tol=1e-4, config=SMALL_TILES, num_chunks=2)


def test_fp16():
    q, k, v, dy = make_inputs(2, 2, 33, 100, 16, True, torch.float16, seed=13)
    check(q, k, v, dy, tol=1e-2)


@pytest.mark.skipif(INTERPRETED, reason="the Triton interpreter's tl.dot multiplies bf16 bit patterns (triton 3.9); bf16 is tested on GPU")
def test_bf16():
    q, k, v, dy = make_inputs(2, 2, 33, 100, 16, True, torch.bfloat16, seed=17)
    check(q, k, v, dy, tol=1e-2)


def test_bad_inputs():
    q, k, v, _ = make_inputs(1, 2, 16, 20, 8, True, torch.float32, seed=1)
    with pytest.raises(ValueError):
        tm.flare_mixer_triton(q[:1], k, v)
    with pytest.raises(ValueError):
        tm.flare_mixer_triton(q, k, v[..., :4])
    with pytest.raises(ValueError):
        tm.flare_mixer_triton(q.double(), k, v)


def test_public_function_matches_reference():
    q, k, v, _ = make_inputs(1, 2, 16, 45, 8, True, torch.float32, seed=2)
    y = tm.flare_mixer_triton(q, k, v)
    assert rel_err(y, flare_mixer_explicit(q.double(), k.double(), v.double())) < 1e-5


def test_operator_gradients_match_reference():
    """The public function runs as the flare::triton_mixer_fwd/_bwd operators: values and gradients
    of q (shared over the batch, strided like the model's parameter view), k and v."""
    q, k, v, dy = make_inputs(2, 2, 20, 45, 8, True, torch.float32, seed=4)
    q_param = q.transpose(1, 2).contiguous().detach().requires_grad_()  # [H, D, M] storage
    leaves = [k.clone().requires_grad_(), v.clone().requires_grad_()]
    q_view, strides = q_param.transpose(1, 2), []
    q_view.register_hook(lambda g: strides.append(g.stride()))
    y = tm.flare_mixer_triton(q_view, *leaves)
    y.backward(dy)
    y_ref, grads_ref = run_reference(q, k, v, dy)
    assert rel_err(y, y_ref) < 1e-5
    # dQ comes back in the parameter's [H, D, M] memory order: no transposing copy on its way
    assert strides == [(20 * 8, 1, 20)] and q_param.grad.is_contiguous()
    assert rel_err(q_param.grad.transpose(1, 2), grads_ref[0]) < 1e-5
    for got, want in zip((t.grad for t in leaves), grads_ref[1:]):
        assert rel_err(got, want) < 1e-5


def test_queries_with_a_head_width_not_a_power_of_two_get_contiguous_gradients():
    """dQ in the parameter's memory order needs D a power of two; else it comes back contiguous."""
    q, k, v, dy = make_inputs(1, 2, 20, 33, 6, True, torch.float32, seed=7)
    q_param = q.transpose(1, 2).contiguous().detach().requires_grad_()
    q_view, strides = q_param.transpose(1, 2), []
    q_view.register_hook(lambda g: strides.append(g.stride()))
    tm.flare_mixer_triton(q_view, k, v).backward(dy)
    assert strides == [(20 * 6, 6, 1)]
    assert rel_err(q_param.grad.transpose(1, 2), run_reference(q, k, v, dy)[1][0]) < 1e-5


def token_major_inputs(k, v):
    """Leaves [B, N, H, D] holding k and v, and a list that receives the strides of the gradients the
    mixer hands back for their [B, H, N, D] views."""
    leaves = [t.transpose(1, 2).contiguous().requires_grad_() for t in (k, v)]
    strides = []
    for t in leaves:
        t.register_hook(lambda g: strides.append(g.transpose(1, 2).stride()))
    return leaves, strides


@pytest.mark.parametrize("dq_tiles", [0, 4], ids=["dq-memory", "dq-registers"])
def test_token_major_inputs_get_token_major_gradients(dq_tiles):
    """k and v handed out token-major ([B, N, H, D] memory, as the model's projections do): dK and dV
    come back in that layout (no transposed copy before the projections' backward) and are right."""
    q, k, v, dy = make_inputs(2, 3, 40, 45, 8, True, torch.float32, seed=8)
    leaves, strides = token_major_inputs(k, v)
    cfg = dataclasses.replace(tm.default_config(40, 8, 45, torch.float32, interpret=tm._interpreting()),
                              bwd_main_dq_tiles=dq_tiles)
    y = tm.flare_mixer_triton_impl(q, *[t.transpose(1, 2) for t in leaves], config=cfg)
    y.backward(dy)
    _, grads_ref = run_reference(q, k, v, dy)
    assert strides == [(45 * 3 * 8, 8, 3 * 8, 1)] * 2
    for got, want in zip((t.grad.transpose(1, 2) for t in leaves), grads_ref[1:]):
        assert rel_err(got, want) < 1e-5
    torch.library.opcheck(torch.ops.flare.triton_mixer_fwd.default,
                          (q, *[t.detach().transpose(1, 2).requires_grad_() for t in leaves]))


def test_large_token_major_inputs_get_contiguous_gradients(monkeypatch):
    """Above GRAD_TOKEN_MAJOR_MAX_BYTES the gradients are contiguous [B, H, N, D] again."""
    monkeypatch.setattr(tm, "GRAD_TOKEN_MAJOR_MAX_BYTES", 1000)
    q, k, v, dy = make_inputs(1, 2, 16, 40, 8, True, torch.float32, seed=9)
    leaves, strides = token_major_inputs(k, v)
    tm.flare_mixer_triton(q, *[t.transpose(1, 2) for t in leaves]).backward(dy)
    _, grads_ref = run_reference(q, k, v, dy)
    assert strides == [(2 * 40 * 8, 40 * 8, 8, 1)] * 2  # contiguous [B, H, N, D]
    for got, want in zip((t.grad.transpose(1, 2) for t in leaves), grads_ref[1:]):
        assert rel_err(got, want) < 1e-5


def test_operator_schema_and_fake_tensors():
    """torch.library's own checks: schema, fake (meta) shapes against real outputs, autograd."""
    q, k, v, _ = make_inputs(1, 2, 16, 40, 8, True, torch.float32, seed=6)
    torch.library.opcheck(torch.ops.flare.triton_mixer_fwd.default,
                          (q, k.requires_grad_(), v.requires_grad_()))
    torch.library.opcheck(torch.ops.flare.triton_mixer_fwd.default, (q.requires_grad_(), k, v, True))


def test_compiles_without_graph_break():
    """torch.compile takes the fused mixer whole (fullgraph) and gives the eager values and grads."""
    q, k, v, dy = make_inputs(1, 2, 16, 40, 8, True, torch.float32, seed=8)

    def layer(q, k, v):
        return tm.flare_mixer_triton(q, torch.tanh(k), v) * 2.0

    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    y = compiled(*leaves)
    y.backward(dy)
    want_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    want = layer(*want_leaves)
    want.backward(dy)
    assert rel_err(y, want) < 1e-6
    for a, b in zip(leaves, want_leaves):
        assert rel_err(a.grad, b.grad) < 1e-6


# ---------------------------------------------------------------- GPU-only (real kernels, tuned tiles)
GPU_SHAPES = [
    (1, 8, 64, 5000, 16, True),
    (2, 4, 256, 3001, 16, True),
    (2, 16, 256, 7225, 4, True),  # Darcy-like
    (1, 8, 256, 5000, 8, True),  # the 1M-point model's heads (D = 8)
    (1, 4, 200, 3001, 8, False),
    (1, 2, 2048, 1000, 32, False),
    (1, 2, 100, 777, 64, False),
]


@gpu_only
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "B{}H{}M{}N{}D{}".format(*s[:5]))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_gpu_sizes(shape, dtype):
    q, k, v, dy = make_inputs(*shape, dtype, seed=21)
    check(q, k, v, dy, tol=1e-5 if dtype == torch.float32 else 1e-2)


@gpu_only
@pytest.mark.parametrize("acc_order", [False, True], ids=["acc-order-off", "acc-order-on"])
def test_gpu_tf32_darcy_size(acc_order):
    """The paper's Darcy mixer with TF32 dots (how it trains): within TF32 rounding of the float64
    reference, the same with and without the accumulator-order contraction."""
    q, k, v, dy = make_inputs(2, 16, 256, 7225, 4, True, torch.float32, seed=25)
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = tm.default_config(256, 4, 7225, torch.float32, fp32_precision="tf32")
    assert tm._acc_order(torch.float32, cfg)  # the default with TF32
    check(q, k, v, dy, tol=5e-3, config=dataclasses.replace(cfg, acc_order=acc_order))


@gpu_only
def test_gpu_split_n_large():
    q, k, v, dy = make_inputs(1, 2, 64, 1 << 16, 16, True, torch.bfloat16, seed=23)
    y1, g1 = run_triton(q, k, v, dy, num_chunks=1)
    y8, g8 = run_triton(q, k, v, dy, num_chunks=64)
    assert rel_err(y8, y1) < 1e-2
    for a, b in zip(g8, g1):
        assert rel_err(a, b) < 1e-2


@gpu_only
def test_cpu_tensors_rejected_without_interpreter():
    q, k, v, _ = make_inputs(1, 1, 16, 20, 8, True, torch.float32, seed=1, device="cpu")
    with pytest.raises(RuntimeError):
        tm.flare_mixer_triton(q, k, v)
