"""The GPU check in one command: sanity, training throughput, exactness, evaluation, loader, end to end.

    python benchmarks/gpu_check.py --size full --out "$OUT/gpu-check"     # on the GPU machine
    .venv/bin/python benchmarks/gpu_check.py --size tiny                  # here, on the CPU: every path

Parts run in order of value, each in its own process under its own time cap (and under the
remaining ``--budget-s``), and ``summary.json`` / ``summary.md`` in the output folder are rewritten
after every part, so a run cut short still returns what it measured. Each part also leaves its
own JSON and its log there. The parts:

1. ``sanity``: GPU name, driver, torch / CUDA / cuDNN versions, a bf16 matmul's TFLOP/s.
2. ``train``: ``benchmarks/train.py --preset-sweep`` (synthetic tensors): both presets, ViT-B/16
   224² random init, at the largest unchunked batch that fits and at batch 320 (gradient cache
   where needed): samples/s, step time, peak memory, MFU from the counted FLOPs.
3. ``exactness``: ``benchmarks/exactness.py``: chunked vs unchunked gradients, resumed vs
   uninterrupted 2-step run, in bf16 and fp32, with the device's own run-to-run floor.
4. ``eval``: ``benchmarks/embed.py`` images/s and captions/s at batch 256, fp32 and bf16;
   ``benchmarks/eval_ranking.py`` ranking time at 19,848 x 19,848.
5. ``data``: the synthetic dataset as the pipeline makes it (``python -m tbps synth``, ``prepare``,
   ``augment``, ``shards plan|write|manifest``); ``augment`` with backend ``none`` (the caption itself as
   its paraphrase), because the demo's synonyms backend needs nlpaug, which the GPU machine lacks.
6. ``loader``: ``benchmarks/train.py`` with the real shard loader (N workers), ``loader`` and
   ``loader-only`` modes, CPU augmentation and ``data.image_aug.on_device``, at the chunk part 2 found.
7. ``eval-split``: ``embed.py`` through ``tbps.evaluate.encode_split`` on the test shards, fp32 and
   bf16, and how far the metrics move.
8. ``e2e``: ``python -m tbps train`` (a non-tiny experiment for a few hundred steps, then resumed
   to more steps), ``evaluate`` in fp32 and bf16, ``plots training``, ``collect``.

Parts 1-4, 6 and 7 run with polars, snakemake, nltk, spacy, nlpaug and transformers made unimportable
(the GPU machine has none of them); parts 5 and 8 are the project's own stages, which write Parquet with
polars (carried as a wheel), and are skipped (said so) where polars is missing; they too run without the
others. Snakemake is never used: part 8 is the workflow's command sequence.
Parts that need CUDA for a figure say "skipped: no CUDA" on a CPU rather than give a number.
This script imports nothing outside the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
EXPERIMENTS = ROOT / "config" / "experiments"
# Not on the GPU machine (nor carried): the measuring parts must not import them.
ABSENT = ("snakemake", "nltk", "spacy", "nlpaug", "transformers")
FORBIDDEN = ("polars", *ABSENT)
"""What the measuring parts run without; the pipeline stages (parts data and e2e) get polars, which is carried."""
PARTS = ("sanity", "train", "exactness", "eval", "data", "loader", "eval-split", "e2e")
# Paper's CUHK-PEDES schedule (docs/method.md#optimisation): 5 epochs of floor(68,126 / 320) = 212 steps.
CUHK_STEPS = 1_060

# Runs `python -c BLOCKER NAMES script args...` (or `... NAMES -m module args...`) as __main__, with the
# modules NAMES unimportable, as on the GPU machine (DataLoader workers fork and inherit it).
BLOCKER = (
    "import os, runpy, sys\n"
    "FORBIDDEN = set(sys.argv[1].split(','))\n"
    "class Forbid:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in FORBIDDEN:\n"
    "            raise ModuleNotFoundError(f'{name} is not installed on the GPU machine (benchmarks/gpu_check.py)')\n"
    "sys.meta_path.insert(0, Forbid())\n"
    "if sys.argv[2] == '-m':\n"
    "    sys.argv = [sys.argv[3], *sys.argv[4:]]\n"
    "    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
    "else:\n"
    "    sys.argv = sys.argv[2:]\n"
    "    sys.path.insert(0, os.path.dirname(sys.argv[0]))\n"
    "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
)

SIZES = {
    "full": {
        "budget_s": 450,
        "caps": {"sanity": 60, "train": 170, "exactness": 90, "eval": 75, "data": 90, "loader": 200,
                 "eval-split": 60, "e2e": 200},
        "matmul": 8192,
        "presets": ("tbps_clip_simplified", "tbps_clip"), "overrides": ("model.pretrained=null",),
        "sweep_batches": "640,512,448,384,320,256,192,128,96,64,32", "target": 320, "steps": 6, "warmup": 3,
        "oom_above": None,
        "exact": {"experiment": "tbps_clip", "batch": 64, "chunk": 16},
        "eval_experiment": "tbps_clip", "eval_batch": 256, "eval_batches": 10, "ranking_size": 19_848,
        "synth_ids": 400, "synth_extra": [], "shard_samples": 128, "workers": 15,
        "e2e": {"experiment": "tbps_clip_simplified", "steps": 200, "first": 100, "batch": 320, "epochs": 20},
    },
    "tiny": {
        "budget_s": 3000,
        "caps": dict.fromkeys(PARTS, 600),
        "matmul": 256,
        "presets": ("tiny_tbps_clip_simplified", "tiny_tbps_clip"), "overrides": (),
        # A simulated OOM above 8 rows makes batch 16 need the gradient cache, as 320 does on a GPU.
        "sweep_batches": "16,8", "target": 16, "steps": 1, "warmup": 1, "oom_above": 8,
        # The tiny ViT: the tiny ResNet's BatchNorm takes statistics per chunk, so chunking changes its gradients.
        "exact": {"experiment": "tiny_tbps_clip", "batch": 8, "chunk": 4, "set": ["model.name=TBPS-Tiny-ViT"]},
        "eval_experiment": "tiny_tbps_clip", "eval_batch": 32, "eval_batches": 2, "ranking_size": 2_000,
        "synth_ids": 24, "synth_extra": ["--val-ids", "6", "--test-ids", "6"], "shard_samples": 48, "workers": 1,
        "e2e": {"experiment": "tiny_tbps_clip_simplified", "steps": 3, "first": 2, "batch": 16, "epochs": 2},
    },
}


class Check:
    """One run of the check: where it writes, what it has measured so far, the time left."""

    def __init__(self, args):
        self.args = args
        self.size = SIZES[args.size]
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + (args.budget_s or self.size["budget_s"])
        self.summary = {"size": args.size, "argv": sys.argv[1:], "python": platform.python_version(),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parts": {}}
        self.device = args.device
        self.data = self.out / "data"

    # ------------------------------------------------------------------ running
    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, part: str, argv: list[str], *, forbid: bool = True, cap: float | None = None,
            log_name: str | None = None) -> dict:
        """Run one command of a part in its own process group, killed at the cap; its output goes to the log."""
        cap = min(cap or self.size["caps"][part], self.remaining())
        log = self.out / f"{log_name or part}.log"
        if cap < 5:
            return {"status": "skipped: time budget spent", "argv": argv}
        command = [sys.executable, "-c", BLOCKER, ",".join(FORBIDDEN if forbid else ABSENT), *argv]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        start = time.monotonic()
        with open(log, "a") as handle:
            handle.write(f"$ {' '.join(argv)}\n")
            handle.flush()
            proc = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            try:
                code = proc.wait(timeout=cap)
                status = "ok" if code == 0 else f"failed: exit {code}"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                status = f"timeout: killed after {cap:.0f} s (time cap)"
        return {"status": status, "argv": argv, "seconds": round(time.monotonic() - start, 1), "log": str(log)}

    def record(self, part: str, result: dict) -> None:
        self.summary["parts"][part] = result
        self.summary["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.summary["gpu_hours"] = gpu_hours(self.summary["parts"])
        _write_json(self.out / "summary.json", self.summary)
        (self.out / "summary.md").write_text(render_markdown(self.summary))
        print(f"[gpu_check] {part}: {result.get('status')}", flush=True)

    def load(self, name: str) -> dict | None:
        path = self.out / f"{name}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    @property
    def cuda(self) -> bool:
        sanity = self.summary["parts"].get("sanity", {}).get("data") or {}
        return bool(sanity.get("cuda_available")) and self.device != "cpu"

    def bench_device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    def commands(self, results: list[dict]) -> dict:
        failed = [r for r in results if r["status"] != "ok"]
        return {"status": failed[0]["status"] if failed else "ok", "commands": results}

    # ------------------------------------------------------------------ parts
    def part_sanity(self) -> dict:
        result = self.run("sanity", [str(Path(__file__)), "--sanity-worker", str(self.out / "sanity.json"),
                                     "--matmul", str(self.size["matmul"]), "--device", self.device])
        return {**result, "data": self.load("sanity")}

    def part_train(self) -> dict:
        s = self.size
        argv = [str(BENCH / "train.py"), "--preset-sweep", "--device", self.bench_device(), "--modes", "synthetic",
                "--sweep-presets", ",".join(s["presets"]), "--sweep-batches", s["sweep_batches"],
                "--sweep-target", str(s["target"]), "--steps", str(s["steps"]), "--warmup", str(s["warmup"]),
                "--out", str(self.out / "train.json")]
        if s["oom_above"]:
            argv += ["--simulate-oom-above", str(s["oom_above"])]
        result = self.run("train", argv)
        data = self.load("train")
        if data and not self.cuda:
            data["mfu"] = "skipped: no CUDA (no bf16 peak to divide by)"
        return {**result, "data": data}

    def part_exactness(self) -> dict:
        e = self.size["exact"]
        argv = [str(BENCH / "exactness.py"), "--experiment", str(EXPERIMENTS / f"{e['experiment']}.yaml"),
                "--batch", str(e["batch"]), "--chunk", str(e["chunk"]), "--device", self.bench_device(),
                "--out", str(self.out / "exactness.json")]
        for override in [*self.size["overrides"], *e.get("set", [])]:
            argv += ["--set", override]
        return {**self.run("exactness", argv), "data": self.load("exactness")}

    def part_eval(self) -> dict:
        s = self.size
        embed = [str(BENCH / "embed.py"), "--experiment", str(EXPERIMENTS / f"{s['eval_experiment']}.yaml"),
                 "--device", self.bench_device(), "--batch", str(s["eval_batch"]), "--batches", str(s["eval_batches"]),
                 "--precision", "fp32,bf16", "--out", str(self.out / "eval-embed.json")]
        for override in s["overrides"]:
            embed += ["--set", override]
        ranking = [str(BENCH / "eval_ranking.py"), "--size", str(s["ranking_size"]), "--device", self.bench_device(),
                   "--out", str(self.out / "eval-ranking.json")]
        results = [self.run("eval", embed, log_name="eval-embed"), self.run("eval", ranking, log_name="eval-ranking")]
        return {**self.commands(results), "data": {"embed": self.load("eval-embed"), "ranking": self.load("eval-ranking")}}

    def manifests(self) -> dict[str, Path]:
        return {split: self.data / "shards" / split / "manifest.json" for split in ("train", "val", "test")}

    def part_data(self) -> dict:
        if not _importable("polars"):
            return {"status": "skipped: polars is not installed (the data stages write Parquet with it)"}
        s, raw, d = self.size, self.data / "raw", self.data
        shutil.rmtree(d, ignore_errors=True)
        steps = [
            ["-m", "tbps", "synth", "--format", "cuhk-pedes", "--out", str(raw), "--ids", str(s["synth_ids"]),
             "--seed", "0", *s["synth_extra"]],
            ["-m", "tbps", "prepare", "--dataset", "synthetic", "--raw", str(raw), "--out", str(d / "annotations.parquet"),
             "--rejects", str(d / "rejects.parquet"), "--summary", str(d / "summary.json")],
            # Backend none (caption_aug = the caption): the synonyms backend needs nlpaug and back-translation
            # needs transformers and its models, none of which the GPU machine has.
            ["-m", "tbps", "augment", "--captions", str(d / "annotations.parquet"), "--out",
             str(d / "captions_aug.parquet"), "--backend", "none", "--seed", "0"],
        ]
        results = []
        for argv in steps:
            results.append(self.run("data", argv, forbid=False))
            if results[-1]["status"] != "ok":
                return self.commands(results)
        for split, manifest in self.manifests().items():
            plan = manifest.parent / "plan.json"
            argv = ["-m", "tbps", "shards", "plan", "--captions", str(d / "annotations.parquet"), "--split", split,
                    "--raw", str(raw), "--out", str(plan), "--max-samples", str(s["shard_samples"]), "--seed", "0"]
            if split == "train":  # as the workflow: the paraphrases travel with the train split only
                argv += ["--augmented", str(d / "captions_aug.parquet")]
            results.append(self.run("data", argv, forbid=False))
            if results[-1]["status"] != "ok":
                return self.commands(results)
            for index, shard in enumerate(json.loads(plan.read_text())["shards"]):
                results.append(self.run("data", ["-m", "tbps", "shards", "write", "--plan", str(plan), "--shard-index",
                                                 str(index), "--raw", str(raw), "--out", str(manifest.parent / shard["name"])],
                                        forbid=False))
                if results[-1]["status"] != "ok":
                    return self.commands(results)
            results.append(self.run("data", ["-m", "tbps", "shards", "manifest", "--plan", str(plan), "--out",
                                             str(manifest)], forbid=False))
            if results[-1]["status"] != "ok":
                return self.commands(results)
        out = self.commands(results)
        out["commands"] = f"{len(results)} commands, {sum(r['status'] == 'ok' for r in results)} ok"
        return out

    def loader_chunk(self, preset: str) -> int:
        """The chunk part 2 used for the target batch (0 = it fit unchunked)."""
        rows = (self.load("train") or {}).get("rows", [])
        for row in rows:
            if row.get("experiment") == preset and row.get("status") == "ok" and row["batch"] == self.size["target"]:
                return int(row["chunk"])
        return 0

    def part_loader(self) -> dict:
        manifest = self.manifests()["train"]
        if not manifest.is_file():
            return {"status": "skipped: no train shards (part data)"}
        s, results, data = self.size, [], {}
        for preset in s["presets"]:
            for on_device in (False, True):
                name = f"loader-{preset}{'-device-aug' if on_device else ''}"
                argv = [str(BENCH / "train.py"), "--experiment", str(EXPERIMENTS / f"{preset}.yaml"),
                        "--device", self.bench_device(), "--manifest", str(manifest), "--batch", str(s["target"]),
                        "--chunk", str(self.loader_chunk(preset)), "--workers", str(s["workers"]),
                        "--modes", "synthetic,loader,loader-only", "--steps", str(max(s["steps"], 2)),
                        "--warmup", str(s["warmup"]), "--out", str(self.out / f"{name}.json")]
                argv += ["--device-aug"] if on_device else []
                for override in s["overrides"]:
                    argv += ["--set", override]
                cap = self.size["caps"]["loader"] / (2 * len(s["presets"]))
                results.append(self.run("loader", argv, cap=cap, log_name=name))
                data[name] = loader_ratio(self.load(name))
        return {**self.commands(results), "data": data}

    def part_eval_split(self) -> dict:
        manifest = self.manifests()["test"]
        if not manifest.is_file():
            return {"status": "skipped: no test shards (part data)"}
        s = self.size
        argv = [str(BENCH / "embed.py"), "--experiment", str(EXPERIMENTS / f"{s['eval_experiment']}.yaml"),
                "--device", self.bench_device(), "--batch", str(s["eval_batch"]), "--batches", "1", "--warmup", "1",
                "--precision", "fp32,bf16", "--manifest", str(manifest), "--workers", str(s["workers"]),
                "--out", str(self.out / "eval-split.json")]
        for override in s["overrides"]:
            argv += ["--set", override]
        return {**self.run("eval-split", argv), "data": self.load("eval-split")}

    def part_e2e(self) -> dict:
        if not _importable("polars"):
            return {"status": "skipped: polars is not installed (train logs, metrics and collect write Parquet)"}
        m = self.manifests()
        if not m["train"].is_file():
            return {"status": "skipped: no shards (part data)"}
        e, root = self.size["e2e"], self.out / "e2e"
        shutil.rmtree(root, ignore_errors=True)
        # The workflow's layout (results/{dataset}/{experiment}/...), which collect reads val curves' owners from.
        run = root / "synthetic" / e["experiment"]
        overrides = [*self.size["overrides"], f"data.batch_size={e['batch']}", f"optim.epochs={e['epochs']}",
                     f"data.num_workers={self.size['workers']}", f"train.checkpoint_every_steps={e['first']}"]
        train = ["-m", "tbps", "train", "--experiment", str(EXPERIMENTS / f"{e['experiment']}.yaml"), "--train",
                 str(m["train"]), "--val", str(m["val"]), "--out", str(run / "train"), "--device", self.device, "--resume"]
        evaluate = ["-m", "tbps", "evaluate", "--checkpoint", str(run / "train" / "final.pt"), "--shards", str(m["test"]),
                    "--dataset", "synthetic", "--experiment", e["experiment"], "--device", self.device,
                    "--workers", str(self.size["workers"])]
        steps = [
            # A run stopped by max_steps, then resumed from its last.pt to the end: checkpointing on the device.
            [*train, "--set", *overrides, f"train.max_steps={e['first']}"],
            [*train, "--set", *overrides, f"train.max_steps={e['steps']}"],
            [*evaluate, "--out", str(run / "eval" / "test.parquet"), "--examples", str(run / "eval" / "examples.parquet")],
            [*evaluate, "--out", str(run / "eval-bf16" / "test.parquet"), "--precision", "bf16"],
            ["-m", "tbps", "plots", "training", "--log", str(run / "train" / "train_log.parquet"), "--val-curve",
             str(run / "train" / "val_curve.parquet"), "--out", str(run / "training.png")],
            # The fp32 row only: one row per (experiment, split, direction); the bf16 row's drift is read below.
            ["-m", "tbps", "collect", "--inputs", str(run / "eval" / "test.parquet"), "--val-curves",
             str(run / "train" / "val_curve.parquet"), "--out", str(root / "synthetic" / "metrics.parquet")],
        ]
        results = []
        for argv in steps:
            results.append(self.run("e2e", argv, forbid=False))
            if results[-1]["status"] != "ok":
                break
        out = self.commands(results)
        summary = subprocess.run([sys.executable, "-c", E2E_READER, str(run)], capture_output=True, text=True, cwd=ROOT)
        out["data"] = json.loads(summary.stdout) if summary.returncode == 0 and summary.stdout.strip() else {
            "error": summary.stderr[-500:]}
        return out


# Reads the e2e run's Parquet files in a separate process (this script itself never imports polars).
E2E_READER = r"""
import json, sys
from pathlib import Path
import polars as pl
run = Path(sys.argv[1])
out = {}
log = run / "train" / "train_log.parquet"
if log.is_file():
    t = pl.read_parquet(log)
    out["train"] = {"steps": t.height, "loss_first": t["loss_total"][0], "loss_last": t["loss_total"][-1],
                    "samples_per_s_median": float(t["samples_per_s"].median())}
