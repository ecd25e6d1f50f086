# The paper's model-compression probe (§3.5, App. A.4 and B.2; docs/method.md D22-D24):
#   module importance of a trained run  -> results/{dataset}/{experiment}/probe/importance.parquet (+ .html)
#   its heat maps                       -> results/{dataset}/{experiment}/plots/importance.png
#   frozen vs dropped text layers       -> results/{dataset}/compression.parquet (+ .html, plots/compression.png)
# The compressed runs are ordinary train/evaluate jobs named <preset>-freeze<x> / <preset>-drop<x>;
# common.smk gives them their layers (get_run_overrides) and the importance table as an input
# (get_importance_input); the input functions of the rules below are in common.smk too.


rule probe_importance:
    """C1 and C2 of every self-attention, feed-forward and whole layer of both towers of a trained run."""
    input:
        checkpoint="results/{dataset}/{experiment}/train/final.pt",
        shards=get_probe_shards,
        initial_weights=get_probe_initial_weights,
    output:
        table=report(
            "results/{dataset}/{experiment}/probe/importance.parquet",
            caption="../report/importance_table.rst",
            category="Compression probe",
            labels={
                "dataset": "{dataset}",
                "experiment": "{experiment}",
                "item": "module importance (Parquet, download)",
            },
        ),
        page=report(
            "results/{dataset}/{experiment}/probe/importance.html",
            caption="../report/importance_table.rst",
            category="Compression probe",
            labels={
                "dataset": "{dataset}",
                "experiment": "{experiment}",
                "item": "module importance",
            },
        ),
        summary="results/{dataset}/{experiment}/probe/importance.json",
    log:
        "logs/probe/{dataset}/{experiment}/importance.log",
    benchmark:
        "logs/benchmarks/probe/{dataset}/{experiment}/importance.tsv"
    conda:
        "../../envs/tbps.yaml"
    threads: 2
    resources:
        gpu=get_gpus,
        mem_mb=16000,
        runtime=120,
    params:
        split=get_probe_split,
        theta0=probe_setting("theta0"),
        epsilon=probe_setting("epsilon"),
        alpha_step=probe_setting("alpha_step"),
    shell:
        "python -m tbps probe importance --checkpoint {input.checkpoint:q} --shards {input.shards:q}"
        " --out {output.table:q} --html {output.page:q} --summary {output.summary:q} --dataset {wildcards.dataset:q}"
        " --experiment {wildcards.experiment:q} --split {params.split:q} --theta0 {params.theta0:q}"
        " --epsilon {params.epsilon:q} --alpha-step {params.alpha_step:q} > {log:q} 2>&1"


rule plot_importance:
    """Heat maps of C1 and C2 per tower: layers across, self-attention / feed-forward / whole layer down."""
    input:
        table="results/{dataset}/{experiment}/probe/importance.parquet",
    output:
        figure=report(
            "results/{dataset}/{experiment}/plots/importance.png",
            caption="../report/importance.rst",
            category="Compression probe",
            labels={
                "dataset": "{dataset}",
                "experiment": "{experiment}",
                "item": "module importance heat maps",
            },
        ),
    log:
        "logs/plots/{dataset}/{experiment}/importance.log",
    benchmark:
        "logs/benchmarks/plots/{dataset}/{experiment}/importance.tsv"
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m tbps probe heatmaps --importance {input.table:q} --out {output.figure:q} > {log:q} 2>&1"


rule compression:
    """Each preset with x text layers frozen or dropped, retrained and tested, in one table and figure."""
    input:
        metrics=get_compression_metrics,
        checkpoints=get_compression_checkpoints,
        # The importance heat maps belong to the same report section: built with the table.
        heatmaps=get_compression_heatmaps,
    output:
        table=report(
            "results/{dataset}/compression.parquet",
            caption="../report/compression_table.rst",
            category="Compression probe",
            labels={
                "dataset": "{dataset}",
                "experiment": "all",
                "item": "frozen vs dropped (Parquet, download)",
            },
        ),
        page=report(
            "results/{dataset}/compression.html",
            caption="../report/compression_table.rst",
            category="Compression probe",
            labels={
                "dataset": "{dataset}",
                "experiment": "all",
                "item": "frozen vs dropped",
            },
        ),
        figure=report(
            "results/{dataset}/plots/compression.png",
            caption="../report/compression.rst",
            category="Compression probe",
            labels={
                "dataset": "{dataset}",
                "experiment": "all",
                "item": "R@1 vs x, frozen vs dropped",
            },
        ),
    log:
        "logs/probe/{dataset}/compression.log",
    benchmark:
        "logs/benchmarks/probe/{dataset}/compression.tsv"
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "python -m tbps probe compression --metrics {input.metrics:q} --checkpoints {input.checkpoints:q}"
        " --dataset {wildcards.dataset:q} --out {output.table:q} --figure {output.figure:q} --html {output.page:q} > {log:q} 2>&1"
