"""What the kernel tests share. Without CUDA the kernels run under the Triton interpreter on CPU
tensors: tests/conftest.py sets TRITON_INTERPRET before triton is first imported."""
import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
gpu_only = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 on the CPU; a must be finite."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a).all(), "non-finite values"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.fixture
def no_tf32():
    """Exact fp32 matrix products on the GPU for the duration of a test."""
    if ON_GPU:
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        yield
        torch.backends.cuda.matmul.allow_tf32 = old
    else:
        yield
