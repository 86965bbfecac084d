"""Column sums of per-program partials, postponed to the end of a backward pass and done together.

The fused backward kernels (``fused_mlp`` with few tokens, its key/value pair, ``fused_linear``) write
the weight and bias gradients of each program's share of the tokens into a row of partials, and a
reduction sums the rows. At the paper's Darcy size that is 26 reductions per step, about 12 µs each
inside the step (0.31 ms on an H100): each reads 5-40 MB, too little to reach the card's bandwidth,
and each is a launch on the step's critical path.

Inside ``deferred_partial_sums()`` those reductions wait: ``column_sum`` returns an uninitialised
tensor and records the job, and when the block exits one kernel sums up to ``JOBS_PER_LAUNCH`` jobs
per launch (a program per column block of one job, rows in a fixed order: deterministic). The
gradients handed to autograd are views of those tensors, so nothing may read them before the block
ends. Autograd itself does not when it stores a fresh gradient whose layout matches the parameter's
(it keeps the tensor as ``.grad``); ``settle_unless_kept`` sums every pending job at once where that is
not so (an existing ``.grad`` to add to, a tensor hook, a parameter that is not a leaf or that receives
a second gradient in the same backward — found by walking the roots' autograd graph when the block
starts —, a padded layout). Hooks on autograd's gradient-accumulation nodes (DDP's) are not seen: use
the block around ``loss.backward()`` in one process only, as ``flare.train.Trainer`` does on CUDA. The
partials of every postponed job stay allocated until the block ends (at most ``MAX_PENDING_BYTES``;
beyond that a job is summed at once).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterable, List, Optional, Tuple

import torch

from flare.ops._triton import IMPORT_ERROR as _TRITON_IMPORT_ERROR
from flare.ops._triton import tl, triton

__all__ = ["deferred_partial_sums", "column_sum", "settle_unless_kept", "deferred_sums_available"]

JOBS_PER_LAUNCH = 8
BLOCK_R = 32  # rows per load
BLOCK_C = 256  # columns per program
NUM_WARPS = 8
NUM_STAGES: Optional[int] = None  # software pipelining of the row loop (Triton's default if None)
MAX_PENDING_BYTES = 1 << 30

if _TRITON_IMPORT_ERROR is None:

    @triton.jit
    def _column_sums_kernel(
        s0, d0, r0, w0, e0, s1, d1, r1, w1, e1, s2, d2, r2, w2, e2, s3, d3, r3, w3, e3,
        s4, d4, r4, w4, e4, s5, d5, r5, w5, e5, s6, d6, r6, w6, e6, s7, d7, r7, w7, e7,
        JOBS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Job j sums the r_j rows of s_j ([r_j, w_j] contiguous fp32) into d_j; programs [e_{j-1}, e_j)
        take its column blocks."""
        pid = tl.program_id(0)
        src, dst, rows, width, first = s0, d0, r0, w0, pid * 0
        if JOBS > 1:
            if pid >= e0:
                src, dst, rows, width, first = s1, d1, r1, w1, e0
        if JOBS > 2:
            if pid >= e1:
                src, dst, rows, width, first = s2, d2, r2, w2, e1
        if JOBS > 3:
            if pid >= e2:
                src, dst, rows, width, first = s3, d3, r3, w3, e2
        if JOBS > 4:
            if pid >= e3:
                src, dst, rows, width, first = s4, d4, r4, w4, e3
        if JOBS > 5:
            if pid >= e4:
                src, dst, rows, width, first = s5, d5, r5, w5, e4
        if JOBS > 6:
            if pid >= e5:
                src, dst, rows, width, first = s6, d6, r6, w6, e5
        if JOBS > 7:
            if pid >= e6:
                src, dst, rows, width, first = s7, d7, r7, w7, e6
        cols = (pid - first) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cols < width
        acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
        for start in range(0, rows, BLOCK_R):
            r = start + tl.arange(0, BLOCK_R)
            acc += tl.load(src + r[:, None].to(tl.int64) * width + cols[None, :],
                           mask=(r[:, None] < rows) & cmask[None, :], other=0.0)
        tl.store(dst + cols, tl.sum(acc, axis=0), mask=cmask)


def deferred_sums_available() -> bool:
    return _TRITON_IMPORT_ERROR is None


class _Pending:
    def __init__(self, shared: set):
        self.jobs: List[Tuple[torch.Tensor, torch.Tensor, Optional[torch.cuda.Stream]]] = []
        self.nbytes = 0
        self.shared = shared  # ids of leaves that receive more than one gradient in the backward


_LOCK = threading.Lock()  # the backward runs on autograd's device threads, the block on the caller's
_PENDING: Optional[_Pending] = None


