# Relative L2 of every trained run on its test split, and of the mean-field baseline.


rule evaluate:
    input:
        model="results/runs/{dataset}/{model}/seed{seed}/model.pt",
        test="results/datasets/{dataset}/test.h5",
    output:
        summary="results/runs/{dataset}/{model}/seed{seed}/eval.json",
        per_sample="results/runs/{dataset}/{model}/seed{seed}/per_sample.csv",
    log:
        "results/logs/evaluate/{dataset}/{model}/seed{seed}.log",
    params:
        run_dir=run_dir,
    threads: config["threads_per_run"]
    conda:
        "../environment.yml"
    shell:
        "python -m flare evaluate --run {params.run_dir} > {log} 2>&1"


rule mean_field:
    input:
        train="results/datasets/{dataset}/train.h5",
        test="results/datasets/{dataset}/test.h5",
    output:
        summary="results/runs/{dataset}/mean_field/eval.json",
        per_sample="results/runs/{dataset}/mean_field/per_sample.csv",
    log:
        "results/logs/evaluate/{dataset}/mean_field.log",
    conda:
        "../environment.yml"
    shell:
        "python -m flare mean-field --data-dir results/datasets/{wildcards.dataset} "
        "--out results/runs/{wildcards.dataset}/mean_field > {log} 2>&1"
