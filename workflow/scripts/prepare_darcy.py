"""Rule prepare_darcy: FNO-layout .mat files -> results/datasets/darcy/{train,test}.h5."""
import sys
from pathlib import Path

from flare.data.darcy import prepare

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake injects the object)
prepare(
    snakemake.input.train,  # noqa: F821
    snakemake.input.test,  # noqa: F821
    Path(snakemake.output.train).parent,  # noqa: F821
    subsample=snakemake.params.subsample,  # noqa: F821
    num_train=snakemake.params.num_train,  # noqa: F821
    num_test=snakemake.params.num_test,  # noqa: F821
)