def _shared_leaves(roots: Iterable[torch.Tensor]) -> set:
    """ids of the leaf tensors that more than one edge of the roots' autograd graph reaches: autograd
    adds their gradients up before storing them, which reads them."""
    edges: dict = {}
    seen: set = set()
    stack = [r.grad_fn for r in roots if r.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            leaf = getattr(nxt, "variable", None)  # an AccumulateGrad node
            if leaf is not None:
                edges[id(leaf)] = edges.get(id(leaf), 0) + 1
            else:
                stack.append(nxt)
    return {key for key, count in edges.items() if count > 1}


@contextlib.contextmanager
def deferred_partial_sums(*roots: torch.Tensor, enabled: bool = True):
    """Postpone ``column_sum`` jobs to the end of the block (see the module's docstring). ``roots``:
    every tensor whose backward runs inside the block (their graph tells which parameters receive more
    than one gradient); without roots nothing is postponed."""
    global _PENDING
    if not enabled or not roots or not deferred_sums_available():
        yield
        return
    shared = _shared_leaves(roots)
    with _LOCK:
        if _PENDING is not None:
            raise RuntimeError("deferred_partial_sums() blocks do not nest")
        _PENDING = pending = _Pending(shared)
    try:
        yield
    finally:
        with _LOCK:
            _PENDING = None
        _launch(pending.jobs)


def column_sum(part: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``part.sum(0)`` (into ``out`` if given) for a contiguous fp32 ``[rows, width]`` tensor; inside
    ``deferred_partial_sums()`` the result's values arrive when the block ends."""
    if out is None:
        out = torch.empty((part.shape[1],), device=part.device, dtype=torch.float32)
    with _LOCK:
        pending = _PENDING
        defer = (pending is not None and part.dtype == torch.float32 and part.is_contiguous() and part.dim() == 2
                 and out.is_contiguous() and part.shape[0] > 0 and part.shape[1] > 0
                 and pending.nbytes + part.numel() * 4 <= MAX_PENDING_BYTES)
        if defer:
            stream = torch.cuda.current_stream(part.device) if part.is_cuda else None
            pending.jobs.append((part, out, stream))
            pending.nbytes += part.numel() * 4
            return out
    torch.sum(part, 0, out=out)
    return out


def _kept_as_is(grad: Optional[torch.Tensor], param: Optional[torch.Tensor], shared: set) -> bool:
    """Whether autograd will store ``grad`` as ``param.grad`` without reading it: a leaf that receives
    no other gradient in this backward, has none yet and no hooks, and the same layout (autograd's
    layout contract: equal strides on every dimension longer than 1)."""
    if grad is None or param is None:
        return True
    if not (param.is_leaf and param.requires_grad and param.grad is None and id(param) not in shared
            and not param._backward_hooks and not getattr(param, "_post_accumulate_grad_hooks", None)):
        return False
    if grad.shape != param.shape or grad.dtype != param.dtype:
        return False
    return all((n == 1 and gs != 0) or gs == ps for n, gs, ps in zip(grad.shape, grad.stride(), param.stride()))


def settle_unless_kept(pairs: Iterable[Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]]) -> None:
    """Inside ``deferred_partial_sums()``: sum every postponed job now unless autograd keeps each
    (gradient view, parameter) of ``pairs`` as it is (a gradient it reads, or adds to an earlier one
    still postponed, must hold its values)."""
    with _LOCK:
        pending = _PENDING
    if pending is None or all(_kept_as_is(g, p, pending.shared) for g, p in pairs):
        return
    with _LOCK:
        jobs, pending.jobs = pending.jobs, []
    _launch(jobs)


def _launch(jobs) -> None:
    """The postponed sums, grouped by stream, ``JOBS_PER_LAUNCH`` to a launch."""
    stages = {} if NUM_STAGES is None else {"num_stages": NUM_STAGES}
    by_stream: dict = {}
    for job in jobs:
        by_stream.setdefault(job[2], []).append(job)
    for stream, group in by_stream.items():
        ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        with ctx:
            for i in range(0, len(group), JOBS_PER_LAUNCH):
                batch = group[i:i + JOBS_PER_LAUNCH]
                args, end = [], 0
                for part, out, _ in batch:
                    end += triton.cdiv(part.shape[1], BLOCK_C)
                    args += [part, out, part.shape[0], part.shape[1], end]
                # unused slots repeat the last job (never selected: their programs do not exist)
                args += args[-5:] * (JOBS_PER_LAUNCH - len(batch))
                _column_sums_kernel[(end,)](*args, JOBS=len(batch), BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C,
                                            num_warps=NUM_WARPS, **stages)
