# Shared by every stage file: config validation, dataset facts, input functions.
import mimetypes
import os
import re
import sys
from pathlib import Path

from snakemake.utils import validate

from tbps.datasets import REAL_DATASETS, is_synthetic

validate(config, "../schemas/config.schema.yaml")

# The report embeds Parquet tables; without a registered type it guesses text/plain.
mimetypes.add_type("application/vnd.apache.parquet", ".parquet")

DATASETS = config["datasets"]
EXPERIMENT_DIR = Path(workflow.basedir) / "config" / "experiments"
# Rules call `python -m tbps`: make that the interpreter running Snakemake (e.g. the project's
# venv), even when the venv is not activated; cluster jobs inherit it through the environment.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


def dataset_format(dataset):
    """Published annotation format of a dataset (a synthetic one mimics one of them)."""
    return DATASETS[dataset].get("format", "cuhk-pedes") if is_synthetic(dataset) else dataset


def dataset_splits(dataset):
    return list(REAL_DATASETS[dataset_format(dataset)].splits)


def raw_dir(dataset):
    return DATASETS[dataset]["raw"]


SYNTHETIC_DATASETS = [d for d in DATASETS if is_synthetic(d)]


def synth_annotation(dataset):
    """The annotation file `tbps synth` writes into a synthetic dataset's raw folder."""
    return f"{raw_dir(dataset)}/{REAL_DATASETS[dataset_format(dataset)].annotation_files[0]}"


def synth_rule_name(dataset):
    """`synth` for `synthetic`, `synth_<name>` for `synthetic-<name>`."""
    return f"synth{dataset.removeprefix('synthetic').replace('-', '_')}"


def raw_annotation(wildcards):
    """The raw annotation file; stops the run at once, with instructions, when a download is missing."""
    dataset = wildcards.dataset
    info = REAL_DATASETS[dataset_format(dataset)]
    if is_synthetic(dataset):
        return synth_annotation(dataset)
    for name in info.annotation_files:
        if Path(raw_dir(dataset), name).is_file():
            return f"{raw_dir(dataset)}/{name}"
    sys.stderr.write(
        f"\nERROR: the {info.title} raw data is not at '{raw_dir(dataset)}' "
        f"(expected {' or '.join(info.annotation_files)} and imgs/ there).\n"
        f"  Where to get it: {info.download}.\n"
        f"  Where to put it: unpack it to {raw_dir(dataset)}/ (the default), or set "
        f"`datasets: {dataset}: raw:` in config/config.yaml (or --config) to its folder.\n"
        f"  How to check it: tbps check-raw --dataset {dataset} --raw {raw_dir(dataset)}\n\n"
    )
    sys.exit(1)


FEW_SHOT_SUFFIX = "-fs"
ZERO_SHOT = "zero_shot"
# `<preset>-freeze<x>` / `<preset>-drop<x>`: the preset with x text layers frozen or dropped.
COMPRESSION_RUN = re.compile(r"^(?P<preset>[A-Za-z0-9_]+)-(?P<mode>freeze|drop)(?P<x>[0-9]+)$")


def base_experiment(run):
    """`tbps_clip-fs0.05` (a few-shot run) or `tbps_clip-drop3` (a compression run) -> `tbps_clip`."""
    compressed = COMPRESSION_RUN.match(run)
    return compressed["preset"] if compressed else run.split(FEW_SHOT_SUFFIX)[0]


def experiment_file(wildcards):
    return str(EXPERIMENT_DIR / f"{base_experiment(wildcards.experiment)}.yaml")


def few_shot_override(wildcards):
    """`--set data.few_shot_fraction=F` for few-shot runs (spec §9), nothing otherwise."""
    _, _, fraction = wildcards.experiment.partition(FEW_SHOT_SUFFIX)
    return ["--set", f"data.few_shot_fraction={fraction}"] if fraction else []


def compression_settings(dataset):
    """The dataset's `compression:` entry (runs of the paper's §3.5 probe), or None."""
    return DATASETS[dataset].get("compression")


def importance_table(dataset):
    settings = compression_settings(dataset)
    return f"results/{dataset}/{settings['importance_experiment']}/probe/importance.parquet"


