"""The Transformer, PerceiverIO and GNOT baselines follow SPEC §3: shapes, training, symmetry,
the paper's structure, and each model's token-mixing mechanism against its formula."""
import math

import pytest
import torch
import torch.nn.functional as F

from flare.models import MODELS, build, paper_model
from flare.models.gnot import GNOT
from flare.models.perceiver import PerceiverIO
from flare.models.transformer import Transformer
from flare.settings import model_settings
from flare.train.config import TrainConfig
from flare.train.optim import parameter_groups

TINY = {
    "transformer": dict(channel_dim=16, num_blocks=2, num_heads=2, mlp_ratio=2),
    "perceiver": dict(channel_dim=16, num_blocks=1, num_heads=4, num_latents=16, mlp_ratio=2),
    "gnot": dict(channel_dim=32, num_blocks=1, num_heads=4, num_experts=3, mlp_ratio=2),
}
# Adam step sizes at which these sizes overfit one batch tenfold in 50 steps for seeds 0-7
OVERFIT_LR = {"transformer": 2e-3, "perceiver": 3e-3, "gnot": 3e-3}
BASELINES = sorted(TINY)
PAPER_DATASETS = ["elasticity", "darcy", "airfoil", "pipe", "drivaerml", "lpbf"]


def tiny(name: str, c_in: int = 3, c_out: int = 2, **overrides):
    return build(name, c_in, c_out, **{**TINY[name], **overrides})


@pytest.mark.parametrize("name", BASELINES)
def test_output_shape_for_two_point_counts(name):
    torch.manual_seed(0)
    model = tiny(name)
    assert model(torch.randn(2, 37, 3)).shape == (2, 37, 2)
    assert model(torch.randn(2, 5, 3)).shape == (2, 5, 2)


@pytest.mark.parametrize("name", BASELINES)
def test_permuting_tokens_permutes_outputs(name):
    torch.manual_seed(0)
    model = tiny(name).double()
    x = torch.randn(2, 23, 3, dtype=torch.float64)
    perm = torch.randperm(23)
    torch.testing.assert_close(model(x)[:, perm], model(x[:, perm]))


@pytest.mark.parametrize("name", BASELINES)
def test_fifty_steps_overfit_one_batch_tenfold(name):
    torch.manual_seed(0)
    model = tiny(name, c_out=1)
    x = torch.rand(2, 64, 3)
    y = x[..., :1] - 2 * x[..., 1:2] + x[..., 2:3] ** 2
    opt = torch.optim.Adam(model.parameters(), lr=OVERFIT_LR[name])
    losses = []
    for _ in range(50):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10


@pytest.mark.parametrize("name", BASELINES)
def test_settings_files_hold_valid_training_keys_for_every_paper_dataset(name):
    for dataset in PAPER_DATASETS:
        TrainConfig.from_dict(model_settings(name, dataset)["train"])
    assert model_settings(name, "darcy")["train"]["derivative_loss_weight"] == 0.1
    assert model_settings(name, "lpbf")["train"]["epochs"] == 250


def test_registry_names_the_baselines():
    assert (MODELS["transformer"], MODELS["perceiver"], MODELS["gnot"]) == (Transformer, PerceiverIO, GNOT)
    with pytest.raises(TypeError, match="num_latents"):
        build("transformer", 1, 1, num_latents=8)
    with pytest.raises(ValueError, match="divisible"):
        build("perceiver", 1, 1, channel_dim=10, num_heads=4)
    with pytest.raises(ValueError, match="space_dim"):
        build("gnot", 2, 1, space_dim=3)


# ---- paper structure -------------------------------------------------------------------------


def test_paper_transformer_structure():
    model = paper_model("transformer", "darcy")
    blocks = model.blocks
    assert len(blocks) == 8 and blocks[0].attention.num_heads == 5
    assert blocks[0].attention.qkv.weight.shape == (3 * 80, 80)
    assert blocks[0].mlp.fc_in.weight.shape == (320, 80)  # mlp ratio 4
    assert model.in_proj.fc_in.in_features == 3 and model.out_proj.fc_out.out_features == 1


def test_paper_perceiver_structure():
    model = paper_model("perceiver", "darcy")
    assert model.latents.shape == (1024, 128)
    assert len(model.blocks) == 8 and model.blocks[0].attention.num_heads == 8
    assert model.blocks[0].mlp.fc_in.weight.shape == (512, 128)
    assert model.encoder.num_heads == model.decoder.num_heads == 8
    assert model.no_weight_decay() == {"latents"}
    no_decay = parameter_groups(model, 1e-5)[1]["params"]
    assert any(p is model.latents for p in no_decay)


def test_paper_gnot_structure():
    model = paper_model("gnot", "darcy")
    block = model.blocks[0]
    assert len(model.blocks) == 8 and model.config.channel_dim == 128
    assert block.cross_attention.num_heads == block.self_attention.num_heads == 8
    assert len(block.moe1.experts) == len(block.moe2.experts) == 3
    assert block.moe1.experts[0].fc_in.weight.shape == (256, 128)  # mlp ratio 2
    assert block.gate[0].in_features == 2 and block.gate[-1].out_features == 3
    assert paper_model("gnot", "lpbf").blocks[0].gate[0].in_features == 3


# ---- mechanisms against hand formulas ---------------------------------------------------------


