# Prepared table + images -> WebDataset shards per split. The plan is a checkpoint so each shard
# is its own job: a deleted shard is rewritten alone (the manifest notices it, see below), then
# what reads that split reruns; other splits and earlier stages are untouched.


checkpoint shard_plan:
    """Fix the seeded sample order of a split and cut it into shards."""
    input:
        table="results/{dataset}/prepared/annotations.parquet",
    output:
        plan="results/{dataset}/shards/{split}/plan.json",
        # Touched when a planned shard goes missing (see planned_shards in common.smk).
        check=touch("results/{dataset}/shards/{split}/.shards-check"),
    params:
        raw=lambda wc: raw_dir(wc.dataset),
        max_samples=lambda wc: DATASETS[wc.dataset].get("shard_max_samples", config["shards"]["max_samples"]),
        max_bytes=shard_max_bytes_arg(),
        seed=config["shards"]["seed"],
    log:
        "logs/shards/{dataset}/{split}/plan.log",
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m tbps shards plan --captions {input.table} --split {wildcards.split}"
        " --raw {params.raw} --out {output.plan} --max-samples {params.max_samples}"
        " {params.max_bytes} --seed {params.seed} > {log} 2>&1"


rule shard:
    """Write one shard (tar) and its stats sidecar; undecodable images are counted, not lost."""
    input:
        unpack(shard_inputs),
    output:
        tar="results/{dataset}/shards/{split}/shard-{index}.tar",
        stats="results/{dataset}/shards/{split}/shard-{index}.json",
    params:
        raw=lambda wc: raw_dir(wc.dataset),
        augmented=lambda wc, input: f"--augmented {input.augmented}" if "augmented" in input.keys() else "",
        image_size=shard_image_size_arg(),
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
    shell:
        "python -m tbps shards write --plan {input.plan} --shard-index {wildcards.index}"
        " --captions {input.table} {params.augmented} --raw {params.raw} --out {output.tar}"
        " {params.image_size} > {log} 2>&1"


rule shard_manifest:
    """Verify every shard of a split and write the manifest last."""
    input:
        # Not the plan itself: Snakemake skips the "newer input" check of a job that lists a
        # checkpoint output, and that check is what notices a missing shard (the shards already
        # follow the plan, and the command reads it through params).
        check="results/{dataset}/shards/{split}/.shards-check",
        shards=planned_shards,
    output:
        manifest="results/{dataset}/shards/{split}/manifest.json",
    params:
        plan=lambda wc: f"results/{wc.dataset}/shards/{wc.split}/plan.json",
    log:
        "logs/shards/{dataset}/{split}/manifest.log",
    conda:
        "../../envs/tbps.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m tbps shards manifest --plan {params.plan} --out {output.manifest} > {log} 2>&1"
