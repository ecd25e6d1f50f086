# Shared by every stage file: config validation, dataset facts, and the input/param functions
# of the rules (named get_*, as in the snakemake-workflows template).
#
# Conventions of the stage files:
# - Every value that reaches a `shell:` line is quoted with `:q` ({input.x:q}, {params.x:q},
#   {wildcards.x:q}, {log:q}): a configured path with spaces, quotes, `;` or `$(...)` stays one
#   literal argument and is never run.
# - An optional value is a list of zero or one item written after its option, e.g.
#   `--val {input.val:q}`. `:q` quotes each list item on its own and renders an empty list as
#   nothing; the tbps option takes an optional value (argparse nargs="?"), so a bare option
#   means "none" (or the command's own default). No param glues a flag to a config value.
# - Paths are relative to the working directory, so a finished run can move (see
#   `experiments_dir` in config/config.yaml); nothing here writes a file: planning, dry runs and
#   --lint leave the folder as it is.
import mimetypes
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from tbps.datasets import REAL_DATASETS, SYNTHETIC
from tbps.study import RUN_PREFIX as STUDY_RUN_PREFIX


def validate_config():
    """Validate the config and fill in the schema's defaults (the workflow's only defaults)."""
    try:
        validate(config, "../schemas/config.schema.yaml", set_default=True)
    except WorkflowError as e:
        if "is not of type" in " ".join(map(str, e.args)):
            raise WorkflowError(
                str(e),
                "Hint: `--config key={...}` reads the values nested inside a mapping as strings "
                "(Snakemake parses them with YAML's BaseLoader). Put nested overrides in a file "
                "and pass it with `--configfile overlay.yaml` (see README, Configuration).",
            ) from None
        raise


validate_config()

# The report embeds Parquet tables; without a registered type it guesses text/plain.
mimetypes.add_type("application/vnd.apache.parquet", ".parquet")

DATASETS = config["datasets"]
FEW_SHOT_SUFFIX = "-fs"
ZERO_SHOT = "zero_shot"
# Rules call `python -m tbps`: make that the interpreter running Snakemake (e.g. the project's
# venv), even when the venv is not activated; cluster jobs inherit it through the environment.
os.environ["PATH"] = (
    os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
)


# ---------------------------------------------------------------- dataset facts


def dataset_format(dataset):
    """Published annotation format of a dataset (the synthetic one mimics one of them)."""
    return DATASETS[dataset]["format"] if dataset == SYNTHETIC else dataset


def has_split(dataset, split):
    return split in REAL_DATASETS[dataset_format(dataset)].splits


def synthetic_annotation():
    """The file the synth rule writes last (the generator's finished folder holds it)."""
    name = REAL_DATASETS[dataset_format(SYNTHETIC)].annotation_files[0]
    return f"{DATASETS[SYNTHETIC]['raw']}/{name}"


def base_experiment(run):
    """`tbps_clip-fs0.05` (a few-shot run of tbps_clip) -> `tbps_clip`."""
    return run.split(FEW_SHOT_SUFFIX)[0]


def experiment_file(experiment):
    """<experiments_dir>/<name>.yaml; stops the run with instructions when it is not there."""
    path = f"{config['experiments_dir']}/{base_experiment(experiment)}.yaml"
    if not os.path.isfile(path):
        sys.stderr.write(
            f"\nERROR: experiment file '{path}' not found (experiments_dir: "
            f"'{config['experiments_dir']}', relative to the working directory {os.getcwd()}).\n"
            f"  Fix: name an experiment that exists there, or set `experiments_dir:` in the config "
            f"to the folder of the presets (e.g. the checkout's config/experiments, as a path "
            f"relative to the working directory).\n\n"
        )
        sys.exit(1)
    return path


def trained_runs(dataset):
    """The dataset's experiments plus a few-shot run of each per extras.few_shot_fractions."""
    experiments = DATASETS[dataset]["experiments"]
    fractions = config["extras"]["few_shot_fractions"]
    return experiments + [
        f"{e}{FEW_SHOT_SUFFIX}{f:g}" for e in experiments for f in fractions
    ]


def zero_shot_experiment(dataset):
    """The experiment whose pretrained weights give the zero-shot row, or None.

    Only for extras.zero_shot and experiments that start from pretrained weights (the tiny
    CPU models are trained from scratch: there is nothing to evaluate zero-shot).
    """
    from tbps.config import load_experiment

    if not config["extras"]["zero_shot"]:
        return None
    for experiment in DATASETS[dataset]["experiments"]:
        if load_experiment(experiment_file(experiment)).model.pretrained:
            return experiment
    return None


