"""LPBF renders: VTU round trip, the three-panel PNG, the gallery, case picking and a whole run."""
import json
import subprocess
import sys
import tempfile

import meshio
import numpy as np
import pandas as pd
import pytest
import pyvista as pv
import torch
from matplotlib.image import imread, imsave

from flare.am.render import (
    export_vtu,
    gallery,
    pick_cases,
    read_case_table,
    relative_l2_np,
    render_case,
    render_run,
)
from flare.am.sdf import hex_grid
from flare.data.format import DatasetMeta, write_dataset
from flare.data.loader import StandardDataset
from flare.evaluate import load_run
from flare.train import train

SCALE_MM = np.array([30.0, 30.0, 60.0])
TINY = {"model": {"channel_dim": 8, "num_blocks": 1, "num_heads": 2, "num_latents": 4},
        "train": {"epochs": 1, "batch_size": 1}}


def _masks():
    box = np.ones((3, 2, 4), bool)
    ell = np.ones((3, 3, 3), bool)
    ell[1:, 1:, 1:] = False
    tower = np.ones((2, 2, 5), bool)
    step = np.ones((4, 2, 2), bool)
    step[2:, :, 1] = False
    return [box, ell, tower, step, ell[:, :, :2], box[:2]]


def _part(mask, amplitude):
    points, cells = hex_grid(mask, spacing=(2.0, 2.0, 2.5), origin=(-3.0, -2.0, 0.0))
    w = -amplitude * points[:, 2] * (1.0 + 0.1 * points[:, 0])  # mm, grows with build height
    displacement = np.stack([0.1 * w, 0.2 * w, w], axis=1)
    return points, cells, displacement


@pytest.fixture(scope="module")
def lpbf_run(tmp_path_factory):
    """A tiny LPBF-like dataset (3 train / 3 test hex parts), its extracted cases and a 1-epoch run."""
    root = tmp_path_factory.mktemp("lpbf")
    parts = [_part(m, a) for m, a in zip(_masks(), (1e-3, 2e-3, 3e-3, 1.5e-3, 2.5e-3, 4e-3))]
    names = [f"part{k:03d}" for k in range(len(parts))]
    (root / "extracted").mkdir()
    rows, splits = [], {}
    for split, members in (("train", range(3)), ("test", range(3, 6))):
        xs, ys = [], []
        for index, k in enumerate(members):
            points, cells, displacement = parts[k]
            np.savez(root / "extracted" / f"{names[k]}.npz", points=points, cells=cells, displacement=displacement)
            xs.append(points / SCALE_MM)
            ys.append(displacement[:, 2:3])
            rows.append({"split": split, "index": index, "case": names[k], "nodes": len(points)})
        splits[split] = (xs, ys)
    meta = DatasetMeta(name="lpbf", input_channels=["x", "y", "z"], output_channels=["z_displacement"],
                       input_units=["30 mm", "30 mm", "60 mm"], output_units=["mm"], source="test",
                       normalize_inputs=[False] * 3)
    write_dataset(root / "dataset", meta, splits["train"], splits["test"])
    pd.DataFrame(rows).to_csv(root / "dataset" / "cases.csv", index=False)
    train(root / "dataset", "flare", 0, root / "run", TINY, progress=False)
    return root, {names[k]: parts[k] for k in range(3, 6)}


def test_vtu_round_trips_points_cells_and_fields_exactly(tmp_path):
    points, cells, displacement = _part(np.ones((2, 3, 2), bool), 1e-3)
    rng = np.random.default_rng(0)
    fields = {"true_z_displacement": displacement[:, 2], "error": rng.normal(size=len(points)),
              "displacement": displacement}
    path = export_vtu(tmp_path / "out" / "part.vtu", points, cells, fields)
    assert path == tmp_path / "out" / "part.vtu" and sorted(p.name for p in path.parent.iterdir()) == ["part.vtu"]
    back = meshio.read(path)
    np.testing.assert_array_equal(back.points, points)
    assert back.cells[0].type == "hexahedron"
    np.testing.assert_array_equal(back.cells[0].data, cells)
    for name, values in fields.items():
        np.testing.assert_array_equal(back.point_data[name], values)
    grid = pv.read(path)
    assert grid.n_points == len(points) and grid.n_cells == len(cells)
    assert set(grid.celltypes) == {pv.CellType.HEXAHEDRON}
    assert grid.volume == pytest.approx(12 * 2.0 * 2.0 * 2.5)  # 12 cells, right-handed node order


def test_vtu_field_of_the_wrong_length_names_the_field(tmp_path):
    points, cells, _ = _part(np.ones((1, 1, 1), bool), 1e-3)
    with pytest.raises(ValueError, match=r"part.vtu: point field 'error' has shape \(7,\), expected \[8\]"):
        export_vtu(tmp_path / "part.vtu", points, cells, {"error": np.zeros(7)})
    assert not list(tmp_path.iterdir())


