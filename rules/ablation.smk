# Ablation sweeps (config key `ablations`): one hyperparameter varied at a time, every value trained
# and evaluated as an ordinary run, each sweep aggregated into its own table and figure.


use rule train as train_ablation with:
    output:
        model="results/ablations/{dataset}/{model}/{param}/{value}/seed{seed}/model.pt",
        errors="results/ablations/{dataset}/{model}/{param}/{value}/seed{seed}/rel_error.json",
        stats="results/ablations/{dataset}/{model}/{param}/{value}/seed{seed}/model_stats.json",
    log:
        "results/logs/ablations/train/{dataset}/{model}/{param}/{value}/seed{seed}.log",
    params:
        run_dir=ablation_run_dir,
        settings=ablation_arguments,


use rule evaluate as evaluate_ablation with:
    input:
        model="results/ablations/{dataset}/{model}/{param}/{value}/seed{seed}/model.pt",
        test="results/datasets/{dataset}/test.h5",
    output:
        summary="results/ablations/{dataset}/{model}/{param}/{value}/seed{seed}/eval.json",
        per_sample="results/ablations/{dataset}/{model}/{param}/{value}/seed{seed}/per_sample.csv",
    log:
        "results/logs/ablations/evaluate/{dataset}/{model}/{param}/{value}/seed{seed}.log",
    params:
        run_dir=ablation_run_dir,


rule ablation_report:
    input:
        evals=lambda w: ablation_runs(w.param, "eval.json"),
        stats=lambda w: ablation_runs(w.param, "model_stats.json"),
    output:
        md=report(
            "results/tables/ablation_{param}.md",
            caption="../workflow/report/ablation.rst",
            category="Ablations",
        ),
        csv="results/tables/ablation_{param}.csv",
        png=report(
            "results/figures/ablation_{param}.png",
            caption="../workflow/report/ablation.rst",
            category="Ablations",
        ),
        pdf="results/figures/ablation_{param}.pdf",
    log:
        "results/logs/report/ablation_{param}.log",
    params:
        values=lambda w: ablation_values(w.param),
    conda:
        "../environment.yml"
    script:
        "../workflow/scripts/ablation_report.py"
