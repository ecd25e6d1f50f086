"""The Snakemake workflow: lint, format, dry runs, config handling, the missing-download message,
a real data-stage run, use as a Snakemake module."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from helpers.workflow_runs import CHECKOUT_FILES, planned_jobs

REPO = Path(__file__).resolve().parent.parent


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "--directory", str(workdir), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workdir(tmp_path):
    """A run folder with a small synthetic configuration (the repo's config with fewer ids)."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["datasets"]["synthetic"]["synth_ids"] = 24
    cfg["datasets"]["synthetic"]["raw"] = str(tmp_path / "resources" / "raw" / "synthetic")
    # The run folder is not the checkout: point at the checkout's presets.
    cfg["experiments_dir"] = str(REPO / "config" / "experiments")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def test_lint_is_clean():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_snakefmt_is_clean():
    snakefmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent)) or shutil.which("snakefmt")
    if snakefmt is None:
        pytest.skip("snakefmt is not installed (a dev dependency: pip install snakefmt)")
    result = subprocess.run([snakefmt, "--check", "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_of_the_embedded_default(workdir):
    result = snakemake(workdir, "-n", f"--configfile={workdir / 'config.yaml'}", "results/synthetic/metrics.parquet")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    # augment and the shard jobs join the DAG once the shard_plan checkpoint has run.
    for rule in ("synth", "prepare", "shard_plan", "shards_present", "shard_manifest", "train", "evaluate", "collect"):
        assert f"rule {rule}:" in out or f"checkpoint {rule}:" in out, rule


def test_missing_download_stops_with_instructions(workdir):
    result = snakemake(workdir, "-n", f"--configfile={workdir / 'config.yaml'}", "results/rstpreid/metrics.parquet")
    assert result.returncode != 0
    err = result.stdout + result.stderr
    assert "MissingInputException" not in err and "Traceback" not in err
    assert "RSTPReid raw data is not at 'resources/raw/RSTPReid'" in err
    assert "Where to get it" in err and "DSSL" in err
    assert "datasets: rstpreid: raw:" in err
    assert "tbps check-raw --dataset rstpreid --raw resources/raw/RSTPReid" in err


def test_data_stage_runs_for_real(workdir):
    result = snakemake(workdir, "--cores", "2", f"--configfile={workdir / 'config.yaml'}",
                       "results/synthetic/prepared/annotations.parquet")
    assert result.returncode == 0, result.stderr[-3000:]
    table = pl.read_parquet(workdir / "results/synthetic/prepared/annotations.parquet")
    assert set(table["split"]) == {"train", "val", "test"}
    assert table.filter(pl.col("split") == "train")["person_id"].n_unique() == 24
    summary = json.loads((workdir / "results/synthetic/prepared/summary.json").read_text())
    assert summary
    assert (workdir / "logs/prepare/synthetic.log").stat().st_size > 0
    assert (workdir / "logs/benchmarks/prepare/synthetic.tsv").is_file()
    # A second run has nothing to do.
    again = snakemake(workdir, "-n", f"--configfile={workdir / 'config.yaml'}",
                      "results/synthetic/prepared/annotations.parquet")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_config_schema_rejects_unknown_keys(workdir):
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["shards"]["max_sampels"] = 3
    bad = workdir / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    result = snakemake(workdir, "-n", f"--configfile={bad}")
    assert result.returncode != 0
    assert "max_sampels" in result.stdout + result.stderr
    # Generator settings belong to the synthetic dataset only.
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["datasets"]["rstpreid"]["synth_ids"] = 10
    bad.write_text(yaml.safe_dump(cfg))
    result = snakemake(workdir, "-n", f"--configfile={bad}")
    assert result.returncode != 0
    assert "synth_ids" in result.stdout + result.stderr


def test_conda_env_lists_every_runtime_dependency():
    """envs/tbps.yaml and pyproject.toml must not drift apart."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env_text = (REPO / "envs" / "tbps.yaml").read_text()
    aliases = {"torch": "pytorch"}
    for dep in deps:
        name = dep.split(">")[0].split("<")[0].split("=")[0].strip()
        assert aliases.get(name, name) in env_text, f"{name} missing from envs/tbps.yaml"
    assert shutil.which  # keep import used


def test_few_shot_and_cross_runs_join_the_dag(workdir):
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["extras"]["few_shot_fractions"] = [0.1]
    cfg["extras"]["cross"] = {"train": ["synthetic"], "eval": ["synthetic"], "experiment": "tiny_tbps_clip_simplified"}
    extra = workdir / "extras.yaml"
    extra.write_text(yaml.safe_dump(cfg))
    result = snakemake(workdir, "-n", f"--configfile={extra}", "results/synthetic/metrics.parquet",
                       "results/cross/metrics.parquet")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "results/synthetic/tiny_tbps_clip_simplified-fs0.1/train/final.pt" in out
    assert "--set data.few_shot_fraction=0.1" in out or "wildcards: dataset=synthetic, experiment=tiny_tbps_clip_simplified-fs0.1" in out
    assert "results/cross/metrics.parquet" in out


def test_compression_target_plans_the_stand_in_the_probe_and_every_run(workdir):
    """results/synthetic/compression.parquet: the pre-trained stand-in on its own synthetic dataset, the
    importance probe of the full preset, and each preset uncompressed and with x layers frozen or dropped."""
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    compression = cfg["datasets"]["synthetic"]["compression"]
    result = snakemake(workdir, "-n", "-p", f"--configfile={workdir / 'config.yaml'}",
                       "results/synthetic/compression.parquet")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    for rule in ("synth", "synth_pretrain", "train", "evaluate", "probe_importance", "plot_importance", "compression"):
        assert f"rule {rule}:" in out, rule
    trained = set(re.findall(r"results/([a-z-]+)/([A-Za-z0-9_.-]+)/train/final\.pt", out))
    runs = {(p, f"{p}-{mode}{x}") for p in compression["experiments"] for mode in ("freeze", "drop")
            for x in compression["x"]}
    assert len(runs) == 2 * len(compression["x"]) * 2
    assert trained == ({("synthetic-pretrain", "tiny_probe_pretrain")}
                       | {("synthetic", run) for pair in runs for run in pair})
    # A run with `layers: importance` reads its ids from the measured table (an input of its training).
    importance = "results/synthetic/tiny_probe_tbps_clip/probe/importance.parquet"
    drop2 = next(job for job in out.split("\n\n") if "tiny_probe_tbps_clip-drop2/train/final.pt" in job
                 and "rule train:" in job)
    assert importance in drop2.split("output:")[0]
    assert (f"--set model.compress_from_importance.table={importance} model.compress_from_importance.x=2 "
            "model.compress_from_importance.mode=drop --out results/synthetic/tiny_probe_tbps_clip-drop2/train") in drop2
    # The stand-in is trained first: the fine-tuned presets read it as model.pretrained.
    assert "results/synthetic-pretrain/tiny_probe_pretrain/train/final.pt" in drop2.split("output:")[0]


def test_compression_with_the_papers_layers(workdir):
    """`layers: paper`: Table 17's ids on the command line; an x the table lacks stops with the fix."""
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    compression = cfg["datasets"]["synthetic"]["compression"]
    compression.update(layers="paper", x=[2], experiments=["tiny_probe_tbps_clip"])
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake(workdir, "-n", "-p", f"--configfile={workdir / 'config.yaml'}",
                       "results/synthetic/compression.parquet")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "--set 'model.freeze_text_layers=[7,8]' --out results/synthetic/tiny_probe_tbps_clip-freeze2/train" in out
    assert "--set 'model.drop_text_layers=[7,8]' --out results/synthetic/tiny_probe_tbps_clip-drop2/train" in out
    assert "compress_from_importance" not in out

    compression["x"] = [6]
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake(workdir, "-n", f"--configfile={workdir / 'config.yaml'}", "results/synthetic/compression.parquet")
    assert result.returncode != 0
    err = result.stdout + result.stderr
    assert "the paper's Table 17 lists x = 1..5 text layers only" in err and "layers: importance" in err
    assert "Traceback" not in err


def test_minimal_config_gets_every_default_from_the_schema(workdir):
    """The schema holds the workflow's defaults (filled in by validate): a config naming only the
    dataset's folder and experiments is enough, and the defaults reach the jobs."""
    minimal = {
        "experiments_dir": str(REPO / "config" / "experiments"),
        "datasets": {"synthetic": {"raw": "resources/raw/synthetic", "experiments": ["tiny_tbps_clip"]}},
    }
    # The Snakefile's `configfile: "config/config.yaml"` is read from the working directory.
    (workdir / "config").mkdir()
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(minimal))
    result = snakemake(workdir, "results/synthetic/augment/captions_aug.parquet", "-n", "-p")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    # synth: the schema's format; ids and seed left to the generator (bare options).
    assert "tbps synth --format cuhk-pedes --out resources/raw/synthetic --ids  --seed " in out
    assert "--backend synonyms" in out and "--batch-size 64" in out and "--model-en-fr Helsinki-NLP/opus-mt-en-fr" in out


def test_nested_config_on_the_command_line(workdir):
    """`--config` merges a nested mapping, but reads its values as strings: numbers need a file."""
    base = ["-n", f"--configfile={workdir / 'config.yaml'}"]
    target = "results/synthetic/prepared/annotations.parquet"
    as_strings = snakemake(workdir, *base, "--config", "datasets={synthetic: {synth_ids: 30}}", "--", target)
    assert as_strings.returncode != 0
    err = as_strings.stdout + as_strings.stderr
    assert "'30' is not of type 'integer'" in err and "--configfile overlay.yaml" in err
    # A string value works and keeps the other keys of the mapping.
    moved = snakemake(workdir, *base, "--config", "datasets={synthetic: {raw: elsewhere/syn}}", "--", target)
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert "elsewhere/syn/reid_raw.json" in moved.stdout + moved.stderr
    # The documented way: an overlay file.
    (workdir / "overlay.yaml").write_text(yaml.safe_dump({"datasets": {"synthetic": {"synth_ids": 30}}}))
    overlay = snakemake(workdir, target, "-n", "-p", "--configfile", str(workdir / "config.yaml"),
                        str(workdir / "overlay.yaml"))
    assert overlay.returncode == 0, overlay.stderr[-3000:]
    assert "--ids 30" in overlay.stdout + overlay.stderr


def test_missing_experiment_file_stops_with_instructions(workdir):
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["experiments_dir"] = "presets"
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake(workdir, "-n", f"--configfile={workdir / 'config.yaml'}", "results/synthetic/metrics.parquet")
    assert result.returncode != 0
    err = result.stdout + result.stderr
    assert "experiment file 'presets/tiny_tbps_clip_simplified.yaml' not found" in err
    assert "experiments_dir" in err and "Traceback" not in err


def test_workflow_catalog_file_parses_and_names_existing_files():
    """.snakemake-workflow-catalog.yml in the format the catalog reads (usage: mandatory-flags,
    software-stack-deployment, report), naming only files that exist; the catalog's other
    requirements of a "standardized usage" workflow: config/README.md, a LICENSE."""
    import tomllib

    catalog = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    assert set(catalog) == {"usage"}
    usage = catalog["usage"]
    assert set(usage) == {"mandatory-flags", "software-stack-deployment", "report"}
    flags = usage["mandatory-flags"]
    assert isinstance(flags["desc"], str) and isinstance(flags["flags"], (list, str))
    stack = usage["software-stack-deployment"]
    assert set(stack) == {"conda", "apptainer", "apptainer+conda"}
    assert all(isinstance(v, bool) for v in stack.values()) and usage["report"] is True
    named = re.findall(r"`([\w./-]+/[\w./-]+)`", flags["desc"])
    assert "config/README.md" in named
    for path in named:
        if "<" not in path:
            assert (REPO / path).exists(), path
    # conda: true holds only if every rule that runs a command has a conda env.
    rules = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    shells = re.findall(r"^ +shell:$", rules, flags=re.M)
    assert len(shells) == len(re.findall(r'^ +conda:\n +"../../envs/tbps.yaml"$', rules, flags=re.M))
    assert (REPO / "config" / "README.md").read_text().startswith("# Configuration")
    license_text = (REPO / "LICENSE").read_text()
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]["text"]
    assert declared == "MIT" and license_text.startswith("MIT License")
    assert "Copyright (c) the tbps authors" in license_text


