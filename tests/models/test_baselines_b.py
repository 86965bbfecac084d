"""The LNO, Transolver (point cloud and grid) and mesh GNN baselines follow SPEC §3."""
import math

import pytest
import torch
from torch import nn

from flare.models import MODELS, PAPER_DATASET_CHANNELS, build, paper_model
from flare.models.lno import LNO
from flare.models.mesh_gnn import MeshGNN
from flare.models.transolver import SLICE_NORM_EPS, GridConv, Transolver, TransolverConv
from flare.settings import model_settings
from flare.train.config import TrainConfig

TINY = {
    "lno": dict(channel_dim=32, num_modes=64, num_blocks=1, num_heads=2, num_layers_proj=1),
    "transolver": dict(channel_dim=16, num_blocks=2, num_heads=2, num_slices=8),
    "transolver_conv": dict(channel_dim=16, num_blocks=2, num_heads=2, num_slices=8, grid_shape=[8, 8]),
    "mesh_gnn": dict(hidden_dim=16, num_layers=2, space_dim=2),
}
POINT_CLOUD_MODELS = ["lno", "transolver"]
ALL_MODELS = list(TINY)


def grid_edges(nx: int, ny: int) -> torch.Tensor:
    """Undirected edges ``[2, E]`` of an nx×ny grid whose nodes are numbered row-major."""
    index = torch.arange(nx * ny).view(nx, ny)
    along_y = torch.stack([index[:, :-1].flatten(), index[:, 1:].flatten()])
    along_x = torch.stack([index[:-1].flatten(), index[1:].flatten()])
    return torch.cat([along_y, along_x], dim=1)


def grid_inputs(batch: int, nx: int, ny: int) -> torch.Tensor:
    """``[batch, nx·ny, 3]``: the grid's (x, y) coordinates row-major and one random feature."""
    gx, gy = torch.meshgrid(torch.linspace(0, 1, nx), torch.linspace(0, 1, ny), indexing="ij")
    coords = torch.stack([gx.flatten(), gy.flatten()], dim=-1).expand(batch, -1, -1)
    return torch.cat([coords, torch.rand(batch, nx * ny, 1)], dim=-1)


def smooth_target(x: torch.Tensor) -> torch.Tensor:
    return x[..., :1] - 2 * x[..., 1:2] + x[..., 2:3] ** 2


# -- registry, shapes, input checks ---------------------------------------------------------------


def test_baselines_are_registered():
    expected = {"lno": LNO, "transolver": Transolver, "transolver_conv": TransolverConv, "mesh_gnn": MeshGNN}
    assert expected.items() <= MODELS.items()


@pytest.mark.parametrize("name", POINT_CLOUD_MODELS)
def test_point_cloud_models_map_any_n_to_same_n(name):
    model = build(name, 3, 2, **TINY[name])
    for n in (37, 5):
        assert model(torch.randn(2, n, 3)).shape == (2, n, 2)


def test_transolver_conv_needs_grid_shape_matching_n():
    model = build("transolver_conv", 3, 2, **TINY["transolver_conv"])
    assert model(torch.randn(2, 64, 3)).shape == (2, 64, 2)
    with pytest.raises(ValueError, match="8×8 grid.*N = 63"):
        model(torch.randn(2, 63, 3))
    with pytest.raises(ValueError, match="needs grid_shape"):
        build("transolver_conv", 3, 1, channel_dim=16, num_heads=2)
    with pytest.raises(ValueError, match="needs grid_shape"):
        paper_model("transolver_conv", "elasticity")


