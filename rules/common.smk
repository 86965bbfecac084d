# Helpers shared by the rules: config validation, paths, targets. No rules here.
import json
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

# Jobs (shell and script) import the `flare` package of this checkout, also in a --use-conda env,
# and so does the workflow itself (for the dataset registry).
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from flare.data.registry import DATASETS as REGISTERED_DATASETS  # noqa: E402  (stdlib-only import)

_SRC = shlex.quote(str(Path(workflow.basedir) / "src"))
# (the prefix is formatted like a shell command, so shell braces are doubled)
shell.prefix(f'export PYTHONPATH={_SRC}"${{{{PYTHONPATH:+:$PYTHONPATH}}}}"; ')

validate(config, schema="../config/schema.yaml")

DATASETS_IN_CONFIG = sorted(config["datasets"])
GENERATORS = sorted(n for n, spec in REGISTERED_DATASETS.items() if spec.generate is not None)
KNOWN_MODELS = sorted(p.stem for p in (Path(workflow.basedir) / "config" / "models").glob("*.yaml"))


def _check_config():
    """Checks the JSON schema cannot express: names that must exist."""
    for model in config["models"]:
        if model not in KNOWN_MODELS:
            raise ValueError(
                f"config key 'models': unknown model {model!r}; allowed: {', '.join(KNOWN_MODELS)}"
            )
    for model, datasets in config["skip"].items():
        for name in datasets:
            if name not in config["datasets"]:
                raise ValueError(
                    f"config key 'skip.{model}': {name!r} is not one of the configured datasets "
                    f"({', '.join(config['datasets'])})"
                )
    for name in config["dataset_overrides"]:
        if name not in config["datasets"]:
            raise ValueError(
                f"config key 'dataset_overrides.{name}': {name!r} is not one of the configured datasets "
                f"({', '.join(config['datasets'])})"
            )
    for model in config["overrides"]:
        if model not in config["models"]:
            raise ValueError(
                f"config key 'overrides.{model}': {model!r} is not in 'models' ({', '.join(config['models'])})"
            )
    for name, entry in config["datasets"].items():
        kind = entry.get("kind", name)
        if kind not in REGISTERED_DATASETS:
            raise ValueError(
                f"config key 'datasets.{name}': unknown dataset; registered: "
                f"{', '.join(sorted(REGISTERED_DATASETS))} (or kind: meshfolder for a folder of meshes)"
            )
        if entry["source"] == "local" and not entry.get("local_dir"):
            raise ValueError(f"config key 'datasets.{name}.local_dir' is required when source is 'local'")
        if entry["source"] == "generate" and kind not in GENERATORS + ["lpbf"]:
            raise ValueError(
                f"config key 'datasets.{name}.source': no embedded generator for {name!r} "
                f"(generators: {', '.join(GENERATORS)}); use download or local"
            )
        if entry.get("kind") == "meshfolder" and entry["source"] != "local":
            raise ValueError(f"config key 'datasets.{name}.source' must be 'local' for a mesh folder")
    if config["ablations"]["sweeps"]:
        for key in ("dataset", "model"):
            known = DATASETS_IN_CONFIG if key == "dataset" else KNOWN_MODELS
            if config["ablations"].get(key) not in known:
                raise ValueError(
                    f"config key 'ablations.{key}': {config['ablations'].get(key)!r} is not one of "
                    f"{', '.join(known)}"
                )

_check_config()

DATASETS = list(config["datasets"])
# LPBF runs its own chain (rules/lpbf.smk) from raw cases: simulated, or the user's own SandBox
LPBF = config["datasets"].get("lpbf")
LPBF_CHAIN = LPBF is not None and (
    LPBF["source"] == "generate" or (LPBF["source"] == "local" and LPBF["layout"] == "sandbox")
)
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
    for k, v in config["dataset_overrides"].get(wildcards.dataset, {}).get("train", {}).items():
        items.append(f"train.{k}={v}")
    return " ".join(f"--set {shlex.quote(item)}" for item in items)


def dataset_options(wildcards):
    """The dataset's config entry without the keys that choose where its raw files come from (JSON)."""
    entry = {
        k: v
        for k, v in dataset_config(wildcards.dataset).items()
        if k not in ("source", "local_dir", "variant")
    }
    return json.dumps(entry, sort_keys=True)



def variant_option(wildcards):
    variant = dataset_config(wildcards.dataset).get("variant")
    return f"--variant {shlex.quote(variant)}" if variant else ""


def raw_location(wildcards):
    """Where prepare finds the raw files: a download's manifest, or the generated / local folder."""
    entry = dataset_config(wildcards.dataset)
    if entry["source"] == "download":
        return f"--manifest resources/{wildcards.dataset}/download.json"
    folder = (
        f"results/raw/{wildcards.dataset}" if entry["source"] == "generate" else entry["local_dir"]
    )
    return f"--raw-dir {shlex.quote(folder)}"


def raw_manifest(wildcards):
    """What prepare waits for: the generator's or the download's manifest; nothing for a local folder."""
    source = dataset_config(wildcards.dataset)["source"]
    if source == "generate":
        return f"results/raw/{wildcards.dataset}/generate.json"
    if source == "download":
        return f"resources/{wildcards.dataset}/download.json"
    return []


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


def runs():
    """Every (dataset, model) pair to train, less the pairs listed under config key `skip`."""
    return [
        (d, m) for d in DATASETS for m in MODELS if d not in config["skip"].get(m, [])
    ]


def evaluation_files():
    evals = [f"results/runs/{d}/{m}/seed{s}/eval.json" for d, m in runs() for s in SEEDS]
    if config["report"]["mean_field"]:
        evals += [f"results/runs/{d}/mean_field/eval.json" for d in DATASETS]
    return evals


def final_targets():
    targets = [f"results/tables/relative_l2.{ext}" for ext in ("md", "csv", "tex")]
    targets += [f"results/figures/relative_l2.{ext}" for ext in ("png", "pdf")]
    for param in ABLATIONS["sweeps"]:
        targets += [f"results/tables/ablation_{param}.md", f"results/figures/ablation_{param}.png"]
    if config["scaling"]["enabled"]:
        targets += ["results/figures/scaling_time.png", "results/figures/scaling_memory.png"]
    if lpbf_gallery_run():
        targets += ["results/figures/lpbf_gallery.png", "results/lpbf/timings.csv"]
    return targets


def lpbf_gallery_run():
    """The run the LPBF gallery shows (its model, first seed), or None: the gallery needs the hex
    meshes of the chain's extracted cases, so it exists only when LPBF runs through the chain."""
    if not LPBF_CHAIN:
        return None
    model = LPBF["render"]["model"]
    if model not in MODELS or "lpbf" in config["skip"].get(model, []):
        return None
    return f"results/runs/lpbf/{model}/seed{SEEDS[0]}"
