"""The standard dataset format: round trip, train-only normalisation, variable sizes, clear errors."""
import h5py
import numpy as np
import pytest
import torch

from flare.data.format import DatasetFormatError, read_split, write_dataset
from flare.data.loader import StandardDataset, load_splits
from flare.data.normalize import GaussianNormalizer
from tests.conftest import point_cloud_meta


def test_round_trip_of_variable_size_samples(variable_size_dataset):
    folder, splits = variable_size_dataset
    for split, (xs, ys) in splits.items():
        data = read_split(folder / f"{split}.h5")
        assert len(data) == len(xs) and data.split == split and not data.fixed_size
        for i, (x, y) in enumerate(zip(xs, ys)):
            got_x, got_y = data.sample(i)
            np.testing.assert_allclose(got_x, x, rtol=1e-6)
            np.testing.assert_allclose(got_y, y, rtol=1e-6)
    with h5py.File(folder / "train.h5") as f:
        assert f.attrs["points_per_sample"] == -1 and f.attrs["name"] == "cloud"


def test_normaliser_statistics_come_from_the_train_split_only(variable_size_dataset):
    folder, splits = variable_size_dataset
    train_y = np.concatenate(splits["train"][1])
    for split in ("train", "test"):  # both files carry the train statistics
        data = read_split(folder / f"{split}.h5")
        np.testing.assert_allclose(data.y_normalizer.mean.numpy(), train_y.mean(0), rtol=1e-5)
        np.testing.assert_allclose(data.y_normalizer.std.numpy(), train_y.std(0), rtol=1e-5)


def test_loader_normalises_and_decodes_back(variable_size_dataset):
    folder, splits = variable_size_dataset
    train, test = load_splits(folder)
    x, y = test[1]
    assert x.shape == (3, 2) and y.shape == (3, 1)
    np.testing.assert_allclose(test.y_normalizer.decode(y).numpy(), splits["test"][1][1], rtol=1e-5)
    all_train_y = torch.cat([train[i][1] for i in range(len(train))])
    assert abs(all_train_y.mean().item()) < 1e-5 and abs(all_train_y.std(unbiased=False).item() - 1) < 1e-4
    with pytest.raises(ValueError, match="different point counts"):
        train.batch([0, 1])
    xb, _ = train.batch([1, 3])  # equal sizes stack
    assert xb.shape == (2, 9, 2)


def test_only_selected_input_channels_are_normalised(tiny_darcy):
    train = StandardDataset(tiny_darcy / "train.h5")
    assert train.meta.input_channels == ["x", "y", "permeability"] and train.meta.grid_shape == [9, 9]
    norm = train.x_normalizer
    assert norm.mean[:2].tolist() == [0, 0] and norm.std[:2].tolist() == [1, 1]
    permeability = train.data.x[:, 2]
    assert set(np.unique(permeability)) <= {3.0, 12.0}
    assert norm.mean[2].item() == pytest.approx(permeability.mean(), rel=1e-5)
    x, _ = train.batch([0, 1, 2])
    assert x.shape == (3, 81, 3)


def test_a_fixed_size_split_moved_to_a_device_gives_the_same_batches(tiny_darcy, variable_size_dataset):
    train = StandardDataset(tiny_darcy / "train.h5")
    want_x, want_y = train.batch([3, 0, 2])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert train.nbytes == (len(train) * 81 * (3 + 1)) * 4
    train.to(device)
    got_x, got_y = train.batch(torch.tensor([3, 0, 2], device=device))  # indices on the device
    assert got_x.device.type == device
    torch.testing.assert_close(got_x.cpu(), want_x, rtol=0, atol=0)
    torch.testing.assert_close(got_y.cpu(), want_y, rtol=0, atol=0)
    clouds = StandardDataset(variable_size_dataset[0] / "train.h5").to(device)  # variable sizes stay put
    assert clouds[0][0].device.type == "cpu" and clouds.batch(torch.tensor([1, 3]))[0].shape == (2, 9, 2)


def test_gaussian_normalizer_inverse():
    values = np.random.default_rng(0).normal(3.0, 2.0, size=(100, 2))
    norm = GaussianNormalizer.fit(values, mask=[True, False])
    t = torch.from_numpy(values).float()
    torch.testing.assert_close(norm.decode(norm.encode(t)), t)
    assert norm.std[1] == 1 and norm.mean[1] == 0


