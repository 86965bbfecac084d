"""FLARE mixer on flash-attn's kernels (optional dependency: ``pip install flash-attn``)."""
from __future__ import annotations

import importlib.util

import torch

from flare.ops.reference import expand_latents

INSTALL_HINT = (
    "the 'flash' attention backend needs the flash-attn package on a CUDA machine: "
    "pip install flash-attn --no-build-isolation (or pip install 'flare[flash]'); "
    "use attn_backend 'reference' or 'auto' otherwise"
)


def flash_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def flare_mixer_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Gather then scatter with ``flash_attn_func`` (scale 1.0); fp16/bf16 CUDA tensors only.

    Shapes as :func:`flare.ops.flare_mixer`; flash-attn wants ``[B, L, H, D]``, hence the transposes.
    """
    if importlib.util.find_spec("flash_attn") is None:
        raise RuntimeError(INSTALL_HINT)
    if not k.is_cuda or k.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError(f"the 'flash' backend runs fp16/bf16 CUDA tensors; got {k.dtype} on {k.device}")
    from flash_attn import flash_attn_func

    q = expand_latents(q, k.shape[0]).to(k.dtype)
    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # [B, L, H, D]
    z = flash_attn_func(qt, kt, vt, softmax_scale=1.0)  # gather: latents over tokens
    y = flash_attn_func(kt, qt, z, softmax_scale=1.0)  # scatter: tokens over latents
    return y.transpose(1, 2)
