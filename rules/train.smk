# One job per (dataset, model, seed). A job restarted after an interruption resumes from the
# latest checkpoint in its run folder. `flare launch` gives the job its own GPUs (a lock per GPU)
# and runs torchrun when it has more than one.


rule train:
    input:
        train="results/datasets/{dataset}/train.h5",
        test="results/datasets/{dataset}/test.h5",
    output:
        model="results/runs/{dataset}/{model}/seed{seed}/model.pt",
        errors="results/runs/{dataset}/{model}/seed{seed}/rel_error.json",
        stats="results/runs/{dataset}/{model}/seed{seed}/model_stats.json",
    log:
        "results/logs/train/{dataset}/{model}/seed{seed}.log",
    params:
        run_dir=run_dir,
        settings=train_arguments,
    threads: config["threads_per_run"]
    resources:
        gpu=config["gpus_per_run"],
    conda:
        "../environment.yml"
    shell:
        "python -m flare launch --gpus {resources.gpu} -- train --data-dir results/datasets/{wildcards.dataset} "
        "--model {wildcards.model} --seed {wildcards.seed} "
        "--out {params.run_dir} {params.settings} > {log} 2>&1"
