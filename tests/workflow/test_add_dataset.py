"""The README's "add a dataset" recipe and the generic mesh-folder dataset, through the workflow."""
import shutil
import subprocess

import meshio
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.workflow.test_workflow import REPO, job_counts, snakemake

TINY_FLARE = {"model": {"channel_dim": 8, "num_blocks": 1, "num_heads": 2, "num_latents": 4}}

TOY_MODULE = '''"""Toy dataset: u(x) = sin(a x) on [0, 1], one random frequency a per sample."""
import json
from pathlib import Path

import numpy as np

from flare.data.format import DatasetMeta, write_dataset


def generate(raw_dir, options):
    rng = np.random.default_rng(options.get("seed", 0))
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    np.save(raw_dir / "frequencies.npy", rng.uniform(1, 4, options.get("samples", 12)))
    return [raw_dir / "frequencies.npy"]


def prepare(raw_dir, out_dir, options):
    a = np.load(Path(raw_dir) / "frequencies.npy")
    x = np.linspace(0, 1, 16)
    xs = [np.stack([x, np.full_like(x, f)], axis=1) for f in a]
    ys = [np.sin(f * x)[:, None] for f in a]
    meta = DatasetMeta("toy", ["x", "a"], ["u"], ["1", "1"], ["1"], "toy generator", [False, True])
    n = options.get("num_train", 8)
    return write_dataset(out_dir, meta, (xs[:n], ys[:n]), (xs[n:], ys[n:]))
'''


def copy_checkout(dest):
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    return dest


@pytest.mark.slow
def test_add_a_dataset_with_one_module_one_registry_line_one_config_entry(tmp_path):
    repo = copy_checkout(tmp_path / "repo")
    (repo / "src/flare/data/toy.py").write_text(TOY_MODULE)  # one module
    with open(repo / "src/flare/data/registry.py", "a") as fh:  # one registry line
        fh.write('\nfrom flare.data import toy  # noqa: E402\n'
                 'register_dataset(DatasetSpec("toy", toy.prepare, toy.generate, "toy"))\n')
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({  # one config entry
        "datasets": {"toy": {"source": "generate", "samples": 12, "num_train": 8}},
        "models": ["flare"], "seeds": [0], "train": {"epochs": 2, "batch_size": 2},
        "overrides": {"flare": TINY_FLARE}, "threads_per_run": 1,
    }))
    work = tmp_path / "work"
    dry = snakemake(work, "-n", "--configfile", str(config), snakefile=repo / "Snakefile")
    assert job_counts(dry.stdout)["generate_raw"] == 1
    snakemake(work, "--cores", "2", "--configfile", str(config), snakefile=repo / "Snakefile")
    table = pd.read_csv(work / "results/tables/relative_l2.csv")
    assert set(table["dataset"]) == {"toy"} and set(table["model"]) == {"flare", "mean_field"}


def write_vtu_folder(folder, count=8):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(count):
        n = 5 + i % 3  # meshes of different sizes
        xs, ys = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
        points = np.stack([xs.ravel(), ys.ravel(), np.zeros(n * n)], axis=1)
        idx = np.arange(n * n).reshape(n, n)
        quads = np.stack([idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(),
                          idx[:-1, 1:].ravel()], axis=1)
        load = rng.uniform(0.5, 2.0)
        data = {"load": np.full(n * n, load), "stress": load * np.sin(np.pi * points[:, 0]) + points[:, 1]}
        meshio.write(folder / f"case{i:02d}.vtu", meshio.Mesh(points, [("quad", quads)], point_data=data))


@pytest.mark.slow
def test_a_folder_of_vtu_files_trains_through_the_workflow(tmp_path):
    write_vtu_folder(tmp_path / "sims")
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({
        "datasets": {"brackets": {"kind": "meshfolder", "source": "local", "local_dir": str(tmp_path / "sims"),
                                  "inputs": ["load"], "outputs": ["stress"], "test_fraction": 0.25}},
        "models": ["flare"], "seeds": [0], "train": {"epochs": 2, "batch_size": 1},
        "overrides": {"flare": TINY_FLARE}, "threads_per_run": 1,
    }))
    work = tmp_path / "work"
    snakemake(work, "--cores", "2", "--configfile", str(config))
    evaluation = yaml.safe_load((work / "results/runs/brackets/flare/seed0/eval.json").read_text())
    assert evaluation["dataset"] == "brackets" and evaluation["test_samples"] == 2 and evaluation["train_samples"] == 6
