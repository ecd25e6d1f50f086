"""The Slurm profile against a real scheduler.

A module fixture starts a one-node Slurm cluster on this machine (scripts/slurm-local.sh: munged,
slurmctld, slurmd, two fake GPUs) and always stops it again by PID. The test then runs the
pipeline on a small synthetic dataset and a two-row study of the paper (README, "The paper's
study": two independent train + evaluate jobs, with --keep-going as on a cluster) through
`--profile` = workflow/profiles/slurm (plus one GPU request, see `_test_profile`) and checks that
every job went through sbatch, ran and finished under Slurm, that GPU requests become `--gpus=N`
(and `gpu: 0` none at all), and that a job asking for GPUs gets them (CUDA_VISIBLE_DEVICES)
together with the torchrun launcher.

Needs root (or passwordless sudo) to start the daemons; installs Slurm with apt-get when it is
missing. Skipped only outside CI when that is impossible; with CI=true it fails instead.
Run alone with `-s` to see the job table and the phase timings:
    .venv/bin/python -m pytest tests/test_slurm.py -s
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm-local.sh"
PROFILE = REPO / "workflow" / "profiles" / "slurm" / "config.yaml"
SLURM_DIR = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/slurm-local"))
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}

FAKE_GPUS = 2  # the GPU probe asks for both: the multi-GPU (torchrun) path
RUN_TIMEOUT_S = 900  # hard limit of the Snakemake run (timeout -s KILL): Snakemake can hang
SPLITS = ("train", "val", "test")
DATA_TARGETS = [f"results/synthetic/shards/{split}/manifest.json" for split in SPLITS]
FULL_TARGETS = ["results/synthetic/metrics.parquet"]
PROBE_TARGET = "results/slurm_gpu_probe.txt"
TEST_EXPERIMENT = "tiny_slurm"  # tiny_*: the CPU path, gpu: 0


def _full_pipeline_available() -> bool:
    """The whole pipeline (train/evaluate/collect) once its tiny CPU experiment exists."""
    return (REPO / "config/experiments/tiny_tbps_clip.yaml").is_file() and (
        REPO / "workflow/rules/collect.smk"
    ).is_file()




def _stamp_rules() -> set[str]:
    """Rules marked `localrule: True` (stamps without a command): they never go through sbatch."""
    stamps = set()
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        rule = None
        for line in smk.read_text().splitlines():
            if match := re.match(r"rule (\w+):", line):
                rule = match.group(1)
            elif rule and line.strip() == "localrule: True":
                stamps.add(rule)
    return stamps


STAMP_RULES = _stamp_rules()

# What the test builds: one variable, so extending the run is a one-line change.
TARGETS = FULL_TARGETS if _full_pipeline_available() else DATA_TARGETS

# A two-row study: Table 1's CLIP and + GlobalGrad (config/study.yaml), two runs, on the tiny
# stand-ins of the synthetic set cut to one short epoch like EXPERIMENT (batch 320 x 0.05 = 16).
STUDY_TARGET = "results/synthetic/study.parquet"
STUDY_ROWS = ("clip", "global_grad")
STUDY_FILE = "slurm_study.yaml"
STUDY_SCHEDULE = {"optim": {"epochs": 1}, "data": {"num_workers": 0}, "train": {"eval_every_epoch": False}}

# Small enough for a few minutes on 2 cores, big enough for one training batch.
OVERLAY = {
    "datasets": {
        "synthetic": {
            "raw": "resources/raw/synthetic",
            "format": "cuhk-pedes",
            "synth_ids": 8,
            "synth_seed": 0,
            "experiments": [TEST_EXPERIMENT],
            "augment_backend": "none",
            "study": {
                "backbones": {"ViT-B-32": "_study_tiny_rn", "ViT-B-16": "_study_tiny_vit"},
                "schedule": "_study_slurm",
                "batch_scale": 0.05,
            },
        }
    },
    # One shard per split.
    "shards": {"max_samples": 1000},
    "study": {"file": STUDY_FILE},
}
# The tiny recipe cut to one short epoch: the test is about scheduling, not learning.
# (Not train.max_steps: a run stopped by it writes no final.pt, by design.)
EXPERIMENT = {
    "description": "tiny TBPS-CLIP cut to one epoch (tests/test_slurm.py)",
    "inherit": ["tiny_tbps_clip"],
    "optim": {"epochs": 1},
    "data": {"batch_size": 16, "num_workers": 0},
}
# A rule outside the pipeline that asks for every fake GPU (with CPUs per GPU, like train) and
# records what the job's processes see.
PROBE_SNAKEFILE = f"""\
include: "Snakefile"


