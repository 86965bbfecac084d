"""Behaviour shared by every backend of flare_mixer."""
import pytest
import torch

from flare.ops import flare_mixer


@pytest.mark.parametrize("backend", ["reference", "explicit"])
def test_autocast_runs_the_mixer_in_the_autocast_dtype(backend):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 8, 4), torch.randn(1, 2, 33, 4), torch.randn(1, 2, 33, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = flare_mixer(q, k, v, backend=backend)
    assert y.dtype == torch.bfloat16
    # the same as casting by hand: float32 inputs never reach a backend under autocast
    expected = flare_mixer(q.bfloat16(), k.bfloat16(), v.bfloat16(), backend=backend)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    assert flare_mixer(q, k, v, backend=backend).dtype == torch.float32  # no autocast: untouched
