"""Rule lpbf_timings: per case nodes and seconds of simulation, extraction and SDF features -> csv."""
import sys

from flare.am.chain import timing_table

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects the object)
table = timing_table(snakemake.input.simulate, snakemake.input.extract, snakemake.input.sdf)  # noqa: F821
table.to_csv(snakemake.output[0], index=False)  # noqa: F821