def _mesh_area(image, panel):
    """The middle of panel ``panel`` (0-2) of a 1500x500 render: the part, no text, no scalar bar."""
    return image[150:430, panel * 500 + 60 : panel * 500 + 400, :3]


def test_render_has_the_window_size_and_shares_one_colour_range_and_camera(tmp_path):
    points, cells, displacement = _part(np.ones((3, 2, 4), bool), 1e-3)
    true = displacement[:, 2]
    same = imread(render_case(tmp_path / "same.png", points, cells, true, true))
    assert same.shape[:2] == (500, 1500)
    assert same[..., :3].std() > 0.1  # not a blank picture
    # equal fields on one colour range and one camera give equal pictures of the part (up to one
    # grey level where the rasteriser rounds differently in another viewport)
    assert np.abs(_mesh_area(same, 0) - _mesh_area(same, 1)).max() <= 1.5 / 255
    # half the values on the shared range look different (separate ranges would look the same)
    half = imread(render_case(tmp_path / "half.png", points, cells, true, 0.5 * true, title="box"))
    assert np.abs(_mesh_area(half, 0) - _mesh_area(same, 0)).max() <= 1.5 / 255
    assert np.abs(_mesh_area(half, 1) - _mesh_area(half, 0)).mean() > 0.02
    assert np.abs(_mesh_area(half, 2) - _mesh_area(same, 2)).mean() > 0.02  # the error panel shows the error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.png", "same.png"]


def test_render_rejects_a_field_of_the_wrong_length(tmp_path):
    points, cells, displacement = _part(np.ones((1, 1, 2), bool), 1e-3)
    with pytest.raises(ValueError, match=r"predicted must hold one value per node, shape \[12\]"):
        render_case(tmp_path / "x.png", points, cells, displacement[:, 2], displacement[:-1, 2])


def test_gallery_stacks_images_as_png_or_pdf(tmp_path):
    images = []
    for k, shade in enumerate((0.2, 0.8)):
        image = np.full((50, 150, 3), shade)
        image[10:40, 20 + 50 * k : 60 + 50 * k] = (1.0, 0.0, 0.0)
        path = tmp_path / f"case{k}.png"
        imsave(path, image)
        images.append(path)
    png = imread(gallery(images, ["case0: relative L2 = 1.0e-02", "case1: relative L2 = 2.0e-02"],
                         tmp_path / "g.png"))
    assert png.shape[1] == 1500 and png.shape[0] > 2 * 500  # 10 in at 150 dpi; two 1:3 images and labels
    reds = (png[..., 0] > 0.9) & (png[..., 1] < 0.2)
    rows = np.flatnonzero(reds.any(axis=1))
    assert rows.min() < png.shape[0] / 2 < rows.max()  # one red block in each half: stacked top to bottom
    pdf = gallery(images, ["a", "b"], tmp_path / "g.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ValueError, match=r"g.svg: a gallery is written as .png or .pdf"):
        gallery(images, ["a", "b"], tmp_path / "g.svg")
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        gallery(images, ["a"], tmp_path / "g.png")


def test_pick_cases_spreads_over_the_ranking_best_first():
    errors = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0])
    assert pick_cases(errors, 4).tolist() == [1, 7, 4, 9]  # ranks 1, 4, 7, 10: errors 0.1, 0.4, 0.7, 1.0
    assert pick_cases(errors, 2).tolist() == [1, 9]
    assert pick_cases(errors, 1).tolist() == [8]  # ranked 6 of 10
    assert pick_cases(errors[:3], 5).tolist() == [1, 0, 2]  # all of them when fewer than asked
    with pytest.raises(ValueError, match="at least 1"):
        pick_cases(errors, 0)


def test_case_table_without_a_column_names_it(tmp_path):
    pd.DataFrame({"split": ["test"], "index": [0], "case": ["a"]}).to_csv(tmp_path / "cases.csv", index=False)
    with pytest.raises(ValueError, match=r"cases.csv: missing column\(s\) \['nodes'\]"):
        read_case_table(tmp_path / "cases.csv")