def test_mesh_gnn_maps_any_mesh_and_needs_edges():
    model = build("mesh_gnn", 3, 2, **TINY["mesh_gnn"])
    assert model(grid_inputs(2, 4, 5), grid_edges(4, 5)).shape == (2, 20, 2)
    assert model(grid_inputs(1, 3, 3), grid_edges(3, 3)).shape == (1, 9, 2)
    with pytest.raises(ValueError, match="mesh_gnn needs the mesh's edges"):
        model(grid_inputs(1, 3, 3))
    with pytest.raises(ValueError, match="outside 0..8"):
        model(grid_inputs(1, 3, 3), torch.tensor([[0], [9]]))
    with pytest.raises(ValueError, match=r"\[2, E\] or \[1, 2, E\]"):
        model(grid_inputs(1, 3, 3), torch.zeros(3, 4, dtype=torch.long))


def test_mesh_gnn_batched_edges_equal_shared_edges():
    torch.manual_seed(0)
    model = build("mesh_gnn", 3, 1, **TINY["mesh_gnn"]).double()
    x = grid_inputs(2, 3, 4).double()
    edges = grid_edges(3, 4)
    torch.testing.assert_close(model(x, edges), model(x, edges.expand(2, -1, -1)))


# -- training ---------------------------------------------------------------------------------------


# LNO's mode assignment starts near uniform (all modes alike); inputs of unit spread and a larger step
# let it leave that symmetric start within 50 steps. The grid models see an 8×8 grid.
OVERFIT = {  # name: (Adam learning rate, inputs)
    "lno": (1e-2, "normal"),
    "transolver": (3e-3, "uniform"),
    "transolver_conv": (3e-3, "grid"),
    "mesh_gnn": (3e-3, "grid"),
}


def overfit_ratio(name: str, seed: int) -> float:
    """First over last MSE of 50 Adam steps on one tiny batch."""
    lr, inputs = OVERFIT[name]
    torch.manual_seed(seed)
    model = build(name, 3, 1, **TINY[name])
    x = {"normal": lambda: torch.randn(2, 64, 3), "uniform": lambda: torch.rand(2, 64, 3),
         "grid": lambda: grid_inputs(2, 8, 8)}[inputs]()
    y = smooth_target(x)
    extra = (grid_edges(8, 8),) if name == "mesh_gnn" else ()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(50):
        loss = nn.functional.mse_loss(model(x, *extra), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0] / losses[-1]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_fifty_steps_overfit_one_batch_tenfold(name):
    assert overfit_ratio(name, seed=0) > 10


# -- symmetry ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lno", "transolver", "mesh_gnn"])
def test_permutation_equivariance(name):
    torch.manual_seed(0)
    model = build(name, 3, 2, **TINY[name]).double()
    x = grid_inputs(2, 4, 6).double()
    perm = torch.randperm(24)
    if name == "mesh_gnn":
        edges = grid_edges(4, 6)
        new_label = torch.empty_like(perm)
        new_label[perm] = torch.arange(24)  # node perm[i] of x is node i of x[:, perm]
        torch.testing.assert_close(model(x, edges)[:, perm], model(x[:, perm], new_label[edges]))
    else:
        torch.testing.assert_close(model(x)[:, perm], model(x[:, perm]))


# -- paper settings ------------------------------------------------------------------------------------


def test_lno_paper_model_structure():
    model = paper_model("lno", "darcy", in_channels=3, out_channels=1)
    cfg = model.config
    assert (cfg.channel_dim, cfg.num_modes, cfg.num_blocks, cfg.num_heads) == (128, 256, 4, 8)
    assert model.mode_proj.fc_out.weight.shape == (256, 128)  # one learned query per mode
    assert model.trunk.num_layers == 2 and model.blocks[0].mlp.fc_in.out_features == 256
    assert paper_model("lno", "elasticity").config.channel_dim == 192
    assert paper_model("lno", "pipe").config.num_blocks == 8
    x = torch.randn(1, 10, 3)
    assert model(x).shape == (1, 10, 1)


