"""Building blocks shared by the models."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F


def gelu_tanh() -> nn.Module:
    return nn.GELU(approximate="tanh")


# "torch": nn.Linear and GELU modules; "triton": the fused kernels of flare.ops.fused_mlp (one launch
# forward, one backward, plus the weight-gradient sums); "auto": triton on CUDA wherever
# flare.ops.fused_mlp.fused_mlp_supports says it runs, else torch.
MLP_BACKENDS = ("torch", "triton", "auto")


class ResidualMLP(nn.Module):
    """MLP with optional input and output residual connections (SPEC §2).

    ``h = act(W_in x) (+ x if input_residual and in == hidden)``; then ``num_layers`` times
    ``h = h + act(W_i h)``; ``y = W_out h (+ h if output_residual and hidden == out)``.
    ``num_layers = -1`` makes the whole module one ``Linear(in, out)``. ``backend`` picks the
    implementation (``MLP_BACKENDS``); parameters and results are the same for each.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        input_residual: bool = False,
        output_residual: bool = False,
        backend: str = "torch",
    ):
        super().__init__()
        if backend not in MLP_BACKENDS:
            raise ValueError(f"unknown MLP backend {backend!r}; choose one of {', '.join(MLP_BACKENDS)}")
        self.backend = backend
        self.single_linear = num_layers == -1
        if self.single_linear:
            self.num_layers = 0
            self.register_parameter("hidden_weight", None)
            self.register_parameter("hidden_bias", None)
            self.fc_out = nn.Linear(in_dim, out_dim)
            return
        if num_layers < 0:
            raise ValueError(f"num_layers must be -1 or >= 0, got {num_layers}")
        self.act = gelu_tanh()
        self.num_layers = num_layers
        self.fc_in = nn.Linear(in_dim, hidden_dim)
        # the hidden layers' weights [L, hidden, hidden] and biases [L, hidden] as one parameter each:
        # the fused kernels take them as they are (a ModuleList of Linears had to be stacked on every
        # forward: two copy kernels per MLP call, 52 of the 357 launches of the paper Darcy step)
        if num_layers:
            self.hidden_weight = nn.Parameter(torch.empty(num_layers, hidden_dim, hidden_dim))
            self.hidden_bias = nn.Parameter(torch.empty(num_layers, hidden_dim))
            for layer in range(num_layers):  # nn.Linear's default, layer by layer, in its order
                _default_linear_init(self.hidden_weight[layer], self.hidden_bias[layer])
        else:
            self.register_parameter("hidden_weight", None)
            self.register_parameter("hidden_bias", None)
        self.fc_out = nn.Linear(hidden_dim, out_dim)
        self.input_residual = input_residual and in_dim == hidden_dim
        self.output_residual = output_residual and hidden_dim == out_dim
        self._register_load_state_dict_pre_hook(_stack_hidden_linears, with_module=True)

    def uses_fused(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x)`` runs the fused Triton kernels (``flare.ops.fused_mlp``)."""
        if self.single_linear or self.backend == "torch":
            return False
        if self.backend == "triton":
            return True
        if not x.is_cuda:
            return False
        from flare.ops.fused_mlp import dot_dtype_for, fused_mlp_supports  # imports triton: only on this path

        if self.fc_in.in_features < self.fc_in.out_features and x.dtype != dot_dtype_for(x):
            # a first projection under autocast: the fused output keeps x's dtype (fp32) where
            # nn.Linear's is the autocast dtype, and the residual stream after it follows; at 1M
            # points in bf16 the training step went 145.3 -> 160.6 ms with it fused (H100)
            return False
        return fused_mlp_supports(x, self.fc_in.in_features, self.fc_in.out_features, self.fc_out.out_features)

    @staticmethod
    def _kernel_norm(x: torch.Tensor, norm: Optional[nn.Module]) -> bool:
        # the kernels take a LayerNorm over the input features, with weight and bias
        return (isinstance(norm, nn.LayerNorm) and norm.elementwise_affine
                and norm.bias is not None and tuple(norm.normalized_shape) == (x.shape[-1],))

    def fuses_norm(self, x: torch.Tensor, norm: Optional[nn.Module]) -> bool:
        """Whether ``forward(x, norm)`` computes ``norm`` inside the fused kernels (a LayerNorm over
        the input features, with weight and bias) rather than applying it first."""
        return self._kernel_norm(x, norm) and self.uses_fused(x)

    def fused_params(self) -> tuple:
        """(w_in, b_in, w_hid, b_hid, w_out, b_out) as ``flare.ops.fused_mlp`` takes them."""
        return (self.fc_in.weight, self.fc_in.bias, self.hidden_weight, self.hidden_bias,
                self.fc_out.weight, self.fc_out.bias)

    def pairs_with(self, other: "ResidualMLP", x: torch.Tensor, norm: Optional[nn.Module]) -> bool:
        """Whether this MLP and ``other`` can run on ``x`` (and ``norm``) as one fused pair
        (``forward_pair``): both fused, the norm inside the kernels or absent, the same shapes."""
        if self.single_linear or other.single_linear or not (self.uses_fused(x) and other.uses_fused(x)):
            return False
        if norm is not None and not self._kernel_norm(x, norm):
            return False
        same = ([None if p is None else tuple(p.shape) for p in self.fused_params()]
                == [None if p is None else tuple(p.shape) for p in other.fused_params()])
        return (same and (self.input_residual, self.output_residual) == (other.input_residual, other.output_residual))

    def forward_pair(self, other: "ResidualMLP", x: torch.Tensor, norm: Optional[nn.Module] = None,
                     pass_input: bool = False) -> tuple:
        """``(self(norm(x)), other(norm(x)))`` with one fused backward for both (``pairs_with`` must
        hold): the gradients with respect to x and the norm are summed inside the kernels. With
        ``pass_input`` also x, to use as a skip connection around the pair (its gradient is then added
        inside the pair's backward as well)."""
        from flare.ops.fused_mlp import fused_residual_mlp_pair

        return fused_residual_mlp_pair(x, self.fused_params(), other.fused_params(), self.input_residual,
                                       self.output_residual,
                                       norm=None if norm is None else (norm.weight, norm.bias, norm.eps),
                                       pass_input=pass_input)

    def forward(self, x: torch.Tensor, norm: Optional[nn.Module] = None, add_input: bool = False) -> torch.Tensor:
        """``self(norm(x))``, plus ``x`` with ``add_input`` (a pre-norm block's skip connection, summed
        inside the fused kernels when they run); see ``fuses_norm``."""
        fused = self.uses_fused(x)
        skip = x if add_input else None
        if norm is not None and not (fused and self._kernel_norm(x, norm)):
            x, norm = norm(x), None
        if fused and not self.single_linear:
            from flare.ops.fused_mlp import fused_residual_mlp

            in_kernel = skip is not None and x is skip  # the kernels add their own (un-normalised) input
            y = fused_residual_mlp(
                x, self.fc_in.weight, self.fc_in.bias, self.hidden_weight, self.hidden_bias,
                self.fc_out.weight, self.fc_out.bias, self.input_residual, self.output_residual,
                norm=None if norm is None else (norm.weight, norm.bias, norm.eps), add_input=in_kernel,
            )
            return y if skip is None or in_kernel else skip + y
        y = self._torch_forward(x)
        return y if skip is None else skip + y

    def _torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.single_linear:
            return self.fc_out(x)
        h = self.act(self.fc_in(x))
        if self.input_residual:
            h = h + x
        for layer in range(self.num_layers):
            h = h + self.act(F.linear(h, self.hidden_weight[layer], self.hidden_bias[layer]))
        y = self.fc_out(h)
        if self.output_residual:
            y = y + h
        return y


def _default_linear_init(weight: torch.Tensor, bias: torch.Tensor) -> None:
    """What ``nn.Linear.reset_parameters`` does to a [out, in] weight and its bias (views work)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    bound = 1.0 / math.sqrt(weight.shape[1]) if weight.shape[1] > 0 else 0.0
    nn.init.uniform_(bias, -bound, bound)


def _stack_hidden_linears(module, state_dict, prefix, *args) -> None:
    """Load-time hook: state dicts written when the hidden layers were a ModuleList of Linears
    (``fc_hidden.{l}.weight`` / ``.bias``) load into the stacked ``hidden_weight`` / ``hidden_bias``."""
    for name in ("weight", "bias"):
        keys = [f"{prefix}fc_hidden.{layer}.{name}" for layer in range(module.num_layers)]
        if keys and all(k in state_dict for k in keys):
            state_dict[f"{prefix}hidden_{name}"] = torch.stack([state_dict.pop(k) for k in keys])


def init_linear_and_norm(module: nn.Module, std: float = 0.02) -> None:
    """Linear weights (and a ResidualMLP's stacked hidden weights) N(0, std²), biases 0; LayerNorm
    weight 1, bias 0."""
    if isinstance(module, ResidualMLP) and module.hidden_weight is not None:
        nn.init.normal_(module.hidden_weight, mean=0.0, std=std)
        nn.init.zeros_(module.hidden_bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
