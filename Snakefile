# tbps: text-based person search with CLIP (TBPS-CLIP), from raw annotations to metrics.
#
#   snakemake --cores 2 results/synthetic/metrics.parquet      # the embedded default
#   snakemake --cores 8 results/rstpreid/metrics.parquet       # a real dataset (see README)
#
# Stages, one rule file each (workflow/rules/):
#   data      raw annotations (or the generated synthetic set) -> prepared/annotations.parquet
#   augment   train captions -> augment/captions_aug.parquet (back-translation or offline paraphrase)
#   shards    prepared table + images -> WebDataset shards per split, with a manifest
#   train     shards -> fine-tuned checkpoints per experiment
#   evaluate  checkpoint + test shards -> retrieval metrics (R@1/5/10, mAP, mINP)
#   search    checkpoint + test shards -> a gallery index and a demo search page for the report
#   collect   per-run metrics -> results/{dataset}/metrics.parquet, plots for the report
#   study     the paper's ablation tables (config/study.yaml) -> results/{dataset}/study.parquet
#   probes    the paper's compression probe: module importance, frozen vs dropped text layers

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


# Jobs find `python -m tbps` on PATH (common.smk puts the running interpreter first).
envvars:
    "PATH",


include: "workflow/rules/common.smk"


wildcard_constraints:
    dataset="|".join(DATASETS),
    split="train|val|test",
    experiment=r"[A-Za-z0-9_]+(-fs[0-9.]+|-freeze[0-9]+|-drop[0-9]+)?",
    index=r"\d{6}",


include: "workflow/rules/data.smk"
include: "workflow/rules/augment.smk"
include: "workflow/rules/shards.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/collect.smk"
include: "workflow/rules/study.smk"
include: "workflow/rules/probes.smk"
include: "workflow/rules/few_shot.smk"


report: "workflow/report/workflow.rst"


rule all:
    """The embedded default: the whole pipeline on the generated synthetic dataset."""
    default_target: True
    input:
        "results/synthetic/metrics.parquet",
