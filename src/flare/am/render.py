"""Pictures of a trained model's LPBF predictions: per-case renders, VTU files and a gallery.

For a trained run on the LPBF dataset (SPEC §5) :func:`render_run` predicts the z-displacement of
every test sample, picks a few cases spread over the range of relative L2 (best to worst), and
writes for each the part mesh with the true and predicted z-displacement side by side
(:func:`render_case`, a PNG) and as a VTU file for ParaView (:func:`export_vtu`), then one figure
stacking the renders (:func:`gallery`) and ``render.json`` listing the cases and their errors.

The meshes come from the extracted cases (``<extracted_dir>/<case>.npz``: ``points [N, 3]`` mm,
``cells [C, 8]`` VTK hexa8); ``cases.csv`` of the dataset folder says which case each sample is,
and the sample's points are the case's nodes in the same order. The error shown is the plain
relative L2 of z-displacement, ``‖pred − true‖₂ / ‖true‖₂`` over the part's nodes.

Rendering is off screen (no display needed); every file is written under a temporary name in its
folder and renamed when complete.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

# Without a display, VTK's default X window fails (with a warning) before it falls back to EGL.
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

try:
    # Mesa's software OpenGL brings its own LLVM; Triton (an LLVM too) loaded after a render
    # crashes the process, while loaded before it both work. So load it first when it is there.
    import triton  # noqa: F401
except ImportError:
    pass

import meshio
import numpy as np
import pandas as pd
import pyvista as pv
from matplotlib.figure import Figure
from matplotlib.image import imread

from flare.data.loader import StandardDataset
from flare.evaluate import check_run_fits_dataset, load_run
from flare.inference import check_model_fits_dataset, decoded_predictions, pick_device

pv.OFF_SCREEN = True

WINDOW_SIZE = (1500, 500)  # pixels (width, height) of one case's render: three square panels
CASE_TABLE_COLUMNS = ("split", "index", "case", "nodes")
GALLERY_SUFFIXES = (".png", ".pdf")
# One title per scalar bar: pyvista shares a bar between meshes whose bars carry the same title.
PANEL_TITLES = ("true (mm)", "predicted (mm)", "abs. error (mm)")
PANEL_LABELS = ("true z-displacement", "predicted z-displacement", "absolute error")


def _temporary(path: Path) -> Path:
    """A name for writing ``path`` in its own folder, keeping the suffix (writers pick the format by it)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def _check_mesh(points, cells) -> tuple[np.ndarray, np.ndarray]:
    points = np.asarray(points, dtype=np.float64)
    cells = np.asarray(cells)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {points.shape}")
    if cells.ndim != 2 or cells.shape[1] != 8 or not np.issubdtype(cells.dtype, np.integer):
        raise ValueError(f"cells must be integer hexa8 connectivity [C, 8], got {cells.dtype} {cells.shape}")
    if len(cells) and (cells.min() < 0 or cells.max() >= len(points)):
        raise ValueError(f"cells refer to nodes outside [0, {len(points)}): min {cells.min()}, max {cells.max()}")
    return points, cells.astype(np.int64, copy=False)


