# Prepared table + images -> WebDataset shards per split. The plan is a checkpoint so each shard
# is its own job: a deleted shard is rewritten alone (shards_present notices it, see
# get_missing_shards in common.smk), then the manifest and what reads that split rerun; other
# splits and earlier stages are untouched.


checkpoint shard_plan:
    """Fix the seeded sample order of a split, cut it into shards and write each sample's metadata
    by shard: the one job of a split that reads the caption tables."""
    input:
        table="results/{dataset}/prepared/annotations.parquet",
        augmented=get_augmented_captions,
    output:
        plan="results/{dataset}/shards/{split}/plan.json",
        samples="results/{dataset}/shards/{split}/plan_samples.parquet",
    log:
        "logs/shards/{dataset}/{split}/plan.log",
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        raw=get_raw_dir,
        max_samples=get_shard_max_samples,
        max_bytes=get_shard_max_bytes,
        seed=config["shards"]["seed"],
    shell:
        "python -m tbps shards plan --captions {input.table:q} --augmented {input.augmented:q}"
        " --split {wildcards.split:q} --raw {params.raw:q} --out {output.plan:q} --max-samples {params.max_samples:q}"
        " --max-bytes {params.max_bytes:q} --seed {params.seed:q} > {log:q} 2>&1"


rule shard:
    """Write one shard (tar) and its stats sidecar from its rows of the plan and the images;
    undecodable images are counted, not lost."""
    input:
        plan="results/{dataset}/shards/{split}/plan.json",
        samples="results/{dataset}/shards/{split}/plan_samples.parquet",
    output:
        tar="results/{dataset}/shards/{split}/shard-{index}.tar",
        stats="results/{dataset}/shards/{split}/shard-{index}.json",
    log:
        "logs/shards/{dataset}/{split}/shard-{index}.log",
    benchmark:
        "logs/benchmarks/shards/{dataset}/{split}/shard-{index}.tsv"
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        raw=get_raw_dir,
        image_size=get_shard_image_size,
    shell:
        "python -m tbps shards write --plan {input.plan:q} --shard-index {wildcards.index:q}"
        " --raw {params.raw:q} --out {output.tar:q} --image-size {params.image_size:q} > {log:q} 2>&1"


rule shards_present:
    """Stamp a split whose planned shards are all on disk. Its `missing` param is what reruns it,
    and so rebuilds a deleted shard, with nothing written while planning (see get_missing_shards).
    """
    input:
        shards=get_planned_shards,
    output:
        touch("results/{dataset}/shards/{split}/shards-present.stamp"),
    localrule: True
    params:
        missing=get_missing_shards,


rule shard_manifest:
    """Verify every shard of a split and write the manifest last."""
    input:
        plan="results/{dataset}/shards/{split}/plan.json",
        shards=get_planned_shards,
        # ancient: a rerun of shards_present alone (its stamp renewed) does not rerun this.
        present=ancient("results/{dataset}/shards/{split}/shards-present.stamp"),
    output:
        manifest="results/{dataset}/shards/{split}/manifest.json",
    log:
        "logs/shards/{dataset}/{split}/manifest.log",
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m tbps shards manifest --plan {input.plan:q} --out {output.manifest:q}"
        " > {log:q} 2>&1"


rule shards:
    """The `shards` stage of a dataset: every split's shards verified (a stamp).

    The augmented captions are an input too: the train shards read them, but only once the
    shard_plan checkpoint has run, and `--until augment` needs the augment job in the DAG
    before that.
    """
    input:
        manifests=get_split_manifests,
        augmented="results/{dataset}/augment/captions_aug.parquet",
    output:
        touch("results/{dataset}/shards/complete.stamp"),
    localrule: True
