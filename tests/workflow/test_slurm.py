"""The SLURM and workstation profiles, and a real run of the tiny workflow through a local SLURM.

The end-to-end test starts a one-node SLURM on this machine (tests/workflow/slurm_cluster.py; needs
root and the Debian packages that .ci/slurm-setup.sh installs, else it is skipped with the reason)
and runs the tiny workflow with the SLURM profile, changed only where this small machine needs it
(partition, memory, time limits, at most 1 thread a job, squeue status checks). The node advertises two stand-in GPUs so
that the profile's GPU requests are really scheduled.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from . import slurm_cluster

REPO = Path(__file__).resolve().parents[2]
SLURM_PROFILE = REPO / "config/profiles/slurm/config.yaml"
LOCAL_PROFILE = REPO / "config/profiles/local/config.yaml"
GPU_RULES = ("train", "evaluate")
# what the tiny run must produce (the ablation sweep of tiny.yaml is not asked for: it runs the
# same commands as train/evaluate and would only make the test longer)
TARGETS = ("results/tables/relative_l2.csv", "results/figures/relative_l2.png")
RUN_TIMEOUT = 420  # s for the whole snakemake run; it takes about 1.5 min on 2 shared cores


def load(path: Path) -> dict:
    profile = yaml.safe_load(path.read_text())
    assert isinstance(profile, dict), f"{path} is not a YAML mapping"
    return profile


def job_counts(output: str) -> dict[str, int]:
    """Jobs per rule from the 'Job stats' table that snakemake prints before it starts."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    counts.pop("total", None)
    return counts


def workflow_rules() -> set[str]:
    out = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                          "--directory", str(REPO), "--list-rules"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


# ---- the profiles (fast)

def test_profiles_are_valid_yaml_and_slurm_gpu_rules_set_no_tasks():
    slurm = load(SLURM_PROFILE)
    assert slurm["executor"] == "slurm"
    assert slurm["rerun-incomplete"] is True
    assert {"slurm_partition", "slurm_account", "runtime", "mem_mb"} <= set(slurm["default-resources"])
    gpu_rules = [r for r in slurm["set-resources"] if r.startswith(GPU_RULES)]  # ablation copies too
    assert set(GPU_RULES) <= set(gpu_rules)
    for rule in gpu_rules:
        resources = slurm["set-resources"][rule]
        assert int(resources["gpu"]) >= 1, rule
        # tasks would become --ntasks-per-gpu: SLURM could run the job once per GPU
        assert not {"tasks", "tasks_per_gpu"} & set(resources), rule
    assert int(slurm["set-resources"]["train"]["runtime"]) > int(slurm["default-resources"]["runtime"])

    local = load(LOCAL_PROFILE)
    assert local["cores"] == "all" and int(local["resources"]["gpu"]) >= 1
    assert local["rerun-incomplete"] is True and local["keep-going"] is False
    assert "executor" not in local


def test_slurm_profile_names_only_rules_of_the_workflow():
    unknown = set(load(SLURM_PROFILE)["set-resources"]) - workflow_rules()
    assert not unknown, f"set-resources names rules the workflow does not have: {sorted(unknown)}"


# ---- a real SLURM (slow)

