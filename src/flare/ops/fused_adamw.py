"""AdamW with gradient-norm clipping as a handful of Triton kernels over all parameters at once.

At the paper's Darcy size FLARE has 214 parameter tensors (691 k values). torch's fused AdamW walks
them in seven launches of about 36 tensors each, one block per tensor chunk (10 µs each on an H100:
latency, not bandwidth), and ``clip_grad_norm_`` adds half a dozen more launches; together 0.09 ms of
a 5.2 ms step. Here:

* ``FusedAdamW.gather_grads(max_norm)`` copies every gradient into one flat buffer (``torch.cat``),
  sums squares per chunk (one kernel) and finishes the total norm and the clipping coefficient
  ``min(1, max_norm / (norm + 1e-6))`` in one single-program kernel; it returns the norm (the
  value ``torch.nn.utils.clip_grad_norm_`` returns). Nothing waits on the host, so it can be part of
  a CUDA graph (``flare.train.graphs.GraphedStep`` captures it with the backward).
* ``FusedAdamW.step(gathered=True)`` then updates every parameter of a group in one launch: each
  program takes a chunk of one tensor (a table of the parameters' addresses, built once) and applies
  the coefficient, the decoupled weight decay and the Adam moments. ``step()`` without
  ``gathered`` gathers the gradients itself and does not clip: a drop-in ``torch.optim.AdamW``.

The update is torch's AdamW, in fp32 (``p ← p − lr·wd·p``; ``m ← β₁m + (1 − β₁)g``;
``v ← β₂v + (1 − β₂)g²``; ``p ← p − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)``), and the state dict has
AdamW's layout (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter): checkpoints move between this
optimizer and ``torch.optim.AdamW`` (a run saved on a GPU resumes on the CPU and back). The moments
live in two flat buffers; the per-parameter state tensors are views of them. Sums are in a fixed
order: deterministic. Parameters must be dense fp32 tensors on one device (CUDA, or the CPU under
``TRITON_INTERPRET=1``); a parameter without a gradient, or whose step count differs from its
group's, is updated by the same formulas in torch operations.
"""
from __future__ import annotations

import math
from typing import Iterable, List, Optional

import torch

from flare.ops._triton import IMPORT_ERROR as _TRITON_IMPORT_ERROR
from flare.ops._triton import interpreting as _interpreting
from flare.ops._triton import tl, triton

__all__ = ["FusedAdamW", "fused_adamw_available", "fused_adamw_supports"]

UPDATE_BLOCK = 1024  # values per program of the update (a program never spans two tensors)
NORM_BLOCK = 4096  # gradient values per partial sum of squares
FINISH_BLOCK = 1024  # partial sums per iteration of the single-program finish
# torch.optim.AdamW's group settings and the values FusedAdamW implements
ADAMW_FLAGS = dict(amsgrad=False, maximize=False, foreach=None, capturable=False, differentiable=False, fused=None,
                   decoupled_weight_decay=True)
CLIP_EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_: coefficient max_norm / (norm + 1e-6)

