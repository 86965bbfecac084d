"""Ablation sweeps: test relative L2 and time per epoch against one swept hyperparameter."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def ablation_frame(param: str, values: Sequence, eval_files: Sequence[str | Path],
                   stats_files: Sequence[str | Path]) -> pd.DataFrame:
    """One row per run: the swept value, seed, test relative L2, seconds per epoch, parameters.

    ``eval_files[i]`` and ``stats_files[i]`` belong to the same run, whose swept value is ``values[i]``.
    """
    if not (len(values) == len(eval_files) == len(stats_files)):
        raise ValueError("values, eval_files and stats_files must have one entry per run")
    rows = []
    for value, eval_file, stats_file in zip(values, eval_files, stats_files):
        evaluation = json.loads(Path(eval_file).read_text())
        stats = json.loads(Path(stats_file).read_text())
        rows.append({param: value, "seed": evaluation["seed"], "test_rel_l2": evaluation["test_rel_l2"],
                     "seconds_per_epoch": stats["seconds_per_epoch"], "parameters": stats["parameters"]})
    return pd.DataFrame(rows)


def ablation_table(frame: pd.DataFrame, param: str) -> pd.DataFrame:
    """Mean and std over seeds per swept value."""
    table = frame.groupby(param).agg(
        test_rel_l2_mean=("test_rel_l2", "mean"), test_rel_l2_std=("test_rel_l2", "std"),
        seconds_per_epoch=("seconds_per_epoch", "median"), parameters=("parameters", "first"),
        seeds=("seed", "count"),
    ).reset_index()
    table["test_rel_l2_std"] = table["test_rel_l2_std"].fillna(0.0)
    return table


def write_ablation(frame: pd.DataFrame, param: str, md: str | Path, csv: str | Path,
                   figures: Sequence[str | Path]) -> None:
    table = ablation_table(frame, param)
    table.to_csv(csv, index=False)
    Path(md).write_text(f"Ablation over `{param}`: test relative L2 (mean ± std over seeds) and median "
                        f"seconds per epoch.\n\n{table.to_markdown(index=False)}\n")
    fig, (ax_err, ax_time) = plt.subplots(1, 2, figsize=(8, 3.2))
    ax_err.errorbar(table[param], table["test_rel_l2_mean"], yerr=table["test_rel_l2_std"], marker="o", capsize=3)
    ax_err.set_yscale("log")
    ax_err.set_ylabel("test relative L2")
    ax_time.plot(table[param], table["seconds_per_epoch"], marker="o")
    ax_time.set_ylabel("seconds per epoch")
    for ax in (ax_err, ax_time):
        ax.set_xlabel(param)
        if (table[param] > 0).all() and table[param].max() / table[param].min() >= 8:
            ax.set_xscale("log", base=2)
    fig.tight_layout()
    for out in figures:
        fig.savefig(out, dpi=150)
    plt.close(fig)
