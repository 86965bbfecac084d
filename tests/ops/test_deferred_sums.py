"""Postponed partial sums (flare.ops.deferred_sums): the grouped kernel's sums, and a FLARE model's
gradients with them equal to those summed at once; on the CPU under the Triton interpreter."""
import pytest
import torch

from flare.models import build
from flare.ops import deferred_sums as ds
from flare.ops import fused_mlp as fm
from tests.ops.kernels import DEVICE, rel_err

pytestmark = pytest.mark.skipif(not ds.deferred_sums_available(), reason="triton is not importable")


def test_jobs_are_summed_when_the_block_ends(monkeypatch):
    """Eleven jobs of several shapes (two launches of up to eight, a ragged last column block, fewer
    rows than a load, an ``out`` that is a slice of a larger tensor): uninitialised inside the block,
    the column sums after it."""
    monkeypatch.setattr(ds, "BLOCK_C", 32)  # several column blocks per job at test sizes
    g = torch.Generator().manual_seed(0)
    shapes = [(37, 70), (5, 3), (16, 32), (1, 100), (40, 64), (3, 33), (20, 7), (9, 129), (2, 2), (18, 65), (7, 31)]
    parts = [torch.randn(s, generator=g).to(DEVICE) for s in shapes]
    big = torch.full((200,), -7.0, device=DEVICE)
    launches = []
    real = ds._column_sums_kernel
    monkeypatch.setattr(ds, "_column_sums_kernel", type("K", (), {
        "__getitem__": lambda self, grid: (launches.append(grid), real[grid])[1]})())
    root = torch.zeros(1, requires_grad=True) * 2  # (its graph has no shared leaves)
    with ds.deferred_partial_sums(root):
        outs = [ds.column_sum(p) for p in parts[:-1]]
        sliced = ds.column_sum(parts[-1], out=big[50:81])
        assert len(ds._PENDING.jobs) == 11 and not launches
    assert [grid[0] for grid in launches] == [sum((s[1] + 31) // 32 for s in shapes[:8]),
                                              sum((s[1] + 31) // 32 for s in shapes[8:])]
    for p, out in zip(parts, outs + [sliced]):
        torch.testing.assert_close(out, p.sum(0), rtol=1e-6, atol=1e-5)
    assert torch.equal(big[:50], torch.full((50,), -7.0, device=DEVICE))
    assert torch.equal(big[81:], torch.full((119,), -7.0, device=DEVICE))
    assert ds._PENDING is None


def test_outside_a_block_the_sum_is_immediate():
    part = torch.arange(12.0, device=DEVICE).view(3, 4)
    assert torch.equal(ds.column_sum(part), part.sum(0))
    root = torch.zeros(1, requires_grad=True) * 2
    with ds.deferred_partial_sums(root, enabled=False):
        assert torch.equal(ds.column_sum(part), part.sum(0))
    with ds.deferred_partial_sums():  # no roots: nothing is postponed
        assert torch.equal(ds.column_sum(part), part.sum(0))


def test_blocks_do_not_nest_and_a_failed_block_still_sums():
    part = torch.ones(4, 3, device=DEVICE)
    root = torch.zeros(1, requires_grad=True) * 2
    with pytest.raises(RuntimeError, match="nest"):
        with ds.deferred_partial_sums(root):
            out = ds.column_sum(part)
            with ds.deferred_partial_sums(root):
                pass
    assert torch.equal(out, torch.full((3,), 4.0, device=DEVICE))
    assert ds._PENDING is None


def model_grads(model, x, defer, accumulate=False, hook=False):
    model.zero_grad(set_to_none=True)
    handle = model.blocks[0].mlp.fc_in.weight.register_hook(lambda g: g * 2) if hook else None
    losses = [model(x).square().mean() for _ in range(2 if accumulate else 1)]
    with ds.deferred_partial_sums(*losses, enabled=defer):
        for loss in losses:
            loss.backward()
    if handle is not None:
        handle.remove()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("case", ["fresh", "accumulate", "hook"])
def test_flare_gradients_with_postponed_sums_equal_the_immediate_ones(case, monkeypatch):
    """A FLARE model on the fused MLPs (single, pair; split-token: not postponed), the fused head-merge projection
    and an input projection of width 1 (its padded slot is summed at once): the same gradients with
    the sums postponed. Also where autograd reads a gradient before the block ends (a second backward
    adding to ``.grad``, a hook, a norm shared by two single MLPs): every postponed job is summed at
    once."""
    torch.manual_seed(0)
    model = build("flare", 1, 2, channel_dim=16, num_blocks=2, num_heads=2, num_latents=8,
                  mlp_backend="triton", attn_backend="reference").to(DEVICE)
    x = torch.randn(2, 40, 1, device=DEVICE)
    kwargs = dict(accumulate=case == "accumulate", hook=case == "hook")
    now = model_grads(model, x, False, **kwargs)
    later = model_grads(model, x, True, **kwargs)
    for name in now:
        assert rel_err(later[name], now[name]) < 1e-6, name
    # the key and value projections as two single MLPs: both postpone, and both feed the one norm in
    # front of them (autograd adds its two gradients: read, so everything is summed at once there)
    monkeypatch.setattr(fm, "PAIRS", False)
    later = model_grads(model, x, True, **kwargs)
    for name in now:
        assert rel_err(later[name], now[name]) < 1e-5, name
    # many tokens (the split-token path): summed at once, nothing postponed
    monkeypatch.setattr(fm, "PARTIALS_MAX_BYTES", 0)
    later = model_grads(model, x, True, **kwargs)
    for name in now:
        assert rel_err(later[name], now[name]) < 1e-5, name


def test_gradients_autograd_keeps_are_postponed(monkeypatch):
    """The jobs of gradients autograd stores as they are stay postponed (the point of the module) and
    go out together: here all eight at the input projection, the backward's last kernel, whose
    [16, 1] weight gradient is a view of a padded [16, 16] slot (autograd copies it: read)."""
    torch.manual_seed(0)
    model = build("flare", 1, 2, channel_dim=16, num_blocks=2, num_heads=2, num_latents=8,
                  mlp_backend="triton", attn_backend="reference").to(DEVICE)
    x = torch.randn(2, 40, 1, device=DEVICE)
    seen = []
    real = ds._launch
    monkeypatch.setattr(ds, "_launch", lambda jobs: (seen.append(len(jobs)), real(jobs)))
    model_grads(model, x, True)
    # per block the key/value pair, the block MLP and the head-merge projection; the output and the
    # input projections; nothing left when the block ends
    assert seen == [2 * 3 + 2, 0]