if _TRITON_IMPORT_ERROR is None:

    @triton.jit
    def _sumsq_kernel(g_ptr, part_ptr, n, BLOCK: tl.constexpr):
        """Σ g² over chunk program_id(0) of the flat gradients."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        g = tl.load(g_ptr + offs, mask=offs < n, other=0.0)
        tl.store(part_ptr + tl.program_id(0), tl.sum(g * g, axis=0))

    @triton.jit
    def _norm_finish_kernel(part_ptr, parts, out_ptr, max_norm, clip_eps, BLOCK: tl.constexpr):
        """out[0] = √(Σ partials) (fixed order), out[1] = min(1, max_norm / (out[0] + clip_eps))."""
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, parts, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            acc += tl.load(part_ptr + offs, mask=offs < parts, other=0.0)
        norm = tl.sqrt_rn(tl.sum(acc, axis=0))
        tl.store(out_ptr, norm)
        tl.store(out_ptr + 1, tl.minimum(tl.div_rn(max_norm, norm + clip_eps), 1.0))

    @triton.jit
    def _adamw_kernel(blocks_ptr, params_ptr, g_ptr, m_ptr, v_ptr, coef_ptr, decay, beta1, beta2, eps,
                      step_size, bc2_sqrt, CLIP: tl.constexpr, BLOCK: tl.constexpr):
        """One chunk of one parameter: row program_id(0) of the block table is (tensor, first value in
        the tensor, first value in the flat buffers, values); the tensor's address is entry ``tensor``
        of the parameter table. ``decay`` = lr·weight_decay, ``step_size`` = lr / (1 − β₁ᵗ),
        ``bc2_sqrt`` = √(1 − β₂ᵗ); CLIP multiplies the gradient by coef_ptr[1]."""
        row = blocks_ptr + tl.program_id(0) * 4
        tensor = tl.load(row)
        start = tl.load(row + 1)
        flat = tl.load(row + 2)
        count = tl.load(row + 3)
        p_ptr = tl.load(params_ptr + tensor).to(tl.pointer_type(tl.float32)) + start
        offs = tl.arange(0, BLOCK)
        mask = offs < count
        g = tl.load(g_ptr + flat + offs, mask=mask, other=0.0)
        if CLIP:
            g = g * tl.load(coef_ptr + 1)
        p = tl.load(p_ptr + offs, mask=mask, other=0.0)
        m = tl.load(m_ptr + flat + offs, mask=mask, other=0.0)
        v = tl.load(v_ptr + flat + offs, mask=mask, other=0.0)
        p = p - decay * p
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
        p = p - step_size * tl.div_rn(m, denom)
        tl.store(p_ptr + offs, p, mask=mask)
        tl.store(m_ptr + flat + offs, m, mask=mask)
        tl.store(v_ptr + flat + offs, v, mask=mask)


def fused_adamw_available() -> bool:
    return _TRITON_IMPORT_ERROR is None


def fused_adamw_supports(params: Iterable[torch.Tensor]) -> bool:
    """Whether ``FusedAdamW`` takes these parameters: Triton imports and they are contiguous fp32 tensors
    on one CUDA device (or on the CPU under the interpreter)."""
    params = list(params)
    if not fused_adamw_available() or not params:
        return False
    device = params[0].device
    ok_device = device.type == "cuda" or (device.type == "cpu" and _interpreting())
    return ok_device and all(p.device == device and p.dtype == torch.float32 and p.layout == torch.strided
                             and p.is_contiguous() for p in params)


class _Group:
    """Where one parameter group's tensors lie: the block table and the parameters' address table."""

    def __init__(self, params: List[torch.Tensor], offsets: List[int], device: torch.device):
        self.params = params
        self.offsets = offsets
        # one CPU step count shared by the state of every parameter of the group while all step
        # together (one host addition per step); None once they differ
        self.step: Optional[torch.Tensor] = None
        rows = []
        for index, (p, flat) in enumerate(zip(params, offsets)):
            for start in range(0, p.numel(), UPDATE_BLOCK):
                rows.append((index, start, flat + start, min(UPDATE_BLOCK, p.numel() - start)))
        self.blocks = torch.tensor(rows, dtype=torch.int64).reshape(-1, 4).to(device)
        self.addresses: tuple = ()
        self.table = torch.empty((len(params),), dtype=torch.int64, device=device)
        self.refresh()

    def refresh(self) -> None:
        """Rewrite the address table if a parameter's storage moved (a host copy: only then)."""
        addresses = tuple(p.data_ptr() for p in self.params)
        if addresses != self.addresses:
            self.table.copy_(torch.tensor(addresses, dtype=torch.int64))
            self.addresses = addresses


