"""The Snakemake workflow: DAGs of the shipped configs, config validation, lint, a tiny real run."""
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
def snakemake(workdir, *args, check=True, snakefile=REPO / "Snakefile"):
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir)]
    result = subprocess.run([*command, *args],
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake run or dry run."""
    table = output.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def write_config(path, **changes):
    config = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    config.update(changes)
    path.write_text(yaml.safe_dump(config))
    return path


def test_paper_config_dry_run_lists_the_full_grid(tmp_path):
    out = snakemake(tmp_path, "-n", "--printshellcmds").stdout
    counts = job_counts(out)
    datasets = ("elasticity", "darcy", "airfoil", "pipe", "drivaerml", "lpbf")
    assert counts["download_raw"] == 6 and counts["prepare"] == 6
    assert counts["train"] == counts["evaluate"] == (6 * 8 - 3 - 3 - 5) * 3  # models × datasets − skips, 3 seeds
    assert counts["train_ablation"] == 6 + 5 + 4 + 5 and counts["ablation_report"] == 4
    assert counts["scaling"] == 1
    for dataset in datasets:
        assert f"flare data fetch --dataset {dataset} " in out
        assert f"--model flare --seed 2 --out results/runs/{dataset}/flare/seed2" in out
    assert "--model transformer --seed 0 --out results/runs/pipe/" not in out  # the paper's "~"
    assert "--model mesh_gnn --seed 0 --out results/runs/lpbf/mesh_gnn/seed0" in out


def test_lint_reports_nothing(tmp_path):
    result = snakemake(REPO, "--lint")
    assert "Congratulations" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"sedes": [0]}, r"'sedes' was unexpected"),
        ({"seeds": "0"}, r"'0' is not of type 'array'"),
        ({"seeds": []}, r"\[\] should be non-empty"),
        ({"models": ["flair"]}, r"unknown model 'flair'; allowed: flare"),
        ({"datasets": {"darcy": {"source": "ftp"}}}, r"'ftp' is not one of \['download', 'generate', 'local'\]"),
        ({"train": {"epoch": 3}}, r"'epoch' is not one of"),
        ({"datasets": {"airfoil": {"source": "generate"}}}, r"datasets.airfoil.source': no embedded generator"),
        ({"skip": {"flare": ["pipe"]}}, r"'skip.flare': 'pipe' is not one of the configured datasets"),
    ],
)
def test_invalid_config_stops_before_any_job(tmp_path, changes, message):
    config = write_config(tmp_path / "bad.yaml", **changes)
    result = snakemake(tmp_path, "-n", "--configfile", str(config), check=False)
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr), result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_tiny_workflow_end_to_end(tmp_path):
    config = REPO / "tests/configs/tiny.yaml"
    snakemake(tmp_path, "--cores", "2", "--configfile", str(config))
    table = pd.read_csv(tmp_path / "results/tables/relative_l2.csv")
    assert set(table["model"]) == {"flare", "mean_field"}
    flare_row = table[table["model"] == "flare"].iloc[0]
    assert flare_row["seeds"] == 2 and flare_row["paper_rel_l2_e3"] == 5.10
    md = (tmp_path / "results/tables/relative_l2.md").read_text()
    assert "FLARE" in md and "mean field" in md and "(paper 5.1)" in md
    assert r"\begin{table}" in (tmp_path / "results/tables/relative_l2.tex").read_text()
    for ext in ("png", "pdf"):
        assert (tmp_path / f"results/figures/relative_l2.{ext}").stat().st_size > 1000
    for seed in (0, 1):
        run = tmp_path / f"results/runs/darcy/flare/seed{seed}"
        assert (run / "ckpt10.pt").exists() and (run / "eval.json").exists()
        assert (tmp_path / f"results/logs/train/darcy/flare/seed{seed}.log").exists()

    ablation = pd.read_csv(tmp_path / "results/tables/ablation_num_latents.csv")
    assert ablation["num_latents"].tolist() == [2, 4] and (ablation["seconds_per_epoch"] > 0).all()
    assert ablation["parameters"].iloc[1] > ablation["parameters"].iloc[0]  # more latents, more parameters
    assert (tmp_path / "results/figures/ablation_num_latents.pdf").exists()

    scaling = pd.read_csv(tmp_path / "results/scaling/scaling.csv")
    assert set(scaling["method"]) == {"flare_reference", "softmax", "physics"} and (scaling["status"] == "ok").all()

    snakemake(tmp_path, "--configfile", str(config), "--report", str(tmp_path / "report.html"))
    report = (tmp_path / "report.html").read_text()
    assert "relative_l2.png" in report and "ablation_num_latents.png" in report

    again = snakemake(tmp_path, "--cores", "2", "--configfile", str(config))
    assert "Nothing to be done" in again.stdout + again.stderr

    figure = tmp_path / "results/figures/relative_l2.png"
    figure.unlink()
    rebuilt = snakemake(tmp_path, "results/figures/relative_l2.png", "--cores", "2", "--configfile", str(config))
    assert job_counts(rebuilt.stdout + rebuilt.stderr) == {"relative_l2_figure": 1, "total": 1}
    assert figure.exists()
