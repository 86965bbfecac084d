"""Training settings with the paper's defaults (SPEC §2)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping


@dataclass
class TrainConfig:
    epochs: int = 500
    batch_size: int = 2
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    one_cycle_pct_start: float = 0.1
    one_cycle_div_factor: float = 1e4
    one_cycle_final_div_factor: float = 1e4
    one_cycle_three_phase: bool = False
    clip_grad_norm: float = 1.0  # 0 turns clipping off
    derivative_loss_weight: float = 0.0  # Darcy: 0.1 (needs a structured grid)
    num_checkpoints: int = 10  # ckpt00 (start) … ckpt10 (end)
    eval_batch_size: int = 8
    device: str = "auto"  # auto: cuda when available, else cpu
    tf32: bool = True  # fp32 with TF32 matmuls on GPU, as the paper trains
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast with loss scaling, CUDA only)
    ema_decay: float = 0.0  # > 0 keeps an exponential moving average of the weights, used for evaluation
    compile: bool = False  # torch.compile the model (with its own CUDA graphs when cuda_graphs applies)
    cuda_graphs: bool = True  # on CUDA, replay each step up to the optimizer from a CUDA graph (flare.train.graphs)
    fused_optimizer: bool = True  # on CUDA, AdamW and gradient clipping as Triton kernels (flare.ops.fused_adamw)
    plots: bool = True  # loss, gradient-norm and learning-rate plots in the run folder

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        allowed = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; allowed: {', '.join(allowed)}")
        converted = {}
        for key, value in values.items():
            kind = type(allowed[key].default)
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise TypeError(f"training setting {key!r} must be {kind.__name__}, got {value!r}")
            converted[key] = value
        cfg = cls(**converted)
        if cfg.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"training setting 'precision' must be fp32, bf16 or fp16, got {cfg.precision!r}")
        if not 0.0 <= cfg.ema_decay < 1.0:
            raise ValueError(f"training setting 'ema_decay' must be in [0, 1), got {cfg.ema_decay}")
        for key in ("epochs", "batch_size", "eval_batch_size", "num_checkpoints"):
            if getattr(cfg, key) < 1:
                raise ValueError(f"training setting {key!r} must be at least 1, got {getattr(cfg, key)}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
