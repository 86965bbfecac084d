"""Raw LPBF simulation cases in the layout of a Netfabb SandBox, from the embedded simulator.

The paper's data are Netfabb thermo-mechanical runs, one folder per part. We cannot run Netfabb,
so each case here is a part (:mod:`flare.am.geometry`: procedural or STL) voxelized on the layer
grid and built layer by layer by :func:`flare.am.simulate.simulate_layers`, and its results are
written as Netfabb would leave them::

    <sandbox>/<case>/mechanical.out                    solver log
    <sandbox>/<case>/test.stl                          part surface (binary STL, mm)
    <sandbox>/<case>/results/<case>_mechanical.*       EnSight Gold, one time step per layer

A share of the cases fails on purpose, so that the extraction's rejections are exercised on real
files (``FAILURE_MODES``): ``terminated`` (the log stops with an error at some layer, results up to
the layer before), ``missing`` (log complete, no results folder), ``inconsistent`` (the .case lists
a final time step whose variable files were never written), ``inverted`` (one cell of the geometry
file has its top and bottom quads swapped).

Temperature is **not** a heat-transfer solve: a node is deposited hot and cools exponentially,
``T = AMBIENT + PEAK_RISE · exp(-(t - t_deposit) / COOLING_TIME)`` for ``t ≥ t_deposit`` and
``AMBIENT`` before, with the time of step k (its layer index l from 0) ``t = (l + 1) · LAYER_TIME``
and ``t_deposit`` the time of the first step that uses the node. It gives the field its place in
the layout and a plausible pattern (hot top, cool base); nothing couples it to the mechanics.

A case is built in a hidden folder ``<sandbox>/.partial-<case>-*`` and renamed to
``<sandbox>/<case>`` only when complete, so a run killed midway never leaves a case that looks
finished; :func:`simulate_cases` resumes by skipping the case folders that exist.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flare.am.ensight import results_prefix, write_case
from flare.am.geometry import load_stl_part, procedural_part, voxelize
from flare.am.simulate import (
    DEFAULT_INHERENT_STRAIN,
    POISSON_TI64,
    YOUNG_TI64,
    simulate_layers,
)

FAILURE_MODES = ("terminated", "missing", "inconsistent", "inverted")

LOG_NAME = "mechanical.out"
STL_NAME = "test.stl"
RESULTS_DIR = "results"
COMPLETED_LINE = "Analysis completed successfully"
TERMINATED_LINE = "Analysis terminated"

# Hidden build folders of unfinished cases start with this; simulate_cases removes leftovers.
PARTIAL_PREFIX = ".partial-"

# Above this many nodes the layer solves use conjugate gradients. Measured on one core, whole
# builds at 2.5 mm cells: 320-405 nodes direct 0.36 s, CG 0.52 s; ~2000 nodes about even
# (1.3-1.9 s direct, 1.1-1.4 s CG); 2922 nodes direct 3.2 s, CG 2.6 s; 4860 nodes 15.8 s vs 7.5 s.
CG_MIN_NODES = 2000

# The documented cooling model (module docstring); seconds and deg C.
LAYER_TIME = 60.0
COOLING_TIME = 20.0
AMBIENT = 25.0
PEAK_RISE = 1600.0


@dataclass(frozen=True)
class CaseSpec:
    """One case to simulate.

    name: case folder name (``case00000``); part: either ``seed`` (a procedural part of
    ``size`` mm, :func:`flare.am.geometry.procedural_part`) or ``stl_path`` (a part file);
    cell_size, layer_height: mm; inherent_strain: Voigt [xx, yy, zz, yz, xz, xy] (tensor shear);
    failure: None for a good case, else one of ``FAILURE_MODES``.
    """

    name: str
    seed: int | None = None
    stl_path: str | None = None
    size: float = 40.0
    cell_size: float = 2.5
    layer_height: float = 2.5
    inherent_strain: tuple[float, ...] = field(default=tuple(DEFAULT_INHERENT_STRAIN.tolist()))
    failure: str | None = None

    def __post_init__(self):
        if (self.seed is None) == (self.stl_path is None):
            raise ValueError(f"case {self.name}: give exactly one of seed and stl_path")
        if self.failure is not None and self.failure not in FAILURE_MODES:
            raise ValueError(
                f"case {self.name}: failure must be None or one of {FAILURE_MODES}, got "
                f"{self.failure!r}"
            )
        if len(self.inherent_strain) != 6:
            raise ValueError(
                f"case {self.name}: inherent_strain must be 6 Voigt components, got "
                f"{len(self.inherent_strain)}"
            )
        for key in ("size", "cell_size", "layer_height"):
            value = getattr(self, key)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(
                    f"case {self.name}: {key} must be a positive length (mm), got {value}"
                )


def plan_cases(
    num_cases: int,
    seed: int = 0,
    parts_dir=None,
    size: float = 40.0,
    cell_size: float = 2.5,
    layer_height: float = 2.5,
    fail_fraction: float = 0.1,
    fail_modes=FAILURE_MODES,
) -> list[CaseSpec]:
    """Deterministic list of num_cases specs named case00000, case00001, ...

    The *.stl files of parts_dir (sorted; if given and non-empty) are the parts of the first cases,
    procedural parts with seeds drawn from ``seed`` the rest. ``round(fail_fraction * num_cases)``
    cases, chosen at random (from ``seed``), fail on purpose, cycling through fail_modes in case
    order. All cases share the default inherent strain (the process is the same for every part).
    """
    if num_cases < 0:
        raise ValueError(f"num_cases must be non-negative, got {num_cases}")
    if not 0.0 <= fail_fraction <= 1.0:
        raise ValueError(f"fail_fraction must lie in [0, 1], got {fail_fraction}")
    fail_modes = tuple(fail_modes)
    unknown = set(fail_modes) - set(FAILURE_MODES)
    if unknown or not fail_modes:
        raise ValueError(
            f"fail_modes must be a non-empty subset of {FAILURE_MODES}, got {fail_modes}"
        )
    stl_paths = []
    if parts_dir is not None:
        if not Path(parts_dir).is_dir():
            raise FileNotFoundError(f"{parts_dir}: no such folder of STL parts")
        stl_paths = sorted(Path(parts_dir).glob("*.stl"))

    rng = np.random.default_rng(seed)
    part_seeds = rng.integers(0, 2**31 - 1, size=num_cases)
    failing = np.sort(rng.choice(num_cases, size=round(fail_fraction * num_cases), replace=False))
    failure_of = {int(case): fail_modes[i % len(fail_modes)] for i, case in enumerate(failing)}
    specs = []
    for i in range(num_cases):
        if i < len(stl_paths):
            source = {"stl_path": str(stl_paths[i])}
        else:
            source = {"seed": int(part_seeds[i])}
        specs.append(
            CaseSpec(
                name=f"case{i:05d}",
                size=size,
                cell_size=cell_size,
                layer_height=layer_height,
                failure=failure_of.get(i),
                **source,
            )
        )
    return specs


# ----------------------------------------------------------------------------- one case


def case_part(spec: CaseSpec):
    """(part name, source description, surface mesh) of a spec."""
    if spec.stl_path is not None:
        path = Path(spec.stl_path)
        return path.stem, f"STL file {path.name}", load_stl_part(path)
    family, mesh = procedural_part(spec.seed, spec.size)
    return family, f"procedural, seed {spec.seed}, size {spec.size:g} mm", mesh


def cooling_temperature(step_times: np.ndarray, node_step: np.ndarray) -> np.ndarray:
    """[K, N] temperature (deg C) of the documented cooling model (not a heat-transfer solve).

    step_times: [K] s; node_step: [N] index of the step that deposits each node (K or more for a
    node never deposited, which stays at AMBIENT).
    """
    k = np.arange(len(step_times))[:, None]
    deposit_time = step_times[np.minimum(node_step, len(step_times) - 1)][None, :]
    hot = k >= node_step[None, :]
    elapsed = np.where(hot, step_times[:, None] - deposit_time, 0.0)
    return np.where(hot, AMBIENT + PEAK_RISE * np.exp(-elapsed / COOLING_TIME), AMBIENT)


def _log_text(spec, part, source, points, cells, solver, layers, times, result, failed_step):
    """The mechanical.out text: header, one line per finished layer, the closing line(s)."""
    strain = ", ".join(f"{v:.6g}" for v in spec.inherent_strain)
    lines = [
        "FLARE embedded LPBF simulator: layer-by-layer inherent-strain linear elasticity",
        f"Case:              {spec.name}",
        f"Part:              {part} ({source})",
        f"Nodes:             {len(points)}",
        f"Cells:             {len(cells)} (hexa8, cell size {spec.cell_size:g} mm)",
        f"Layers:            {len(layers)} (layer height {spec.layer_height:g} mm, "
        f"layer time {LAYER_TIME:g} s)",
        f"Material:          Ti-6Al-4V, linear elastic, E = {YOUNG_TI64:g} MPa, "
        f"nu = {POISSON_TI64:g}",
        f"Inherent strain:   [{strain}] (Voigt xx yy zz yz xz xy, tensor shear)",
        f"Solver:            {solver}",
        "",
        f"{'layer':>7} {'time [s]':>10} {'active cells':>13} {'seconds':>9} {'max |u| [mm]':>13}",
    ]
    active = np.cumsum(np.bincount(result["cell_layer"])[layers])
    for step in range(len(layers) if failed_step is None else failed_step):
        max_u = np.linalg.norm(result["step_fields"][step]["displacement"], axis=1).max()
        lines.append(
            f"{step + 1:>7d} {times[step]:>10.1f} {active[step]:>13d} "
            f"{result['step_seconds'][step]:>9.4f} {max_u:>13.6e}"
        )
    lines.append("")
    if failed_step is None:
        lines.append(COMPLETED_LINE)
    else:
        lines.append(
            f"*** ERROR: layer {failed_step + 1} (time {times[failed_step]:.1f} s): the stiffness "
            "matrix is not positive definite after activating the layer; the solve cannot continue"
        )
        lines.append(f"{TERMINATED_LINE} at layer {failed_step + 1}")
    return "\n".join(lines) + "\n"


def _write_results(results_dir, spec, points, cells, times, steps) -> None:
    """Write results/ through ensight.write_case, then break it as spec.failure asks."""
    if spec.failure == "inverted":
        cells = cells.copy()
        bad = len(cells) // 2
        cells[bad] = cells[bad, [4, 5, 6, 7, 0, 1, 2, 3]]  # top and bottom quads swapped
    write_case(results_dir, spec.name, points, cells, times, steps)
    if spec.failure == "inconsistent":
        # the .case still lists the last time step, but its variable files are gone
        for path in Path(results_dir).glob(f"{results_prefix(spec.name)}.*.{len(times):04d}"):
            path.unlink()


def _build_case(spec: CaseSpec, folder: Path) -> dict:
    start = time.perf_counter()
    part, source, mesh = case_part(spec)
    points, cells = voxelize(mesh, spec.cell_size, spec.layer_height)
    solver = "cg" if len(points) > CG_MIN_NODES else "direct"
    solve_start = time.perf_counter()
    result = simulate_layers(
        points, cells, spec.layer_height, inherent_strain=np.asarray(spec.inherent_strain),
        solver=solver, keep_step_fields=True,
    )
    solve_seconds = time.perf_counter() - solve_start
    layers = result["layers"]
    times = (layers + 1) * LAYER_TIME

    # the first step whose active cells use each node
    node_layer = np.full(len(points), np.iinfo(np.int64).max)
    np.minimum.at(node_layer, cells, result["cell_layer"][:, None])
    node_step = np.searchsorted(layers, node_layer)
    temperature = cooling_temperature(times, node_step)
    steps = [
        dict(fields, temperature=temperature[k]) for k, fields in enumerate(result["step_fields"])
    ]

    failed_step = None
    if spec.failure == "terminated":
        failed_step = len(layers) // 2  # results up to the step before; none for a one-layer part
    if spec.failure != "missing" and failed_step != 0:
        keep = len(layers) if failed_step is None else failed_step
        _write_results(folder / RESULTS_DIR, spec, points, cells, times[:keep], steps[:keep])
    mesh.export(folder / STL_NAME, file_type="stl")
    (folder / LOG_NAME).write_text(
        _log_text(spec, part, source, points, cells, solver, layers, times, result, failed_step)
    )
    return {
        "case": spec.name,
        "part": part,
        "source": "stl" if spec.stl_path is not None else "procedural",
        "nodes": int(len(points)),
        "cells": int(len(cells)),
        "steps": int(len(layers)),
        "solver": solver,
        "solve_seconds": float(solve_seconds),
        "seconds": float(time.perf_counter() - start),
        "failure": spec.failure,
    }


def simulate_case(spec: CaseSpec, sandbox) -> dict:
    """Simulate one case and write ``<sandbox>/<case>`` in the raw layout; return its summary.

    Voxelize the part, build it layer by layer (solver "cg" above ``CG_MIN_NODES`` nodes, else
    "direct"), write results/ (one time step per layer, the fields after that layer, temperature
    from :func:`cooling_temperature`), test.stl and mechanical.out, and break them as
    ``spec.failure`` asks (module docstring). The folder appears only when complete.

    Summary: case, part, source ("procedural" | "stl"), nodes, cells, steps (layers simulated),
    solver, solve_seconds and seconds (wall time of the layer solves and of the whole case, s),
    failure. Raises FileExistsError if the case folder exists already.
    """
    sandbox = Path(sandbox)
    final = sandbox / spec.name
    if final.exists():
        raise FileExistsError(f"{final}: the case folder exists already; remove it to rerun")
    sandbox.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{spec.name}-", dir=sandbox))
    try:
        summary = _build_case(spec, folder)
        os.rename(folder, final)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return summary


# ----------------------------------------------------------------------------- many cases


def _write_json_atomic(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(payload, file, indent=1)
            file.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(manifest_path) -> list[dict]:
    """The case summaries of a manifest written by :func:`simulate_cases` ([] if there is none)."""
    path = Path(manifest_path)
    if not path.exists():
        return []
    try:
        cases = json.loads(path.read_text())["cases"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: not a case manifest (a JSON object with a 'cases' list)"
        ) from error
    return list(cases)


def simulate_cases(specs, sandbox, manifest_path, progress: bool = True) -> list[dict]:
    """Simulate every spec whose case folder does not exist yet; return the finished summaries.

    Leftover hidden build folders of these specs (``.partial-<case>-*``, from a killed run) are
    removed first; other cases' build folders are left alone (shards share a sandbox). The
    manifest, ``{"cases": [summary, ...]}`` over the specs whose case folder exists, in spec order,
    is rewritten atomically after each case; a case that existed before keeps its summary from the
    previous manifest (or ``{"case": name, "resumed": true}`` when that has none). A failing
    simulation raises RuntimeError naming the case (the cases before it stay finished).
    """
    sandbox = Path(sandbox)
    manifest_path = Path(manifest_path)
    sandbox.mkdir(parents=True, exist_ok=True)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError("specs hold duplicated case names")
    # only this call's own cases: other shards may be building theirs in the same sandbox
    for name in names:
        for stale in sandbox.glob(f"{PARTIAL_PREFIX}{name}-*"):
            if stale.is_dir():
                shutil.rmtree(stale)
    known = {entry["case"]: entry for entry in read_manifest(manifest_path)}

    def finished() -> list[dict]:
        return [
            known.get(name, {"case": name, "resumed": True})
            for name in names
            if (sandbox / name).is_dir()
        ]

    for spec in tqdm(specs, desc="LPBF cases", unit="case", disable=not progress):
        if (sandbox / spec.name).exists():
            continue
        try:
            known[spec.name] = simulate_case(spec, sandbox)
        except Exception as error:
            raise RuntimeError(f"case {spec.name} ({asdict(spec)}): {error}") from error
        _write_json_atomic(manifest_path, {"cases": finished()})
    summaries = finished()
    _write_json_atomic(manifest_path, {"cases": summaries})
    return summaries