# Every stage name a user may type after --until (README, "Rerunning one stage"): the rules
# that must be planned, and rules of later stages that must not.
UNTIL = {
    "synth": ({"synth"}, {"prepare"}),
    "prepare": ({"synth", "prepare"}, {"augment", "shard_plan"}),
    "augment": ({"prepare", "augment"}, {"shard_plan", "train"}),
    "shards": ({"augment", "shard_plan", "shards_present", "shard_manifest", "shards"}, {"train"}),
    "train": ({"shard_manifest", "train"}, {"evaluate"}),
    "evaluate": ({"train", "evaluate"}, {"plot_training", "plot_metrics", "plots", "collect"}),
    "plots": ({"evaluate", "plot_training", "plot_examples", "plot_metrics", "plot_train_log", "plots"},
              {"collect"}),
    "collect": ({"shards", "plots", "collect"}, set()),
}


@pytest.mark.parametrize("stage", list(UNTIL))
def test_until_stops_after_each_stage(workdir, stage):
    # The targets go before --until, which takes every word after it.
    result = snakemake(workdir, "-n", f"--configfile={workdir / 'config.yaml'}", "results/synthetic/metrics.parquet",
                       "--until", stage)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    planned = set(planned_jobs(result.stdout + result.stderr))
    included, excluded = UNTIL[stage]
    assert included <= planned, (stage, planned)
    assert not planned & excluded, (stage, planned)


