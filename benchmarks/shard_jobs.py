"""Benchmark: what one shard job costs at CUHK-PEDES size, beyond its own images.

    .venv/bin/python benchmarks/shard_jobs.py [--workdir DIR] [--jobs 8]

Builds a CUHK-PEDES-sized prepared table directly (no rendering: 40,206 images, ~80,400
captions of 15-35 words in train/val/test as in the release, ids as in CUHK) and an augmented
caption table for the train captions, plus one small JPEG per train image (hard links to one
file: the images are not what is measured). Then, as the workflow does, with the CLI:

1. ``tbps shards plan`` of the train split (34,054 images, 533 shards of 64);
2. ``tbps shards write`` of the first ``--jobs`` shards, each in its own process.

Per process: wall time, CPU time (user + system, from ``os.wait4``) and peak RSS (``ru_maxrss``; the
tables are built in a child process and nothing heavy is imported before the jobs run, because
a forked child's peak RSS counts the parent's pages until it execs). The write
figures are the median over the jobs; ``x shards`` is that median times the split's shard
count, i.e. the CPU the workflow spends on the split's shard jobs. In-process, the part of a
job that gets the shard's rows (before: read, validate and hash the whole annotation table and
the augmented table, join, group; after: read the shard's row group of the plan's sample table)
is timed on its own.

The script drives whichever version of the shard CLI it finds: the one whose ``write`` step
takes ``--captions``/``--augmented`` (each job reads the tables) or the one whose ``plan``
step takes ``--augmented`` (the plan carries each shard's rows).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rss  # benchmarks/rss.py, beside this script

SPLITS = (("train", 34054, 11003), ("val", 3078, 1000), ("test", 3074, 1000))
"""CUHK-PEDES: images and identities per split."""


def build_tables(root: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """raw/imgs (train images), annotations.parquet (every split), captions_aug.parquet (train captions)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    words = np.array([f"w{i:03d}{'abcdefgh'[i % 8] * (i % 7)}" for i in range(600)])
    raw = root / "raw"
    (raw / "imgs").mkdir(parents=True, exist_ok=True)
    original = raw / "original.jpg"
    noise = rng.integers(0, 255, (160, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(original, format="JPEG", quality=60)
    cols = {k: [] for k in ("caption_id", "dataset", "split", "person_id", "train_id", "image_index",
                            "image_path", "caption_index", "caption")}
    image_index, person_id = 0, 1
    for split, num_images, num_ids in SPLITS:
        ids = person_id + np.sort(np.arange(num_images) % num_ids)
        person_id += num_ids
        for pid in ids.tolist():
            rel = f"imgs/{split}/{image_index:06d}.jpg"
            if split == "train":
                (raw / rel).parent.mkdir(parents=True, exist_ok=True)
                os.link(original, raw / rel)
            captions = 2 + int(rng.random() < 0.005)  # a few images of CUHK-PEDES have 3-4 captions
            for k in range(captions):
                text = " ".join(rng.choice(words, int(rng.integers(15, 36)))) + "."
                for col, v in zip(cols, (len(cols["caption_id"]), "cuhkpedes", split, pid,
                                         pid - 1 if split == "train" else None, image_index, rel, k, text),
                                  strict=True):
                    cols[col].append(v)
            image_index += 1
    schema = pa.schema([("caption_id", pa.int64()), ("dataset", pa.string()), ("split", pa.string()),
                        ("person_id", pa.int64()), ("train_id", pa.int64()), ("image_index", pa.int64()),
                        ("image_path", pa.string()), ("caption_index", pa.int32()), ("caption", pa.string())])
    table = pa.table(cols, schema=schema)
    annotations = root / "annotations.parquet"
    pq.write_table(table, annotations)
    train = table.filter(pc.equal(table["split"], "train"))
    augmented_text = [" ".join(reversed(c.split())) for c in train["caption"].to_pylist()]
    augmented = root / "captions_aug.parquet"
    pq.write_table(pa.table({"caption_id": train["caption_id"], "caption": train["caption"],
                             "caption_aug": pa.array(augmented_text, pa.string()),
                             "backend": pa.array(["synonyms"] * train.num_rows, pa.string())}), augmented)
    return raw, annotations, augmented


def cli_version() -> str:
    help_text = subprocess.run([sys.executable, "-m", "tbps", "shards", "write", "--help"], capture_output=True,
                               text=True, check=True).stdout
    return "each job reads the tables" if "--captions" in help_text else "the plan carries the rows"


def rows_seconds(plan: Path, index: int, annotations: Path, raw: Path, augmented: Path) -> tuple[float, float]:
    """In-process (wall, CPU) seconds to get one shard's rows, the way the shard job gets them."""
    from tbps.shards import writer

    start, cpu = time.perf_counter(), time.process_time()
    if hasattr(writer, "_planned_rows"):
        loaded = writer.load_plan(plan)
        writer._planned_rows(loaded, plan, index, writer.ShardSources(annotations, raw, augmented))
    else:
        loaded = writer.load_plan(plan)
        writer.read_shard_samples(loaded, plan, index)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the data (default: a temp dir)")
    parser.add_argument("--jobs", type=int, default=8, help="shard jobs to run and time (default 8)")
    parser.add_argument("--max-samples", type=int, default=64, help="images per shard (default 64, the workflow's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "shard_jobs.json")
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build_tables(args.build)
        return

    work = Path(tempfile.mkdtemp(prefix="shard-jobs-", dir=args.workdir))
    version = cli_version()
    print(f"shard CLI: {version}; load average before: {os.getloadavg()}")
    try:
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--build", str(work)], check=True)
        raw, annotations, augmented = work / "raw", work / "annotations.parquet", work / "captions_aug.parquet"
        print(f"built the tables in {time.perf_counter() - start:.1f} s: annotations "
              f"{annotations.stat().st_size / 2**20:.1f} MiB, augmented {augmented.stat().st_size / 2**20:.1f} MiB")
        out = work / "shards"
        out.mkdir()
        plan = out / "plan.json"
        tbps = [sys.executable, "-m", "tbps", "shards"]
        plan_cmd = [*tbps, "plan", "--captions", str(annotations), "--split", "train", "--raw", str(raw),
                    "--out", str(plan), "--max-samples", str(args.max_samples)]
        if version == "the plan carries the rows":
            plan_cmd += ["--augmented", str(augmented)]
        plan_job = rss.measured_child(plan_cmd)
        shards = json.loads(plan.read_text())["shards"]
        jobs = []
        for index, entry in enumerate(shards[: args.jobs]):
            cmd = [*tbps, "write", "--plan", str(plan), "--shard-index", str(index), "--raw", str(raw),
                   "--out", str(out / entry["name"])]
            if version == "each job reads the tables":
                cmd += ["--captions", str(annotations), "--augmented", str(augmented)]
            jobs.append(rss.measured_child(cmd))
        rows = [rows_seconds(plan, i, annotations, raw, augmented) for i in range(min(args.jobs, len(shards)))]
        tar_bytes = [(out / e["name"]).stat().st_size for e in shards[: args.jobs]]
        plan_files = {p.name: p.stat().st_size for p in out.iterdir() if p.name.startswith("plan")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {os.getloadavg()}")

    def median(key: str) -> float:
        return statistics.median(job[key] for job in jobs)

    n = len(shards)
    print(f"plan: {n} shards; plan files {plan_files} bytes")
    print(f"plan job:  wall {plan_job['wall']:.2f} s, CPU {plan_job['cpu']:.2f} s, peak RSS {plan_job['max_rss_mib']:.0f} MiB")
    print(f"write job (median of {len(jobs)}): wall {median('wall'):.2f} s, CPU {median('cpu'):.2f} s, "
          f"peak RSS {median('max_rss_mib'):.0f} MiB; x {n} shards: {median('cpu') * n / 60:.1f} CPU-min")
    rows_wall = statistics.median(wall for wall, _ in rows)
    rows_cpu = statistics.median(cpu for _, cpu in rows)
    print(f"  of which getting the shard's rows (in-process, median): wall {rows_wall * 1000:.0f} ms, "
          f"CPU {rows_cpu * 1000:.0f} ms; x {n} shards: {rows_cpu * n:.0f} CPU-s")
    print(f"  shard bytes (median): {statistics.median(tar_bytes):.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"version": version, "shards": n, "plan_job": plan_job, "write_jobs": jobs,
                                    "rows_seconds": rows, "tar_bytes": tar_bytes, "plan_files": plan_files},
                                   indent=1))


if __name__ == "__main__":
    main()
