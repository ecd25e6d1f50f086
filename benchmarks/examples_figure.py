"""Benchmark: size of the retrieval-examples page (tbps plots examples) per content and resolution.

Prints figures, asserts nothing. The page is the only report figure made of photos, so its PNG
size depends on what the photos look like; this measures it on made-up galleries of 128x384
person crops (the size of RSTPReid and ICFG-PEDES images; CUHK-PEDES crops are smaller):

- ``photo``: photo-like content, colour fields at three scales (Gaussian-blurred noise) plus
  sensor grain, stored as JPEG (quality 90) like the datasets' own files;
- ``noise``: independent uniform noise per pixel, the worst case for PNG;
- ``flat``: flat-coloured figures like the embedded synthetic set (the demo's case).

For each it renders ``--queries`` queries x top-5 at each ``--dpi`` with ``plot_examples`` and
reports the PNG's bytes and pixels, and what a 256-colour palette would save (the page used one
before it became full colour). The cap on the page (``tbps.plots.MAX_EXAMPLES_BYTES``) is
chosen from these figures: see BENCHMARKS.md, "Report figures".

    .venv/bin/python benchmarks/examples_figure.py --queries 24 12 --dpi 90 180
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import polars as pl
from PIL import Image, ImageFilter

import tbps.plots as plots

SIZE = (128, 384)
GALLERY = 40


def photo_like(rng: np.random.Generator) -> Image.Image:
    w, h = SIZE
    field = np.zeros((h, w, 3))
    for sigma, amplitude in ((24, 90.0), (8, 45.0), (2, 20.0)):
        noise = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        blurred = np.asarray(noise.filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float64)
        field += (blurred - blurred.mean()) / (blurred.std() + 1e-9) * amplitude / 3
    field += rng.normal(0, 6, (h, w, 3)) + rng.integers(60, 200, 3)
    image = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def noise(rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8))


def flat(rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", SIZE, tuple(int(v) for v in rng.integers(150, 256, 3)))
    body = Image.new("RGB", (SIZE[0] // 2, SIZE[1] * 2 // 3), tuple(int(v) for v in rng.integers(0, 150, 3)))
    image.paste(body, (SIZE[0] // 4, SIZE[1] // 6))
    return image


CONTENT = {"photo": photo_like, "noise": noise, "flat": flat}


def write_gallery(folder: Path, content: str, queries: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    raw = folder / content
    (raw / "imgs").mkdir(parents=True)
    for i in range(GALLERY):
        CONTENT[content](rng).save(raw / "imgs" / f"{i:04d}.png")
    words = "a young woman with long black hair wearing a red down jacket blue jeans white sneakers and a bag".split()
    rows = []
    for q in range(queries):
        caption = " ".join(rng.choice(words, size=40))
        for rank in range(1, 6):
            person = int(rng.integers(GALLERY))
            rows.append({"kind": "sample" if q < queries // 2 else "worst", "query": q, "caption": caption,
                         "query_person_id": q, "first_positive_rank": 3, "rank": rank,
                         "image_path": f"imgs/{person:04d}.png", "person_id": 10000 + person,
                         "correct": rank == 3, "score": 0.9 - 0.05 * rank})
    examples = folder / f"{content}_examples.parquet"
    pl.DataFrame(rows).write_parquet(examples)
    return examples, raw


def palette_bytes(png: Path) -> int:
    with Image.open(png) as im:
        quantized = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                               dither=Image.Dither.NONE)
    buf = io.BytesIO()
    quantized.save(buf, format="png")
    return len(buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, nargs="+", default=[24, 12], help="queries on the page")
    parser.add_argument("--dpi", type=float, nargs="+", default=[90, 180], help="resolutions to measure")
    parser.add_argument("--content", nargs="+", choices=sorted(CONTENT), default=["photo", "noise", "flat"])
    args = parser.parse_args(argv)
    print(f"{'content':8} {'queries':>7} {'dpi':>5} {'pixels':>12} {'PNG bytes':>11} {'palette bytes':>13} "
          f"{'render s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for content in args.content:
            for queries in args.queries:
                examples, raw = write_gallery(Path(tmp) / f"{content}{queries}", content, queries)
                for dpi in args.dpi:
                    out = Path(tmp) / f"{content}_{queries}_{dpi:g}.png"
                    # Measure the page itself: no cap, no fallback resolution.
                    with mock.patch.object(plots, "EXAMPLES_DPI", dpi), \
                            mock.patch.object(plots, "MAX_EXAMPLES_BYTES", sys.maxsize):
                        start = time.perf_counter()
                        plots.plot_examples(examples, raw, out, per_kind=queries // 2)
                        seconds = time.perf_counter() - start
                    with Image.open(out) as im:
                        pixels = f"{im.size[0]}x{im.size[1]}"
                    print(f"{content:8} {queries:7d} {dpi:5g} {pixels:>12} {out.stat().st_size:11,d} "
                          f"{palette_bytes(out):13,d} {seconds:8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