def test_readme_lists_exactly_the_tested_until_stages():
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Rerunning one stage\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
    assert listed == list(UNTIL)


def test_workflow_runs_as_a_snakemake_module(tmp_path):
    """A project that uses the checkout as a module with its own config, the presets beside the
    module (README, "As a Snakemake module"): a dry run of the whole pipeline and of one stage."""
    # Not a folder named `tbps` beside the project's Snakefile: Snakemake puts that folder on
    # sys.path, where it would shadow the installed package (README says so).
    module_dir = tmp_path / "workflows" / "tbps"
    module_dir.mkdir(parents=True)
    for name in CHECKOUT_FILES:
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, module_dir / name)
    # Only what differs from the module's defaults (the schema fills in the rest).
    cfg = {
        "experiments_dir": "workflows/tbps/config/experiments",
        "datasets": {"synthetic": {"raw": "data/synthetic", "synth_ids": 30, "experiments": ["tiny_tbps_clip"]}},
    }
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "Snakefile").write_text(
        'configfile: "config/config.yaml"\n\n\n'
        'module tbps:\n    snakefile:\n        "workflows/tbps/Snakefile"\n    config:\n        config\n\n\n'
        "use rule * from tbps\n"
    )

    def dry_run(*args):
        result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "results/synthetic/metrics.parquet",
                                 *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        return result.stdout + result.stderr

    out = dry_run()
    plan = planned_jobs(out)
    assert {"synth", "prepare", "shard_plan", "train", "evaluate", "plots", "collect"} <= set(plan)
    # The project's config reaches the jobs: its raw folder, synth ids and experiment.
    assert "tbps synth --format cuhk-pedes --out data/synthetic --ids 30" in out
    assert "input: workflows/tbps/config/experiments/tiny_tbps_clip.yaml" in out
    assert plan["train"] == {f"results/synthetic/tiny_tbps_clip/train/{name}"
                             for name in ("final.pt", "train_log.parquet", "val_curve.parquet")}
    # A stage name works with --until through the module too.
    assert set(planned_jobs(dry_run("--until", "shards"))) == {
        "synth", "prepare", "augment", "shard_plan", "shards_present", "shard_manifest", "shards"}
