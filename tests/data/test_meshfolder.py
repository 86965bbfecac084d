"""A folder of mesh files (the user's own data) converted to the standard format and trained on."""
from __future__ import annotations

import json

import meshio
import numpy as np
import pytest

from flare.data import meshfolder
from flare.data.format import read_split

# (kind, nx, ny): triangle and quad meshes of the unit square with different point counts
MESHES = {"a.vtu": ("triangle", 4, 3), "b.vtu": ("quad", 5, 4), "c.vtu": ("triangle", 3, 3),
          "d.vtu": ("quad", 6, 2), "e.vtu": ("triangle", 5, 5)}


def grid_mesh(kind: str, nx: int, ny: int, seed: int) -> meshio.Mesh:
    """An nx × ny node grid of the unit square, 3-D points with z = 0, fields p (scalar) and u (2-vector)."""
    xs, ys = np.meshgrid(np.linspace(0, 1, nx), np.linspace(0, 2, ny), indexing="ij")
    points = np.column_stack([xs.ravel(), ys.ravel(), np.zeros(nx * ny)])
    node = np.arange(nx * ny).reshape(nx, ny)
    a, b, c, d = node[:-1, :-1].ravel(), node[1:, :-1].ravel(), node[1:, 1:].ravel(), node[:-1, 1:].ravel()
    cells = [("quad", np.column_stack([a, b, c, d]))] if kind == "quad" else \
        [("triangle", np.vstack([np.column_stack([a, b, c]), np.column_stack([a, c, d])]))]
    rng = np.random.default_rng(seed)
    return meshio.Mesh(points, cells, point_data={
        "p": np.sin(points[:, 0]) + seed,
        "u": rng.normal(size=(len(points), 2)),
        "T": rng.random(len(points)),
    })


@pytest.fixture
def vtu_folder(tmp_path):
    folder = tmp_path / "meshes"
    folder.mkdir()
    meshes = {}
    for seed, (name, (kind, nx, ny)) in enumerate(MESHES.items()):
        meshes[name] = grid_mesh(kind, nx, ny, seed)
        meshes[name].write(folder / name)
    (folder / "notes.txt").write_text("not a mesh")  # not matched by *.vtu
    return folder, meshes


def test_channels_sizes_and_seeded_split(vtu_folder, tmp_path):
    folder, meshes = vtu_folder
    meshfolder.prepare(folder, tmp_path / "out", inputs=["u", "T"], outputs=["p"], test_fraction=0.4, seed=3,
                       units={"x": "m", "y": "m", "p": "Pa"})
    names = sorted(MESHES)
    order = np.random.default_rng(3).permutation(len(names))
    expected = {"test": sorted(names[i] for i in order[:2]), "train": sorted(names[i] for i in order[2:])}
    assert json.loads((tmp_path / "out" / "splits.json").read_text())["test"] == expected["test"]
    for split in ("train", "test"):
        data = read_split(tmp_path / "out" / f"{split}.h5")
        assert len(data) == len(expected[split])
        for i, name in enumerate(expected[split]):
            mesh = meshes[name]
            x, y = data.sample(i)
            assert len(x) == len(mesh.points)  # one point per mesh node, sizes differ between files
            np.testing.assert_allclose(x[:, :2], mesh.points[:, :2], rtol=1e-6)  # z = 0 everywhere: dropped
            np.testing.assert_allclose(x[:, 2:4], mesh.point_data["u"], rtol=1e-6)
            np.testing.assert_allclose(x[:, 4], mesh.point_data["T"], rtol=1e-6)
            np.testing.assert_allclose(y[:, 0], mesh.point_data["p"], rtol=1e-6)
    meta = data.meta
    assert meta.input_channels == ["x", "y", "u_0", "u_1", "T"] and meta.output_channels == ["p"]
    assert meta.input_units == ["m", "m", "unknown", "unknown", "unknown"] and meta.output_units == ["Pa"]
    assert meta.name == "meshes" and meta.normalize_inputs == [True] * 5 and not data.fixed_size
    train_p = np.concatenate([meshes[n].point_data["p"] for n in expected["train"]])
    np.testing.assert_allclose(data.y_normalizer.mean.numpy(), [train_p.mean()], rtol=1e-5)  # train only


def test_split_is_deterministic_and_explicit_lists_are_honoured(vtu_folder, tmp_path):
    folder, _ = vtu_folder
    runs = [tmp_path / f"o{i}" for i in range(2)]
    for out in runs:
        meshfolder.prepare(folder, out, inputs=[], outputs=["p"], seed=7)
    first, second = (json.loads((o / "splits.json").read_text()) for o in runs)
    assert first == second and len(first["test"]) == 1 and len(first["train"]) == 4  # round(0.2 · 5)
    meshfolder.prepare(folder, tmp_path / "o3", inputs=[], outputs=["p", "u"], coordinates=True,
                       train_files=["e.vtu", "a.vtu"], test_files=["c.vtu"], name="mine", normalize_inputs=False)
    data = read_split(tmp_path / "o3" / "train.h5")
    assert [int(n) for n in np.diff(data.offsets)] == [12, 25]  # a.vtu (4×3), e.vtu (5×5), sorted by path
    assert data.meta.name == "mine" and data.meta.output_channels == ["p", "u_0", "u_1"]
    assert data.meta.input_channels == ["x", "y"] and data.meta.normalize_inputs == [False, False]


