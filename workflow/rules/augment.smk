# Train captions -> offline paraphrases (back-translation or the offline synonym backend).


rule augment:
    """Paraphrase every training caption once, so training never translates (cached per caption)."""
    input:
        table="results/{dataset}/prepared/annotations.parquet",
    output:
        augmented="results/{dataset}/augment/captions_aug.parquet",
    params:
        backend=lambda wc: DATASETS[wc.dataset].get("augment_backend", "synonyms"),
        batch_size=config["augment"]["batch_size"],
        model_en_fr=config["augment"]["model_en_fr"],
        model_fr_en=config["augment"]["model_fr_en"],
        num_beams=config["augment"]["num_beams"],
        seed=config["augment"]["seed"],
        # The cache outlives the output: a rerun only computes captions it has not seen.
        cache=lambda wc: f"results/{wc.dataset}/augment/cache.sqlite",
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
        # Back-translation of a real dataset wants one GPU; the offline backends need none.
        gpu=lambda wc: 1 if DATASETS[wc.dataset].get("augment_backend") == "backtranslation" else 0,
    shell:
        "python -m tbps augment --captions {input.table} --out {output.augmented}"
        " --backend {params.backend} --cache {params.cache} --batch-size {params.batch_size}"
        " --model-en-fr {params.model_en_fr} --model-fr-en {params.model_fr_en}"
        " --num-beams {params.num_beams} --seed {params.seed} > {log} 2>&1"
