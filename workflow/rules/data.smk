# Raw data -> normalised caption table.


# One generator rule per synthetic dataset (`synthetic`, `synthetic-<name>`): each writes its own raw folder.
for synth_dataset in SYNTHETIC_DATASETS:

    rule:
        """Generate a synthetic pedestrian dataset in a published annotation format."""
        name:
            synth_rule_name(synth_dataset)
        output:
            annotation=synth_annotation(synth_dataset),
        params:
            raw=get_raw_folder_of_output,
            fmt=dataset_format(synth_dataset),
            ids=DATASETS[synth_dataset].get("synth_ids", 400),
            seed=DATASETS[synth_dataset].get("synth_seed", 0),
        log:
            f"logs/synth/{synth_dataset}.log",
        benchmark:
            f"logs/benchmarks/synth/{synth_dataset}.tsv"
        conda:
            "../../envs/tbps.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        shell:
            "python -m tbps synth --format {params.fmt:q} --out {params.raw:q} --ids {params.ids:q}"
            " --seed {params.seed:q}"
            # --force: a changed synth_ids/synth_seed regenerates the folder in place.
            " --force"
            " > {log:q} 2>&1"


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
