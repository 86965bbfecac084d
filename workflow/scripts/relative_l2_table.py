"""Rule relative_l2_table: eval.json files -> results/tables/relative_l2.{md,csv,tex}."""
import sys

from flare.report import collect_evaluations, relative_l2_table, write_tables

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects the object)
table = relative_l2_table(collect_evaluations(snakemake.input))  # noqa: F821
write_tables(table, snakemake.output.md, snakemake.output.csv, snakemake.output.tex)  # noqa: F821