def _nodal(values, n_points: int, name: str) -> np.ndarray:
    """A per-node scalar ``[N]`` (``[N, 1]`` accepted), finite."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.shape != (n_points,):
        raise ValueError(f"{name} must hold one value per node, shape [{n_points}], got {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return values


def export_vtu(path: str | Path, points, cells, point_data: Mapping[str, np.ndarray]) -> Path:
    """Write a hexa8 mesh with per-node fields as a VTU file (readable by meshio, pyvista, ParaView).

    points: [N, 3] mm; cells: [C, 8] VTK hexa8 node order, 0-based; point_data: name -> [N] or
    [N, k] array, written with its dtype. Returns the path.
    """
    path = Path(path)
    points, cells = _check_mesh(points, cells)
    fields = {}
    for name, values in point_data.items():
        values = np.asarray(values)
        if values.ndim not in (1, 2) or len(values) != len(points):
            raise ValueError(f"{path}: point field {name!r} has shape {values.shape}, expected [{len(points)}] "
                             f"or [{len(points)}, k]")
        fields[name] = values
    mesh = meshio.Mesh(points, [("hexahedron", cells)], point_data=fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        meshio.write(tmp, mesh, file_format="vtu")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _grid(points: np.ndarray, cells: np.ndarray) -> pv.UnstructuredGrid:
    connectivity = np.hstack([np.full((len(cells), 1), 8, dtype=np.int64), cells]).ravel()
    types = np.full(len(cells), pv.CellType.HEXAHEDRON, dtype=np.uint8)
    return pv.UnstructuredGrid(connectivity, types, points)


def _colour_range(lo: float, hi: float) -> tuple[float, float]:
    """``(lo, hi)`` widened a little when the field is constant, so that a colour map can span it."""
    if hi > lo:
        return lo, hi
    pad = max(abs(lo), 1.0) * 1e-6
    return lo - pad, hi + pad


def render_case(png_path: str | Path, points, cells, true, predicted, title: str = "",
                window_size: tuple[int, int] = WINDOW_SIZE) -> Path:
    """Render one part in three panels side by side: true z-displacement, predicted, and |error|.

    points: [N, 3] mm; cells: [C, 8] VTK hexa8; true, predicted: [N] z-displacement (mm). The true
    and predicted panels share one colour range; each panel has its scalar bar; all three look
    from the same isometric camera. ``title`` is written above the first panel. The PNG is
    ``window_size`` pixels (width, height). Returns its path.
    """
    png_path = Path(png_path)
    if png_path.suffix.lower() != ".png":
        raise ValueError(f"{png_path}: a render is written as PNG; give a path ending in .png")
    points, cells = _check_mesh(points, cells)
    if len(cells) == 0:
        raise ValueError(f"{png_path}: the mesh has no cells to render")
    true = _nodal(true, len(points), "true")
    predicted = _nodal(predicted, len(points), "predicted")
    error = np.abs(predicted - true)
    shared = _colour_range(min(true.min(), predicted.min()), max(true.max(), predicted.max()))
    panels = ((true, shared, "viridis"), (predicted, shared, "viridis"),
              (error, _colour_range(0.0, float(error.max())), "inferno"))
    grid = _grid(points, cells)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(png_path)
    plotter = pv.Plotter(shape=(1, 3), window_size=list(window_size), off_screen=True, border=False)
    try:
        for column, ((values, clim, cmap), bar, label) in enumerate(zip(panels, PANEL_TITLES, PANEL_LABELS)):
            plotter.subplot(0, column)
            mesh = grid.copy(deep=False)
            mesh.point_data[bar] = values
            # mostly ambient light: shaded faces stay readable against the scalar bar
            plotter.add_mesh(
                mesh, scalars=bar, clim=clim, cmap=cmap, show_edges=False, ambient=0.45, diffuse=0.55,
                specular=0.0,
                scalar_bar_args={"title": bar, "vertical": True, "position_x": 0.8, "position_y": 0.1,
                                 "width": 0.06, "height": 0.7, "n_labels": 5, "fmt": "%.3g",
                                 "title_font_size": 14, "label_font_size": 12, "color": "black"},
            )
            plotter.add_text(label, position=(0.03, 0.88), viewport=True, font_size=11, color="black")
            if title and column == 0:
                plotter.add_text(title, position=(0.03, 0.94), viewport=True, font_size=11, color="black")
        plotter.set_background("white")
        plotter.subplot(0, 0)
        plotter.view_isometric()
        plotter.camera.zoom(0.75)
        plotter.camera.SetWindowCenter(0.15, 0.04)  # the part a little left and down, clear of bar and text
        plotter.link_views()  # one camera for all three panels
        plotter.screenshot(str(tmp))
        os.replace(tmp, png_path)
    finally:
        plotter.close()
        tmp.unlink(missing_ok=True)
    return png_path


def gallery(images: Sequence[str | Path], labels: Sequence[str], out_path: str | Path) -> Path:
    """Stack the per-case renders ``images`` (PNG files) top to bottom, each under its label, in one
    figure written as PNG or PDF by the suffix of ``out_path``. Returns the path."""
    out_path = Path(out_path)
    if out_path.suffix.lower() not in GALLERY_SUFFIXES:
        raise ValueError(f"{out_path}: a gallery is written as {' or '.join(GALLERY_SUFFIXES)}; "
                         f"got suffix {out_path.suffix!r}")
    if len(images) != len(labels):
        raise ValueError(f"{out_path}: {len(images)} images but {len(labels)} labels")
    if not images:
        raise ValueError(f"{out_path}: no images to put in the gallery")
    pictures = []
    for image in images:
        if not Path(image).is_file():
            raise FileNotFoundError(f"{out_path}: gallery image {image} does not exist")
        pictures.append(imread(image))
    width_in, label_in = 10.0, 0.3
    heights = [width_in * p.shape[0] / p.shape[1] for p in pictures]
    fig = Figure(figsize=(width_in, sum(heights) + label_in * len(pictures)))
    axes = fig.subplots(len(pictures), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, picture, label in zip(axes, pictures, labels):
        ax.imshow(picture, interpolation="none")
        ax.set_title(label, loc="left", fontsize=11)
        ax.set_axis_off()
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - label_in / fig.get_figheight(), bottom=0.005,
                        hspace=label_in * len(pictures) / sum(heights))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(out_path)
    try:
        fig.savefig(tmp, dpi=150, format=out_path.suffix.lower()[1:])
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def pick_cases(errors: np.ndarray, num_cases: int) -> np.ndarray:
    """Indices of up to ``num_cases`` samples spread evenly over the ranking of ``errors [S]``, best
    (lowest) first and worst last: with 4 of 10, the samples ranked 1, 4, 7 and 10."""
    errors = np.asarray(errors)
    if num_cases < 1:
        raise ValueError(f"num_cases must be at least 1, got {num_cases}")
    order = np.argsort(errors, kind="stable")
    if num_cases == 1:
        return order[[len(order) // 2]]  # the median-ish one
    ranks = np.unique(np.round(np.linspace(0, len(order) - 1, min(num_cases, len(order)))).astype(int))
    return order[ranks]


def read_case_table(path: str | Path, split: str = "test") -> dict[int, tuple[str, int]]:
    """``cases.csv`` of an LPBF dataset folder: sample index of ``split`` -> (case name, node count)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the dataset folder has no table of its cases")
    table = pd.read_csv(path, dtype={"case": str})
    missing = [c for c in CASE_TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(CASE_TABLE_COLUMNS)}")
    rows = table[table["split"] == split]
    if rows["index"].duplicated().any():
        repeated = sorted(rows.loc[rows["index"].duplicated(), "index"].tolist())
        raise ValueError(f"{path}: {split} sample index(es) {repeated} appear more than once")
    return {int(r.index): (str(r.case), int(r.nodes)) for r in rows.itertuples(index=False)}


