# Aggregation of all evaluations into the paper's table and bar chart. Table and figure are separate
# jobs so that asking for one file rebuilds only that file.


rule relative_l2_table:
    input:
        evaluation_files(),
    output:
        md=report(
            "results/tables/relative_l2.md",
            caption="../workflow/report/relative_l2_table.rst",
            category="Accuracy",
        ),
        csv="results/tables/relative_l2.csv",
        tex="results/tables/relative_l2.tex",
    log:
        "results/logs/report/relative_l2_table.log",
    conda:
        "../environment.yml"
    script:
        "../workflow/scripts/relative_l2_table.py"


rule relative_l2_figure:
    input:
        evaluation_files(),
    output:
        png=report(
            "results/figures/relative_l2.png",
            caption="../workflow/report/relative_l2_figure.rst",
            category="Accuracy",
        ),
        pdf="results/figures/relative_l2.pdf",
    log:
        "results/logs/report/relative_l2_figure.log",
    conda:
        "../environment.yml"
    script:
        "../workflow/scripts/relative_l2_figure.py"
