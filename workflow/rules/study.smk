# The paper's empirical study (config/study.yaml) -> results/{dataset}/study.parquet, one table
# -> results/{dataset}/study/{table}.parquet, each table's report page and gain chart.
#
# A row's run is results/{dataset}/study_<id>/, trained and evaluated by the train and evaluate
# rules like any experiment: the train rule reads the row's root preset and gets the row's
# differences from it as `--set` overrides (get_experiment_file, get_run_overrides in
# common.smk). Rows that resolve to the same configuration share one run, so each distinct
# experiment trains once however many tables list it. README, "The paper's study".

# How the study stands in for the paper's setup on a dataset (`tbps study collect` resolves every row
# with them, as the train rule's overrides were resolved): the same for the three table rules.
STUDY_SETTINGS_PARAMS = dict(
    experiments_dir=config["experiments_dir"],
    backbones=get_study_backbones,
    schedule=get_study_schedule,
    batch_scale=get_study_batch_scale,
    augment_backend=get_augment_backend,
)
STUDY_SETTINGS_ARGS = (
    " --experiments-dir {params.experiments_dir:q} --backbone {params.backbones:q}"
    " --schedule {params.schedule:q} --batch-scale {params.batch_scale:q}"
    " --augment-backend {params.augment_backend:q}"
)


rule study_table:
    """One table of the study: its runs' test metrics beside the paper's numbers."""
    input:
        study=get_study_file,
        metrics=get_study_table_metrics,
    output:
        table="results/{dataset}/study/{table}.parquet",
    log:
        "logs/study/{dataset}/{table}.log",
    benchmark:
        "logs/benchmarks/study/{dataset}/{table}.tsv"
    wildcard_constraints:
        table="[a-z0-9_]+",
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        **STUDY_SETTINGS_PARAMS,
    shell:
        "python -m tbps study collect --study {input.study:q} --dataset {wildcards.dataset:q}"
        " --table {wildcards.table:q} --metrics {input.metrics:q} --out {output.table:q}"
        + STUDY_SETTINGS_ARGS
        + " > {log:q} 2>&1"


rule study_report:
    """One table side by side with the paper (HTML) and each row's gain over its base row (PNG)."""
    input:
        table="results/{dataset}/study/{table}.parquet",
    output:
        page=report(
            "results/{dataset}/study/{table}.html",
            caption="../report/study_table.rst",
            category="Study",
            labels={
                "dataset": "{dataset}",
                "table": "{table}",
                "item": "paper | ours | delta",
            },
        ),
        chart=report(
            "results/{dataset}/study/{table}.png",
            caption="../report/study_gains.rst",
            category="Study",
            labels={
                "dataset": "{dataset}",
                "table": "{table}",
                "item": "gains over the base rows",
            },
        ),
    log:
        "logs/study/{dataset}/{table}_report.log",
    wildcard_constraints:
        table="[a-z0-9_]+",
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m tbps study report --input {input.table:q} --table {wildcards.table:q}"
        " --html {output.page:q} --chart {output.chart:q} > {log:q} 2>&1"


rule study:
    """Every table of the study in one table; waits for every table's page and chart, so
    `snakemake --report` after this target shows the whole study."""
    input:
        study=get_study_file,
        metrics=get_study_metrics,
        pages=get_study_pages,
    output:
        table=report(
            "results/{dataset}/study.parquet",
            caption="../report/study.rst",
            category="Study",
            labels={
                "dataset": "{dataset}",
                "table": "all",
                "item": "study table (Parquet, download)",
            },
        ),
    log:
        "logs/study/{dataset}/study.log",
    benchmark:
        "logs/benchmarks/study/{dataset}/study.tsv"
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        **STUDY_SETTINGS_PARAMS,
    shell:
        "python -m tbps study collect --study {input.study:q} --dataset {wildcards.dataset:q}"
        " --metrics {input.metrics:q} --out {output.table:q}"
        + STUDY_SETTINGS_ARGS
        + " > {log:q} 2>&1"


rule study_partial:
    """What exists of the study (after a `--keep-going` run in which some rows failed): every row,
    those whose run has no metrics yet with status `missing` and null numbers. Reads only the
    runs that are there, so it never starts one."""
    input:
        study=get_study_file,
        metrics=get_present_study_metrics,
    output:
        table="results/{dataset}/study_partial.parquet",
    log:
        "logs/study/{dataset}/study_partial.log",
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        **STUDY_SETTINGS_PARAMS,
    shell:
        "python -m tbps study collect --allow-missing --study {input.study:q}"
        " --dataset {wildcards.dataset:q} --metrics {input.metrics:q} --out {output.table:q}"
        + STUDY_SETTINGS_ARGS
        + " > {log:q} 2>&1"
