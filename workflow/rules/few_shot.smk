# The paper's few-shot table (§4.5, Tables 11 and 16; docs/method.md#few-shot-table, D25-D27):
#   every method of the dataset's `few_shot:` entry trained on each fraction of the training images
#   -> results/{dataset}/few_shot.parquet (+ .html: paper | ours | delta)
# The runs are ordinary train/evaluate jobs named <experiment>-fs<F> (common.smk: few_shot_overrides);
# every method of one fraction trains on the same images (data.few_shot_seed, independent of train.seed).


rule few_shot:
    """CLIP fine-tuning, TBPS-CLIP, Simplified, CoOp and CLIP-Adapter on each fraction, in one table."""
    input:
        metrics=get_few_shot_metrics,
        checkpoints=get_few_shot_checkpoints,
    output:
        table=report(
            "results/{dataset}/few_shot.parquet",
            caption="../report/few_shot_table.rst",
            category="Few-shot",
            labels={
                "dataset": "{dataset}",
                "experiment": "all",
                "item": "few-shot table (Parquet, download)",
            },
        ),
        page=report(
            "results/{dataset}/few_shot.html",
            caption="../report/few_shot_table.rst",
            category="Few-shot",
            labels={
                "dataset": "{dataset}",
                "experiment": "all",
                "item": "few-shot table, paper | ours",
            },
        ),
    log:
        "logs/few_shot/{dataset}.log",
    benchmark:
        "logs/benchmarks/few_shot/{dataset}.tsv"
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        methods=get_few_shot_methods,
    shell:
        "python -m tbps probe few-shot --methods {params.methods:q} --metrics {input.metrics:q}"
        " --checkpoints {input.checkpoints:q} --dataset {wildcards.dataset:q} --out {output.table:q}"
        " --html {output.page:q} > {log:q} 2>&1"