def compression_override(wildcards):
    """The text layers a compression run freezes or drops: from the dataset's measured importance table
    (`layers: importance`) or the paper's Table 17 ids (`layers: paper`); nothing for other runs."""
    from tbps.published import compression_row

    run = COMPRESSION_RUN.match(wildcards.experiment)
    if run is None:
        return []
    mode, x = run["mode"], int(run["x"])
    if compression_settings(wildcards.dataset)["layers"] == "paper":
        row = compression_row(x)
        if row is None:
            sys.stderr.write(
                f"\nERROR: {wildcards.experiment}: the paper's Table 17 lists x = 1..5 text layers only. Fix: "
                f"set `layers: importance` in the compression entry of {wildcards.dataset}, or x <= 5.\n\n"
            )
            sys.exit(1)
        layers = ",".join(map(str, row.text_layers))
        return ["--set", f"model.{mode}_text_layers=[{layers}]"]
    choice = "model.compress_from_importance"
    return ["--set", f"{choice}.table={importance_table(wildcards.dataset)}", "--set", f"{choice}.x={x}",
            "--set", f"{choice}.mode={mode}"]


def get_run_overrides(wildcards):
    """`--set KEY=VALUE` arguments that make a run of its base experiment (few-shot, compression)."""
    return few_shot_override(wildcards) + compression_override(wildcards)


WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def pretrained_checkpoint(experiment):
    """The experiment's model.pretrained when it names a file (e.g. a final.pt built by this workflow)
    rather than an open_clip tag, else None."""
    from tbps.config import load_experiment

    pretrained = load_experiment(EXPERIMENT_DIR / f"{base_experiment(experiment)}.yaml").model.pretrained
    if pretrained and (len(Path(pretrained).parts) > 1 or Path(pretrained).suffix in WEIGHT_FILE_SUFFIXES):
        return pretrained
    return None


def trained_runs(dataset):
    """The dataset's experiments plus a few-shot run of each per extras.few_shot_fractions."""
    experiments = DATASETS[dataset]["experiments"]
    fractions = config.get("extras", {}).get("few_shot_fractions", [])
    return experiments + [f"{e}{FEW_SHOT_SUFFIX}{f:g}" for e in experiments for f in fractions]


def zero_shot_experiment(dataset):
    """The experiment whose pretrained weights give the zero-shot row, or None.

    Only for extras.zero_shot and experiments that start from pretrained weights (the tiny
    CPU models are trained from scratch: there is nothing to evaluate zero-shot).
    """
    from tbps.config import load_experiment

    if not config.get("extras", {}).get("zero_shot", False):
        return None
    for experiment in DATASETS[dataset]["experiments"]:
        if load_experiment(EXPERIMENT_DIR / f"{experiment}.yaml").model.pretrained:
            return experiment
    return None


def evaluated_runs(dataset):
    zero_shot = [ZERO_SHOT] if zero_shot_experiment(dataset) else []
    return trained_runs(dataset) + zero_shot


def has_split(dataset, split):
    return split in dataset_splits(dataset)


def shard_max_bytes_arg():
    max_bytes = config["shards"].get("max_bytes")
    return f"--max-bytes {max_bytes}" if max_bytes else ""


def shard_image_size_arg():
    size = config["shards"].get("image_size")
    return f"--image-size {size[0]}x{size[1]}" if size else ""


def shard_inputs(wildcards):
    """Train shards carry the augmented captions; val/test shards don't need them."""
    inputs = {
        "plan": f"results/{wildcards.dataset}/shards/{wildcards.split}/plan.json",
        "table": f"results/{wildcards.dataset}/prepared/annotations.parquet",
    }
    if wildcards.split == "train":
        inputs["augmented"] = f"results/{wildcards.dataset}/augment/captions_aug.parquet"
    return inputs


def planned_shards(wildcards):
    """Shard files named by the split's plan (known once the shard_plan checkpoint ran)."""
    import json

    plan = checkpoints.shard_plan.get(**wildcards).output.plan
    with open(plan) as f:
        names = [s["name"] for s in json.load(f)["shards"]]
    return [f"results/{wildcards.dataset}/shards/{wildcards.split}/{name}" for name in names]


def flag_missing_shards():
    """Mark splits whose manifest exists but a planned shard is gone.

    Snakemake does not rebuild a deleted intermediate file while the files that read it look up
    to date. So, before the DAG is built, the split's `.shards-check` marker (an input of the
    manifest only) gets new content: the manifest then has a changed, newer input, reruns, and
    brings back exactly the missing shard(s); what reads that split follows. Nothing else
    changes, so the run after that is a no-op again.
    """
    import glob
    import json
    import time

    for plan in glob.glob("results/*/shards/*/plan.json"):
        folder = os.path.dirname(plan)
        check = os.path.join(folder, ".shards-check")
        if not (os.path.exists(os.path.join(folder, "manifest.json")) and os.path.exists(check)):
            continue
        try:
            with open(plan) as f:
                names = [s["name"] for s in json.load(f)["shards"]]
        except (OSError, ValueError, KeyError):
            continue  # a broken plan is rebuilt by its own rule
        missing = [n for n in names if not os.path.exists(os.path.join(folder, n))]
        if missing:
            sys.stderr.write(f"{folder}: {len(missing)} planned shard(s) missing ({', '.join(missing[:3])}): "
                             "they and the manifest will be rebuilt\n")
            # New content, not only a new mtime: Snakemake ignores a newer input whose checksum
            # it has recorded (small files).
            with open(check, "w") as f:
                f.write(f"missing since {time.time():.6f}: {' '.join(missing)}\n")