def test_render_run_writes_renders_vtus_gallery_and_the_errors_of_the_predictions(lpbf_run, tmp_path):
    root, parts = lpbf_run
    summary = render_run(root / "run", root / "dataset", root / "extracted", tmp_path / "out", num_cases=3)
    # the errors by hand: the model on each normalised test input, decoded, against the stored target
    model, _ = load_run(root / "run")
    data = StandardDataset(root / "dataset" / "test.h5")
    by_hand = {}
    with torch.no_grad():
        for i in range(len(data)):
            x, _ = data[i]
            pred = data.y_normalizer.decode(model(x[None]))[0, :, 0].numpy().astype(np.float64)
            true = data.data.sample(i)[1][:, 0].astype(np.float64)
            by_hand[f"part{i + 3:03d}"] = (np.linalg.norm(pred - true) / np.linalg.norm(true), pred)
    expected_order = sorted(by_hand, key=lambda c: by_hand[c][0])
    assert [c["case"] for c in summary["cases"]] == expected_order  # all three, best first
    assert json.loads((tmp_path / "out" / "render.json").read_text()) == summary
    assert summary["test_samples"] == 3 and summary["model"] == "flare" and summary["dataset"] == "lpbf"
    assert summary["test_rel_l2_mean"] == pytest.approx(np.mean([v[0] for v in by_hand.values()]), rel=1e-6)
    for rank, entry in enumerate(summary["cases"], start=1):
        case = entry["case"]
        rel, pred = by_hand[case]
        assert entry["rel_l2"] == pytest.approx(rel, rel=1e-6) and entry["rank"] == rank
        points, cells, displacement = parts[case]
        assert entry["nodes"] == len(points) and entry["index"] == int(case[-3:]) - 3
        vtu = meshio.read(tmp_path / "out" / f"{case}.vtu")
        np.testing.assert_array_equal(vtu.points, points)
        np.testing.assert_array_equal(vtu.cells[0].data, cells)
        np.testing.assert_array_equal(vtu.point_data["true_z_displacement"],
                                      displacement[:, 2].astype(np.float32).astype(np.float64))
        np.testing.assert_allclose(vtu.point_data["predicted_z_displacement"], pred, rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(vtu.point_data["error"], vtu.point_data["predicted_z_displacement"]
                                      - vtu.point_data["true_z_displacement"])
        assert relative_l2_np(vtu.point_data["predicted_z_displacement"],
                              vtu.point_data["true_z_displacement"]) == pytest.approx(rel, rel=1e-6)
        image = imread(tmp_path / "out" / f"{case}.png")
        assert image.shape[:2] == (500, 1500) and image[..., :3].std() > 0.1
    picture = imread(tmp_path / "out" / "gallery.png")
    assert picture.shape[1] == 1500 and picture[..., :3].std() > 0.1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["gallery.png", "render.json"] + [f"{c}.{s}" for c in by_hand for s in ("png", "vtu")])


def test_render_run_picks_best_and_worst_of_two(lpbf_run, tmp_path):
    root, _ = lpbf_run
    summary = render_run(root / "run", root / "dataset", root / "extracted", tmp_path / "out", num_cases=2)
    errors = [c["rel_l2"] for c in summary["cases"]]
    assert [c["rank"] for c in summary["cases"]] == [1, 3] and errors[0] < errors[1]


def _copy_case_setup(root, tmp_path):
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    for npz in (root / "extracted").glob("*.npz"):
        (extracted / npz.name).write_bytes(npz.read_bytes())
    return extracted


def test_an_extracted_mesh_of_another_node_count_is_an_error_naming_the_case(lpbf_run, tmp_path):
    root, parts = lpbf_run
    extracted = _copy_case_setup(root, tmp_path)
    points, cells, displacement = _part(np.ones((2, 2, 2), bool), 1e-3)  # 27 nodes
    np.savez(extracted / "part004.npz", points=points, cells=cells, displacement=displacement)
    with pytest.raises(ValueError, match=r"case part004: the extracted mesh has 27 nodes but test sample 1 has "
                                         rf"{len(parts['part004'][0])} points"):
        render_run(root / "run", root / "dataset", extracted, tmp_path / "out", num_cases=3)
    assert not (tmp_path / "out").exists()  # checked before any case was drawn


def test_an_extracted_mesh_in_another_node_order_is_an_error_naming_the_case(lpbf_run, tmp_path):
    root, parts = lpbf_run
    extracted = _copy_case_setup(root, tmp_path)
    points, cells, displacement = parts["part005"]
    order = np.random.default_rng(1).permutation(len(points))
    inverse = np.argsort(order)
    np.savez(extracted / "part005.npz", points=points[order], cells=inverse[cells], displacement=displacement[order])
    with pytest.raises(ValueError, match="case part005: the extracted z-displacement differs from test sample 2"):
        render_run(root / "run", root / "dataset", extracted, tmp_path / "out", num_cases=3)


def test_rendering_first_leaves_triton_importable():
    # Mesa's software OpenGL and Triton each carry an LLVM; Triton loaded after a render crashed
    # the process (in torch's optimiser, which imports it), so the suite after this file died too.
    pytest.importorskip("triton")
    script = (
        "import numpy as np\n"
        "from flare.am.render import render_case\n"
        "from flare.am.sdf import hex_grid\n"
        "import sys, pathlib\n"
        "p, c = hex_grid(np.ones((1, 1, 1), bool))\n"
        "render_case(pathlib.Path(sys.argv[1]) / 'a.png', p, c, p[:, 2], p[:, 2])\n"
        "import torch\n"
        "torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])\n"
        "print('alive')\n"
    )
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run([sys.executable, "-c", script, folder], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "alive", done.stderr[-2000:]
