"""Parameter counts of every registered model at the paper's settings, per dataset.

    python benchmarks/param_counts.py [--out results/bench/param_counts.csv]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from flare.models import MODELS, PAPER_DATASET_CHANNELS, paper_model

# Structured-grid sizes the conv variant needs (SPEC §4); it does not apply to point clouds.
GRIDS = {"darcy": [85, 85], "airfoil": [221, 51], "pipe": [129, 129]}


def count(name: str, dataset: str) -> int | None:
    extra = {}
    if name == "transolver_conv":
        if dataset not in GRIDS:
            return None
        extra["grid_shape"] = GRIDS[dataset]
    model = paper_model(name, dataset, **extra)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/bench/param_counts.csv")
    args = parser.parse_args()
    rows = [{"model": m, **{d: count(m, d) for d in PAPER_DATASET_CHANNELS}} for m in sorted(MODELS)]
    table = pd.DataFrame(rows).set_index("model")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out)
    print(table.map(lambda v: "–" if pd.isna(v) else f"{int(v):,}").to_markdown())


if __name__ == "__main__":
    main()
