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

if IMPORT_ERROR is None:
    # A TF32 dot whose A operand is the fp32 result of an earlier dot (softmax weights, score
    # gradients, an MLP's hidden layer) needs that result moved between registers: on sm_90 an
    # accumulator thread holds columns 2t and 2t+1 of every 8-column group, the TF32 A operand wants
    # columns t and t+4 (SHFL / SEL / FSEL, several instructions per element). A contraction does not
    # care in which order it runs over its axis, so the columns are relabelled instead (c = 8j + 2t + e
    # becomes 8j + 4e + t: a reshape and permute that moves no data), and the B operand's rows are
    # loaded in the same order (``acc_order``). 16-bit dots need none of this: there the two layouts
    # already agree.

    @triton.jit
    def acc_order(offs, ON: tl.constexpr):
        """The row of a dot's B operand to put at contraction position ``offs`` (tile-relative) when the
        A operand comes through ``acc_order_cols``; ``offs`` itself when not ON."""
        if ON:
            return (offs // 8) * 8 + (offs % 4) * 2 + (offs % 8) // 4
        else:
            return offs

    @triton.jit
    def acc_order_rows(x, ON: tl.constexpr):
        """x [ROWS, COLS] with its rows put in acc_order when ON (row r of the result is row
        acc_order(r) of x): a B operand for an A operand that went through ``acc_order_cols``."""
        if ON:
            ROWS: tl.constexpr = x.shape[0]
            COLS: tl.constexpr = x.shape[1]
            x = tl.reshape(x, (ROWS // 8, 4, 2, COLS))
            x = tl.permute(x, (0, 2, 1, 3))
            return tl.reshape(x, (ROWS, COLS))
        else:
            return x

    @triton.jit
    def acc_order_cols(x, ON: tl.constexpr):
        """x [ROWS, COLS] with its columns relabelled (column 8j + 2t + e becomes 8j + 4e + t) when ON:
        free on a dot accumulator, whose registers then sit where a TF32 A operand wants them."""
        if ON:
            ROWS: tl.constexpr = x.shape[0]
            COLS: tl.constexpr = x.shape[1]
            x = tl.reshape(x, (ROWS, COLS // 8, 4, 2))
            x = tl.permute(x, (0, 1, 3, 2))
            return tl.reshape(x, (ROWS, COLS))
        else:
            return x


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
