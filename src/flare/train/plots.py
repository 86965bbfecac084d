"""Training curves of a run folder: loss, gradient norm and learning rate per epoch."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def plot_history(history: list[dict], run_dir: str | Path) -> list[Path]:
    """Write ``losses.png`` (train loss, train and test relative L2), ``grad_norm.png`` and
    ``learning_rate.png`` (all log scale) into ``run_dir``."""
    run_dir = Path(run_dir)
    frame = pd.DataFrame(history)
    panels = {
        "losses.png": [("train_loss", "train loss"), ("train_rel_l2", "train rel. L2"),
                       ("test_rel_l2", "test rel. L2")],
        "grad_norm.png": [("grad_norm", "gradient norm (before clipping)")],
        "learning_rate.png": [("learning_rate", "learning rate (end of epoch)")],
    }
    written = []
    for name, series in panels.items():
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for column, label in series:
            values = frame[column].dropna() if column in frame else []
            if len(values):
                ax.plot(frame.loc[values.index, "epoch"], values, marker="o" if len(values) < 20 else None,
                        markersize=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.legend(frameon=False, fontsize="small")
        fig.tight_layout()
        fig.savefig(run_dir / name, dpi=120)
        plt.close(fig)
        written.append(run_dir / name)
    return written