def test_transolver_paper_model_structure():
    model = paper_model("transolver", "darcy", in_channels=3, out_channels=1)
    cfg = model.config
    assert (cfg.channel_dim, cfg.num_blocks, cfg.num_heads, cfg.num_slices) == (128, 8, 8, 64)
    assert cfg.mlp_ratio == 1
    attn = model.blocks[0].attn
    assert attn.slice_proj.weight.shape == (64, 16) and isinstance(attn.in_proj, nn.Linear)
    assert torch.all(attn.temperature == 0.5) and attn.temperature.shape == (8,)
    assert model.blocks[0].mlp.fc_in.out_features == 128 and model.in_proj.fc_in.out_features == 256
    assert model(torch.randn(1, 10, 3)).shape == (1, 10, 1)


@pytest.mark.parametrize("dataset,grid", [("darcy", (85, 85)), ("pipe", (129, 129)), ("airfoil", (221, 51))])
def test_transolver_conv_paper_model_convolves_over_the_dataset_grid(dataset, grid):
    model = paper_model("transolver_conv", dataset)
    assert tuple(model.config.grid_shape) == grid and len(model.blocks) == 8
    for block in model.blocks:
        assert isinstance(block.attn.in_proj, GridConv)
        conv = block.attn.in_proj.conv
        assert conv.kernel_size == (3, 3) and (conv.in_channels, conv.out_channels) == (128, 256)


def test_mesh_gnn_paper_model_structure():
    model = paper_model("mesh_gnn", "darcy", in_channels=3, out_channels=1)
    cfg = model.config
    assert (cfg.hidden_dim, cfg.num_layers, cfg.space_dim) == (128, 15, 2)
    assert model.edge_encoder[0].in_features == 3  # relative position (2) and its length
    assert paper_model("mesh_gnn", "lpbf").config.space_dim == 3
    assert model(grid_inputs(1, 3, 3), grid_edges(3, 3)).shape == (1, 9, 1)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_settings_files_hold_valid_training_settings(name):
    datasets = ("darcy", "pipe", "airfoil") if name == "transolver_conv" else PAPER_DATASET_CHANNELS
    for dataset in datasets:
        settings = model_settings(name, dataset)
        cfg = TrainConfig.from_dict(settings["train"])
        assert cfg.epochs == (250 if dataset == "lpbf" else 500)
        assert cfg.derivative_loss_weight == (0.1 if dataset == "darcy" else 0.0)
        build(name, PAPER_DATASET_CHANNELS[dataset][0], 1, **settings["model"])  # all hyperparameters known


# -- mechanisms against hand formulas -------------------------------------------------------------------


def test_transolver_slice_weights_and_slice_tokens_match_hand_formulas():
    torch.manual_seed(0)
    model = build("transolver", 3, 1, **TINY["transolver"]).double()
    attn = model.blocks[0].attn
    B, N, H, D, G = 2, 11, 2, 8, 8
    u = torch.randn(B, N, 16, dtype=torch.float64)
    f, a = attn.in_proj(u).chunk(2, dim=-1)
    f, a = attn.split_heads(f), attn.split_heads(a)
    w = attn.slice_weights(a)
    assert w.shape == (B, H, N, G)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, N, dtype=torch.float64))
    logits = a @ attn.slice_proj.weight.T + attn.slice_proj.bias
    torch.testing.assert_close(w, torch.softmax(logits / 0.5, dim=-1))  # temperature starts at 0.5
    s = attn.slice_tokens(f, w)
    for b, h, g in [(0, 0, 0), (1, 1, 5), (0, 1, 7)]:
        weights = w[b, h, :, g]
        mean = (weights[:, None] * f[b, h]).sum(0) / weights.sum()
        torch.testing.assert_close(s[b, h, g], mean, rtol=1e-3, atol=SLICE_NORM_EPS)
    # attention among the slice tokens, then scattered back with the same weights
    q, k, v = attn.query(s), attn.key(s), attn.value(s)
    s_mixed = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), dim=-1) @ v
    y = (w @ s_mixed).transpose(1, 2).reshape(B, N, 16)
    torch.testing.assert_close(attn(u), attn.out(y))


