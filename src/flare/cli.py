"""Command line: ``python -m flare <command>`` or ``flare <command>``."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

import yaml

DESCRIPTION = """\
FLARE: train and evaluate neural PDE surrogates, prepare datasets, build the report.

Typical use (the Snakemake workflow runs the same commands):
  flare data generate --dataset darcy --raw-dir results/raw/darcy --options '{"resolution": 61, "samples_per_file": 240}'
  flare data prepare --dataset darcy --raw-dir results/raw/darcy --out results/datasets/darcy \
      --options '{"resolution": 61, "samples_per_file": 240, "subsample": 2, "num_train": 200, "num_test": 40}'
  flare train --dataset darcy --model flare --seed 0 --out results/runs/darcy/flare/seed0 --epochs 20
  flare evaluate --run results/runs/darcy/flare/seed0
"""


def parse_set(items: list[str]) -> dict:
    """``["model.num_latents=128", "train.epochs=5"]`` -> ``{"model": {"num_latents": 128}, "train": {"epochs": 5}}``."""
    overrides: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise SystemExit(f"--set expects SECTION.KEY=VALUE (e.g. train.epochs=5); got {item!r}")
        overrides.setdefault(section, {})[name] = _parse_value(value)
    return overrides


def _parse_value(text: str):
    """A YAML scalar, with ``1e-3`` read as a number (YAML 1.1 wants ``1.0e-3``)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def cmd_train(args) -> None:
    from flare.settings import deep_merge, load_yaml
    from flare.train import train

    overrides = load_yaml(args.config) if args.config else {}
    overrides = deep_merge(overrides, parse_set(args.set))
    if args.epochs is not None:
        overrides = deep_merge(overrides, {"train": {"epochs": args.epochs}})
    if args.device:
        overrides = deep_merge(overrides, {"train": {"device": args.device}})
    if not (args.data_dir or args.dataset):
        raise ValueError("name the dataset with --dataset NAME (or its folder with --data-dir PATH)")
    dataset_dir = Path(args.data_dir) if args.data_dir else Path(args.data_root) / args.dataset
    errors = train(dataset_dir, args.model, args.seed, args.out, overrides, progress=not args.no_progress)
    print(json.dumps(errors, indent=2))


def cmd_evaluate(args) -> None:
    from flare.evaluate import evaluate

    summary = evaluate(args.run, dataset_dir=args.data_dir, device=args.device or "auto")
    print(json.dumps(summary, indent=2))


def cmd_mean_field(args) -> None:
    from flare.evaluate import mean_field

    print(json.dumps(mean_field(args.data_dir, args.out), indent=2))


def cmd_aggregate(args) -> None:
    from flare.report import collect_evaluations, relative_l2_figure, relative_l2_table, write_tables

    runs = collect_evaluations(args.evals)
    write_tables(relative_l2_table(runs), args.md, args.csv, args.tex)
    relative_l2_figure(runs, args.figure)


def _options(args) -> dict:
    options = json.loads(args.options) if args.options else {}
    if not isinstance(options, dict):
        raise ValueError(f"--options must be a JSON object, got {args.options!r}")
    return options