rule slurm_gpu_probe:
    output:
        "{PROBE_TARGET}",
    params:
        launcher=get_launcher,
    resources:
        gpu={FAKE_GPUS},
        cpus_per_gpu=2,
    shell:
        "echo 'launcher={{params.launcher}}' > {{output}};"
        " env | grep -E '^(CUDA_VISIBLE_DEVICES|SLURM_GPUS_ON_NODE|SLURM_JOB_ID)=' | sort >> {{output}}"
"""

SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
SBATCH_CALL = re.compile(r"sbatch call: (.*)")
FINISHED = re.compile(r"Finished jobid: (\d+) \(Rule: (\w+)\)")


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} -- CI=true, so the Slurm test must run, not skip")
    pytest.skip(reason)


def _run(cmd, timeout, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def _log_tails(lines: int = 30) -> str:
    out = []
    for name in ("slurmctld.log", "slurmd.log"):
        path = SLURM_DIR / "log" / name
        if path.is_file():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- last {len(tail)} lines of {path}\n" + "\n".join(tail))
    return "\n".join(out)


def _admin_prefix(env: dict[str, str]) -> list[str]:
    """How to run the start/stop script as root: directly, or through passwordless sudo."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and _run(["sudo", "-n", "true"], 30).returncode == 0:
        return ["sudo", "-n", "env", *(f"{k}={v}" for k, v in env.items())]
    _unavailable("starting slurmd needs root or passwordless sudo")
    return []  # unreachable


@pytest.fixture(scope="module")
def slurm_cluster():
    """A fresh one-node cluster with FAKE_GPUS fake GPUs; stopped by PID afterwards, always."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])  # daemons live in sbin
    installed = all(shutil.which(b, path=path) for b in ("slurmctld", "slurmd", "sbatch", "squeue", "munged"))
    if not installed and not shutil.which("apt-get"):
        _unavailable("Slurm is not installed and there is no apt-get to install it")
    if installed and _run(["squeue", "-h"], 30).returncode == 0:
        _unavailable(
            "a Slurm controller is already answering on this machine; the test starts its own "
            "cluster (stop the other one, e.g. `sudo scripts/slurm-local.sh stop`)"
        )
    knobs = {
        "SLURM_LOCAL_FAKE_GPU": str(FAKE_GPUS),
        # The profile asks for up to 32 GB and 8 CPUs per job; announce enough that sbatch
        # accepts the requests on a small CI machine (not enforced: no cgroups).
        "SLURM_LOCAL_MEMORY_MB": "65536",
        "SLURM_LOCAL_CPUS": str(max(8, os.cpu_count() or 1)),
        "SLURM_LOCAL_WAIT": "90",
    }
    prefix = _admin_prefix(knobs)
    env = {**os.environ, **knobs}
    t0 = time.monotonic()
    try:
        started = _run([*prefix, "bash", str(SCRIPT), "start"], 600, env=env)
    except subprocess.TimeoutExpired:
        started = None
    start_s = time.monotonic() - t0
    try:
        if started is None or started.returncode != 0:
            detail = "timed out after 600 s" if started is None else started.stdout + started.stderr
            pytest.fail(f"scripts/slurm-local.sh start failed:\n{detail}\n{_log_tails()}")
        print(f"\n[slurm] cluster up in {start_s:.1f} s (install included if it was needed)")
        yield {"start_s": start_s}
    finally:
        t1 = time.monotonic()
        stopped = _run([*prefix, "bash", str(SCRIPT), "stop"], 180, env=env)
        print(f"[slurm] cluster stopped in {time.monotonic() - t1:.1f} s (rc {stopped.returncode})")
        left = [d for d in ("slurmctld", "slurmd") if (SLURM_DIR / "run" / f"{d}.pid").exists()]
        assert stopped.returncode == 0 and not left, f"stop failed:\n{stopped.stdout}{stopped.stderr}"


def _test_profile(workdir: Path) -> Path:
    """The project's slurm profile, unchanged, plus `gpu: 1` on the cheap shard rule, so that a
    real pipeline stage takes the GPU request path. (A command-line --set-resources would replace
    the profile's whole set-resources block instead of adding to it.)"""
    profile = yaml.safe_load(PROFILE.read_text())
    profile.setdefault("set-resources", {}).setdefault("shard", {})["gpu"] = 1
    out = workdir / "test-profile"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return out


def _workdir(tmp_path: Path) -> Path:
    """A copy of the workflow (its paths are relative to the working directory)."""
    workdir = tmp_path / "wf"
    workdir.mkdir()
    shutil.copy2(REPO / "Snakefile", workdir / "Snakefile")
    for folder in ("workflow", "config", "envs"):
        shutil.copytree(REPO / folder, workdir / folder)
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(OVERLAY, sort_keys=False))
    (workdir / "config" / "experiments" / f"{TEST_EXPERIMENT}.yaml").write_text(
        yaml.safe_dump(EXPERIMENT, sort_keys=False)
    )
    (workdir / "Snakefile.slurmtest").write_text(PROBE_SNAKEFILE)
    (workdir / "config" / "experiments" / "_study_slurm.yaml").write_text(yaml.safe_dump(STUDY_SCHEDULE))
    study = yaml.safe_load((REPO / "config" / "study.yaml").read_text())
    study["tables"] = {"tricks": {**study["tables"]["tricks"], "rows": list(STUDY_ROWS)}}
    study["rows"] = {row: study["rows"][row] for row in STUDY_ROWS}
    (workdir / STUDY_FILE).write_text(yaml.safe_dump(study, allow_unicode=True, sort_keys=False))
    return workdir


