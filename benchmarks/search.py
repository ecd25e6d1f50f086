"""Benchmark: `tbps index` throughput and `tbps search` latency from 10k to 1M gallery images.

Three parts (``--parts``, default all):

- ``build``: a folder of ``--images`` synthetic person images (``tbps synth``, cached in
  ``--work``) indexed by :func:`tbps.gallery.build.build_index` with the tiny CPU model
  (TBPS-Tiny-RN, 64x64 input) and, on ``--vit-images`` of them, with ViT-B/16 (224x224,
  random weights: the same compute as the OpenAI weights); images/s over reading, hashing,
  decoding and embedding. Then 10 new images are added and the folder is indexed again: the
  seconds it takes and how many images were embedded.
- ``latency``: time to open an index and answer queries after the model is loaded, on the
  real 10k index of ``build`` (128-d) and on synthetic 512-d indexes (ViT-B/16's width) of
  each ``--sizes`` (random unit vectors written through the index writer, so the files are
  what `tbps index` writes). Per size: open (index.json + entries + memory map), text
  encoding of 1 query (ViT-B/16 text tower), ranking alone (1 query, top 20), and the whole
  answer (encode + rank + paths) for 1 and for 10 queries: each as [first call (index files
  maybe not in the page cache), median wall time of ``--repeats`` warm calls, their median CPU
  time].
- ``memory``: ranking 10 queries over the largest index in a subprocess whose RssAnon (heap:
  what the chunked ranking allocates) and RssFile (pages of the memory-mapped embeddings,
  which the kernel may drop) are sampled every 5 ms.

    .venv/bin/python benchmarks/search.py                         # everything (~20 min on 2 cores)
    .venv/bin/python benchmarks/search.py --parts latency --sizes 10000 100000
"""

from __future__ import annotations

import os

# As `tbps` sets it: OpenMP threads that spin while waiting collapse on a shared machine. Before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import rss  # benchmarks/rss.py, beside this script
import torch

from tbps.fileio import write_json_atomic
from tbps.gallery import layout
from tbps.gallery.build import build_index
from tbps.gallery.encoder import SearchModel, load_checkpoint_model
from tbps.gallery.queries import Query
from tbps.gallery.ranking import top_k
from tbps.gallery.search import search_index

QUERIES = [
    "a woman in a red coat with a black backpack", "a man wearing a white shirt, blue jeans and black shoes",
    "a young woman with long black hair carrying a shoulder bag", "a man in a grey hoodie and black trousers",
    "a girl in a pink dress with white sneakers", "an old man with a walking stick and a brown jacket",
    "a woman in a yellow top and a blue skirt", "a man carrying a red umbrella", "a boy in a green t-shirt",
    "a woman with a white handbag and black boots",
]
TOP = 20


def wait_for_load(limit: float | None, patience_s: float = 3600) -> None:
    """Wait (at most ``patience_s``) until the 1-minute load average is below ``limit``."""
    if limit is None:
        return
    deadline = time.time() + patience_s
    while os.getloadavg()[0] >= limit and time.time() < deadline:
        time.sleep(15)
    print(f"load average now: {os.getloadavg()[0]:.2f} (1 min)", flush=True)


def tiny_checkpoint(path: Path) -> Path:
    from tbps import checkpoint
    from tbps.config import load_experiment
    from tbps.model import build_model

    if not path.exists():
        torch.manual_seed(0)
        cfg = load_experiment(Path(__file__).resolve().parents[1] / "config/experiments/tiny_tbps_clip_simplified.yaml")
        model = build_model(cfg.model, with_simclr_head=False).model
        checkpoint.save(path, {"model": model.state_dict(), "config": cfg.to_dict(), "config_sha256": cfg.sha256(),
                               "epochs": 1, "global_step": 1, "seed": 0})
    return path


def vit_model() -> SearchModel:
    from tbps.config import ModelConfig
    from tbps.model import build_model

    bundle = build_model(ModelConfig(name="ViT-B-16", pretrained=None), with_simclr_head=False)
    return SearchModel(bundle.model.eval(), bundle.tokenizer, torch.device("cpu"), vit_model_identity())


