"""Benchmark: shard writing and shard vs image-folder loading (prints figures, asserts nothing).

    .venv/bin/python benchmarks/shards.py [--images 20000] [--measure 4000] [--workdir DIR] [--write-only]

1. Generates a synthetic-like raw dataset (person-sized JPEG/PNG crops with smooth
   shapes, 2 captions per image) and its annotations.parquet, with PIL.
2. Writes the shards in one process: original-bytes mode and re-encode mode (224x224
   JPEG) -> samples/s (= per core).
3. Loads the first ``--measure`` images with a torch DataLoader (1 and 2 workers), decode
   only and decode + train transform, from the shards (``open_shards``, in manifest order, as
   evaluation reads them) and from the raw folder the way the official implementation does
   (map-style Dataset over a JSON list, ``PIL.Image.open(path).convert("RGB")`` per item)
   -> images/s and per worker-core.

Files are read from the page cache in both loaders (just written), so the comparison
is decode/transform + per-file overhead, not cold-disk seeks (where shards gain most).
Targets from the issue: reading >= 2x the folder loader per core; writing >= 1,500/s per core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import webdataset as wds
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset

from tbps.shards.reader import open_shards
from tbps.shards.writer import write_split

BATCH = 64


# ----------------------------------------------------------------------------- data

def _person_image(rng: np.random.Generator, grain: np.ndarray) -> Image.Image:
    """A smooth person-like crop with sensor-like grain (compresses like a photo, unlike noise)."""
    w, h = int(rng.integers(56, 96)), int(rng.integers(140, 260))
    top, bottom = rng.integers(40, 220, 3), rng.integers(40, 220, 3)
    ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    bg = (top * (1 - ramp) + bottom * ramp).repeat(w, axis=1).astype(np.uint8)
    img = Image.fromarray(bg)
    draw = ImageDraw.Draw(img)
    cx = w // 2
    draw.ellipse((cx - 9, 8, cx + 9, 30), fill=tuple(int(v) for v in rng.integers(90, 230, 3)))
    draw.rectangle((cx - 18, 32, cx + 18, h // 2), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw.rectangle((cx - 16, h // 2, cx + 16, h - 10), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    y, x = int(rng.integers(0, grain.shape[0] - h)), int(rng.integers(0, grain.shape[1] - w))
    pixels = np.asarray(img, dtype=np.int16) + grain[y:y + h, x:x + w]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def generate(root: Path, n: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """raw/imgs/*.jpg|png, raw/data.json (official-style list) and annotations.parquet."""
    rng = np.random.default_rng(seed)
    grain = rng.integers(-6, 7, (512, 512, 3), dtype=np.int16)
    raw = root / "raw"
    (raw / "imgs").mkdir(parents=True, exist_ok=True)
    cols = {k: [] for k in ("caption_id", "dataset", "split", "person_id", "train_id", "image_index",
                            "image_path", "caption_index", "caption", "width", "height")}
    records = []
    for i in range(n):
        img = _person_image(rng, grain)
        png = i % 10 == 0  # CUHK-PEDES mixes PNG (CUHK01/03) and JPEG (Market) crops
        rel = f"imgs/{i:06d}.{'png' if png else 'jpg'}"
        img.save(raw / rel, format="PNG" if png else "JPEG", quality=90)
        pid = i // 4
        captions = [f"a person number {pid} wearing colour {k} clothes and carrying a bag." for k in range(2)]
        records.append({"file_path": rel, "id": pid, "captions": captions, "split": "train"})
        for k, cap in enumerate(captions):
            for col, v in zip(cols, (len(cols["caption_id"]), "synthetic", "train", pid, pid, i, rel, k, cap,
                                     img.width, img.height), strict=True):
                cols[col].append(v)
    schema = pa.schema([("caption_id", pa.int64()), ("dataset", pa.string()), ("split", pa.string()),
                        ("person_id", pa.int64()), ("train_id", pa.int64()), ("image_index", pa.int64()),
                        ("image_path", pa.string()), ("caption_index", pa.int32()), ("caption", pa.string()),
                        ("width", pa.int32()), ("height", pa.int32())])
    annotations = root / "annotations.parquet"
    pq.write_table(pa.table(cols, schema=schema), annotations)
    (raw / "data.json").write_text(json.dumps(records))
    return raw, annotations, raw / "data.json"


# ----------------------------------------------------------------------------- transforms

def train_transform():
    """The project's train transform (augmentation pool, seeded per sample) or a placeholder."""
    try:
        from tbps.data.transforms import train_transform  # noqa: PLC0415

        return train_transform((224, 224)), "tbps.data.transforms.train_transform((224, 224))"
    except Exception as e:  # noqa: BLE001 - not written yet, or another signature
        from torchvision import transforms as T

        placeholder = T.Compose([
            T.Resize((224, 224), interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ])
        note = f"PLACEHOLDER torchvision Resize(224,224 bilinear)+ToTensor+Normalize ({type(e).__name__}: {e})"
        return (lambda img, seed: placeholder(img)), note


def _shape_only(img: Image.Image, seed: int) -> torch.Tensor:
    # Decode-only runs: a tiny tensor so collation/IPC does not dominate.
    return torch.tensor(img.size)


class FolderDataset(Dataset):
    """Like the official implementation: JSON list + one PIL open per item."""

    def __init__(self, raw: Path, records: list[dict], transform):
        self.raw, self.records, self.transform = raw, records, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        r = self.records[i]
        img = Image.open(self.raw / r["file_path"]).convert("RGB")
        return self.transform(img, i), r["id"]


class _ApplyImage:
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, sample):
        meta = sample["json"]
        return self.transform(sample["image"], meta["image_index"]), meta["person_id"]


# ----------------------------------------------------------------------------- metering

class Meter:
    """Wall time, CPU seconds and peak memory (sum of PSS, so pages shared by forked workers
    count once) of this process + its live children (loader workers).

    Per-core figures divide by CPU seconds, not wall time: the benchmark machine may be
    shared, and CPU time is what a core spends on the work. Call ``stop()`` while the
    workers are still alive (before the DataLoader iterator is dropped).
    """

    def __init__(self):
        import psutil  # noqa: PLC0415 - benchmark-only dependency

        self.me, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._sampler_cpu = 0.0
        self._error = psutil.Error

    def _procs(self):
        return [self.me, *self.me.children(recursive=True)]

    def _cpu(self) -> float:
        total = 0.0
        for p in self._procs():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except self._error:
                pass
        return total

    def _sample(self):
        t0 = time.thread_time()
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, sum(p.memory_full_info().pss for p in self._procs()))
            except self._error:
                pass
            self._sampler_cpu = time.thread_time() - t0  # subtracted: not the benchmarked work
            time.sleep(0.2)

    def __enter__(self):
        self.cpu0, self.wall0 = self.me.cpu_times().user + self.me.cpu_times().system, time.perf_counter()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if not self._stop.is_set():
            self.wall = time.perf_counter() - self.wall0
            cpu = self._cpu() - self.cpu0  # workers start after __enter__: their whole CPU counts
            self._stop.set()
            self._thread.join()
            self.cpu = cpu - self._sampler_cpu

    def __exit__(self, *exc):
        self.stop()


def _mib(b: int) -> str:
    return f"{b / 2**20:.0f} MiB"


def evict_page_cache(paths) -> None:
    """Drop these files from the page cache (cold-read runs); no root needed."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------- runs

def bench_write(raw, annotations, out, n, **kw) -> None:
    shutil.rmtree(out, ignore_errors=True)
    with Meter() as m:
        manifest = write_split(annotations, "train", raw, out, max_samples=250, seed=0, progress=False, **kw)
    assert manifest["num_samples"] == n
    label = "re-encode 224x224 jpg q90" if kw else "original bytes (keep)"
    print(f"write {label:26s}: {n / m.cpu:7.0f} samples/CPU-s (per core) | {n / m.wall:7.0f} samples/s wall | "
          f"{manifest['num_shards']} shards, {_mib(manifest['total_bytes'])}, peak PSS {_mib(m.peak)}", flush=True)
    if not kw:
        image_bytes = sum(p.stat().st_size for p in (raw / "imgs").iterdir())
        print(f"  shard bytes / image bytes {manifest['total_bytes'] / image_bytes:.3f}; beyond the images "
              f"{(manifest['total_bytes'] - image_bytes) / n:.0f} bytes per sample", flush=True)


def _time_loader(loader, limit: int) -> tuple[Meter, int]:
    seen = 0
    with Meter() as m:
        iterator = iter(loader)
        for images, _ in iterator:
            seen += len(images)
            if seen >= limit:
                break
        m.stop()
        del iterator
    return m, seen


def bench_load(shard_dir, raw, records, measure, transform, label, cold=False, workers_list=(1, 2)):
    shard_files = sorted(shard_dir.glob("*.tar"))
    image_files = [raw / r["file_path"] for r in records]
    for workers in workers_list:
        pipe = open_shards(shard_dir / "manifest.json", num_workers=workers).compose(
            wds.map(_ApplyImage(transform)), wds.batched(BATCH))
        shard_loader = DataLoader(pipe, batch_size=None, num_workers=workers)
        folder = FolderDataset(raw, records, transform)
        folder_loader = DataLoader(folder, batch_size=BATCH, shuffle=True, num_workers=workers,
                                   generator=torch.Generator().manual_seed(0))
        if cold:
            evict_page_cache(shard_files)
        s, s_n = _time_loader(shard_loader, measure)
        if cold:
            evict_page_cache(image_files)
        f, f_n = _time_loader(folder_loader, measure)
        name = f"{label}{' cold' if cold else ''}"
        print(f"load {name:17s} workers={workers}: shards {s_n / s.cpu:5.0f}/CPU-s {s_n / s.wall:5.0f}/s wall "
              f"peak {_mib(s.peak)} | folder {f_n / f.cpu:5.0f}/CPU-s {f_n / f.wall:5.0f}/s wall "
              f"peak {_mib(f.peak)} | per-core ratio {(s_n / s.cpu) / (f_n / f.cpu):4.2f}x", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--measure", type=int, default=4000, help="images timed per loader run")
    parser.add_argument("--workdir", default=None, help="keep the data here (default: a temp dir, removed)")
    parser.add_argument("--write-only", action="store_true", help="measure writing (and the shard sizes) only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one core per loader worker, as in training
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tbps-bench-shards-"))
    try:
        print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, webdataset {wds.__version__}, "
              f"Pillow {Image.__version__}", flush=True)
        t = time.perf_counter()
        raw, annotations, data_json = generate(root, args.images)
        size = sum(p.stat().st_size for p in (raw / "imgs").iterdir())
        print(f"generated {args.images} images ({_mib(size)}, mean {size / args.images / 1024:.1f} KiB) "
              f"in {time.perf_counter() - t:.1f} s", flush=True)
        bench_write(raw, annotations, root / "shards_keep", args.images)
        bench_write(raw, annotations, root / "shards_224", args.images, image_size=(224, 224), image_format="jpg")
        if args.write_only:
            return 0
        records = json.loads(data_json.read_text())
        transform, note = train_transform()
        print(f"train transform: {note}")
        bench_load(root / "shards_keep", raw, records, args.measure, _shape_only, "decode-only")
        bench_load(root / "shards_keep", raw, records, args.measure, _shape_only, "decode-only",
                   cold=True, workers_list=(1,))
        bench_load(root / "shards_keep", raw, records, args.measure, transform, "decode+train")
        bench_load(root / "shards_224", raw, records, args.measure, transform, "224-shards+train",
                   workers_list=(1,))
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
