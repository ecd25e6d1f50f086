# Trained model + test shards -> retrieval metrics; cross-dataset and zero-shot rows.


rule evaluate:
    """Text->image (reported) and image->text metrics of the last checkpoint on the test split."""
    input:
        checkpoint="results/{dataset}/{experiment}/train/final.pt",
        shards=lambda wc: shard_manifest(wc.dataset, "test"),
    output:
        metrics="results/{dataset}/{experiment}/eval/test.parquet",
        examples="results/{dataset}/{experiment}/eval/test_examples.parquet",
    log:
        "logs/evaluate/{dataset}/{experiment}.log",
    benchmark:
        "logs/benchmarks/evaluate/{dataset}/{experiment}.tsv"
    conda:
        "../../envs/tbps.yaml"
    threads: 2
    resources:
        gpu=eval_gpus,
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m tbps evaluate --checkpoint {input.checkpoint} --shards {input.shards}"
        " --out {output.metrics} --examples {output.examples} --dataset {wildcards.dataset}"
        " --experiment {wildcards.experiment} --split test > {log} 2>&1"


rule evaluate_cross:
    """A model trained on one dataset, evaluated on another dataset's test split."""
    input:
        checkpoint="results/{train_dataset}/{experiment}/train/final.pt",
        shards=lambda wc: shard_manifest(wc.eval_dataset, "test"),
    output:
        metrics="results/cross/{train_dataset}/{experiment}/{eval_dataset}.parquet",
    wildcard_constraints:
        train_dataset="|".join(DATASETS),
        eval_dataset="|".join(DATASETS),
    log:
        "logs/evaluate_cross/{train_dataset}/{experiment}/{eval_dataset}.log",
    conda:
        "../../envs/tbps.yaml"
    threads: 2
    resources:
        gpu=eval_gpus,
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m tbps evaluate --checkpoint {input.checkpoint} --shards {input.shards}"
        " --out {output.metrics} --dataset {wildcards.eval_dataset}"
        " --experiment {wildcards.experiment}@{wildcards.train_dataset} --split test > {log} 2>&1"
