# Shards -> fine-tuned model per (dataset, experiment).


rule train:
    """Fine-tune one experiment on one dataset (torchrun over the job's GPUs when it has several)."""
    input:
        unpack(train_inputs),
    output:
        final="results/{dataset}/{experiment}/train/final.pt",
        log_table=report(
            "results/{dataset}/{experiment}/train/train_log.parquet",
            caption="../report/train_log.rst",
            category="Training",
            labels={"dataset": "{dataset}", "experiment": "{experiment}", "item": "per-step log"},
        ),
    params:
        out=lambda wc, output: os.path.dirname(output.final),
        val=lambda wc, input: f"--val {input.val}" if "val" in input.keys() else "",
        launcher=launcher,
        overrides=get_run_overrides,
    log:
        "logs/train/{dataset}/{experiment}.log",
    benchmark:
        "logs/benchmarks/train/{dataset}/{experiment}.tsv"
    conda:
        "../../envs/tbps.yaml"
    threads: 2
    resources:
        gpu=train_gpus,
        cpus_per_gpu=8,
        mem_mb=16000,
        runtime=720,
    shell:
        # --resume: a requeued or interrupted job continues from its last checkpoint.
        "{params.launcher} train --experiment {input.experiment} --train {input.train} {params.val}"
        " {params.overrides:q} --out {params.out} --resume > {log} 2>&1"
