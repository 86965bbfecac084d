"""The FLARE model follows SPEC §2: shapes, structure, initialisation, paper settings."""
import pytest
import torch
from torch import nn

from flare.models import MODELS, build, paper_model
from flare.models.flare import FLARE
from flare.models.layers import ResidualMLP
from flare.ops import flare_mixer

TINY = dict(channel_dim=16, num_blocks=2, num_heads=4, num_latents=8)


def test_build_returns_registered_flare_with_expected_shape():
    model = build("flare", 3, 2, **TINY)
    assert isinstance(model, FLARE) and "flare" in MODELS
    assert model(torch.randn(2, 37, 3)).shape == (2, 37, 2)


def test_build_names_unknown_model_and_unknown_hyperparameter():
    with pytest.raises(KeyError, match="unknown model 'nope'.*flare"):
        build("nope", 1, 1)
    with pytest.raises(TypeError, match="num_latentz"):
        build("flare", 1, 1, num_latentz=3)


def test_residual_mlp_default_init_and_old_state_dicts():
    # the stacked hidden layers start as nn.Linear layers created in the same order would
    torch.manual_seed(3)
    mlp = ResidualMLP(3, 6, 2, num_layers=2)
    torch.manual_seed(3)
    linears = [nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 2)]
    torch.testing.assert_close(mlp.hidden_weight, torch.stack([m.weight for m in linears[1:3]]), rtol=0, atol=0)
    torch.testing.assert_close(mlp.hidden_bias, torch.stack([m.bias for m in linears[1:3]]), rtol=0, atol=0)
    torch.testing.assert_close(mlp.fc_out.weight, linears[3].weight, rtol=0, atol=0)
    # a state dict of the earlier layout (fc_hidden.{l}.weight / .bias) loads into the stacked one
    old = {f"mlp.fc_in.{n}": getattr(linears[0], n) for n in ("weight", "bias")}
    old.update({f"mlp.fc_out.{n}": getattr(linears[3], n) for n in ("weight", "bias")})
    old.update({f"mlp.fc_hidden.{i}.{n}": getattr(linears[1 + i], n).detach() * 2
                for i in range(2) for n in ("weight", "bias")})
    holder = nn.Module()
    holder.mlp = ResidualMLP(3, 6, 2, num_layers=2)
    holder.load_state_dict(old)
    torch.testing.assert_close(holder.mlp.hidden_weight[1], 2 * linears[2].weight.detach())
    torch.testing.assert_close(holder.mlp.hidden_bias[0], 2 * linears[1].bias.detach())
    with pytest.raises(RuntimeError, match="hidden_weight"):  # neither layout: a clear error
        holder.load_state_dict({k: v for k, v in old.items() if "fc_hidden.1" not in k})


def test_heads_must_divide_channels():
    with pytest.raises(ValueError, match="divisible"):
        build("flare", 1, 1, channel_dim=10, num_heads=4)


def test_residual_mlp_formula():
    torch.manual_seed(0)
    mlp = ResidualMLP(4, 4, 4, num_layers=2, input_residual=True, output_residual=True)
    x = torch.randn(5, 4)
    act = nn.GELU(approximate="tanh")
    h = act(mlp.fc_in(x)) + x
    for w, b in zip(mlp.hidden_weight, mlp.hidden_bias):
        h = h + act(h @ w.T + b)
    torch.testing.assert_close(mlp(x), mlp.fc_out(h) + h)
    # residuals only where widths agree; -1 layers is one Linear
    assert not ResidualMLP(3, 4, 4, 1, input_residual=True).input_residual
    single = ResidualMLP(3, 8, 2, num_layers=-1)
    assert [type(m) for m in single.modules()][1:] == [nn.Linear]


def test_forward_equals_hand_composition_of_spec_blocks():
    torch.manual_seed(1)
    model = build("flare", 3, 1, **TINY).double()
    x = torch.randn(2, 11, 3, dtype=torch.float64)
    h = model.in_proj(x)
    for block in model.blocks:
        u = block.norm1(h)
        mixer = block.mixer
        k = mixer.key_proj(u).view(2, 11, 4, 4).transpose(1, 2)
        v = mixer.value_proj(u).view(2, 11, 4, 4).transpose(1, 2)
        q = mixer.latent_queries.view(4, 4, 8).transpose(1, 2)  # [C, M] -> [H, M, D]
        y = flare_mixer(q, k, v, backend="explicit").transpose(1, 2).reshape(2, 11, 16)
        h = h + mixer.out(y)
        h = h + block.mlp(block.norm2(h))
    torch.testing.assert_close(model(x), model.out_proj(model.out_norm(h)))