class FusedAdamW(torch.optim.Optimizer):
    """``torch.optim.AdamW`` (no amsgrad, no maximize) as Triton kernels, with clipping folded in.

    ``gather_grads(max_norm)`` after the backward (capturable in a CUDA graph), then
    ``step(gathered=True)``; or plainly ``step()``. See the module's docstring.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        if not 0.0 <= lr:
            raise ValueError(f"invalid learning rate {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"invalid epsilon {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        # with torch.optim.AdamW's other group settings, at the values this optimizer implements, so
        # that AdamW loading this optimizer's state dict runs the same update
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, **ADAMW_FLAGS))
        everything = [p for group in self.param_groups for p in group["params"]]
        if not fused_adamw_supports(everything):
            raise ValueError("FusedAdamW needs Triton and contiguous float32 parameters on one CUDA device (or on "
                             "the CPU under TRITON_INTERPRET=1); use torch.optim.AdamW for these parameters")
        if len({id(p) for p in everything}) != len(everything):
            raise ValueError("a parameter appears in more than one group")
        self._built = True
        self.device = everything[0].device
        f32 = dict(dtype=torch.float32, device=self.device)
        sizes = [p.numel() for p in everything]
        total = sum(sizes)
        self._flat_m = torch.zeros((total,), **f32)
        self._flat_v = torch.zeros((total,), **f32)
        self._flat_g = torch.empty((total,), **f32)
        self._partials = torch.empty((max(1, triton.cdiv(total, NORM_BLOCK)),), **f32)
        # [norm, clipping coefficient], written by gather_grads
        self.norm_and_coef = torch.ones((2,), **f32)
        self._groups: List[_Group] = []
        offset = 0
        for group in self.param_groups:
            offsets = []
            for p in group["params"]:
                offsets.append(offset)
                self._adopt(p, offset)
                offset += p.numel()
            self._groups.append(_Group(list(group["params"]), offsets, self.device))
            self._share_steps(self._groups[-1])

    # -- state ---------------------------------------------------------------------------------
    def _adopt(self, p: torch.Tensor, offset: int, state: Optional[dict] = None) -> None:
        """Point p's state at its slices of the flat moments (copying ``state``'s values in, if any)."""
        n = p.numel()
        m = self._flat_m[offset:offset + n].view_as(p)
        v = self._flat_v[offset:offset + n].view_as(p)
        step = torch.zeros((), dtype=torch.float32)
        if state is not None:  # loading: a parameter without saved state starts afresh
            for key, dest in (("exp_avg", m), ("exp_avg_sq", v)):
                value = state.get(key)
                if value is None:
                    dest.zero_()
                    continue
                if value.shape != p.shape:
                    raise ValueError(f"optimizer state {key!r} has shape {tuple(value.shape)}, its parameter "
                                     f"{tuple(p.shape)}")
                dest.copy_(value)
            if "step" in state:
                step = torch.as_tensor(state["step"], dtype=torch.float32).detach().cpu().reshape(()).clone()
        self.state[p] = {"step": step, "exp_avg": m, "exp_avg_sq": v}

    def _share_steps(self, layout: _Group) -> None:
        """One shared step tensor for the group if its parameters' counts agree, else separate ones."""
        counts = {float(self.state[p]["step"]) for p in layout.params}
        if len(counts) == 1:
            layout.step = torch.tensor(counts.pop(), dtype=torch.float32)
            for p in layout.params:
                self.state[p]["step"] = layout.step
        else:
            layout.step = None

    def add_param_group(self, param_group: dict) -> None:
        if getattr(self, "_built", False):
            raise NotImplementedError("FusedAdamW lays its parameters out once; create a new optimizer to add a group")
        super().add_param_group(param_group)

    def state_dict(self) -> dict:
        """AdamW's state dict; every parameter gets its own ``step`` tensor (torch's AdamW increments
        them one by one, so a shared one would count a step once per parameter after loading)."""
        packed = super().state_dict()
        packed["state"] = {k: {**v, "step": v["step"].clone()} for k, v in packed["state"].items()}
        return packed

    def load_state_dict(self, state_dict: dict) -> None:
        """AdamW's state dict (from this optimizer or ``torch.optim.AdamW``) into the flat moments."""
        for i, group in enumerate(state_dict["param_groups"]):
            for key in ("amsgrad", "maximize", "decoupled_weight_decay"):
                if key in group and bool(group[key]) != ADAMW_FLAGS[key]:
                    raise ValueError(f"optimizer state of param group {i} has {key}={group[key]}; FusedAdamW "
                                     f"implements AdamW with {key}={ADAMW_FLAGS[key]}")
        super().load_state_dict(state_dict)
        for group, layout in zip(self.param_groups, self._groups):
            for p, offset in zip(layout.params, layout.offsets):
                loaded = self.state.get(p, {})
                self._adopt(p, offset, loaded)
            self._share_steps(layout)

    # -- clipping and update -------------------------------------------------------------------
    def _gather(self) -> None:
        """Every parameter's gradient into the flat buffer (zeros where a gradient is None)."""
        grads = []
        for layout in self._groups:
            for p in layout.params:
                g = p.grad
                if g is not None and g.is_sparse:
                    raise RuntimeError("FusedAdamW does not support sparse gradients")
                grads.append((g if g is not None else torch.zeros_like(p)).reshape(-1))
        torch.cat(grads, out=self._flat_g)

    @torch.no_grad()
    def gather_grads(self, max_norm: float = math.inf) -> torch.Tensor:
        """Gather the gradients for ``step(gathered=True)``; return their total 2-norm (a 0-d tensor on
        the device, before clipping) and keep the clipping coefficient for that step. ``max_norm`` inf:
        no clipping. ``p.grad`` is not modified."""
        self._gather()
        parts = self._partials.numel()
        _sumsq_kernel[(parts,)](self._flat_g, self._partials, self._flat_g.numel(), BLOCK=NORM_BLOCK, num_warps=4)
        _norm_finish_kernel[(1,)](self._partials, parts, self.norm_and_coef, float(max_norm), CLIP_EPS,
                                  BLOCK=FINISH_BLOCK, num_warps=4)
        return self.norm_and_coef[0]

    @torch.no_grad()
    def step(self, closure=None, gathered: bool = False):
        """One AdamW update. ``gathered``: use the gradients and the clipping coefficient of the last
        ``gather_grads`` (call it after every backward, e.g. as part of a CUDA graph); otherwise the
        gradients are read now, unclipped."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not gathered:
            self._gather()
        for group, layout in zip(self.param_groups, self._groups):
            self._step_group(group, layout, clip=gathered)
        return loss

    def _step_group(self, group: dict, layout: _Group, clip: bool) -> None:
        params = layout.params
        lr, wd, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
        beta1, beta2 = (float(b) for b in group["betas"])
        if layout.step is not None and all(p.grad is not None for p in params):
            layout.step += 1.0
            t = float(layout.step)
            layout.refresh()
            _adamw_kernel[(layout.blocks.shape[0],)](
                layout.blocks, layout.table, self._flat_g, self._flat_m, self._flat_v, self.norm_and_coef,
                lr * wd, beta1, beta2, eps, lr / (1.0 - beta1 ** t), math.sqrt(1.0 - beta2 ** t),
                CLIP=clip, BLOCK=UPDATE_BLOCK, num_warps=4,
            )
            return
        # a parameter without a gradient is skipped (as torch does), so step counts can come to
        # differ: the same update, one tensor at a time in torch operations, each with its own count
        for p in params:
            self.state[p]["step"] = self.state[p]["step"].clone()
        coef = self.norm_and_coef[1] if clip else None
        for p, offset in zip(params, layout.offsets):
            if p.grad is None:
                continue
            state = self.state[p]
            state["step"] += 1.0
            t = float(state["step"])
            g = self._flat_g[offset:offset + p.numel()].view_as(p)
            if coef is not None:
                g = g * coef
            m, v = state["exp_avg"], state["exp_avg_sq"]
            p.sub_(lr * wd * p)
            m.mul_(beta1).add_(g * (1.0 - beta1))
            v.mul_(beta2).add_(g * g * (1.0 - beta2))
            denom = v.sqrt() / math.sqrt(1.0 - beta2 ** t) + eps
            p.sub_((lr / (1.0 - beta1 ** t)) * m / denom)
        self._share_steps(layout)
