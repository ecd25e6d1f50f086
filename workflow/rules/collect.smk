# Per-run metrics -> results/{dataset}/metrics.parquet, report figures, cross-dataset table.
#
# results/{dataset}/metrics.parquet is the final target of a dataset, so `collect` also waits for
# that dataset's report figures: `snakemake results/X/metrics.parquet` then `snakemake --report`
# shows everything. (The figures are drawn from the per-run files, not from metrics.parquet.)
#
# Validation curves: training writes results/{dataset}/{experiment}/train/val_curve.parquet only
# when the dataset has a val split, and train.smk does not declare it. The rules below therefore
# depend on the declared train_log.parquet (written by the same job) and pass the train folder;
# `tbps collect --val-curves DIR` / `tbps plots training --val-curve DIR` read the curve when present.

CROSS = config.get("extras", {}).get("cross", {})


rule plot_training:
    """Loss terms, lr, logit scale, throughput per step and the per-epoch val curve of one run."""
    input:
        log="results/{dataset}/{experiment}/train/train_log.parquet",
    output:
        figure=report(
            "results/{dataset}/{experiment}/plots/training.png",
            caption="../report/training.rst",
            category="Training",
            labels={"dataset": "{dataset}", "experiment": "{experiment}", "item": "training curves"},
        ),
    params:
        train_dir=lambda wc, input: os.path.dirname(input.log),
    log:
        "logs/plots/{dataset}/{experiment}/training.log",
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m tbps plots training --log {input.log} --val-curve {params.train_dir}"
        ' --out {output.figure} --title "{wildcards.experiment} on {wildcards.dataset}" > {log} 2>&1'


rule plot_examples:
    """Sample queries and worst failures of one run with their top-5 images (read from the raw folder)."""
    input:
        examples="results/{dataset}/{experiment}/eval/test_examples.parquet",
        annotation=raw_annotation,
    output:
        figure=report(
            "results/{dataset}/{experiment}/plots/examples.png",
            caption="../report/examples.rst",
            category="Retrieval examples",
            labels={"dataset": "{dataset}", "experiment": "{experiment}", "item": "top-5 retrievals"},
        ),
    params:
        raw=lambda wc: raw_dir(wc.dataset),
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
    shell:
        "python -m tbps plots examples --examples {input.examples} --raw {params.raw} --out {output.figure}"
        ' --title "{wildcards.experiment} on {wildcards.dataset}: retrieval examples (test)" > {log} 2>&1'


rule plot_metrics:
    """R@1/R@5/R@10/mAP of every experiment of a dataset, with the paper's values and chance level."""
    input:
        metrics=lambda wc: expand(
            "results/{dataset}/{experiment}/eval/test.parquet",
            dataset=wc.dataset,
            experiment=evaluated_runs(wc.dataset),
        ),
        table="results/{dataset}/prepared/annotations.parquet",
    output:
        figure=report(
            "results/{dataset}/plots/metrics.png",
            caption="../report/metrics.rst",
            category="Metrics",
            labels={"dataset": "{dataset}", "experiment": "all", "item": "metrics vs paper"},
        ),
    log:
        "logs/plots/{dataset}/metrics.log",
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "python -m tbps plots metrics --inputs {input.metrics} --dataset {wildcards.dataset}"
        " --annotations {input.table} --out {output.figure} > {log} 2>&1"


rule collect:
    """Every run of a dataset (test metrics + per-epoch val curves) in one validated table."""
    input:
        metrics=lambda wc: expand(
            "results/{dataset}/{experiment}/eval/test.parquet",
            dataset=wc.dataset,
            experiment=evaluated_runs(wc.dataset),
        ),
        # Declared stand-ins for the undeclared val_curve.parquet beside them (see the top).
        train_logs=lambda wc: expand(
            "results/{dataset}/{experiment}/train/train_log.parquet",
            dataset=wc.dataset,
            experiment=trained_runs(wc.dataset),
        ),
        figures=lambda wc: [f"results/{wc.dataset}/plots/metrics.png"]
        + expand(
            "results/{dataset}/{experiment}/plots/{figure}.png",
            dataset=wc.dataset,
            experiment=trained_runs(wc.dataset),
            figure=["training", "examples"],
        ),
    output:
        metrics=report(
            "results/{dataset}/metrics.parquet",
            caption="../report/metrics_table.rst",
            category="Metrics",
            labels={"dataset": "{dataset}", "experiment": "all", "item": "metrics table (Parquet)"},
        ),
    params:
        val_curves=lambda wc, input: (
            "--val-curves " + " ".join(os.path.dirname(p) for p in input.train_logs)
            if has_split(wc.dataset, "val")
            else ""
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
        "python -m tbps collect --inputs {input.metrics} {params.val_curves} --out {output.metrics} > {log} 2>&1"


rule collect_cross:
    """Cross-dataset table: extras.cross.experiment trained on each `train` dataset, tested on each `eval`
    dataset. In-domain pairs reuse the regular evaluation (no second evaluation of the same model)."""
    input:
        metrics=[
            (
                f"results/{train}/{CROSS.get('experiment', 'tbps_clip')}/eval/test.parquet"
                if train == test
                else f"results/cross/{train}/{CROSS.get('experiment', 'tbps_clip')}/{test}.parquet"
            )
            for train in CROSS.get("train", [])
            for test in CROSS.get("eval", [])
        ],
    output:
        metrics=report(
            "results/cross/metrics.parquet",
            caption="../report/cross_metrics.rst",
            category="Metrics",
            labels={"dataset": "cross-dataset", "experiment": "all", "item": "metrics table (Parquet)"},
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
        "python -m tbps collect --inputs {input.metrics} --out {output.metrics} > {log} 2>&1"
