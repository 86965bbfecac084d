# Raw data (generated, downloaded or a local folder) -> the standard format results/datasets/<name>/.
# Which source a dataset uses is its config entry's `source`. Downloads share one cache,
# resources/hub/ (elasticity, airfoil and pipe come from one archive), and each dataset's manifest
# resources/<dataset>/download.json lists its files.


rule generate_raw:
    output:
        "results/raw/{dataset}/generate.json",
    log:
        "results/logs/data/generate_{dataset}.log",
    params:
        options=dataset_options,
    threads: 8
    conda:
        "../environment.yml"
    shell:
        "python -m flare data generate --dataset {wildcards.dataset} --raw-dir results/raw/{wildcards.dataset} "
        "--options {params.options:q} --workers {threads} > {log} 2>&1"


rule download_raw:
    output:
        "resources/{dataset}/download.json",
    log:
        "results/logs/data/download_{dataset}.log",
    params:
        variant=variant_option,
        base_url=config["download"]["base_url"],
        checksums=config["download"]["checksums"],
    conda:
        "../environment.yml"
    shell:
        "python -m flare data fetch --dataset {wildcards.dataset} --raw-dir resources/hub "
        "--manifest {output} --base-url {params.base_url:q} --checksums {params.checksums:q} --no-progress {params.variant} "
        "> {log} 2>&1"


rule prepare:
    input:
        raw_manifest,
    output:
        train="results/datasets/{dataset}/train.h5",
        test="results/datasets/{dataset}/test.h5",
    log:
        "results/logs/data/prepare_{dataset}.log",
    params:
        raw=raw_location,
        options=dataset_options,
    conda:
        "../environment.yml"
    shell:
        "python -m flare data prepare --dataset {wildcards.dataset} {params.raw} "
        "--out results/datasets/{wildcards.dataset} --options {params.options:q} > {log} 2>&1"