def test_grid_conv_follows_row_major_grid_order():
    torch.manual_seed(0)
    conv = GridConv(1, 1, (3, 4)).double()
    u = torch.randn(1, 12, 1, dtype=torch.float64)
    expected = conv.conv(u.view(1, 3, 4).unsqueeze(0)).flatten()
    torch.testing.assert_close(conv(u).flatten(), expected)


def test_lno_encodes_with_softmax_over_tokens_and_decodes_with_softmax_over_modes():
    torch.manual_seed(0)
    model = build("lno", 3, 1, **TINY["lno"]).double()
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    scores = model.mode_scores(x)
    assert scores.shape == (2, 9, 64)
    u = model.branch(x)
    z = model.encode(scores, u)
    encode_weights = torch.exp(scores) / torch.exp(scores).sum(dim=1, keepdim=True)  # over N
    torch.testing.assert_close(z, torch.einsum("bnm,bnc->bmc", encode_weights, u))
    # each mode is a weighted mean: a constant field encodes to the same constant
    ones = torch.ones_like(u)
    torch.testing.assert_close(model.encode(scores, ones), torch.ones(2, 64, 32, dtype=torch.float64))
    decode_weights = torch.exp(scores) / torch.exp(scores).sum(dim=2, keepdim=True)  # over M
    h = z
    for block in model.blocks:
        h = block(h)
    torch.testing.assert_close(model(x), model.out_proj(decode_weights @ h))


def test_mesh_gnn_isolated_nodes_are_independent():
    torch.manual_seed(0)
    model = build("mesh_gnn", 3, 2, **TINY["mesh_gnn"]).double()
    x = torch.randn(1, 6, 3, dtype=torch.float64)
    no_edges = torch.zeros(2, 0, dtype=torch.long)
    y = model(x, no_edges)
    for i in range(6):
        torch.testing.assert_close(y[:, i], model(x[:, i : i + 1], no_edges)[:, 0])


def test_mesh_gnn_one_layer_reaches_only_neighbours():
    torch.manual_seed(0)
    path = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])  # 0 - 1 - 2 - 3 - 4
    x = torch.randn(1, 5, 3, dtype=torch.float64)
    changed = x.clone()
    changed[0, 2] += 1.0
    both_ways = build("mesh_gnn", 3, 1, hidden_dim=8, num_layers=1, space_dim=2).double()
    moved = (both_ways(changed, path) - both_ways(x, path)).abs().flatten() > 1e-12
    assert moved.tolist() == [False, True, True, True, False]
    one_way = build(
        "mesh_gnn", 3, 1, hidden_dim=8, num_layers=1, space_dim=2, add_reverse_edges=False
    ).double()
    moved = (one_way(changed, path) - one_way(x, path)).abs().flatten() > 1e-12
    assert moved.tolist() == [False, False, True, True, False]  # 2 sends only to 3


def test_mesh_gnn_one_layer_matches_hand_formula():
    torch.manual_seed(0)
    model = build("mesh_gnn", 3, 1, hidden_dim=8, num_layers=1, space_dim=2, add_reverse_edges=False).double()
    x = torch.randn(1, 4, 3, dtype=torch.float64)
    edges = torch.tensor([[0, 1, 2, 0], [3, 3, 3, 1]])
    h = model.node_encoder(x[0])
    layer = model.layers[0]
    h_new = []
    e_new = {}
    for s, r in edges.T.tolist():
        rel = x[0, s, :2] - x[0, r, :2]
        e = model.edge_encoder(torch.cat([rel, rel.norm().view(1)]))
        e_new[(s, r)] = e + layer.edge_mlp(torch.cat([e, h[s], h[r]]))
    for j in range(4):
        incoming = sum((e for (s, r), e in e_new.items() if r == j), torch.zeros(8, dtype=torch.float64))
        h_new.append(h[j] + layer.node_mlp(torch.cat([h[j], incoming])))
    torch.testing.assert_close(model(x, edges)[0], model.decoder(torch.stack(h_new)))
