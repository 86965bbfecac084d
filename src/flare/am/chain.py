"""The LPBF chain's steps as the workflow runs them: simulate -> extract -> filter -> sdf -> assemble.

Each function is one rule (and one ``flare lpbf`` command): it reads the previous step's files and
writes its own, so any step can be rerun alone. Expensive steps (simulation, SDF features) take a
shard ``i`` of ``n``: case ``k`` belongs to shard ``k mod n``, so a cluster runs shards as separate
jobs on one shared folder, and a rerun only does what is missing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

# What the embedded simulator makes when the config says nothing (a paper-like spread of sizes
# would need size ~ 60 mm and ~1 mm cells; see BENCHMARKS.md for the cost per node).
SIMULATE_DEFAULTS = {"cases": 200, "seed": 0, "size": 40.0, "cell_size": 2.5, "layer_height": 2.5,
                     "fail_fraction": 0.1, "parts_dir": None}
# The paper's split, 1100 train / 290 test of 1390 kept cases, as a fraction for other counts.
PAPER_TEST_FRACTION = 290 / 1390


def shard_of(items: list, shard: int, shards: int) -> list:
    """Items ``shard, shard + shards, …`` (shard in [0, shards))."""
    if shards < 1 or not 0 <= shard < shards:
        raise ValueError(f"shard must lie in [0, {shards}) with shards >= 1; got shard {shard} of {shards}")
    return list(items)[shard::shards]


def simulation_settings(options: dict | None) -> dict:
    """The simulator's settings: defaults updated by ``options`` (unknown keys are an error)."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(SIMULATE_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown LPBF simulation option(s) {unknown}; known: {sorted(SIMULATE_DEFAULTS)}")
    return {**SIMULATE_DEFAULTS, **options}


def simulate_shard(sandbox, manifest, options: dict | None = None, shard: int = 0, shards: int = 1,
                   progress: bool = True) -> list[dict]:
    """Simulate this shard's cases of the planned set into ``sandbox`` (resumes); write ``manifest``."""
    from flare.am.cases import plan_cases, simulate_cases

    settings = simulation_settings(options)
    _check_sandbox_settings(Path(sandbox), settings)
    parts_dir = settings["parts_dir"]
    if parts_dir is not None and not Path(parts_dir).is_dir():
        parts_dir = None  # the folder for user STL parts is optional
    specs = plan_cases(settings["cases"], seed=settings["seed"], parts_dir=parts_dir, size=settings["size"],
                       cell_size=settings["cell_size"], layer_height=settings["layer_height"],
                       fail_fraction=settings["fail_fraction"])
    return simulate_cases(shard_of(specs, shard, shards), sandbox, manifest, progress=progress)


def _check_sandbox_settings(sandbox: Path, settings: dict) -> None:
    """Finished cases are reused, so a sandbox must only ever hold cases of one set of settings:
    the first run records them in ``<sandbox>/settings.json``, later runs must match."""
    record = sandbox / "settings.json"
    if record.exists():
        saved = json.loads(record.read_text())
        changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        if changed:
            raise ValueError(
                f"{sandbox} holds cases simulated with other settings "
                + ", ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in sorted(changed.items()))
                + f"; delete {sandbox} (and the extracted cases) to simulate again, or use another folder"
            )
        return
    sandbox.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f".settings.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True))
    os.replace(tmp, record)


def read_kept(kept_file) -> list[str]:
    """Case names of the filter's ``kept.txt`` (one per line)."""
    path = Path(kept_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no list of kept cases (run the filter step first)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def sdf_shard(extracted_dir, kept_file, out_dir, table_path, shard: int = 0, shards: int = 1,
              progress: bool = True) -> pd.DataFrame:
    """SDF features of this shard's kept cases into ``out_dir/<case>.npz``; timings to ``table_path``."""
    from flare.am.assemble import compute_sdf

    cases = shard_of(read_kept(kept_file), shard, shards)
    table = compute_sdf(extracted_dir, cases, out_dir, progress=progress)
    _write_csv(table, table_path)
    return table


def split_sizes(num_cases: int, num_train: int | None = None, num_test: int | None = None,
                test_fraction: float = PAPER_TEST_FRACTION) -> tuple[int, int]:
    """(train, test) counts: as given, or the rest of the cases with ``test_fraction`` of them in test."""
    if num_train is not None and num_test is not None:
        return num_train, num_test
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if num_test is None:
        num_test = max(1, round(test_fraction * num_cases)) if num_train is None else num_cases - num_train
    if num_train is None:
        num_train = num_cases - num_test
    if num_train < 1 or num_test < 1:
        raise ValueError(f"{num_cases} kept LPBF cases cannot be split into {num_train} train / {num_test} test "
                         "samples: simulate more cases or loosen the filter")
    return num_train, num_test


def assemble_dataset(extracted_dir, kept_file, out_dir, sdf_dir=None, num_train: int | None = None,
                     num_test: int | None = None, test_fraction: float = PAPER_TEST_FRACTION,
                     seed: int = 0) -> dict:
    """The kept cases in the standard format (see :func:`flare.am.assemble.assemble`)."""
    from flare.am.assemble import assemble

    cases = read_kept(kept_file)
    train, test = split_sizes(len(cases), num_train, num_test, test_fraction)
    return assemble(extracted_dir, cases, out_dir, train, test, seed=seed, sdf_dir=sdf_dir)


def _write_csv(table: pd.DataFrame, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)


def timing_table(simulate_manifests, extract_table, sdf_tables) -> pd.DataFrame:
    """Per case: nodes and seconds of simulation, extraction and SDF features (BENCHMARKS.md)."""
    sims = [entry for path in simulate_manifests for entry in json.loads(Path(path).read_text())["cases"]]
    frame = pd.DataFrame(sims)
    keep = [c for c in ("case", "part", "nodes", "cells", "steps", "solver", "seconds", "failure") if c in frame]
    frame = frame[keep].rename(columns={"seconds": "simulate_seconds"})
    extract = pd.read_csv(extract_table)[["case", "status", "reason", "seconds"]]
    frame = frame.merge(extract.rename(columns={"seconds": "extract_seconds"}), on="case", how="left")
    if sdf_tables:
        sdf = pd.concat([pd.read_csv(p) for p in sdf_tables], ignore_index=True)[["case", "seconds"]]
        frame = frame.merge(sdf.rename(columns={"seconds": "sdf_seconds"}), on="case", how="left")
    return frame
