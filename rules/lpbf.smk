# The LPBF chain (SPEC §5): raw cases -> extract -> filter -> sdf -> assemble -> results/datasets/lpbf/.
# Raw cases come from the embedded simulator (source: generate) or from your own SandBox folder
# (source: local, layout: sandbox). With the published samples (download, or local with layout
# published) the generic prepare rule converts them instead and none of these rules exist.
# Simulation and SDF features run as `shards` jobs over one shared folder; reruns resume.

if LPBF_CHAIN:
    LPBF_SHARDS = list(range(LPBF["shards"]))
    LPBF_SANDBOX = "results/raw/lpbf/SandBox" if LPBF["source"] == "generate" else LPBF["local_dir"]
    LPBF_SPLIT = {k: LPBF[k] for k in ("num_train", "num_test", "test_fraction", "seed") if LPBF[k] is not None}

    if LPBF["source"] == "generate":

        rule lpbf_simulate:
            output:
                "results/raw/lpbf/simulate/shard{shard}.json",
            log:
                "results/logs/lpbf/simulate_{shard}.log",
            params:
                sandbox=LPBF_SANDBOX,
                options=json.dumps(LPBF["simulate"], sort_keys=True),
                shards=LPBF["shards"],
            conda:
                "../environment.yml"
            shell:
                "python -m flare lpbf simulate --sandbox {params.sandbox} --manifest {output} "
                "--options {params.options:q} --shard {wildcards.shard} --shards {params.shards} > {log} 2>&1"

    rule lpbf_extract:
        input:
            expand("results/raw/lpbf/simulate/shard{shard}.json", shard=LPBF_SHARDS)
            if LPBF["source"] == "generate"
            else [],
        output:
            table="results/lpbf/extract.csv",
        log:
            "results/logs/lpbf/extract.log",
        params:
            sandbox=LPBF_SANDBOX,
        conda:
            "../environment.yml"
        shell:
            "python -m flare lpbf extract --sandbox {params.sandbox:q} --out results/lpbf/extracted "
            "--table {output.table} > {log} 2>&1"

    rule lpbf_filter:
        input:
            "results/lpbf/extract.csv",
        output:
            kept="results/lpbf/filter/kept.txt",
            statistics="results/lpbf/filter/statistics.csv",
            excluded="results/lpbf/filter/excluded.csv",
        log:
            "results/logs/lpbf/filter.log",
        params:
            thresholds=json.dumps(LPBF["filter"], sort_keys=True),
        conda:
            "../environment.yml"
        shell:
            "python -m flare -v lpbf filter --extracted results/lpbf/extracted --table {input} "
            "--out results/lpbf/filter --options {params.thresholds:q} > {log} 2>&1"

    rule lpbf_sdf:
        input:
            "results/lpbf/filter/kept.txt",
        output:
            "results/lpbf/sdf/shard{shard}.csv",
        log:
            "results/logs/lpbf/sdf_{shard}.log",
        params:
            shards=LPBF["shards"],
        conda:
            "../environment.yml"
        shell:
            "python -m flare lpbf sdf --extracted results/lpbf/extracted --kept {input} --out results/lpbf/sdf "
            "--table {output} --shard {wildcards.shard} --shards {params.shards} > {log} 2>&1"

    rule lpbf_assemble:
        input:
            kept="results/lpbf/filter/kept.txt",
            sdf=expand("results/lpbf/sdf/shard{shard}.csv", shard=LPBF_SHARDS) if LPBF["sdf_features"] else [],
        output:
            train="results/datasets/lpbf/train.h5",
            test="results/datasets/lpbf/test.h5",
            cases="results/datasets/lpbf/cases.csv",
        log:
            "results/logs/lpbf/assemble.log",
        params:
            sdf="--sdf-dir results/lpbf/sdf" if LPBF["sdf_features"] else "",
            options=json.dumps(LPBF_SPLIT, sort_keys=True),
        conda:
            "../environment.yml"
        shell:
            "python -m flare lpbf assemble --extracted results/lpbf/extracted --kept {input.kept} "
            "--out results/datasets/lpbf {params.sdf} --options {params.options:q} > {log} 2>&1"

    ruleorder: lpbf_assemble > prepare

    rule lpbf_timings:
        input:
            simulate=expand("results/raw/lpbf/simulate/shard{shard}.json", shard=LPBF_SHARDS)
            if LPBF["source"] == "generate"
            else [],
            extract="results/lpbf/extract.csv",
            sdf=expand("results/lpbf/sdf/shard{shard}.csv", shard=LPBF_SHARDS),
        output:
            "results/lpbf/timings.csv",
        log:
            "results/logs/lpbf/timings.log",
        conda:
            "../environment.yml"
        script:
            "../workflow/scripts/lpbf_timings.py"

    rule lpbf_render:
        input:
            model="results/runs/lpbf/{model}/seed{seed}/model.pt",
            test="results/datasets/lpbf/test.h5",
            cases="results/datasets/lpbf/cases.csv",
            extract="results/lpbf/extract.csv",
        output:
            gallery="results/lpbf/render/{model}/seed{seed}/gallery.png",
            summary="results/lpbf/render/{model}/seed{seed}/render.json",
        log:
            "results/logs/lpbf/render_{model}_{seed}.log",
        params:
            cases=LPBF["render"]["cases"],
        conda:
            "../environment.yml"
        shell:
            "python -m flare lpbf render --run results/runs/lpbf/{wildcards.model}/seed{wildcards.seed} "
            "--dataset results/datasets/lpbf --extracted results/lpbf/extracted "
            "--out results/lpbf/render/{wildcards.model}/seed{wildcards.seed} --cases {params.cases} > {log} 2>&1"

    if lpbf_gallery_run():

        rule lpbf_gallery:
            input:
                f"results/lpbf/render/{LPBF['render']['model']}/seed{SEEDS[0]}/gallery.png",
            output:
                report(
                    "results/figures/lpbf_gallery.png",
                    caption="../workflow/report/lpbf_gallery.rst",
                    category="LPBF",
                ),
            log:
                "results/logs/lpbf/gallery.log",
            shell:
                "cp {input} {output} 2> {log}"
