"""Triton, if it imports, and what the kernel modules share about it.

Importing this module never fails when triton is missing: ``IMPORT_ERROR`` then holds the reason and
``triton`` / ``tl`` are None. Triton reads ``TRITON_INTERPRET=1`` (run kernels on CPU tensors with its
interpreter) when it is first imported.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

try:  # pragma: no cover - exercised by whichever environment runs the tests
    import triton
    import triton.language as tl

    IMPORT_ERROR: Optional[BaseException] = None
except Exception as _exc:  # noqa: BLE001 - any failure means "no triton"
    triton = None
    tl = None
    IMPORT_ERROR = _exc

_SM_COUNT: dict = {}


def interpreting() -> bool:
    """Whether kernels run under Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def fp32_dot_precision() -> str:
    """``tl.dot`` precision for fp32 operands: TF32 where torch allows it for matrix products (as
    ``nn.Linear`` then runs), else exact ("ieee")."""
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def register_cap(maxnreg: Optional[int]) -> dict:
    """Launch option capping a kernel's registers per thread (ptxas ``.maxnreg``); none when no cap is
    set or under the interpreter, which has no registers to cap."""
    return {"maxnreg": maxnreg} if maxnreg is not None and not interpreting() else {}


def sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device (cached); 4 for the CPU interpreter."""
    if device.type != "cuda":
        return 4
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]