def _slurm_jobs() -> dict[str, dict[str, str]]:
    """Every job slurmctld still knows (finished ones stay for MinJobAge)."""
    fmt = "JobID:|,State:|,Comment:|,tres-per-job:|,TimeUsed:|"
    out = _run(["squeue", "--states=all", "-h", "-O", fmt], 60).stdout
    jobs = {}
    for line in out.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) >= 5:
            jobs[fields[0]] = dict(zip(("state", "comment", "tres", "elapsed"), fields[1:5], strict=True))
    return jobs


def _job_gres(job_id: str) -> str:
    out = _run(["scontrol", "-d", "show", "job", job_id], 60).stdout
    match = re.search(r"JOB_GRES=(\S+)", out)
    return match.group(1) if match else "?"


def _failure_context(workdir: Path, log: str) -> str:
    slurm_logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    parts = ["--- last 60 lines of the Snakemake output", "\n".join(log.splitlines()[-60:])]
    for path in slurm_logs[-3:]:
        parts.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
    parts.append(_log_tails())
    return "\n".join(parts)


def test_pipeline_runs_through_sbatch(slurm_cluster, tmp_path):
    workdir = _workdir(tmp_path)
    profile = _test_profile(workdir)
    cmd = [
        "timeout", "-s", "KILL", str(RUN_TIMEOUT_S),
        sys.executable, "-m", "snakemake", *TARGETS, STUDY_TARGET, PROBE_TARGET,
        "--snakefile", "Snakefile.slurmtest",
        "--profile", str(profile),
        # As on a cluster: a failed study row would not stop the others.
        "--keep-going",
        # Only for speed on a test cluster: first status check after 2 s instead of 20 s.
        "--slurm-init-seconds-before-status-checks", "2",
        "--verbose",  # logs each sbatch call
        "--configfile", "overlay.yaml",
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env={**os.environ})
    run_s = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    (workdir / "snakemake-run.log").write_text(log)
    if proc.returncode in (124, 137, -9):
        pytest.fail(f"Snakemake was killed after {RUN_TIMEOUT_S} s\n{_failure_context(workdir, log)}")
    assert proc.returncode == 0, f"Snakemake failed (rc {proc.returncode})\n{_failure_context(workdir, log)}"

    for target in [*TARGETS, STUDY_TARGET, PROBE_TARGET]:
        assert (workdir / target).is_file(), f"{target} was not built"
    # The study: each row its own run (train and evaluate jobs of their own), both in the table.
    study = pl.read_parquet(workdir / STUDY_TARGET).filter(pl.col("direction") == "t2i")
    assert study.select("row", "run", "status").rows() == [(row, f"study_{row}", "done") for row in STUDY_ROWS]

    # Every job of the run was submitted with sbatch, ran under Slurm and completed there; only
    # the stamp rules (local rules without a command) stay on this host.
    submitted = {m.group(1): (m.group(2), m.group(3)) for m in SUBMITTED.finditer(log)}
    finished = {m.group(1): m.group(2) for m in FINISHED.finditer(log)}
    assert finished, "no finished jobs in the Snakemake output"
    local = {job for job, rule in finished.items() if rule in STAMP_RULES}
    assert local and set(finished) - local == set(submitted), (
        f"jobs that finished without sbatch: {sorted(set(finished) - local - set(submitted))}"
    )
    rules = set(finished.values())
    expected = {"synth", "prepare", "augment", "shard_plan", "shard", "shard_manifest", "slurm_gpu_probe",
                "train", "evaluate", "study_table", "study_report", "study"}
    if TARGETS == FULL_TARGETS:
        expected |= {"train", "evaluate", "collect"}
    assert expected <= rules, f"rules missing from the run: {sorted(expected - rules)}"
    jobs = _slurm_jobs()
    for smk_id, (slurm_id, slurm_log) in submitted.items():
        assert jobs.get(slurm_id, {}).get("state") == "COMPLETED", (
            f"Slurm job {slurm_id} ({finished[smk_id]}): {jobs.get(slurm_id)}"
        )
        assert Path(slurm_log).is_file(), f"Slurm log of job {slurm_id} was not kept: {slurm_log}"

    # GPU requests: gpu >= 1 -> --gpus=N; gpu: 0 (augment without back-translation, tiny_*
    # train/evaluate, the study's runs on the tiny stand-ins) -> no --gpus flag at all, and never
    # --gpus=0.
    calls = SBATCH_CALL.findall(log)
    assert len(calls) == len(submitted), f"{len(calls)} sbatch calls logged for {len(submitted)} jobs"
    for call in calls:
        comment = re.search(r"--comment '?(rule_\w+?)'?(?:\s|$)", call)
        assert comment, f"no rule comment in: {call}"
        gpus = re.findall(r"--gpus=(\S+)", call)
        if comment.group(1).startswith("rule_shard_wildcards"):
            assert gpus == ["1"], call
        elif comment.group(1).startswith("rule_slurm_gpu_probe"):
            assert gpus == [str(FAKE_GPUS)] and "--cpus-per-gpu=2" in call, call
        else:
            assert gpus == [] and "--cpus-per-task=" in call, call

    # Slurm allocated the GPUs (scontrol), and the job's processes see them.
    by_rule = {finished[smk]: slurm for smk, (slurm, _) in submitted.items()}
    assert _job_gres(by_rule["shard"]) == "gpu:1"
    assert _job_gres(by_rule["prepare"]) == "(null)"
    probe = dict(
        line.split("=", 1) for line in (workdir / PROBE_TARGET).read_text().splitlines() if "=" in line
    )
    assert probe.get("CUDA_VISIBLE_DEVICES") == ",".join(str(i) for i in range(FAKE_GPUS)), probe
    assert probe.get("SLURM_GPUS_ON_NODE") == str(FAKE_GPUS), probe
    assert probe.get("launcher") == f"torchrun --standalone --nproc_per_node {FAKE_GPUS} -m tbps", probe

    # For the notes: what ran where, and how long each phase took.
    print(f"[slurm] targets {' '.join(TARGETS)} + {STUDY_TARGET} ({len(STUDY_ROWS)} rows) + {PROBE_TARGET}")
    print(f"[slurm] snakemake run: {run_s:.1f} s for {len(submitted)} sbatch jobs")
    print(f"{'slurm id':>8}  {'state':<10} {'elapsed':>8}  {'gres':<12} job")
    for slurm_id, _ in sorted(submitted.values(), key=lambda v: int(v[0])):
        job = jobs[slurm_id]
        print(f"{slurm_id:>8}  {job['state']:<10} {job['elapsed']:>8}  {job['tres']:<12} {job['comment']}")