flag_missing_shards()


def shards_check(dataset, split):
    return f"results/{dataset}/shards/{split}/.shards-check"


def shard_manifest(dataset, split):
    return f"results/{dataset}/shards/{split}/manifest.json"


def train_inputs(wildcards):
    inputs = {
        "experiment": experiment_file(wildcards),
        "train": shard_manifest(wildcards.dataset, "train"),
    }
    if has_split(wildcards.dataset, "val"):
        inputs["val"] = shard_manifest(wildcards.dataset, "val")
    # A model of ours standing in for pre-trained CLIP is trained first.
    pretrained = pretrained_checkpoint(wildcards.experiment)
    if pretrained:
        inputs["pretrained"] = pretrained
    run = COMPRESSION_RUN.match(wildcards.experiment)
    if run and compression_settings(wildcards.dataset)["layers"] == "importance":
        inputs["importance"] = importance_table(wildcards.dataset)
    return inputs


def is_cpu_experiment(experiment):
    """The tiny_* experiments are the CPU models of the embedded demo and the tests."""
    return experiment.startswith("tiny_")


def train_gpus(wildcards):
    # One GPU by default; a profile's `set-resources: train: gpu: N` asks for N (torchrun).
    return 0 if is_cpu_experiment(wildcards.experiment) else 1


def eval_gpus(wildcards):
    return 0 if is_cpu_experiment(wildcards.experiment) else 1


def launcher(wildcards, resources):
    """`python -m tbps`, or torchrun with one process per GPU of the job."""
    gpus = int(resources.get("gpu", 0) or 0)
    if gpus > 1:
        return f"torchrun --standalone --nproc_per_node {gpus} -m tbps"
    return "python -m tbps"


# ----------------------------------------------------------------- the compression probe (probes.smk)

PROBE_SETTINGS = config.get("probes", {}).get("importance", {})
COMPRESSION_MODES = ("freeze", "drop")


def get_probe_split(wildcards):
    """R@1 of the probe is measured on the val split where there is one: the probe chooses which
    layers to compress, a model-selection decision the test split stays out of."""
    return "val" if has_split(wildcards.dataset, "val") else "test"


def get_probe_shards(wildcards):
    return shard_manifest(wildcards.dataset, get_probe_split(wildcards))


def get_probe_initial_weights(wildcards):
    """The run's pre-trained weights when this workflow builds them (theta0 of C2)."""
    pretrained = pretrained_checkpoint(wildcards.experiment)
    return [pretrained] if pretrained and PROBE_SETTINGS.get("theta0", "pretrained") == "pretrained" else []


def get_compression(wildcards):
    """The dataset's compression settings; stops with instructions when it has none."""
    settings = compression_settings(wildcards.dataset)
    if settings is None:
        sys.stderr.write(
            f"\nERROR: results/{wildcards.dataset}/compression.parquet needs a `compression:` entry for "
            f"{wildcards.dataset} in config/config.yaml (experiments, x, layers, importance_experiment; see "
            f"the one of `synthetic` or `cuhk-pedes`).\n\n"
        )
        sys.exit(1)
    return settings


def get_compression_runs(wildcards):
    """Every preset uncompressed (x = 0), then with x text layers frozen and dropped for each x."""
    settings = get_compression(wildcards)
    return [
        run
        for preset in settings["experiments"]
        for run in [preset]
        + [f"{preset}-{mode}{x}" for mode in COMPRESSION_MODES for x in settings["x"]]
    ]


def get_compression_metrics(wildcards):
    return [f"results/{wildcards.dataset}/{run}/eval/test.parquet" for run in get_compression_runs(wildcards)]


def get_compression_checkpoints(wildcards):
    return [f"results/{wildcards.dataset}/{run}/train/final.pt" for run in get_compression_runs(wildcards)]


def get_compression_heatmaps(wildcards):
    experiment = get_compression(wildcards)["importance_experiment"]
    return f"results/{wildcards.dataset}/{experiment}/plots/importance.png"


def get_raw_folder_of_output(wildcards, output):
    """The folder an output file is written into (a raw dataset folder)."""
    return os.path.dirname(output[0])