def load_extracted_mesh(extracted_dir: str | Path, case: str) -> dict[str, np.ndarray]:
    """``points [N, 3]``, ``cells [C, 8]`` (and ``displacement [N, 3]`` when present) of an extracted case."""
    path = Path(extracted_dir) / f"{case}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"case {case}: extracted file {path} does not exist")
    with np.load(path) as npz:
        missing = [k for k in ("points", "cells") if k not in npz.files]
        if missing:
            raise ValueError(f"case {case}: {path} lacks key(s) {missing}")
        mesh = {k: npz[k] for k in ("points", "cells", "displacement") if k in npz.files}
    try:
        mesh["points"], mesh["cells"] = _check_mesh(mesh["points"], mesh["cells"])
    except ValueError as err:
        raise ValueError(f"case {case}: {path}: {err}") from None
    return mesh


def relative_l2_np(predicted: np.ndarray, true: np.ndarray, eps: float = 1e-12) -> float:
    """``‖predicted − true‖₂ / ‖true‖₂`` of two same-shape arrays, in float64."""
    predicted, true = np.asarray(predicted, dtype=np.float64), np.asarray(true, dtype=np.float64)
    return float(np.linalg.norm(predicted - true) / max(np.linalg.norm(true), eps))


def _write_json(path: Path, content: dict) -> None:
    tmp = _temporary(path)
    try:
        tmp.write_text(json.dumps(content, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def render_run(run_dir: str | Path, dataset_dir: str | Path, extracted_dir: str | Path, out_dir: str | Path,
               num_cases: int = 4, device: str = "cpu") -> dict:
    """Render the trained run's predictions on a few test cases of the LPBF dataset.

    Predicts the z-displacement (output channel 0, mm) of every sample of ``dataset_dir/test.h5``,
    picks up to ``num_cases`` spread over the relative L2 ranking (:func:`pick_cases`), and writes
    ``<out_dir>/<case>.png`` (:func:`render_case`), ``<out_dir>/<case>.vtu`` (point fields
    ``true_z_displacement``, ``predicted_z_displacement``, ``error`` = predicted − true, mm),
    ``<out_dir>/gallery.png`` and ``<out_dir>/render.json``. Returns the content of render.json:
    the run's model, seed and dataset, the test mean relative L2 and the chosen cases (best first)
    with their sample index, rank, node count and relative L2.

    A case whose extracted mesh has another node count than its sample, or whose extracted
    z-displacement disagrees with the sample's target (node order or case mapping wrong), is an
    error naming the case.
    """
    run_dir, dataset_dir, out_dir = Path(run_dir), Path(dataset_dir), Path(out_dir)
    model, config = load_run(run_dir)
    dev = pick_device(device)
    model.to(dev)
    data = StandardDataset(dataset_dir / "test.h5")
    check_run_fits_dataset(run_dir, config, data)
    check_model_fits_dataset(model, data)
    table = read_case_table(dataset_dir / "cases.csv")
    # the targets as stored (float32 mm), not decoded back from their normalised form
    true = [data.data.sample(i)[1][:, 0] for i in range(len(data))]
    predicted = [None] * len(data)
    for indices, pred, _ in decoded_predictions(model, data, dev):
        for k, i in enumerate(indices):
            predicted[i] = pred[k, :, 0].cpu().numpy()
    errors = np.array([relative_l2_np(p, t) for p, t in zip(predicted, true)])

    ranks = np.empty(len(errors), dtype=int)
    ranks[np.argsort(errors, kind="stable")] = np.arange(1, len(errors) + 1)
    cases = {}  # every chosen case is checked before any file is written
    for i in pick_cases(errors, num_cases):
        i = int(i)
        if i not in table:
            raise ValueError(f"{dataset_dir / 'cases.csv'}: no row for test sample {i}")
        case, nodes = table[i]
        n = len(true[i])
        if nodes != n:
            raise ValueError(f"case {case}: {dataset_dir / 'cases.csv'} says {nodes} nodes but test sample {i} "
                             f"has {n} points")
        mesh = load_extracted_mesh(extracted_dir, case)
        if len(mesh["points"]) != n:
            raise ValueError(f"case {case}: the extracted mesh has {len(mesh['points'])} nodes but test sample {i} "
                             f"has {n} points; the dataset and the extracted cases disagree")
        if "displacement" in mesh:
            extracted_z = np.asarray(mesh["displacement"], dtype=np.float64)[:, 2]
            tolerance = 1e-5 * max(float(np.abs(extracted_z).max()), 1e-3)  # float32 rounding of the target
            if np.abs(extracted_z - true[i]).max() > tolerance:
                raise ValueError(f"case {case}: the extracted z-displacement differs from test sample {i}'s "
                                 "target; the node order or the case table is wrong")
        cases[case] = (i, mesh)

    out_dir.mkdir(parents=True, exist_ok=True)
    chosen, images, labels = [], [], []
    for case, (i, mesh) in cases.items():
        rel = float(errors[i])
        t, p = true[i].astype(np.float64), predicted[i].astype(np.float64)
        render_case(out_dir / f"{case}.png", mesh["points"], mesh["cells"], t, p,
                    title=f"{case}  (relative L2 {rel:.3g})")
        export_vtu(out_dir / f"{case}.vtu", mesh["points"], mesh["cells"],
                   {"true_z_displacement": t, "predicted_z_displacement": p, "error": p - t})
        images.append(out_dir / f"{case}.png")
        labels.append(f"{case}: relative L2 = {rel:.3e} (rank {ranks[i]} of {len(errors)}, best first)")
        chosen.append({"case": case, "index": i, "rank": int(ranks[i]), "nodes": len(t), "rel_l2": rel,
                       "png": f"{case}.png", "vtu": f"{case}.vtu"})
    gallery(images, labels, out_dir / "gallery.png")
    summary = {
        "model": config["model"], "seed": config["seed"], "dataset": config["dataset"], "split": "test",
        "metric": "plain relative L2 of z-displacement (mm) over the part's nodes",
        "test_samples": len(errors), "test_rel_l2_mean": float(errors.mean()),
        "cases": chosen, "gallery": "gallery.png",
    }
    _write_json(out_dir / "render.json", summary)
    return summary
