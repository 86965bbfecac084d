# Raw data (generated, downloaded or local) -> the standard format results/datasets/<name>/.


rule generate_darcy:
    output:
        "results/raw/darcy/piececonst_r{resolution}_N{samples}_smooth{smooth}.mat",
    log:
        "results/logs/generate_darcy/r{resolution}_N{samples}_smooth{smooth}.log",
    params:
        seed=lambda w: dataset_config("darcy")["seed"] + int(w.smooth),
    threads: 8
    wildcard_constraints:
        resolution=r"\d+",
        samples=r"\d+",
        smooth="[12]",
    conda:
        "../environment.yml"
    shell:
        "python -m flare data generate-darcy --out {output} --resolution {wildcards.resolution} "
        "--samples {wildcards.samples} --seed {params.seed} --workers {threads} > {log} 2>&1"


rule download_darcy:
    output:
        "resources/darcy/piececonst_r{resolution}_N{samples}_smooth{smooth}.mat",
    log:
        "results/logs/download_darcy/r{resolution}_N{samples}_smooth{smooth}.log",
    wildcard_constraints:
        resolution=r"\d+",
        samples=r"\d+",
        smooth="[12]",
    conda:
        "../environment.yml"
    script:
        "../workflow/scripts/download_darcy.py"


rule prepare_darcy:
    input:
        unpack(darcy_raw_files),
    output:
        train="results/datasets/darcy/train.h5",
        test="results/datasets/darcy/test.h5",
    log:
        "results/logs/prepare/darcy.log",
    params:
        subsample=lambda w: dataset_config("darcy")["subsample"],
        num_train=lambda w: dataset_config("darcy")["num_train"],
        num_test=lambda w: dataset_config("darcy")["num_test"],
    conda:
        "../environment.yml"
    script:
        "../workflow/scripts/prepare_darcy.py"
