# Raw data -> normalised caption table.


# One generator rule per synthetic dataset (`synthetic`: rule synth; `synthetic-<name>`: rule
# synth_<name>), each writing its own raw folder.
for synth_dataset in SYNTHETIC_DATASETS:

    rule:
        """Generate a synthetic pedestrian dataset in a published annotation format.

        `tbps synth` replaces an existing folder only if it made it (a marker file with its
        parameters): a changed synth_ids/synth_seed regenerates the folder in place, while a
        `raw:` pointing at any other non-empty folder (a real download) stops with a message.
        """
        name:
            synth_rule_name(synth_dataset)
        output:
            annotation=synthetic_annotation(synth_dataset),
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
        params:
            raw=get_output_folder,
            fmt=dataset_format(synth_dataset),
            ids=get_synth_option(synth_dataset, "synth_ids"),
            seed=get_synth_option(synth_dataset, "synth_seed"),
        shell:
            "python -m tbps synth --format {params.fmt:q} --out {params.raw:q}"
            " --ids {params.ids:q} --seed {params.seed:q} > {log:q} 2>&1"


rule prepare:
    """Parse the raw annotations strictly into one Parquet row per (image, caption)."""
    input:
        annotation=get_raw_annotation,
    output:
        table="results/{dataset}/prepared/annotations.parquet",
        rejects="results/{dataset}/prepared/rejects.parquet",
        summary="results/{dataset}/prepared/summary.json",
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
    params:
        raw=get_raw_dir,
    shell:
        "python -m tbps prepare --dataset {wildcards.dataset:q} --raw {params.raw:q}"
        " --out {output.table:q} --rejects {output.rejects:q} --summary {output.summary:q}"
        " > {log:q} 2>&1"