def evaluated_runs(dataset):
    zero_shot = [ZERO_SHOT] if zero_shot_experiment(dataset) else []
    return trained_runs(dataset) + zero_shot


def is_cpu_experiment(experiment):
    """The tiny_* experiments are the CPU models of the embedded demo and the tests."""
    return experiment.startswith("tiny_")


# ---------------------------------------------------------------- the paper's study


def is_study_run(run):
    """`study_<row id>`: a run of the paper's study (config/study.yaml), not a preset."""
    return run.startswith(STUDY_RUN_PREFIX)


def study_settings(dataset):
    """config.yaml's `study:` stand-ins, with the dataset's own `study:` over them (and every
    row on `study_backbone` when that is set)."""
    from tbps.errors import UserInputError
    from tbps.study.plan import StudySettings

    try:
        return StudySettings.merged(
            config["experiments_dir"],
            config["study"],
            DATASETS[dataset].get("study"),
            DATASETS[dataset]["augment_backend"],
            config.get("study_backbone"),
        )
    except UserInputError as e:
        sys.stderr.write(f"\nERROR: the study on {dataset}: {e}\n\n")
        sys.exit(1)


_STUDY_PLANS = {}


def study_plan(dataset):
    """Every row of the study on `dataset` resolved, and the runs they share (planned once per
    dataset and process; reads the study file and the presets, writes nothing)."""
    if dataset not in _STUDY_PLANS:
        from tbps.errors import UserInputError
        from tbps.study.plan import plan_study
        from tbps.study.spec import load_study

        try:
            _STUDY_PLANS[dataset] = plan_study(
                load_study(config["study"]["file"]), study_settings(dataset)
            )
        except UserInputError as e:
            sys.stderr.write(f"\nERROR: the study on {dataset}: {e}\n\n")
            sys.exit(1)
    return _STUDY_PLANS[dataset]


def study_run(dataset, run):
    """The planned run `run` of the study on `dataset`; stops with the run to build when `run`
    names a row that shares another row's run."""
    plan = study_plan(dataset)
    if run in plan.runs:
        return plan.runs[run]
    row = run[len(STUDY_RUN_PREFIX) :]
    if row in plan.rows:
        hint = (
            f"row {row} has the same configuration as {', '.join(plan.runs[plan.rows[row].run].rows)}: "
            f"its run is {plan.rows[row].run} (results/{dataset}/{plan.rows[row].run}/)"
        )
    else:
        hint = f"no row {row!r} in a table of {config['study']['file']}"
    sys.stderr.write(
        f"\nERROR: {run} is not a run of the study on {dataset}: {hint}.\n\n"
    )
    sys.exit(1)


# ---------------------------------------------------------------- data


def get_raw_dir(wildcards):
    return DATASETS[wildcards.dataset]["raw"]


def get_raw_annotation(wildcards):
    """The raw annotation file; stops the run at once, with instructions, when a download is missing."""
    dataset = wildcards.dataset
    raw = DATASETS[dataset]["raw"]
    if dataset == SYNTHETIC:
        return synthetic_annotation()
    info = REAL_DATASETS[dataset]
    for name in info.annotation_files:
        if os.path.isfile(os.path.join(raw, name)):
            return f"{raw}/{name}"
    sys.stderr.write(
        f"\nERROR: the {info.title} raw data is not at '{raw}' "
        f"(expected {' or '.join(info.annotation_files)} and imgs/ there).\n"
        f"  Where to get it: {info.download}.\n"
        f"  Where to put it: unpack it to {raw}/ (the default), or set "
        f"`datasets: {dataset}: raw:` in config/config.yaml (or a --configfile overlay) to its folder.\n"
        f"  How to check it: tbps check-raw --dataset {dataset} --raw {raw}\n\n"
    )
    sys.exit(1)


def get_synth_option(key):
    """[value] of a datasets.synthetic key when the config sets it, else [] (the generator's default)."""

    def option(wildcards):
        value = DATASETS[SYNTHETIC].get(key)
        return [] if value is None else [value]

    return option


def get_output_folder(wildcards, output):
    """The folder of a job's first output, for commands that take an output folder."""
    return os.path.dirname(output[0])


# ---------------------------------------------------------------- augment


def get_augment_backend(wildcards):
    return DATASETS[wildcards.dataset]["augment_backend"]


def get_augment_gpus(wildcards):
    # Back-translation of a real dataset wants one GPU; the offline backends need none.
    return 1 if get_augment_backend(wildcards) == "backtranslation" else 0


