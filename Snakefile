# FLARE benchmark workflow: data -> train -> evaluate -> tables and figures.
#   snakemake --cores all                                  paper reproduction (config/config.yaml)
#   snakemake --cores all --configfile config/demo.yaml    offline demo on generated data
# A config file given on the command line replaces config/config.yaml instead of merging into it.
from snakemake.utils import min_version

min_version("9.0")

if not workflow.config_settings.configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/lpbf.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"
include: "rules/ablation.smk"
include: "rules/scaling.smk"


rule all:
    input:
        final_targets(),
    default_target: True