def photo_folder(work: Path, images: int) -> Path:
    from tbps.synth.generate import generate_dataset

    raw = work / f"raw-{images}"
    if not (raw / "imgs").is_dir():
        # ~5 images per identity (train) plus the generator's val/test identities.
        generate_dataset("cuhk-pedes", raw, ids=max(2, images // 5), seed=0, overwrite=True)
    return raw / "imgs"


def part_build(args, work: Path) -> dict:
    folder = photo_folder(work, args.images)
    checkpoint = tiny_checkpoint(work / "tiny-final.pt")
    model = load_checkpoint_model(checkpoint, torch.device("cpu"))
    out = work / "real.index"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    report = build_index(str(folder), out, model, batch_size=64, num_workers=args.workers)
    total = time.perf_counter() - started
    result = {"images": report.count, "tiny_images_per_s": round(report.images_per_second, 1),
              "tiny_wall_s_including_scan_and_write": round(total, 1)}
    print(f"[build] tiny model: {report.count} images, {report.images_per_second:.1f} images/s "
          f"({total:.1f} s with the scan and the final write)", flush=True)

    added = folder / "added"
    shutil.rmtree(added, ignore_errors=True)
    added.mkdir()
    from PIL import Image

    sources = sorted(folder.rglob("*.jpg"))[:10]
    for i, src in enumerate(sources):
        Image.open(src).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(added / f"added_{i}.jpg", quality=90)
    started = time.perf_counter()
    again = build_index(str(folder), out, model, batch_size=64, num_workers=args.workers)
    result.update(reindex_s=round(time.perf_counter() - started, 2), reindex_embedded=again.embedded,
                  reindex_kept=again.kept)
    print(f"[build] re-index after adding 10 images: {result['reindex_s']} s, {again.embedded} embedded, "
          f"{again.kept} unchanged", flush=True)
    shutil.rmtree(added)

    if args.vit_images:
        subset = work / "vit-subset"
        shutil.rmtree(subset, ignore_errors=True)
        subset.mkdir()
        for i, src in enumerate(sorted(folder.rglob("*.jpg"))[:args.vit_images]):
            shutil.copy(src, subset / f"{i}.jpg")
        vit_out = work / "vit.index"
        shutil.rmtree(vit_out, ignore_errors=True)
        vit = build_index(str(subset), vit_out, vit_model(), batch_size=32, num_workers=args.workers)
        result["vit_b16_images"] = vit.count
        result["vit_b16_images_per_s"] = round(vit.images_per_second, 2)
        print(f"[build] ViT-B/16: {vit.count} images, {vit.images_per_second:.2f} images/s", flush=True)
    return result


def synthetic_index(work: Path, size: int, dim: int = 512) -> Path:
    folder = work / f"synthetic-{size}.index"
    if layout.is_index(folder):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(size)
    entries = pl.DataFrame({
        "path": [f"/photos/{i // 1000:04d}/{i:07d}.jpg" for i in range(size)],
        "bytes": np.full(size, 6000, dtype=np.int64), "mtime_ns": np.zeros(size, dtype=np.int64),
        "sha256": [f"{i:064x}" for i in range(size)], "width": np.full(size, 64, dtype=np.int32),
        "height": np.full(size, 128, dtype=np.int32), "person_id": pl.Series([None] * size, dtype=pl.Int64),
        "captions": pl.Series([[]] * size, dtype=pl.List(pl.Utf8)), "shard": pl.Series([None] * size, dtype=pl.Utf8),
        "offset": pl.Series([None] * size, dtype=pl.Int64),
    }).cast(layout.ENTRY_SCHEMA)

    def fill(out: np.ndarray) -> None:
        for start in range(0, size, 65536):
            block = rng.standard_normal((min(65536, size - start), dim), dtype=np.float32)
            out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)

    meta = {"model": vit_model_identity(), "source": {"kind": "folder", "path": "/photos", "manifest_sha256": None}}
    layout.write_generation(folder, 1, meta, entries, pl.DataFrame(schema=layout.SKIPPED_SCHEMA), dim, fill)
    return folder


def vit_model_identity() -> dict:
    return {"kind": "open_clip", "name": "ViT-B-16", "weights": "random", "weights_sha256": "random",
            "image_size": [224, 224], "normalisation": "clip", "max_words": 77, "embed_dim": 512}


def timed(fn, repeats: int) -> list[float]:
    """[first call, median of ``repeats`` further calls, their median CPU time of this process], in ms.

    CPU time (all threads) shows the work itself on a shared machine, where the wall time also
    holds the time other processes had the cores."""
    started = time.perf_counter()
    fn()
    first = 1000 * (time.perf_counter() - started)
    walls, cpus = [], []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(1000 * (time.perf_counter() - started))
        cpus.append(1000 * (time.process_time() - cpu))
    return [round(first, 1), round(statistics.median(walls), 1), round(statistics.median(cpus), 1)]


def latency_row(name: str, folder: Path, model: SearchModel, repeats: int) -> dict:
    index = layout.open_index(folder)
    row = {"gallery": name, "images": index.count, "dim": int(index.meta["dim"]),
           "embeddings_mib": round(index.embeddings.nbytes / 2**20, 1),
           "open_ms": timed(lambda: layout.open_index(folder), repeats),
           "encode_1_query_ms": timed(lambda: model.encode_queries(QUERIES[:1]), repeats),
           "rank_1_query_ms": timed(lambda: top_k(torch.nn.functional.normalize(torch.randn(1, index.embeddings.shape[1]),
                                                                                dim=1), index.embeddings, TOP), repeats),
           "search_1_query_ms": timed(lambda: search_index(index, model, [Query(QUERIES[0])], TOP), repeats),
           "search_10_queries_ms": timed(lambda: search_index(index, model, [Query(q) for q in QUERIES], TOP),
                                         repeats)}
    print(f"[latency] {json.dumps(row)}", flush=True)
    return row


def part_latency(args, work: Path) -> list[dict]:
    rows = []
    real = work / "real.index"
    if layout.is_index(real):
        tiny = load_checkpoint_model(tiny_checkpoint(work / "tiny-final.pt"), torch.device("cpu"))
        rows.append(latency_row("real (tiny model, 128-d)", real, tiny, args.repeats))
    vit = vit_model()
    for size in args.sizes:
        rows.append(latency_row(f"synthetic 512-d, {size:,}", synthetic_index(work, size), vit, args.repeats))
    return rows


def rank_worker(folder: str) -> None:
    """Subprocess: rank 10 random queries over the index (no model: the ranking's memory only)."""
    index = layout.open_index(folder)
    queries = torch.nn.functional.normalize(torch.randn(10, int(index.meta["dim"])), dim=1)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    top_k(queries, index.embeddings, TOP)
    print(json.dumps({"rank_ms": round(1000 * (time.perf_counter() - started), 1)}), flush=True)


def part_memory(args, work: Path) -> dict:
    folder = synthetic_index(work, max(args.sizes))
    process = subprocess.Popen([sys.executable, __file__, "--rank-worker", str(folder)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    base_anon, peaks, done = rss.status_kib("RssAnon", process.pid), {"RssAnon": 0, "RssFile": 0}, threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                for field in peaks:
                    peaks[field] = max(peaks[field], rss.status_kib(field, process.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    process.stdin.write("go\n")
    process.stdin.flush()
    result = json.loads(process.stdout.readline())
    done.set()
    sampler.join()
    process.wait()
    row = {"images": max(args.sizes), **result, "rss_anon_before_mib": round(base_anon / 1024, 1),
           "rss_anon_peak_mib": round(peaks["RssAnon"] / 1024, 1), "rss_file_peak_mib": round(peaks["RssFile"] / 1024, 1)}
    print(f"[memory] {json.dumps(row)}", flush=True)
    return row


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--rank-worker":
        rank_worker(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["build", "latency", "memory"],
                        choices=["build", "latency", "memory"])
    parser.add_argument("--images", type=int, default=10_000, help="photos in the indexed folder (default: 10000)")
    parser.add_argument("--vit-images", type=int, default=128, help="photos indexed with ViT-B/16 (0: skip)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="decoding workers of `tbps index` (default: 2)")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/out/search-work"),
                        help="cached photos and indexes (default: benchmarks/out/search-work)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/search.json"))
    parser.add_argument("--wait-load", type=float, default=None, metavar="L",
                        help="before each part, wait (up to an hour) for a 1-minute load average below L")
    args = parser.parse_args()
    # Here, not at the top: the rank worker (this file in a subprocess) measures its own memory.
    from train import load_average, machine_info  # benchmarks/train.py: the shared measuring helpers

    args.work.mkdir(parents=True, exist_ok=True)
    machine = machine_info(torch.device("cpu"))
    print(f"machine: {machine}\nload average before: {load_average()}", flush=True)
    result = {"machine": machine, "load_before": load_average(), "args": {k: str(v) for k, v in vars(args).items()}}
    parts = {"build": part_build, "latency": part_latency, "memory": part_memory}
    for name, part in parts.items():
        if name in args.parts:
            wait_for_load(args.wait_load)
            result[name] = part(args, args.work)
            result[f"load_after_{name}"] = load_average()
    result["load_after"] = load_average()
    print(f"load average after: {result['load_after']}", flush=True)
    write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