def get_augment_cache(wildcards):
    # Not an output: the cache outlives the output, so a rerun only computes new captions.
    return f"results/{wildcards.dataset}/augment/cache.sqlite"


# ---------------------------------------------------------------- shards


def get_shard_max_samples(wildcards):
    return DATASETS[wildcards.dataset].get(
        "shard_max_samples", config["shards"]["max_samples"]
    )


def get_shard_max_bytes(wildcards):
    max_bytes = config["shards"]["max_bytes"]
    return [] if max_bytes is None else [max_bytes]


def get_shard_image_size(wildcards):
    size = config["shards"]["image_size"]
    return [] if size is None else [f"{size[0]}x{size[1]}"]


def get_augmented_captions(wildcards):
    """Train shards carry the augmented captions; val/test shards don't need them."""
    if wildcards.split != "train":
        return []
    return f"results/{wildcards.dataset}/augment/captions_aug.parquet"


def get_planned_shards(wildcards):
    """Shard files named by the split's plan (known once the shard_plan checkpoint ran)."""
    import json

    plan = checkpoints.shard_plan.get(**wildcards).output.plan
    with open(plan) as f:
        names = [s["name"] for s in json.load(f)["shards"]]
    folder = os.path.dirname(plan)
    return [f"{folder}/{name}" for name in names]


def get_missing_shards(wildcards):
    """Planned shards of a split that are not on disk ([] once the split is complete).

    How a deleted shard gets rebuilt without writing anything while planning: Snakemake does
    not rerun the job of a missing intermediate file while the jobs that read it look up to
    date, but it does rerun a job whose params differ from those recorded with its output.
    This is a param of `shards_present`, whose inputs are the planned shards: while planning,
    the value names the missing shard, `shards_present` reruns, and the missing input brings
    back exactly that shard; the manifest reads the shard, so it and what reads the split
    follow. Snakemake records the value it saw while planning, so the next run reruns
    `shards_present` once more (it only renews its stamp: the manifest reads the stamp as
    `ancient`, so nothing follows), and the run after that is a no-op.
    (The function takes no `input` argument on purpose: Snakemake leaves params derived from
    input/output files out of the params trigger.)
    """
    shards = get_planned_shards(wildcards)
    missing = [os.path.basename(p) for p in shards if not os.path.exists(p)]
    if missing and os.path.exists(
        get_shard_manifest(wildcards.dataset, wildcards.split)
    ):
        sys.stderr.write(
            f"{os.path.dirname(shards[0])}: {len(missing)} planned shard(s) missing "
            f"({', '.join(missing[:3])}): they, the manifest and what reads the split will be rebuilt\n"
        )
    return missing


def get_shard_manifest(dataset, split):
    return f"results/{dataset}/shards/{split}/manifest.json"


def get_split_manifests(wildcards):
    """The manifest of every split the dataset has (the end of its shards stage)."""
    return [
        get_shard_manifest(wildcards.dataset, split)
        for split in ("train", "val", "test")
        if has_split(wildcards.dataset, split)
    ]


# ---------------------------------------------------------------- train and evaluate


def get_experiment_file(wildcards):
    """The experiment's file; for a study run, the preset its rows start from (the run's
    differences from it are the train rule's `--set` overrides, get_train_overrides)."""
    if is_study_run(wildcards.experiment):
        return experiment_file(
            study_run(wildcards.dataset, wildcards.experiment).preset
        )
    return experiment_file(wildcards.experiment)


def get_val_manifest(wildcards):
    """The val shards for the per-epoch curve, [] for a dataset without a val split."""
    if not has_split(wildcards.dataset, "val"):
        return []
    return get_shard_manifest(wildcards.dataset, "val")


def get_train_overrides(wildcards):
    """`--set` values of a run: a study run's differences from its preset (values as JSON; as a
    param they retrain exactly the runs whose row, mixin or study setting changed), or
    `data.few_shot_fraction=F` for few-shot runs (paper Sec. 4.5, Tables 11 and 16), else nothing.
    """
    if is_study_run(wildcards.experiment):
        return list(study_run(wildcards.dataset, wildcards.experiment).overrides)
    _, _, fraction = wildcards.experiment.partition(FEW_SHOT_SUFFIX)
    return [f"data.few_shot_fraction={fraction}"] if fraction else []


def get_gpus(wildcards):
    # One GPU by default; a profile's `set-resources: train: gpu: N` asks for N (torchrun).
    if is_study_run(wildcards.experiment):
        # evaluate_cross names the dataset a model was trained on train_dataset.
        dataset = getattr(wildcards, "dataset", None) or wildcards.train_dataset
        return 0 if study_run(dataset, wildcards.experiment).on_cpu else 1
    return 0 if is_cpu_experiment(wildcards.experiment) else 1