def test_missing_field_names_the_file_and_lists_the_fields_present(vtu_folder, tmp_path):
    folder, meshes = vtu_folder
    mesh = meshes["c.vtu"]
    del mesh.point_data["T"]
    mesh.write(folder / "c.vtu")
    with pytest.raises(KeyError, match=r"c\.vtu: no point_data field 'T'; point_data fields present: p, u$"):
        meshfolder.prepare(folder, tmp_path / "out", inputs=["T"], outputs=["p"])


def test_bad_arguments_and_inconsistent_files_are_reported(vtu_folder, tmp_path):
    folder, meshes = vtu_folder
    with pytest.raises(FileNotFoundError, match=r"no files matching '\*\.msh'"):
        meshfolder.prepare(folder, tmp_path / "o", inputs=[], outputs=["p"], pattern="*.msh")
    with pytest.raises(FileNotFoundError, match=r"test_files \['z\.vtu'\]"):
        meshfolder.prepare(folder, tmp_path / "o", inputs=[], outputs=["p"],
                           train_files=["a.vtu"], test_files=["z.vtu"])
    with pytest.raises(ValueError, match="in both train_files and test_files"):
        meshfolder.prepare(folder, tmp_path / "o", inputs=[], outputs=["p"],
                           train_files=["a.vtu"], test_files=["a.vtu"])
    with pytest.raises(ValueError, match="outputs must name"):
        meshfolder.prepare(folder, tmp_path / "o", inputs=["u"], outputs=[])
    mesh = meshes["d.vtu"]
    mesh.point_data["u"] = np.ones((len(mesh.points), 3))
    mesh.write(folder / "d.vtu")
    with pytest.raises(ValueError, match=r"d\.vtu: point_data field 'u' has 3 components, but 2"):
        meshfolder.prepare(folder, tmp_path / "o", inputs=["u"], outputs=["p"])
    mesh.point_data["u"] = np.ones((len(mesh.points), 2))
    mesh.point_data["p"][3] = np.nan
    mesh.write(folder / "d.vtu")
    with pytest.raises(ValueError, match=r"d\.vtu: point_data field 'p' contains NaN"):
        meshfolder.prepare(folder, tmp_path / "o", inputs=["u"], outputs=["p"])
    (folder / "broken.vtu").write_text("<VTKFile> not really")
    with pytest.raises(ValueError, match=r"broken\.vtu: meshio cannot read it"):
        meshfolder.prepare(folder, tmp_path / "o", inputs=[], outputs=["p"])


def test_gmsh_tetra_meshes_keep_all_three_coordinates(tmp_path):
    folder = tmp_path / "msh"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, n in enumerate((6, 9, 7)):
        points = rng.random((n, 3))
        tets = np.array([[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5]])
        mesh = meshio.Mesh(points, [("tetra", tets)],
                           point_data={"v": rng.normal(size=(n, 3)), "s": rng.random(n)})
        # Gmsh 4.1 binary: meshio 5.3's ASCII reader fails on files with node data
        mesh.write(folder / f"part{i}.msh", file_format="gmsh", binary=True)
    meshfolder.prepare(folder, tmp_path / "out", inputs=["s"], outputs=["v"], pattern="*.msh", test_fraction=0.3)
    train = read_split(tmp_path / "out" / "train.h5")
    assert train.meta.input_channels == ["x", "y", "z", "s"] and train.meta.output_channels == ["v_0", "v_1", "v_2"]
    assert len(train) == 2 and sorted(int(n) for n in np.diff(train.offsets)) in ([6, 7], [6, 9], [7, 9])


def test_converted_folder_trains_with_batch_size_one(vtu_folder, tmp_path):
    from flare.train import train

    folder, _ = vtu_folder
    meshfolder.prepare(folder, tmp_path / "dataset", inputs=["u"], outputs=["p"], test_fraction=0.4)
    overrides = {"model": {"channel_dim": 8, "num_blocks": 1, "num_heads": 2, "num_latents": 4},
                 "train": {"epochs": 2, "batch_size": 1}}
    train(tmp_path / "dataset", "flare", 0, tmp_path / "run", overrides=overrides, progress=False)
    result = json.loads((tmp_path / "run" / "rel_error.json").read_text())
    assert np.isfinite(result["train_rel_l2"]) and np.isfinite(result["test_rel_l2"])