def test_structure_of_projections():
    model = build("flare", 3, 1, **TINY)
    assert model.in_proj.hidden_weight.shape == (2, 16, 16) and not model.in_proj.input_residual and model.in_proj.output_residual
    assert model.out_proj.input_residual and not model.out_proj.output_residual
    block = model.blocks[0]
    assert block.mixer.key_proj.num_layers == 3 and block.mlp.hidden_bias.shape == (3, 16)
    assert isinstance(model.out_norm, nn.LayerNorm)
    assert block.mixer.latent_queries.shape == (16, 8)


def test_initialisation():
    torch.manual_seed(0)
    model = build("flare", 3, 1, channel_dim=64, num_blocks=4, num_heads=8, num_latents=64)
    weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, nn.Linear)])
    biases = torch.cat([m.bias.flatten() for m in model.modules() if isinstance(m, nn.Linear)])
    mlps = [m for m in model.modules() if isinstance(m, ResidualMLP) and m.num_layers]
    weights = torch.cat([weights] + [m.hidden_weight.flatten() for m in mlps])
    biases = torch.cat([biases] + [m.hidden_bias.flatten() for m in mlps])
    latents = torch.cat([b.mixer.latent_queries.flatten() for b in model.blocks])
    assert abs(weights.std().item() - 0.02) < 0.001 and biases.abs().max() == 0
    assert abs(latents.std().item() - 0.1) < 0.005
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert all((n.weight == 1).all() and (n.bias == 0).all() for n in norms)
    assert model.no_weight_decay() == {f"blocks.{i}.mixer.latent_queries" for i in range(4)}


@pytest.mark.parametrize(
    "dataset,M,H", [("elasticity", 64, 8), ("darcy", 256, 16), ("airfoil", 256, 8), ("pipe", 128, 8)]
)
def test_paper_model_uses_the_paper_table(dataset, M, H):
    model = paper_model("flare", dataset)
    cfg = model.config
    assert (cfg.channel_dim, cfg.num_blocks, cfg.num_latents, cfg.num_heads) == (64, 8, M, H)
    assert model.blocks[0].mixer.queries().shape == (H, M, 64 // H)


def test_paper_model_needs_channels_for_unknown_dataset():
    with pytest.raises(KeyError, match="pass in_channels"):
        paper_model("flare", "mydata")
    assert paper_model("flare", "mydata", in_channels=5, out_channels=2, num_blocks=1)(torch.randn(1, 4, 5)).shape == (1, 4, 2)


def test_permutation_equivariance_and_variable_n():
    torch.manual_seed(0)
    model = build("flare", 2, 1, **TINY).double()
    x = torch.randn(1, 23, 2, dtype=torch.float64)
    perm = torch.randperm(23)
    torch.testing.assert_close(model(x)[:, perm], model(x[:, perm]))
    assert model(torch.randn(1, 5, 2, dtype=torch.float64)).shape == (1, 5, 1)


def test_fifty_steps_overfit_one_batch_tenfold():
    torch.manual_seed(0)
    model = build("flare", 3, 1, **TINY)
    x = torch.rand(2, 64, 3)
    y = x[..., :1] - 2 * x[..., 1:2] + x[..., 2:3] ** 2
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10


def test_activation_checkpointing_gives_the_same_values_and_gradients():
    torch.manual_seed(0)
    kwargs = dict(channel_dim=16, num_blocks=2, num_heads=2, num_latents=8)
    plain = FLARE(3, 2, **kwargs).double()
    ckpt = FLARE(3, 2, activation_checkpointing=True, **kwargs).double()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 37, 3, dtype=torch.float64)
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # no recomputation bookkeeping when no gradient is wanted
        torch.testing.assert_close(ckpt(x), plain(x), rtol=0, atol=0)
