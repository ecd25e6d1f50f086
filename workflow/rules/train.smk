# Shards -> fine-tuned model per (dataset, experiment).


rule train:
    """Fine-tune one experiment on one dataset (torchrun over the job's GPUs when it has several)."""
    input:
        experiment=get_experiment_file,
        train="results/{dataset}/shards/train/manifest.json",
        val=get_val_manifest,
        # A model of ours standing in for pre-trained CLIP (the probes' synthetic stand-in) is built first.
        pretrained=get_pretrained_checkpoint,
        # A compression run with `layers: importance` reads its layer ids from the measured table.
        importance=get_importance_input,
    output:
        final="results/{dataset}/{experiment}/train/final.pt",
        log_table=report(
            "results/{dataset}/{experiment}/train/train_log.parquet",
            caption="../report/train_log.rst",
            category="Training",
            labels={
                "dataset": "{dataset}",
                "experiment": "{experiment}",
                "item": "per-step log (Parquet, download)",
            },
        ),
        # No rows for a dataset without a val split.
        val_curve="results/{dataset}/{experiment}/train/val_curve.parquet",
    log:
        "logs/train/{dataset}/{experiment}.log",
    benchmark:
        "logs/benchmarks/train/{dataset}/{experiment}.tsv"
    conda:
        "../../envs/tbps.yaml"
    threads: 2
    resources:
        gpu=get_gpus,
        cpus_per_gpu=8,
        mem_mb=16000,
        runtime=720,
    params:
        out=get_output_folder,
        launcher=get_launcher,
        overrides=get_run_overrides,
    shell:
        # --resume: a requeued or interrupted job continues from its last checkpoint.
        "{params.launcher:q} train --experiment {input.experiment:q} --train {input.train:q}"
        " --val {input.val:q} --set {params.overrides:q} --out {params.out:q} --resume"
        " > {log:q} 2>&1"
