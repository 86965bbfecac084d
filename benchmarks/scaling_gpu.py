"""The workflow's scaling rule without snakemake (for a GPU machine that has only torch & co.).

Reads the `scaling` section of a config file (defaults from config/schema.yaml), runs
flare.report.scaling exactly as rule `scaling` does, and writes scaling.csv and the time / memory
figures into the output folder.

    PYTHONPATH=src python benchmarks/scaling_gpu.py --config config/config.yaml --out results/bench
"""
import argparse
from pathlib import Path

import yaml

from flare.report.scaling import run_scaling, scaling_figures


def scaling_settings(config_path: Path) -> dict:
    schema = yaml.safe_load(Path("config/schema.yaml").read_text())
    props = schema["properties"]["scaling"]["properties"]
    settings = {key: spec["default"] for key, spec in props.items() if "default" in spec}
    settings.update(yaml.safe_load(config_path.read_text()).get("scaling", {}))
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cfg = scaling_settings(args.config)
    args.out.mkdir(parents=True, exist_ok=True)
    frame = run_scaling(cfg["points"], cfg["latents"], cfg["methods"], cfg["channels"], cfg["heads"],
                        cfg["precision"], max_softmax_points=cfg["max_softmax_points"], reps=cfg["reps"])
    frame.to_csv(args.out / "scaling.csv", index=False)
    scaling_figures(frame, [args.out / "scaling_time.png"], [args.out / "scaling_memory.png"])
    print(frame.to_string(index=False))


if __name__ == "__main__":
    main()
