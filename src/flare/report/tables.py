"""The relative-L2 table: mean ± std over seeds per (model, dataset), beside the paper's numbers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd

# SPEC §6: test relative L2 × 10⁻³ reported in the FLARE paper.
PAPER_REL_L2_E3: dict[str, dict[str, float]] = {
    "transformer": {"elasticity": 5.37, "darcy": 4.38, "airfoil": 6.28},
    "perceiver": {"elasticity": 28.0, "darcy": 20.6, "airfoil": 7.65, "pipe": 6.90, "drivaerml": 248, "lpbf": 23.1},
    "gnot": {"elasticity": 13.3, "darcy": 16.9, "airfoil": 103, "pipe": 5.89, "drivaerml": 115, "lpbf": 24.3},
    "lno": {"elasticity": 9.25, "darcy": 7.64, "airfoil": 17.8, "pipe": 8.10, "drivaerml": 146, "lpbf": 24.7},
    "transolver": {"elasticity": 6.40, "darcy": 18.6, "airfoil": 8.24, "pipe": 4.87, "drivaerml": 70.5, "lpbf": 20.4},
    "transolver_conv": {"darcy": 5.94, "airfoil": 5.50, "pipe": 3.90},
    "flare": {"elasticity": 3.38, "darcy": 5.10, "airfoil": 4.28, "pipe": 2.85, "drivaerml": 60.8, "lpbf": 18.5},
}

DISPLAY_NAMES = {  # also the row order of the tables: the paper's, then ours
    "transformer": "softmax attention", "perceiver": "PerceiverIO", "gnot": "GNOT", "lno": "LNO",
    "transolver": "Transolver", "transolver_conv": "Transolver (conv)", "flare": "FLARE",
    "mesh_gnn": "mesh GNN", "mean_field": "mean field",
}


def display_name(model: str) -> str:
    return DISPLAY_NAMES.get(model, model)


def collect_evaluations(eval_files: Iterable[str | Path]) -> pd.DataFrame:
    """One row per evaluated run: dataset, model, seed, train_rel_l2, test_rel_l2."""
    rows = []
    for path in eval_files:
        data = json.loads(Path(path).read_text())
        missing = {"dataset", "model", "seed", "test_rel_l2"} - set(data)
        if missing:
            raise KeyError(f"{path}: evaluation file lacks {sorted(missing)}")
        rows.append({k: data.get(k) for k in ("dataset", "model", "seed", "train_rel_l2", "test_rel_l2")})
    if not rows:
        raise ValueError("no evaluation files to aggregate")
    return pd.DataFrame(rows)


def relative_l2_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Long table: one row per (model, dataset) with mean, std and count over seeds (relative L2 × 10⁻³)
    and the paper's value where it has one."""
    grouped = runs.groupby(["model", "dataset"], sort=False)["test_rel_l2"]
    table = grouped.agg(["mean", "std", "count"]).reset_index()
    table["std"] = table["std"].fillna(0.0)
    table = table.rename(columns={"mean": "rel_l2_mean", "std": "rel_l2_std", "count": "seeds"})
    table["rel_l2_e3_mean"] = table["rel_l2_mean"] * 1e3
    table["rel_l2_e3_std"] = table["rel_l2_std"] * 1e3
    table["paper_rel_l2_e3"] = [PAPER_REL_L2_E3.get(m, {}).get(d) for m, d in zip(table["model"], table["dataset"])]
    return table


def _wide(table: pd.DataFrame, latex: bool = False) -> pd.DataFrame:
    pm = r" $\pm$ " if latex else " ± "

    def cell(row) -> str:
        text = f"{row.rel_l2_e3_mean:.3g}" + (f"{pm}{row.rel_l2_e3_std:.2g}" if row.seeds > 1 else "")
        if row.paper_rel_l2_e3 is not None and not pd.isna(row.paper_rel_l2_e3):
            text += f" (paper {row.paper_rel_l2_e3:g})"
        return text

    wide = table.assign(cell=table.apply(cell, axis=1), model=table["model"].map(display_name))
    wide = wide.pivot(index="model", columns="dataset", values="cell").fillna("–")
    order = [display_name(m) for m in DISPLAY_NAMES if display_name(m) in wide.index]
    wide = wide.reindex(order + sorted(set(wide.index) - set(order)))  # the paper's order, mean field last
    wide = wide[list(dict.fromkeys(table["dataset"]))]
    wide.index.name = "model"
    wide.columns.name = None
    return wide


def write_tables(table: pd.DataFrame, md: str | Path, csv: str | Path, tex: str | Path) -> None:
    """Markdown and LaTeX (models × datasets, mean ± std over seeds, × 10⁻³) and the long CSV."""
    table.to_csv(csv, index=False)
    caption = ("Test relative L2 error ×10⁻³, mean ± std over seeds (no ± with one seed); the paper's value "
               "in parentheses (SPEC §6).")
    Path(md).write_text(f"{caption}\n\n{_wide(table).to_markdown()}\n")
    Path(tex).write_text(_wide(table, latex=True).to_latex(
        caption=caption.replace("×10⁻³", r"$\times 10^{-3}$").replace("±", r"$\pm$").replace("§", r"\S"),
        label="tab:relative_l2", escape=False))
