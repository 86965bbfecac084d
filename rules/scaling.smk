# The scaling experiment (SPEC §7): one attention layer timed against N on the device the job gets.


rule scaling:
    output:
        csv="results/scaling/scaling.csv",
        time_png=report(
            "results/figures/scaling_time.png",
            caption="../workflow/report/scaling.rst",
            category="Scaling",
        ),
        time_pdf="results/figures/scaling_time.pdf",
        memory_png=report(
            "results/figures/scaling_memory.png",
            caption="../workflow/report/scaling.rst",
            category="Scaling",
        ),
        memory_pdf="results/figures/scaling_memory.pdf",
    log:
        "results/logs/report/scaling.log",
    params:
        cfg=config["scaling"],
    threads: config["threads_per_run"]
    resources:
        gpu=1 if config["scaling"]["gpu"] else 0,
    conda:
        "../environment.yml"
    script:
        "../workflow/scripts/scaling.py"
