"""Rule download_darcy: the published FNO Darcy files cannot be fetched by the workflow yet.

Fails with a message that says which file to place where (or how to generate the data instead).
"""
from pathlib import Path

target = Path(snakemake.output[0])  # noqa: F821 (snakemake injects the object)
message = (
    f"the Darcy file {target.name} is not present and automatic download is not available yet. "
    f"Place it at {target} (it is in FNO.tar.gz of the FNO data, also in the Hugging Face dataset "
    f"vedantpuri/PDESurrogates), or set datasets.darcy.source to 'generate' to build it with the "
    f"embedded FNO-recipe generator, or to 'local' with datasets.darcy.local_dir pointing at a folder "
    f"that holds it."
)
Path(snakemake.log[0]).write_text(message + "\n")  # noqa: F821
raise SystemExit(f"download_darcy: {message}")
