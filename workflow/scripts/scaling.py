"""Rule scaling: time and memory of one attention layer against N -> csv and two figures."""
import sys

from flare.report.scaling import run_scaling, scaling_figures

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects the object)
cfg = snakemake.params.cfg  # noqa: F821
frame = run_scaling(cfg["points"], cfg["latents"], cfg["methods"], cfg["channels"], cfg["heads"],
                    cfg["precision"], max_softmax_points=cfg["max_softmax_points"], reps=cfg["reps"])
frame.to_csv(snakemake.output.csv, index=False)  # noqa: F821
scaling_figures(frame, [snakemake.output.time_png, snakemake.output.time_pdf],  # noqa: F821
                [snakemake.output.memory_png, snakemake.output.memory_pdf])  # noqa: F821
