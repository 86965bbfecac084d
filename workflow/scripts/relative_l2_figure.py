"""Rule relative_l2_figure: eval.json files -> results/figures/relative_l2.{png,pdf}."""
import sys

from flare.report import collect_evaluations, relative_l2_figure

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects the object)
relative_l2_figure(collect_evaluations(snakemake.input), [snakemake.output.png, snakemake.output.pdf])  # noqa: F821
