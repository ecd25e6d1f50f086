# Trained model + test shards -> retrieval metrics; cross-dataset and zero-shot rows.


rule evaluate:
    """Text->image (reported) and image->text metrics of the last checkpoint on the test split."""
    input:
        checkpoint="results/{dataset}/{experiment}/train/final.pt",
        shards="results/{dataset}/shards/test/manifest.json",
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
        gpu=get_gpus,
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m tbps evaluate --checkpoint {input.checkpoint:q} --shards {input.shards:q}"
        " --out {output.metrics:q} --examples {output.examples:q}"
        " --dataset {wildcards.dataset:q} --experiment {wildcards.experiment:q}"
        " --split test > {log:q} 2>&1"


rule evaluate_zero_shot:
    """The pretrained weights without fine-tuning (extras.zero_shot): the 'zero_shot' row."""
    input:
        experiment=get_zero_shot_experiment_file,
        shards="results/{dataset}/shards/test/manifest.json",
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
        "python -m tbps evaluate --zero-shot {input.experiment:q} --shards {input.shards:q}"
        " --out {output.metrics:q} --dataset {wildcards.dataset:q} --experiment zero_shot"
        " --split test > {log:q} 2>&1"


rule evaluate_cross:
    """A model trained on one dataset, evaluated on another dataset's test split."""
    input:
        checkpoint="results/{train_dataset}/{experiment}/train/final.pt",
        shards="results/{eval_dataset}/shards/test/manifest.json",
    output:
        metrics="results/cross/{train_dataset}/{experiment}/{eval_dataset}.parquet",
    log:
        "logs/evaluate_cross/{train_dataset}/{experiment}/{eval_dataset}.log",
    wildcard_constraints:
        train_dataset="|".join(DATASETS),
        eval_dataset="|".join(DATASETS),
    conda:
        "../../envs/tbps.yaml"
    threads: 2
    resources:
        gpu=get_gpus,
        mem_mb=8000,
        runtime=60,
    params:
        run=get_cross_run_name,
    shell:
        "python -m tbps evaluate --checkpoint {input.checkpoint:q} --shards {input.shards:q}"
        " --out {output.metrics:q} --dataset {wildcards.eval_dataset:q}"
        " --experiment {params.run:q}"
        " --split test > {log:q} 2>&1"
