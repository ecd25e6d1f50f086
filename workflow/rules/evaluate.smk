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


rule evaluate_zero_shot:
    """The pretrained weights without fine-tuning (extras.zero_shot): the 'zero_shot' row."""
    input:
        experiment=lambda wc: str(EXPERIMENT_DIR / f"{zero_shot_experiment(wc.dataset)}.yaml"),
        shards=lambda wc: shard_manifest(wc.dataset, "test"),
    output:
        metrics="results/{dataset}/zero_shot/eval/test.parquet",
    log:
        "logs/evaluate/{dataset}/zero_shot.log",
    conda:
        "../../envs/tbps.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m tbps evaluate --zero-shot {input.experiment} --shards {input.shards}"
        " --out {output.metrics} --dataset {wildcards.dataset} --experiment zero_shot --split test > {log} 2>&1"


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
