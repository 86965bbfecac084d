"""Figures: the relative-L2 bar chart (log scale, per dataset)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from flare.report.tables import display_name  # noqa: E402


def relative_l2_figure(runs: pd.DataFrame, outputs: list[str | Path]) -> None:
    """Bars of test relative L2 per dataset and model (error bars: std over seeds), log scale."""
    data = runs.assign(model=runs["model"].map(display_name))
    datasets = list(dict.fromkeys(data["dataset"]))
    width = max(4.5, 2.5 + 0.5 * len(datasets) * data["model"].nunique())
    fig, ax = plt.subplots(figsize=(width, 3.6))
    sns.barplot(data=data, x="dataset", y="test_rel_l2", hue="model", order=datasets,
                errorbar="sd", capsize=0.1, ax=ax)
    ax.set_yscale("log")
    ax.set_xlabel("")
    ax.set_ylabel("test relative L2")
    ax.legend(title=None, fontsize="small", frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    sns.despine(fig)
    fig.tight_layout()
    for out in outputs:
        fig.savefig(out, dpi=150)
    plt.close(fig)
