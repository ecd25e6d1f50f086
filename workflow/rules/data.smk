# Raw data -> normalised caption table.


rule synth:
    """Generate the embedded synthetic pedestrian dataset in a published annotation format."""
    output:
        annotation=f"{raw_dir(SYNTHETIC)}/{REAL_DATASETS[dataset_format(SYNTHETIC)].annotation_files[0]}"
        if SYNTHETIC in DATASETS
        else "resources/raw/synthetic/.unused",
    params:
        raw=lambda wildcards, output: os.path.dirname(output.annotation),
        fmt=dataset_format(SYNTHETIC) if SYNTHETIC in DATASETS else "",
        ids=DATASETS.get(SYNTHETIC, {}).get("synth_ids", 400),
        seed=DATASETS.get(SYNTHETIC, {}).get("synth_seed", 0),
    log:
        "logs/synth/synthetic.log",
    benchmark:
        "logs/benchmarks/synth/synthetic.tsv"
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m tbps synth --format {params.fmt} --out {params.raw} --ids {params.ids} --seed {params.seed}"
        # --force: a changed synth_ids/synth_seed regenerates the folder in place.
        " --force"
        " > {log} 2>&1"


rule prepare:
    """Parse the raw annotations strictly into one Parquet row per (image, caption)."""
    input:
        annotation=raw_annotation,
    output:
        table="results/{dataset}/prepared/annotations.parquet",
        rejects="results/{dataset}/prepared/rejects.parquet",
        summary="results/{dataset}/prepared/summary.json",
    params:
        raw=lambda wc: raw_dir(wc.dataset),
    log:
        "logs/prepare/{dataset}.log",
    benchmark:
        "logs/benchmarks/prepare/{dataset}.tsv"
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m tbps prepare --dataset {wildcards.dataset} --raw {params.raw} --out {output.table}"
        " --rejects {output.rejects} --summary {output.summary} > {log} 2>&1"
