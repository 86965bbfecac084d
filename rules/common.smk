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
DATASETS_IN_CONFIG = sorted(config["datasets"])
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
    if config["ablations"]["sweeps"]:
        for key in ("dataset", "model"):
            known = DATASETS_IN_CONFIG if key == "dataset" else KNOWN_MODELS
            if config["ablations"].get(key) not in known:
                raise ValueError(
                    f"config key 'ablations.{key}': {config['ablations'].get(key)!r} is not one of "
                    f"{', '.join(known)}"
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
    param="num_latents|num_heads|num_blocks|num_layers_kv_proj",
    value=r"-?\d+",


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


ABLATIONS = config["ablations"]


def ablation_values(param):
    return ABLATIONS["sweeps"][param]


def ablation_run_dir(wildcards):
    return (
        f"results/ablations/{wildcards.dataset}/{wildcards.model}/{wildcards.param}/"
        f"{wildcards.value}/seed{wildcards.seed}"
    )


def ablation_arguments(wildcards):
    """The run's ordinary settings, then the swept hyperparameter."""
    return f"{train_arguments(wildcards)} --set model.{wildcards.param}={wildcards.value}"


def ablation_runs(param, name):
    """One file per (value, seed) of a sweep, values in the configured order."""
    return [
        f"results/ablations/{ABLATIONS['dataset']}/{ABLATIONS['model']}/{param}/{value}/seed{seed}/{name}"
        for value in ablation_values(param)
        for seed in ABLATIONS["seeds"]
    ]


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
    targets = [f"results/tables/relative_l2.{ext}" for ext in ("md", "csv", "tex")]
    targets += [f"results/figures/relative_l2.{ext}" for ext in ("png", "pdf")]
    for param in ABLATIONS["sweeps"]:
        targets += [f"results/tables/ablation_{param}.md", f"results/figures/ablation_{param}.png"]
    return targets
