"""Benchmark: the scoring and retrieval-examples steps of ``tbps evaluate``, dense vs chunked.

From synthetic features (one random centre per identity, ~20 images per id, one caption per
image as in ICFG-PEDES test, L2-normalised 512-d float32), each method runs the whole
evaluation after encoding: both directions' metrics, then the examples table (12 sampled
queries + 12 worst failures, top 5).

- ``dense`` (before): the caption x image similarity matrix in one product, both directions
  ranked from it (``retrieval_metrics`` on the matrix and its transpose), then the examples
  from another full matrix, with a full sort of every row and dense positive masks (the code of
  ``tbps.evaluate`` before this benchmark was added, kept here verbatim).
- ``chunked`` (after): :func:`tbps.evaluate.score` and :func:`tbps.evaluate.retrieval_examples`
  as the stage runs them: each direction ranked from the features chunk by chunk, the examples
  from the t2i first-positive ranks plus the similarity rows of the shown queries only.

Each method runs in its own process. Times: wall clock and the process's CPU time (all its
threads; on a shared machine the CPU time is the steadier figure). Memory: the process's peak resident set (VmHWM, reset
through /proc/self/clear_refs once the features exist) minus its resident set at that point,
i.e. everything the step allocated (torch, numpy and polars alike; tracemalloc would miss torch's
buffers). Both methods must give the same metrics and the same examples table (compared by
the sha256 of its CSV); the script prints whether they do. ``dense`` is skipped where its
float32 matrix alone would not fit in memory.

    .venv/bin/python benchmarks/evaluate.py                          # 19,848^2, both methods
    .venv/bin/python benchmarks/evaluate.py --size 100000 --methods chunked
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import rss  # benchmarks/rss.py, beside this script
import torch
from train import machine_info  # benchmarks/train.py: the shared measuring helpers

from tbps.evaluate import Encoded, retrieval_examples, score
from tbps.fileio import write_json_atomic
from tbps.metrics import retrieval_metrics, topk_indices

DIM = 512
METHODS = ("dense", "chunked")
OUT = Path(__file__).resolve().parent / "out"


def make_encoded(size: int, num_ids: int, noise: float, seed: int) -> Encoded:
    """``size`` images and as many captions (one each), scattered around one centre per identity."""
    gen = torch.Generator().manual_seed(seed)
    ids = (torch.arange(size) % num_ids)[torch.randperm(size, generator=gen)]
    centres = torch.randn(num_ids, DIM, generator=gen)
    images = torch.nn.functional.normalize(centres[ids] + noise * torch.randn(size, DIM, generator=gen), dim=1)
    captions = torch.nn.functional.normalize(centres[ids] + noise * torch.randn(size, DIM, generator=gen), dim=1)
    return Encoded(images, ids.numpy(), [f"imgs/{i:06d}.jpg" for i in range(size)], captions,
                   ids.numpy().copy(), [f"caption {i}" for i in range(size)])


# --------------------------------------------------------------------------- before: tbps.evaluate as it was

def dense_score(encoded: Encoded, query_chunk: int) -> dict:
    t2i = encoded.text_features @ encoded.image_features.t()
    return {
        "t2i": retrieval_metrics(t2i, encoded.text_ids, encoded.image_ids, query_chunk=query_chunk),
        "i2t": retrieval_metrics(t2i.t(), encoded.image_ids, encoded.text_ids, query_chunk=query_chunk),
    }


def dense_examples(encoded: Encoded, *, num_queries: int = 12, num_failures: int = 12, k: int = 5,
                   seed: int = 0) -> pl.DataFrame:
    sim = encoded.text_features @ encoded.image_features.t()
    top = topk_indices(sim, k).numpy()
    positive = encoded.image_ids[None, :] == encoded.text_ids[:, None]
    best_positive = np.where(positive, sim.numpy(), -np.inf).max(axis=1)
    first_rank = (sim.numpy() > best_positive[:, None]).sum(axis=1) + 1
    rng = np.random.default_rng(seed)
    sampled = rng.choice(len(encoded.captions), size=min(num_queries, len(encoded.captions)), replace=False)
    failures = np.argsort(-first_rank, kind="stable")[:num_failures]
    rows = []
    for kind, queries in (("sample", sampled), ("worst", failures)):
        for q in queries:
            for rank, g in enumerate(top[q], start=1):
                rows.append({"kind": kind, "query": int(q), "caption": encoded.captions[q],
                             "query_person_id": int(encoded.text_ids[q]), "first_positive_rank": int(first_rank[q]),
                             "rank": rank, "image_path": encoded.image_paths[g],
                             "person_id": int(encoded.image_ids[g]),
                             "correct": bool(encoded.image_ids[g] == encoded.text_ids[q]),
                             "score": float(sim[q, g])})
    return pl.DataFrame(rows)


# --------------------------------------------------------------------------- measuring


def run_worker(args: argparse.Namespace) -> None:
    """One method in this process; prints one JSON line."""
    encoded = make_encoded(args.size, args.ids, args.noise, args.seed)
    # The peak below then is the step's own.
    before = rss.reset_peak()
    start, cpu_start = time.perf_counter(), time.process_time()
    if args.worker == "dense":
        metrics = dense_score(encoded, args.query_chunk)
        scored = time.perf_counter()
        examples = dense_examples(encoded)
    else:
        result = score(encoded, args.query_chunk)
        metrics = result.metrics
        scored = time.perf_counter()
        examples = retrieval_examples(encoded, first_positive_rank=result.ranks["t2i"].first_positive)
    done, cpu = time.perf_counter(), time.process_time() - cpu_start
    peak = rss.peak_bytes()
    print(json.dumps({
        "method": args.worker, "size": args.size, "score_seconds": scored - start,
        "examples_seconds": done - scored, "seconds": done - start, "cpu_seconds": cpu,
        "peak_increase_bytes": peak - before,
        "metrics": metrics, "examples_sha256": hashlib.sha256(examples.write_csv().encode()).hexdigest(),
    }))


def run_method(args: argparse.Namespace, method: str) -> dict:
    command = [sys.executable, __file__, "--worker", method, "--size", str(args.size), "--ids", str(args.ids),
               "--noise", str(args.noise), "--seed", str(args.seed), "--query-chunk", str(args.query_chunk)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        reason = "killed (out of memory?)" if done.returncode in (-9, 137) else f"exit {done.returncode}"
        print(f"[{method}] failed: {reason}\n{done.stderr[-2000:]}", file=sys.stderr)
        return {"method": method, "size": args.size, "failed": reason}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _meminfo_bytes(field: str) -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/meminfo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=19848, help="captions = images (default: ICFG test, 19848)")
    parser.add_argument("--ids", type=int, default=None,
                        help="identities (default: 1000 per 19,848 images, as in ICFG-PEDES test)")
    parser.add_argument("--noise", type=float, default=2.7, help="feature noise around each identity centre")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--query-chunk", type=int, default=1024, help="queries per chunk (eval.query_chunk)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default benchmarks/out/evaluate-SIZE.json)")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ids is None:
        args.ids = max(1, round(args.size * 1000 / 19848))
    if args.worker:
        run_worker(args)
        return

    machine = machine_info(torch.device("cpu"))
    print(machine)
    print(f"load average before: {os.getloadavg()}")
    print(f"{args.size} captions x {args.size} images, {args.ids} ids, dim {DIM}, query_chunk {args.query_chunk}")
    rows = []
    for method in [m for m in args.methods.split(",") if m]:
        matrix = 4 * args.size * args.size
        if method == "dense" and 2 * matrix > _meminfo_bytes("MemAvailable"):
            print(f"dense: not run; its similarity matrices need {2 * matrix / 2**30:.1f} GiB "
                  f"({_meminfo_bytes('MemAvailable') / 2**30:.1f} GiB available)")
            rows.append({"method": method, "size": args.size, "failed": "matrix does not fit in memory"})
            continue
        rows.append(run_method(args, method))
    print(f"load average after: {os.getloadavg()}")

    header = (f"{'method':<8} {'score s':>8} {'examples s':>10} {'total s':>8} {'CPU s':>8} {'peak +MiB':>10}  "
              "t2i R1/R5/R10/mAP/mINP")
    print(header)
    print("-" * len(header))
    for row in rows:
        if "failed" in row:
            print(f"{row['method']:<8} failed: {row['failed']}")
            continue
        m = row["metrics"]["t2i"]
        print(f"{row['method']:<8} {row['score_seconds']:>8.1f} {row['examples_seconds']:>10.1f} "
              f"{row['seconds']:>8.1f} {row['cpu_seconds']:>8.1f} {row['peak_increase_bytes'] / 2**20:>10.0f}  "
              + " / ".join(f"{m[k]:.4f}" for k in ("R1", "R5", "R10", "mAP", "mINP")))
    done = [row for row in rows if "failed" not in row]
    if len(done) == 2:
        same_metrics = done[0]["metrics"] == done[1]["metrics"]
        same_examples = done[0]["examples_sha256"] == done[1]["examples_sha256"]
        print(f"metrics {'identical' if same_metrics else 'DIFFERENT'}, examples table "
              f"{'identical' if same_examples else 'DIFFERENT'}")
    out = args.out or OUT / f"evaluate-{args.size}.json"
    # --out is a Path: the recorded arguments must stay JSON.
    write_json_atomic(out, {"machine": machine, "args": {**vars(args), "out": str(out)}, "rows": rows})


if __name__ == "__main__":
    main()