@pytest.mark.parametrize(
    "bad,match",
    [
        ("nan", r"train sample 1: y contains NaN"),
        ("channels", r"train sample 0: x has shape \(5, 3\), expected \[points, 2\]"),
        ("points", r"test sample 0: 6 input points but 4 output points"),
    ],
)
def test_bad_samples_are_named_and_nothing_is_written(tmp_path, bad, match):
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(5, 2)) for _ in range(2)]
    ys = [rng.normal(size=(5, 1)) for _ in range(2)]
    test = ([rng.normal(size=(6, 2))], [rng.normal(size=(6, 1))])
    if bad == "nan":
        ys[1][2, 0] = np.nan
    elif bad == "channels":
        xs[0] = rng.normal(size=(5, 3))
    else:
        test = ([rng.normal(size=(6, 2))], [rng.normal(size=(4, 1))])
    with pytest.raises(DatasetFormatError, match=match):
        write_dataset(tmp_path / "d", point_cloud_meta(), (xs, ys), test)
    assert not list((tmp_path / "d").glob("*.h5"))


def test_unreadable_files_are_named(tmp_path, variable_size_dataset):
    folder, _ = variable_size_dataset
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        read_split(tmp_path / "missing.h5")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes((folder / "train.h5").read_bytes()[:300])
    with pytest.raises(DatasetFormatError, match="truncated.h5"):
        read_split(truncated)


def test_mesh_edges_round_trip_and_train_a_graph_model(tmp_path):
    from flare.train import train

    rng = np.random.default_rng(1)

    def chain(n):  # a path graph over n points
        return np.stack([np.arange(n - 1), np.arange(1, n)], axis=1)

    sizes = {"train": [6, 6, 8, 8], "test": [6, 7]}
    splits = {}
    for split, ns in sizes.items():
        xs = [rng.normal(size=(n, 3)) for n in ns]
        splits[split] = (xs, [x[:, :1] ** 2 + 1 for x in xs], [chain(n) for n in ns])
    write_dataset(tmp_path / "mesh", point_cloud_meta("mesh", c_in=3), splits["train"], splits["test"])
    data = read_split(tmp_path / "mesh/test.h5")
    np.testing.assert_array_equal(data.sample_edges(1), chain(7))
    train_set = StandardDataset(tmp_path / "mesh/train.h5")
    assert train_set.batch_edges([2, 3]).shape == (2, 2, 7)
    with pytest.raises(ValueError, match="different edge counts"):
        train_set.batch_edges([0, 2])
    tiny = {"model": {"hidden_dim": 8, "num_layers": 2}, "train": {"epochs": 2, "batch_size": 1}}
    errors = train(tmp_path / "mesh", "mesh_gnn", 0, tmp_path / "run", tiny, progress=False)
    assert errors["test_rel_l2"] > 0


def test_graph_model_without_edges_is_refused_before_training(tmp_path):
    from flare.train import train

    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(5, 3)) for _ in range(4)]
    write_dataset(tmp_path / "cloud", point_cloud_meta(c_in=3), (xs, [x[:, :1] for x in xs]),
                  (xs[:1], [xs[0][:, :1]]))
    with pytest.raises(ValueError, match="holds none"):
        train(tmp_path / "cloud", "mesh_gnn", 0, tmp_path / "run", {"train": {"epochs": 1}}, progress=False)
    assert not (tmp_path / "run" / "ckpt00.pt").exists()


def test_darcy_grid_shares_one_edge_list(tiny_darcy):
    from flare.data.darcy import grid_edges

    edges = grid_edges(3, 2)  # nodes 0 1 / 2 3 / 4 5
    assert sorted(map(tuple, edges.tolist())) == [(0, 1), (0, 2), (1, 3), (2, 3), (2, 4), (3, 5), (4, 5)]
    data = read_split(tiny_darcy / "test.h5")
    assert data.edge_offsets.tolist() == [0, 2 * 9 * 8]
    np.testing.assert_array_equal(data.sample_edges(0), data.sample_edges(7))
    assert StandardDataset(tiny_darcy / "train.h5").batch_edges([0, 1]).shape == (2, 2, 144)
