# Per-run metrics -> report figures and tables (the `plots` stage), results/{dataset}/metrics.parquet
# (the `collect` stage), the cross-dataset table.
#
# results/{dataset}/metrics.parquet is the final target of a dataset, so `collect` also waits for
# that dataset's report pages: `snakemake results/X/metrics.parquet` then `snakemake --report`
# shows everything. (The pages are drawn from the per-run files, not from metrics.parquet.) It
# also waits for the stamps of the `shards` and `plots` stages, so that every stage name is a
# rule in the DAG of the final target and `--until STAGE` works (README, "Rerunning one stage").


rule plot_training:
    """Loss terms, lr, logit scale, throughput per step and the per-epoch val curve of one run."""
    input:
        log="results/{dataset}/{experiment}/train/train_log.parquet",
        val_curve="results/{dataset}/{experiment}/train/val_curve.parquet",
    output:
        figure=report(
            "results/{dataset}/{experiment}/plots/training.png",
            caption="../report/training.rst",
            category="Training",
            labels={
                "dataset": "{dataset}",
                "experiment": "{experiment}",
                "item": "training curves",
            },
        ),
    log:
        "logs/plots/{dataset}/{experiment}/training.log",
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        title=get_training_title,
    shell:
        "python -m tbps plots training --log {input.log:q} --val-curve {input.val_curve:q}"
        " --out {output.figure:q} --title {params.title:q} > {log:q} 2>&1"


rule plot_examples:
    """Sample queries and worst failures of one run with their top-5 images (read from the raw folder)."""
    input:
        examples="results/{dataset}/{experiment}/eval/test_examples.parquet",
        annotation=get_raw_annotation,
    output:
        figure=report(
            "results/{dataset}/{experiment}/plots/examples.png",
            caption="../report/examples.rst",
            category="Retrieval examples",
            labels={
                "dataset": "{dataset}",
                "experiment": "{experiment}",
                "item": "top-5 retrievals",
            },
        ),
    log:
        "logs/plots/{dataset}/{experiment}/examples.log",
    benchmark:
        "logs/benchmarks/plots/{dataset}/{experiment}/examples.tsv"
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        raw=get_raw_dir,
        title=get_examples_title,
    shell:
        "python -m tbps plots examples --examples {input.examples:q} --raw {params.raw:q}"
        " --out {output.figure:q} --title {params.title:q} > {log:q} 2>&1"


rule plot_train_log:
    """The per-step training log as an HTML table (the report opens it; the Parquet is the data)."""
    input:
        log="results/{dataset}/{experiment}/train/train_log.parquet",
    output:
        page=report(
            "results/{dataset}/{experiment}/train/train_log.html",
            caption="../report/train_log.rst",
            category="Training",
            labels={
                "dataset": "{dataset}",
                "experiment": "{experiment}",
                "item": "per-step log",
            },
        ),
    log:
        "logs/plots/{dataset}/{experiment}/train_log.log",
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        title=get_train_log_title,
    shell:
        "python -m tbps plots table --table {input.log:q} --out {output.page:q}"
        " --title {params.title:q} > {log:q} 2>&1"


rule plot_metrics:
    """R@1/R@5/R@10/mAP/mINP of every experiment of a dataset, with the paper's values and chance
    level; the same numbers as the report's landing-page table (headline.rst, see workflow.rst).
    """
    input:
        metrics=get_run_metrics,
        table="results/{dataset}/prepared/annotations.parquet",
    output:
        figure=report(
            "results/{dataset}/plots/metrics.png",
            caption="../report/metrics.rst",
            category="Metrics",
            labels={
                "dataset": "{dataset}",
                "experiment": "all",
                "item": "metrics vs paper",
            },
        ),
        headline="results/{dataset}/plots/headline.rst",
    log:
        "logs/plots/{dataset}/metrics.log",
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "python -m tbps plots metrics --inputs {input.metrics:q} --dataset {wildcards.dataset:q}"
        " --annotations {input.table:q} --out {output.figure:q}"
        " --headline {output.headline:q} > {log:q} 2>&1"


rule plots:
    """The `plots` stage of a dataset: every report figure and table is there (a stamp)."""
    input:
        get_report_pages,
    output:
        touch("results/{dataset}/plots/complete.stamp"),
    localrule: True


rule collect:
    """Every run of a dataset (test metrics + per-epoch val curves) in one validated table, and
    the table as an HTML page."""
    input:
        metrics=get_run_metrics,
        val_curves=get_val_curves,
        # The stages that no later rule reads as a whole: --until shards / --until plots.
        stages=[
            "results/{dataset}/shards/complete.stamp",
            "results/{dataset}/plots/complete.stamp",
        ],
    output:
        metrics=report(
            "results/{dataset}/metrics.parquet",
            caption="../report/metrics_table.rst",
            category="Metrics",
            labels={
                "dataset": "{dataset}",
                "experiment": "all",
                "item": "metrics table (Parquet, download)",
            },
        ),
        page=report(
            "results/{dataset}/metrics.html",
            caption="../report/metrics_table.rst",
            category="Metrics",
            labels={
                "dataset": "{dataset}",
                "experiment": "all",
                "item": "metrics table",
            },
        ),
    log:
        "logs/collect/{dataset}.log",
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m tbps collect --inputs {input.metrics:q} --val-curves {input.val_curves:q}"
        " --out {output.metrics:q} --html {output.page:q} > {log:q} 2>&1"


rule collect_cross:
    """Cross-dataset table: extras.cross.experiment trained on each `train` dataset, tested on each
    `eval` dataset. In-domain pairs reuse the regular evaluation (no second evaluation of the same model).
    """
    input:
        metrics=get_cross_metrics,
    output:
        metrics=report(
            "results/cross/metrics.parquet",
            caption="../report/cross_metrics.rst",
            category="Metrics",
            labels={
                "dataset": "cross-dataset",
                "experiment": "all",
                "item": "metrics table (Parquet, download)",
            },
        ),
        page=report(
            "results/cross/metrics.html",
            caption="../report/cross_metrics.rst",
            category="Metrics",
            labels={
                "dataset": "cross-dataset",
                "experiment": "all",
                "item": "metrics table",
            },
        ),
    log:
        "logs/collect/cross.log",
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m tbps collect --inputs {input.metrics:q} --out {output.metrics:q}"
        " --html {output.page:q} > {log:q} 2>&1"
