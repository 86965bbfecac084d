"""The LPBF chain through Snakemake: simulate -> extract -> filter -> sdf -> assemble -> train ->
render, on a dozen tiny parts."""
import json

import pandas as pd
import pytest
import yaml

from tests.workflow.test_workflow import job_counts, snakemake

CONFIG = {
    "datasets": {"lpbf": {"source": "generate", "shards": 2, "sdf_features": True,
                          "simulate": {"cases": 12, "size": 12.0, "fail_fraction": 0.25},
                          "render": {"model": "flare", "cases": 2}}},
    "models": ["flare", "mesh_gnn"],
    "seeds": [0],
    "train": {"epochs": 2},
    "dataset_overrides": {"lpbf": {"train": {"batch_size": 1}}},
    "overrides": {"flare": {"model": {"channel_dim": 8, "num_blocks": 1, "num_heads": 2, "num_latents": 4}},
                  "mesh_gnn": {"model": {"hidden_dim": 8, "num_layers": 1}}},
    "threads_per_run": 1,
    "scaling": {"enabled": False},
}


@pytest.mark.slow
def test_lpbf_chain_from_simulation_to_gallery(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    args = ("--cores", "2", "--configfile", str(tmp_path / "config.yaml"))
    counts = job_counts(snakemake(tmp_path, "-n", *args).stdout)
    assert counts["lpbf_simulate"] == 2 and counts["lpbf_sdf"] == 2 and counts["lpbf_assemble"] == 1
    assert counts.get("prepare", 0) == 0 and counts["train"] == 2

    snakemake(tmp_path, *args)
    results = tmp_path / "results"
    extract = pd.read_csv(results / "lpbf/extract.csv")
    assert len(extract) == 12 and (extract["status"] == "rejected").sum() == 3
    assert set(extract["reason"].dropna()) == {"analysis_terminated", "results_missing", "inconsistent_time_steps"}
    kept = (results / "lpbf/filter/kept.txt").read_text().split()
    cases = pd.read_csv(results / "datasets/lpbf/cases.csv")
    excluded = pd.read_csv(results / "lpbf/filter/excluded.csv")
    assert len(kept) + len(excluded) == 12 and len(kept) >= 6  # every case kept or excluded with a reason
    assert sorted(cases["case"]) == sorted(kept)
    meta = json.loads((results / "datasets/lpbf/meta.json").read_text())
    assert len(meta["input_channels"]) == 3 + 11  # xyz and the SDF features
    table = pd.read_csv(results / "tables/relative_l2.csv")
    assert set(table.loc[table["dataset"] == "lpbf", "model"]) == {"flare", "mesh_gnn", "mean_field"}
    assert (results / "figures/lpbf_gallery.png").stat().st_size > 10_000
    render = json.loads((results / "lpbf/render/flare/seed0/render.json").read_text())
    assert len(render["cases"]) == 2
    for case in render["cases"]:
        assert (results / "lpbf/render/flare/seed0" / f"{case['case']}.vtu").exists()
    timings = pd.read_csv(results / "lpbf/timings.csv")
    assert len(timings) == 12 and timings["simulate_seconds"].gt(0).all()
    assert timings.loc[timings["case"].isin(kept), "sdf_seconds"].notna().all()

    again = snakemake(tmp_path, *args)
    assert "Nothing to be done" in again.stdout + again.stderr