for name in ("eval", "eval-bf16"):
    p = run / name / "test.parquet"
    if p.is_file():
        rows = pl.read_parquet(p).filter(pl.col("direction") == "t2i").row(0, named=True)
        out[name] = {k: rows[k] for k in ("R1", "R5", "R10", "mAP", "mINP", "eval_precision", "torch_version")}
if "eval" in out and "eval-bf16" in out:
    out["metric_drift_bf16_minus_fp32"] = {k: out["eval-bf16"][k] - out["eval"][k] for k in ("R1", "R5", "R10", "mAP", "mINP")}
print(json.dumps(out))
"""


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def loader_ratio(data: dict | None) -> dict | None:
    """samples/s per mode of one loader run, and loader / synthetic: how much the data path costs."""
    if not data:
        return None
    rate = {r["mode"]: r["samples_per_s"] for r in data.get("rows", []) if "samples_per_s" in r}
    out = {"samples_per_s": rate}
    if rate.get("synthetic") and rate.get("loader"):
        out["loader_over_synthetic"] = rate["loader"] / rate["synthetic"]
    return out


def gpu_hours(parts: dict) -> dict:
    """GPU-hours of the paper's CUHK-PEDES runs from the measured step time at batch 320 (per preset):
    1,060 steps x step time. Only from CUDA figures; on a CPU it says so."""
    sanity = parts.get("sanity", {}).get("data") or {}
    if not sanity.get("cuda_available"):
        return {"status": "skipped: no CUDA"}
    rows = ((parts.get("train") or {}).get("data") or {}).get("rows", [])
    out = {"formula": f"GPU-hours = runs x {CUHK_STEPS} steps x step seconds (batch 320) / 3600, training only"}
    for row in rows:
        if row.get("status") == "ok" and row.get("batch") == 320:
            step = row["step_s"]["median"]
            out[row["experiment"]] = {"step_s": step, "gpu_hours_per_run": CUHK_STEPS * step / 3600}
    return out


def render_markdown(summary: dict) -> str:
    """The tables BENCHMARKS.md takes, from what has been measured so far."""
    parts = summary["parts"]
    lines = [f"# GPU check ({summary['size']})", "", f"started {summary['started']}, updated {summary.get('updated')}", ""]
    sanity = (parts.get("sanity") or {}).get("data") or {}
    if sanity:
        lines += ["| device | driver | torch | CUDA | cuDNN | bf16 matmul TFLOP/s |", "|---|---|---|---|---|---|",
                  f"| {sanity.get('device_name')} | {sanity.get('driver')} | {sanity.get('torch_version')} | "
                  f"{sanity.get('cuda_version')} | {sanity.get('cudnn_version')} | {sanity.get('bf16_matmul_tflops')} |", ""]
    lines += ["| part | status | seconds |", "|---|---|---|"]
    for name, part in parts.items():
        seconds = part.get("seconds") or sum(c.get("seconds", 0) for c in part.get("commands", []) if isinstance(c, dict))
        lines.append(f"| {name} | {part.get('status')} | {seconds or '-'} |")
    train_rows = list(((parts.get("train") or {}).get("data") or {}).get("rows", []))
    for name, ratio in ((parts.get("loader") or {}).get("data") or {}).items():
        if ratio:
            lines.append("")
            lines.append(f"{name}: " + ", ".join(f"{k} {v:.1f}/s" for k, v in ratio["samples_per_s"].items())
                         + (f", loader/synthetic {ratio['loader_over_synthetic']:.2f}" if "loader_over_synthetic" in ratio
                            else ""))
    if train_rows:
        lines += ["", "| experiment | mode | batch | chunk | samples/s | step median | peak memory | MFU | HFU |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in train_rows:
            if r.get("status") == "oom":
                oom = "out of memory (simulated)" if r.get("simulated") else "out of memory"
                lines.append(f"| {r['experiment']} | {r['mode']} | {r['batch']} | {r['chunk']} | {oom} | | | | |")
                continue
            mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "skipped: no CUDA"
            hfu = f"{100 * r['hfu']:.1f}%" if "hfu" in r else "skipped: no CUDA"
            lines.append(f"| {r['experiment']} | {r['mode']} | {r['batch']} | {r['chunk']} | {r['samples_per_s']:.1f} | "
                         f"{1e3 * r['step_s']['median']:.1f} ms | {r['memory']['peak_bytes'] / 2**30:.2f} GiB | {mfu} | {hfu} |")
    exact = ((parts.get("exactness") or {}).get("data") or {}).get("rows", [])
    if exact:
        lines += ["", "| exactness | precision | batch / chunk | verdict |", "|---|---|---|---|"]
        lines += [f"| {r['check']} | {r['precision']} | {r['batch']} / {r['chunk']} | {r['verdict']} |" for r in exact]
    for key, title in (("eval", "synthetic"), ("eval-split", "split")):
        data = (parts.get(key) or {}).get("data") or {}
        rows = (data.get("embed") or {}).get("rows", []) if key == "eval" else data.get("rows", [])
        if rows:
            lines += ["", f"| embedding ({title}) | precision | batch | per s |", "|---|---|---|---|"]
            lines += [f"| {r['kind']} | {r['precision']} | {r['batch']} | {r['per_s']:.1f} |" for r in rows]
        if key == "eval-split" and data.get("metric_drift_vs_fp32"):
            lines += ["", f"metric drift bf16 - fp32 (random-init model): {json.dumps(data['metric_drift_vs_fp32'])}"]
    ranking = (((parts.get("eval") or {}).get("data") or {}).get("ranking") or {}).get("rows", [])
    for r in ranking:
        lines.append("")
        lines.append(f"ranking {r.get('method')} at {r.get('size')}: "
                     + (f"{r['seconds']:.2f} s" if "seconds" in r else str(r.get("failed"))))
    e2e = (parts.get("e2e") or {}).get("data") or {}
    if e2e:
        lines += ["", f"end to end: {json.dumps(e2e)}"]
    lines += ["", f"GPU-hours: {json.dumps(summary.get('gpu_hours'))}", ""]
    return "\n".join(lines)


def sanity_worker(out: Path, matmul: int, device: str) -> int:
    """Part 1, in its own process: versions, the GPU, a bf16 matmul's TFLOP/s (CUDA only)."""
    import torch

    info = {"torch_version": torch.__version__, "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "cuda_available": torch.cuda.is_available() and device != "cpu"}
    if not info["cuda_available"]:
        info.update({"device_name": "cpu (no CUDA)", "driver": "skipped: no CUDA",
                     "bf16_matmul_tflops": "skipped: no CUDA"})
        _write_json(out, info)
        print(json.dumps(info))
        return 0
    props = torch.cuda.get_device_properties(0)
    info.update({"device_name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                 "capability": f"{props.major}.{props.minor}"})
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["driver"] = smi.stdout.strip() or f"nvidia-smi: {smi.stderr.strip()[:200]}"
    except (OSError, subprocess.TimeoutExpired) as e:
        info["driver"] = f"unknown ({e})"
    _write_json(out, info)
    a = torch.randn(matmul, matmul, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(matmul, matmul, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    reps, start = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    info["bf16_matmul_tflops"] = round(2 * matmul**3 * reps / seconds / 1e12, 1)
    info["bf16_matmul_size"] = matmul
    _write_json(out, info)
    print(json.dumps(info))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="tiny",
                        help="full: ViT-B/16 on a GPU (part B of the plan); tiny: tiny models, any device, every path")
    parser.add_argument("--out", default="benchmarks/out/gpu-check", help="output folder (summary.json, per-part JSON, logs)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS))
    parser.add_argument("--budget-s", type=float, help="total seconds for all parts (default: full 450, tiny 3000)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--sanity-worker", help=argparse.SUPPRESS)
    parser.add_argument("--matmul", type=int, default=8192, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sanity_worker:
        return sanity_worker(Path(args.sanity_worker), args.matmul, args.device)
    wanted = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(wanted) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; use {','.join(PARTS)}")
    check = Check(args)
    check.record("sanity", check.part_sanity())  # always first: the device and versions every figure needs
    for part in PARTS[1:]:
        if part in wanted:
            check.record(part, getattr(check, f"part_{part.replace('-', '_')}")())
    print(f"[gpu_check] wrote {check.out / 'summary.json'} and summary.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