@pytest.fixture(scope="module")
def local_slurm():
    reason = slurm_cluster.missing_requirements()
    if reason:
        pytest.skip(f"no local SLURM: {reason}")
    cluster = slurm_cluster.LocalSlurm(fake_gpus=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()  # also after a failed start or a failed test; stops munged if it started it


def profile_for_this_machine(tmp_path) -> Path:
    """The SLURM profile with what the one small test node needs; returns its folder."""
    profile = load(SLURM_PROFILE)
    profile["default-resources"].update(slurm_partition=slurm_cluster.LocalSlurm.partition, runtime=10, mem_mb=500)
    profile["default-resources"].pop("slurm_account")
    for resources in profile["set-resources"].values():
        resources.pop("slurm_partition", None)
        resources.update(runtime=10, mem_mb=500)  # the node has one partition and little memory
    profile.update({
        "jobs": 2,
        "retries": 0,
        "keep-going": False,
        "latency-wait": 5,
        "max-threads": 1,  # rules asking for more CPUs than the 2-CPU node has would never start
        # no slurmdbd here, so no sacct: squeue (MinJobAge 300 s >= 3 x the 2 s first wait)
        "slurm-status-command": "squeue",
        "slurm-init-seconds-before-status-checks": 2,
        "slurm-keep-successful-logs": True,
    })
    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def run_watched(command, workdir, env, cluster, out_file: Path, stuck_after: float = 45.0) -> tuple[int, str]:
    """Runs snakemake; stops it early when a job can never start (pending while the node runs
    nothing) or after RUN_TIMEOUT, since the executor itself would wait forever."""
    with open(out_file, "w") as out:
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + RUN_TIMEOUT
        idle_since = None
        problem = None
        try:
            while proc.poll() is None:
                time.sleep(2)
                queue = cluster.queue()
                if queue and not any(state == "RUNNING" for _, state, _ in queue):
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > stuck_after:
                        problem = f"jobs pending on an idle node for {stuck_after:.0f} s (can never start): {queue}"
                else:
                    idle_since = None
                if time.monotonic() > deadline:
                    problem = f"snakemake under SLURM did not finish in {RUN_TIMEOUT} s; queue: {queue}"
                if problem:
                    break
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    output = out_file.read_text(errors="replace")
    if problem:
        pytest.fail(f"{problem}\n{output[-6000:]}")
    return proc.returncode, output


@pytest.mark.slow
def test_tiny_workflow_runs_under_slurm(local_slurm, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    profile = profile_for_this_machine(tmp_path)
    # Each SLURM job re-runs `python -m snakemake` (sys.executable) and the rules call `python`:
    # sbatch exports this environment, so put this interpreter's folder first on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("SLURM_JOB_ID", None)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--configfile", str(REPO / "tests/configs/tiny.yaml"),
               "--profile", str(profile), *TARGETS]
    start = time.monotonic()
    returncode, output = run_watched(command, workdir, env, local_slurm, tmp_path / "snakemake.out")
    elapsed = time.monotonic() - start
    slurm_logs = workdir / ".snakemake/slurm_logs"
    if returncode != 0:
        job_logs = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(slurm_logs.rglob("*.log")))
        pytest.fail(f"snakemake under SLURM failed ({elapsed:.0f} s):\n{output[-6000:]}\n{job_logs}\n"
                    f"--- slurmctld.log\n{local_slurm.log('slurmctld')[-3000:]}")

    # the products
    table = pd.read_csv(workdir / "results/tables/relative_l2.csv")
    assert set(table["model"]) == {"flare", "mean_field"}
    assert table.loc[table["model"] == "flare", "seeds"].item() == 2
    assert (workdir / "results/figures/relative_l2.png").stat().st_size > 1000

    # every job went through sbatch: a SLURM log per rule and wildcards, and slurmctld knows the jobs
    planned = job_counts(output)
    assert {"generate_raw", "prepare", "train", "evaluate", "mean_field"} <= set(planned), planned
    submitted = output.count("has been submitted with SLURM jobid")
    assert submitted == sum(planned.values()), (submitted, planned)
    assert {p.name.removeprefix("rule_") for p in slurm_logs.iterdir()} == set(planned), sorted(slurm_logs.iterdir())
    logs = sorted(slurm_logs.rglob("*.log"))
    assert len(logs) == submitted, logs
    jobs = [j for j in local_slurm.jobs() if j.get("Comment", "").startswith("rule_")]
    assert len(jobs) == submitted, jobs
    assert all(j["JobState"] == "COMPLETED" and j["ExitCode"] == "0:0" for j in jobs), jobs

    # GPU rules got their GPU from SLURM (--gpus=1), one task each: the rule ran once per job
    for job in jobs:
        rule = job["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        assert job["NumTasks"] == "1", job
        assert (job.get("TresPerJob") == "gres:gpu:1") == (rule in GPU_RULES), job
    for seed in (0, 1):
        train_log = (workdir / f"results/logs/train/darcy/flare/seed{seed}.log").read_text()
        assert train_log.count('"test_rel_l2"') == 1, train_log  # one training process, one summary

    print(f"tiny workflow under SLURM: {submitted} jobs in {elapsed:.0f} s")