def get_launcher(wildcards, resources):
    """`python -m tbps`, or torchrun with one process per GPU of the job (a list: :q quotes each word)."""
    gpus = int(resources.get("gpu", 0) or 0)
    if gpus > 1:
        return ["torchrun", "--standalone", "--nproc_per_node", gpus, "-m", "tbps"]
    return ["python", "-m", "tbps"]


def get_cross_run_name(wildcards):
    """`<experiment>@<train dataset>`: how collect tells a cross-dataset row's training set."""
    return f"{wildcards.experiment}@{wildcards.train_dataset}"


def get_zero_shot_experiment_file(wildcards):
    return experiment_file(zero_shot_experiment(wildcards.dataset))


# ---------------------------------------------------------------- collect and plots


def get_training_title(wildcards):
    return f"{wildcards.experiment} on {wildcards.dataset}"


def get_examples_title(wildcards):
    return f"{wildcards.experiment} on {wildcards.dataset}: retrieval examples (test)"


def get_run_metrics(wildcards):
    return [
        f"results/{wildcards.dataset}/{run}/eval/test.parquet"
        for run in evaluated_runs(wildcards.dataset)
    ]


def get_val_curves(wildcards):
    return [
        f"results/{wildcards.dataset}/{run}/train/val_curve.parquet"
        for run in trained_runs(wildcards.dataset)
    ]


def get_report_pages(wildcards):
    """A dataset's report figures and tables (the `plots` stage; see collect.smk)."""
    dataset = wildcards.dataset
    pages = [f"results/{dataset}/plots/metrics.png"]
    for run in trained_runs(dataset):
        pages += [
            f"results/{dataset}/{run}/plots/training.png",
            f"results/{dataset}/{run}/plots/examples.png",
            f"results/{dataset}/{run}/train/train_log.html",
        ]
    return pages


def get_train_log_title(wildcards):
    return f"{wildcards.experiment} on {wildcards.dataset}: per-step training log"


def get_cross_metrics(wildcards):
    """extras.cross: in-domain pairs reuse the regular evaluation (no second evaluation)."""
    cross = config["extras"]["cross"]
    experiment = cross["experiment"]
    return [
        (
            f"results/{train}/{experiment}/eval/test.parquet"
            if train == test
            else f"results/cross/{train}/{experiment}/{test}.parquet"
        )
        for train in cross["train"]
        for test in cross["eval"]
    ]


# ---------------------------------------------------------------- the paper's study (study.smk)


def get_study_file(wildcards):
    return config["study"]["file"]


def study_metrics_file(dataset, run):
    return f"results/{dataset}/{run}/eval/test.parquet"


def get_study_table_metrics(wildcards):
    """Test metrics of the runs of one table (rows sharing a configuration share a run)."""
    plan = study_plan(wildcards.dataset)
    if wildcards.table not in plan.study.tables:
        sys.stderr.write(
            f"\nERROR: no table {wildcards.table!r} in {config['study']['file']} "
            f"(tables: {', '.join(plan.study.tables)}).\n\n"
        )
        sys.exit(1)
    return [
        study_metrics_file(wildcards.dataset, run)
        for run in plan.table_runs([wildcards.table])
    ]


def get_study_metrics(wildcards):
    """Test metrics of every run of the study: one train and one evaluate per distinct experiment."""
    return [
        study_metrics_file(wildcards.dataset, run)
        for run in study_plan(wildcards.dataset).table_runs()
    ]


def get_present_study_metrics(wildcards):
    """The study's test metrics that exist now (the partial study reads only these, so building
    it never starts a run; a run that finishes later changes this list and so rebuilds it).
    """
    return [p for p in get_study_metrics(wildcards) if os.path.exists(p)]


def get_study_pages(wildcards):
    """Each table's page (paper | ours | delta) and gain chart."""
    return [
        f"results/{wildcards.dataset}/study/{table}.{kind}"
        for table in study_plan(wildcards.dataset).study.tables
        for kind in ("html", "png")
    ]


def get_study_backbones(wildcards):
    """`--backbone NAME=MIXIN` values (a list: :q quotes each)."""
    settings = study_settings(wildcards.dataset)
    return [f"{name}={mixin}" for name, mixin in sorted(settings.backbones.items())]


def get_study_schedule(wildcards):
    schedule = study_settings(wildcards.dataset).schedule
    return [] if schedule is None else [schedule]


def get_study_batch_scale(wildcards):
    return study_settings(wildcards.dataset).batch_scale
