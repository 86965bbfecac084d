# Helpers shared by the rules: config validation, paths, targets. No rules here.
import shlex
from pathlib import Path

from snakemake.utils import validate

# Jobs (shell and script) import the `flare` package of this checkout, also in a --use-conda env.
_SRC = shlex.quote(str(Path(workflow.basedir) / "src"))
# (the prefix is formatted like a shell command, so shell braces are doubled)
shell.prefix(f'export PYTHONPATH={_SRC}"${{{{PYTHONPATH:+:$PYTHONPATH}}}}"; ')

validate(config, schema="../config/schema.yaml")

KNOWN_DATASETS = ("darcy",)
KNOWN_MODELS = sorted(p.stem for p in (Path(workflow.basedir) / "config" / "models").glob("*.yaml"))


def _check_config():
    """Checks the JSON schema cannot express: names that must exist."""
    for model in config["models"]:
        if model not in KNOWN_MODELS:
            raise ValueError(
                f"config key 'models': unknown model {model!r}; allowed: {', '.join(KNOWN_MODELS)}"
            )
    for model in config["overrides"]:
        if model not in config["models"]:
            raise ValueError(
                f"config key 'overrides.{model}': {model!r} is not in 'models' ({', '.join(config['models'])})"
            )
    for name, entry in config["datasets"].items():
        if entry["source"] == "local" and not entry.get("local_dir"):
            raise ValueError(f"config key 'datasets.{name}.local_dir' is required when source is 'local'")


_check_config()

DATASETS = list(config["datasets"])
MODELS = list(config["models"])
SEEDS = list(config["seeds"])


wildcard_constraints:
    dataset="[A-Za-z0-9_]+",
    model="[A-Za-z0-9_]+",
    seed=r"\d+",


def dataset_config(name):
    return config["datasets"][name]


def run_dir(wildcards):
    return f"results/runs/{wildcards.dataset}/{wildcards.model}/seed{wildcards.seed}"


def train_arguments(wildcards):
    """`--set` options for one run: workflow-wide training settings, then the model's overrides."""
    items = [f"train.{k}={v}" for k, v in config["train"].items()]
    for section, values in config["overrides"].get(wildcards.model, {}).items():
        items += [f"{section}.{k}={v}" for k, v in values.items()]
    return " ".join(f"--set {shlex.quote(item)}" for item in items)


def darcy_raw_files(wildcards):
    """The two FNO-layout .mat files the Darcy dataset is prepared from, by the configured source."""
    cfg = dataset_config("darcy")
    folder = {
        "generate": "results/raw/darcy",
        "download": "resources/darcy",
        "local": cfg.get("local_dir"),
    }[cfg["source"]]
    names = [
        f"piececonst_r{cfg['resolution']}_N{cfg['samples_per_file']}_smooth{k}.mat"
        for k in (1, 2)
    ]
    return {"train": f"{folder}/{names[0]}", "test": f"{folder}/{names[1]}"}


def evaluation_files():
    evals = [
        f"results/runs/{d}/{m}/seed{s}/eval.json"
        for d in DATASETS
        for m in MODELS
        for s in SEEDS
    ]
    if config["report"]["mean_field"]:
        evals += [f"results/runs/{d}/mean_field/eval.json" for d in DATASETS]
    return evals


def final_targets():
    return [
        f"results/tables/relative_l2.{ext}" for ext in ("md", "csv", "tex")
    ] + [f"results/figures/relative_l2.{ext}" for ext in ("png", "pdf")]