def test_transformer_attention_is_explicit_softmax_of_scaled_scores():
    torch.manual_seed(0)
    attention = tiny("transformer").blocks[0].attention.double()
    B, N, C, H = 2, 9, TINY["transformer"]["channel_dim"], TINY["transformer"]["num_heads"]
    D = C // H
    x = torch.randn(B, N, C, dtype=torch.float64)
    Wq, Wk, Wv = attention.qkv.weight.chunk(3, dim=0)
    heads = []
    for h in range(H):
        cols = slice(h * D, (h + 1) * D)
        q, k, v = x @ Wq[cols].T, x @ Wk[cols].T, x @ Wv[cols].T  # [B, N, D]
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(D), dim=-1)  # rows sum to 1 over N
        heads.append(weights @ v)
    torch.testing.assert_close(attention(x), attention.out(torch.cat(heads, dim=-1)))


def test_perceiver_tokens_meet_the_latents_only_through_cross_attention():
    torch.manual_seed(0)
    model = tiny("perceiver").double()
    cfg = model.config
    B, N, C, H, M = 2, 11, cfg.channel_dim, cfg.num_heads, cfg.num_latents
    D = C // H
    x = torch.randn(B, N, 3, dtype=torch.float64)

    def split(t):  # [B, n, H·D] -> [B, H, n, D]
        return t.unflatten(-1, (H, D)).transpose(1, 2)

    def attend(q, k, v):  # per head softmax over keys of q kᵀ/√D, times v; [B, ·, C] in and out
        w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(D), dim=-1)
        return (w @ split(v)).transpose(1, 2).flatten(-2)

    h = model.in_proj(x)
    enc, dec = model.encoder, model.decoder
    u = model.encoder_norm(h)
    latents = model.latents.expand(B, M, C)
    z_encoded = latents + enc.out(attend(latents, enc.key(u), enc.value(u)))  # latents are the queries
    z = z_encoded
    for block in model.blocks:
        z = block(z)
    q, zn = model.decoder_query_norm(h), model.decoder_latent_norm(z)
    y = dec.out(attend(dec.query(q), dec.key(zn), dec.value(zn)))
    torch.testing.assert_close(model(x), model.out_proj(model.out_norm(y)))

    # the decoder mixes no tokens: with the latents fixed, changing token 0 changes only output 0
    h2 = h.clone()
    h2[:, 0] += torch.randn(C, dtype=torch.float64)  # not a constant shift, which LayerNorm removes
    changed = (model.decode(z, h2) - model.decode(z, h)).abs().amax(dim=(0, 2))
    assert changed[0] > 1e-6 and changed[1:].max() == 0
    # without the encoder residual the latents are only the queries of the encoder's attention
    plain = tiny("perceiver", encoder_residual=False).double()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(plain.encode(h), z_encoded - latents)
    # the latent state has M rows whatever N is
    assert model.encode(h).shape == (B, M, C) and model.encode(h[:, :3]).shape == (B, M, C)


@pytest.mark.parametrize("query_residual", [True, False])
def test_gnot_linear_attention_is_explicitly_normalised(query_residual):
    torch.manual_seed(0)
    attention = tiny("gnot", query_residual=query_residual).blocks[0].cross_attention.double()
    B, N, S, C, H = 2, 7, 5, TINY["gnot"]["channel_dim"], TINY["gnot"]["num_heads"]
    D = C // H
    u = torch.randn(B, N, C, dtype=torch.float64)
    w = torch.randn(B, S, C, dtype=torch.float64)
    heads = []
    for h in range(H):
        cols = slice(h * D, (h + 1) * D)
        q = torch.softmax(attention.query(u)[..., cols], dim=-1)  # softmax over features, [B, N, D]
        k = torch.softmax(attention.key(w)[..., cols], dim=-1)  # [B, S, D]
        v = attention.value(w)[..., cols]
        scores = q @ k.transpose(1, 2)  # q_t·k_s > 0, [B, N, S]
        y = (scores / scores.sum(dim=-1, keepdim=True)) @ v  # weights over sources sum to 1
        heads.append(y + q if query_residual else y)
    torch.testing.assert_close(attention(u, w), attention.out(torch.cat(heads, dim=-1)))


def test_gnot_experts_are_mixed_by_a_softmax_of_the_position_only():
    torch.manual_seed(0)
    model = tiny("gnot").double()
    block = model.blocks[0]
    x = torch.randn(2, 13, 3, dtype=torch.float64)
    gates = block.gates(x[..., :2])
    torch.testing.assert_close(gates.sum(dim=-1), torch.ones(2, 13, dtype=torch.float64))
    h = torch.randn(2, 13, model.config.channel_dim, dtype=torch.float64)
    mixed = sum(gates[..., e, None] * block.moe1.experts[e](h) for e in range(3))
    torch.testing.assert_close(block.moe1(h, gates), mixed)
    # the third channel (a coefficient, not a coordinate) reaches the gates of no block
    x2 = x.clone()
    x2[..., 2] += 1.0
    seen = []
    for b in model.blocks:
        b.gate.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    model(x), model(x2)
    assert len(seen) == 2 * len(model.blocks)
    for first, second in zip(seen[: len(model.blocks)], seen[len(model.blocks) :]):
        torch.testing.assert_close(first, second)