def _write_manifest(path: Path, files) -> None:
    """A small JSON list of what a data step produced; it is the step's declared output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"files": sorted(str(f) for f in files)}, indent=2))
    tmp.replace(path)


def cmd_data_generate(args) -> None:
    from flare.data.registry import get_dataset

    spec = get_dataset(args.dataset)
    if spec.generate is None:
        raise ValueError(f"dataset {args.dataset!r} has no embedded generator; use source download or local")
    raw_dir = Path(args.raw_dir)
    files = spec.generate(raw_dir, {**_options(args), "workers": args.workers})
    _write_manifest(raw_dir / "generate.json", files if isinstance(files, list) else
                    [p for p in raw_dir.rglob("*") if p.is_file() and p.name != "generate.json"])


def cmd_data_fetch(args) -> None:
    from flare.data.sources import download_source

    files = download_source(args.dataset, Path(args.raw_dir), base_url=args.base_url,
                            checksums_file=args.checksums, variant=args.variant, progress=not args.no_progress)
    _write_manifest(Path(args.manifest) if args.manifest else Path(args.raw_dir) / "download.json", files)


def cmd_data_prepare(args) -> None:
    from flare.data.registry import get_dataset

    options = _options(args)
    kind = options.pop("kind", args.dataset)
    if kind == "meshfolder":
        options.setdefault("name", args.dataset)
    if args.manifest:  # the folder that holds every file a download produced
        files = json.loads(Path(args.manifest).read_text())["files"]
        raw_dir = Path(os.path.commonpath([os.path.dirname(f) for f in files]))
    elif args.raw_dir:
        raw_dir = Path(args.raw_dir)
    else:
        raise ValueError("give the raw files' folder with --raw-dir or a download manifest with --manifest")
    get_dataset(kind).prepare(raw_dir, Path(args.out), options)


def cmd_launch(args) -> None:
    from flare.train.launch import launch

    flare_args = args.flare_args[1:] if args.flare_args[:1] == ["--"] else args.flare_args
    if not flare_args:
        raise ValueError("give the flare command to run after --, e.g. flare launch --gpus 2 -- train ...")
    code = launch(args.gpus, flare_args, args.lock_dir)
    if code:
        raise SystemExit(code)


def cmd_models(args) -> None:
    from flare.models import MODELS

    print("\n".join(sorted(MODELS)))


def cmd_lpbf_simulate(args) -> None:
    from flare.am.chain import simulate_shard

    done = simulate_shard(args.sandbox, args.manifest, _options(args), args.shard, args.shards,
                          progress=not args.no_progress)
    print(f"shard {args.shard} of {args.shards}: {len(done)} cases in {args.sandbox}")


def cmd_lpbf_extract(args) -> None:
    from flare.am.extract import extract_cases

    table = extract_cases(args.sandbox, args.out, args.table, progress=not args.no_progress)
    print(table["status"].value_counts().to_string())


def cmd_lpbf_filter(args) -> None:
    from flare.am.filter import filter_cases

    table = filter_cases(args.extracted, args.table, args.out, _options(args) or None)
    print(f"kept {int(table['kept'].sum())} of {len(table)} extracted cases")


def cmd_lpbf_sdf(args) -> None:
    from flare.am.chain import sdf_shard

    sdf_shard(args.extracted, args.kept, args.out, args.table, args.shard, args.shards,
              progress=not args.no_progress)


def cmd_lpbf_assemble(args) -> None:
    from flare.am.chain import assemble_dataset

    options = _options(args)
    known = {"num_train", "num_test", "test_fraction", "seed"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown LPBF assembly option(s) {unknown}; known: {sorted(known)}")
    assemble_dataset(args.extracted, args.kept, args.out, sdf_dir=args.sdf_dir, **options)


def cmd_lpbf_render(args) -> None:
    import shutil

    from flare.am.render import render_run

    summary = render_run(args.run, args.dataset, args.extracted, args.out, args.cases, args.device)
    if args.gallery:
        gallery = Path(args.gallery)
        gallery.parent.mkdir(parents=True, exist_ok=True)
        tmp = gallery.with_name(f".{gallery.name}.tmp{gallery.suffix}")
        shutil.copyfile(Path(args.out) / "gallery.png", tmp)
        tmp.replace(gallery)
    print(json.dumps({c["case"]: c["rel_l2"] for c in summary["cases"]}, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flare", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one model on one dataset with one seed (resumes from checkpoints)",
                       description="Train a model. Settings: the model's paper settings for the dataset "
                       "(config/models/<model>.yaml), then --config, then --set, then --epochs/--device. "
                       "A run folder that already holds checkpoints of the same settings is resumed.")
    p.add_argument("--dataset", help="dataset name (its folder under --data-root)")
    p.add_argument("--data-root", default="results/datasets", help="folder of prepared datasets [%(default)s]")
    p.add_argument("--data-dir", help="the dataset folder itself (overrides --data-root/--dataset)")
    p.add_argument("--model", required=True, help="registered model name (see `flare models`)")
    p.add_argument("--seed", type=int, required=True, help="random seed of initialisation and data order")
    p.add_argument("--out", required=True, help="run folder: checkpoints, config.yaml, history.csv, results")
    p.add_argument("--epochs", type=int, help="number of epochs (overrides the settings)")
    p.add_argument("--config", help="YAML file with `model:` and/or `train:` sections of overrides")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set model.num_latents=128 --set train.batch_size=4")
    p.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="relative L2 of a trained run on its dataset -> eval.json, per_sample.csv")
    p.add_argument("--run", required=True, help="run folder written by `flare train`")
    p.add_argument("--data-dir", help="dataset folder (default: the one the run was trained on)")
    p.add_argument("--device", help="cpu, cuda, … (default: cuda when available)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("mean-field", help="the predict-the-training-mean baseline -> eval.json")
    p.add_argument("--data-dir", required=True, help="dataset folder holding train.h5 and test.h5")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_mean_field)

    p = sub.add_parser("aggregate", help="tables (md, csv, tex) and the bar chart from eval.json files")
    p.add_argument("--evals", nargs="+", required=True, help="eval.json files")
    p.add_argument("--md", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--tex", required=True)
    p.add_argument("--figure", nargs="+", required=True, help="figure files (png, pdf, …)")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("launch", help="run a flare command on N locked GPUs (torchrun when N > 1)",
                       description="Take N free GPUs of this machine (one lock file per GPU, so concurrent "
                       "jobs get distinct GPUs), set CUDA_VISIBLE_DEVICES and run the command; N > 1 runs it "
                       "under torchrun with N processes; N = 0 runs it as it is. Under SLURM no locks are taken.")
    p.add_argument("--gpus", type=int, default=0, help="number of GPUs [%(default)s]")
    p.add_argument("--lock-dir", default="results/.gpu_locks", help="folder of the GPU lock files [%(default)s]")
    p.add_argument("flare_args", nargs=argparse.REMAINDER, help="-- then the flare command, e.g. -- train ...")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("models", help="list registered models")
    p.set_defaults(func=cmd_models)

    data = sub.add_parser("data", help="dataset generation and conversion")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    options_help = "the dataset's settings as a JSON object (the workflow passes its config entry)"
    p = dsub.add_parser("generate", help="run a dataset's embedded generator (darcy, elasticity)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--raw-dir", required=True, help="folder for the generated raw files")
    p.add_argument("--options", help=options_help)
    p.add_argument("--workers", type=int, default=1, help="processes for the solves [%(default)s]")
    p.set_defaults(func=cmd_data_generate)
    p = dsub.add_parser("fetch", help="download a dataset's published files, verify sha256, extract safely")
    p.add_argument("--dataset", required=True)
    p.add_argument("--raw-dir", required=True, help="download cache shared by all datasets, e.g. resources/hub")
    p.add_argument("--manifest", help="JSON list of the dataset's files to write [RAW_DIR/download.json]")
    p.add_argument("--variant", help="a dataset's variant, e.g. drivaerml 40k")
    p.add_argument("--base-url", default="https://huggingface.co", help="mirror of the dataset hub [%(default)s]")
    p.add_argument("--checksums", default="config/checksums.yaml",
                   help="sha256 store: known hashes are verified, new ones recorded [%(default)s]")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_data_fetch)
    p = dsub.add_parser("prepare", help="convert raw files to the standard format (train.h5, test.h5)")
    p.add_argument("--dataset", required=True, help="registered dataset, or any name with options kind=meshfolder")
    p.add_argument("--raw-dir", help="folder holding the raw files (searched recursively)")
    p.add_argument("--manifest", help="instead of --raw-dir: the manifest `flare data fetch` wrote")
    p.add_argument("--out", required=True, help="dataset folder to write train.h5 and test.h5 into")
    p.add_argument("--options", help=options_help)
    p.set_defaults(func=cmd_data_prepare)

    lpbf = sub.add_parser("lpbf", help="the LPBF chain: simulate, extract, filter, sdf, assemble, render")
    lsub = lpbf.add_subparsers(dest="lpbf_command", required=True, metavar="LPBF_COMMAND")

    def shards(p):
        p.add_argument("--shard", type=int, default=0, help="this job's shard: cases k with k mod SHARDS == SHARD")
        p.add_argument("--shards", type=int, default=1)
        p.add_argument("--no-progress", action="store_true")

    p = lsub.add_parser("simulate", help="embedded simulator -> raw cases <sandbox>/<case>/ (Netfabb layout)")
    p.add_argument("--sandbox", required=True, help="folder of case folders (SandBox)")
    p.add_argument("--manifest", required=True, help="JSON summary of this shard's cases (nodes, seconds)")
    p.add_argument("--options", help="simulation settings as JSON: cases, seed, size, cell_size, layer_height, "
                   "fail_fraction, parts_dir")
    shards(p)
    p.set_defaults(func=cmd_lpbf_simulate)
    p = lsub.add_parser("extract", help="read every case's final step (EnSight Gold via VTK) -> <case>.npz + table")
    p.add_argument("--sandbox", required=True)
    p.add_argument("--out", required=True, help="folder for the extracted <case>.npz")
    p.add_argument("--table", required=True, help="csv: case, status, reason, detail, nodes, cells, steps, seconds")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_lpbf_extract)
    p = lsub.add_parser("filter", help="the paper's criteria -> statistics.csv, kept.txt, excluded.csv")
    p.add_argument("--extracted", required=True)
    p.add_argument("--table", required=True, help="the extraction table")
    p.add_argument("--out", required=True)
    p.add_argument("--options", help="thresholds as JSON (defaults: the paper's)")
    p.set_defaults(func=cmd_lpbf_filter)
    p = lsub.add_parser("sdf", help="the 11 SDF node features of the kept cases -> <case>.npz")
    p.add_argument("--extracted", required=True)
    p.add_argument("--kept", required=True, help="kept.txt of the filter step")
    p.add_argument("--out", required=True)
    p.add_argument("--table", required=True, help="csv of this shard's cases: case, nodes, seconds")
    shards(p)
    p.set_defaults(func=cmd_lpbf_sdf)
    p = lsub.add_parser("assemble", help="kept cases -> the standard format (seed-0 split) + cases.csv")
    p.add_argument("--extracted", required=True)
    p.add_argument("--kept", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--sdf-dir", help="add the SDF features as inputs")
    p.add_argument("--options", help="JSON: num_train, num_test, test_fraction, seed")
    p.set_defaults(func=cmd_lpbf_assemble)
    p = lsub.add_parser("render", help="true vs predicted z-displacement images, VTU files and a gallery")
    p.add_argument("--run", required=True, help="a trained run folder")
    p.add_argument("--dataset", required=True, help="the LPBF dataset folder (with cases.csv)")
    p.add_argument("--extracted", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cases", type=int, default=4, help="test cases to render, spread over the error ranking")
    p.add_argument("--gallery", help="also copy the gallery figure here")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_lpbf_render)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from flare.train.trainer import TrainingInterrupted

    try:
        args.func(args)
    except TrainingInterrupted as err:
        print(f"flare {args.command}: {err}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except (FileNotFoundError, KeyError, ValueError, TypeError, RuntimeError) as err:
        if args.verbose:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"flare {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0
