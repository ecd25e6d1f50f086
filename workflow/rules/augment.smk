# Train captions -> offline paraphrases (back-translation or the offline synonym backend).


rule augment:
    """Paraphrase every training caption once, so training never translates (cached per caption)."""
    input:
        table="results/{dataset}/prepared/annotations.parquet",
    output:
        augmented="results/{dataset}/augment/captions_aug.parquet",
    log:
        "logs/augment/{dataset}.log",
    benchmark:
        "logs/benchmarks/augment/{dataset}.tsv"
    conda:
        "../../envs/tbps.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=get_augment_gpus,
    params:
        backend=get_augment_backend,
        batch_size=config["augment"]["batch_size"],
        model_en_fr=config["augment"]["model_en_fr"],
        model_fr_en=config["augment"]["model_fr_en"],
        num_beams=config["augment"]["num_beams"],
        seed=config["augment"]["seed"],
        cache=get_augment_cache,
    shell:
        "python -m tbps augment --captions {input.table:q} --out {output.augmented:q}"
        " --backend {params.backend:q} --cache {params.cache:q}"
        " --batch-size {params.batch_size:q} --num-beams {params.num_beams:q}"
        " --model-en-fr {params.model_en_fr:q} --model-fr-en {params.model_fr_en:q}"
        " --seed {params.seed:q} > {log:q} 2>&1"
