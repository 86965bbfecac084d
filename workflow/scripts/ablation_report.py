"""Rule ablation_report: one sweep's eval.json and model_stats.json files -> table and figure."""
import sys

from flare.report.ablation import ablation_frame, write_ablation

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects the object)
param = snakemake.wildcards.param  # noqa: F821
frame = ablation_frame(param, snakemake.params.values, snakemake.input.evals, snakemake.input.stats)  # noqa: F821
write_ablation(frame, param, snakemake.output.md, snakemake.output.csv,  # noqa: F821
               [snakemake.output.png, snakemake.output.pdf])  # noqa: F821
