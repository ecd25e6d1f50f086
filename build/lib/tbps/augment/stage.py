"""The augment stage: one paraphrase per caption of the chosen splits -> ``captions_aug.parquet``.

The backends (:mod:`tbps.augment.backends`) compute the paraphrases; this module
reads and validates the captions, runs a backend over the distinct ones and
writes the table.

``caption_aug`` is stored raw; cleaning happens at training time. Results are
cached per caption text (:mod:`tbps.augment.cache`) and computed in
batches of captions sorted by length, so batches pad little and their content
does not depend on the input's row order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from tbps.augment.backends import Backend
from tbps.augment.cache import AugmentCache, cache_key
from tbps.errors import input_error
from tbps.fileio import write_parquet_atomic
from tbps.progress import progress

log = logging.getLogger(__name__)

DEFAULT_SPLITS = ("train",)
_FIX_INPUT = "pass the annotations.parquet written by `tbps prepare`"


@dataclass(frozen=True)
class AugmentSummary:
    rows: int
    """Rows written (captions of the chosen splits)."""
    unique_captions: int
    cached: int
    """Unique captions found in the cache."""
    computed: int
    """Unique captions sent to the backend in this run."""
    blank: int
    """Unique captions that are empty or whitespace: copied, never sent to the backend."""
    empty_fallback: int
    """Unique captions whose backend output was blank; their source caption is used instead."""
    seconds: float


def read_captions(path: str | Path, splits: Sequence[str] = DEFAULT_SPLITS) -> pl.DataFrame:
    """``caption_id, caption`` of the rows in ``splits``, sorted by caption_id, validated."""
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "annotations file not found", "run `tbps prepare` first, or fix --captions")
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as e:  # polars raises several types for non-Parquet bytes
        raise input_error(path, f"not a readable Parquet file ({type(e).__name__})", _FIX_INPUT) from None
    expected = {"caption_id": "integer", "split": "string", "caption": "string"}
    missing = [c for c in expected if c not in schema]
    if missing:
        raise input_error(path, f"missing column(s) {', '.join(missing)}", _FIX_INPUT)
    wrong = [f"{c} is {schema[c]}, expected {kind}" for c, kind in expected.items()
             if not (schema[c].is_integer() if kind == "integer" else schema[c] == pl.String)]
    if wrong:
        raise input_error(path, "; ".join(wrong), _FIX_INPUT)

    df = pl.read_parquet(path, columns=list(expected)).with_row_index("record")
    present = sorted(df["split"].drop_nulls().unique().to_list())
    absent = [s for s in splits if s not in present]
    if absent:
        raise input_error(path, f"no rows with split {', '.join(map(repr, absent))} (splits present: "
                          f"{', '.join(present) or 'none'})", "pass --splits with splits present in the file")
    df = df.filter(pl.col("split").is_in(list(splits)))
    for column in ("caption_id", "caption"):
        nulls = df.filter(pl.col(column).is_null())
        if nulls.height:
            raise input_error(path, f"{column} is null ({nulls.height} row(s) in the chosen splits)",
                              _FIX_INPUT, record=nulls["record"][0])
    dupes = df.filter(pl.col("caption_id").is_duplicated())
    if dupes.height:
        raise input_error(path, f"caption_id {dupes['caption_id'][0]} is not unique "
                          f"({dupes.height} rows share ids)", _FIX_INPUT, record=dupes["record"][0])
    return df.select(pl.col("caption_id").cast(pl.Int64), "caption").sort("caption_id")


def augment_texts(texts: Sequence[str], backend: Backend, cache: AugmentCache,
                  batch_size: int | None = None) -> tuple[dict[str, str], dict[str, int]]:
    """Map each distinct text to its backend output, computing only what ``cache`` lacks.

    The cache is committed after every batch. Returns (results, counts) where
    counts has ``cached``, ``computed``, ``blank`` and ``empty_fallback``.
    """
    batch_size = batch_size or backend.default_batch_size
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    unique = sorted(set(texts), key=lambda t: (len(t), t))
    blank = [t for t in unique if not t.strip()]
    todo = [t for t in unique if t.strip()]
    results = {t: t for t in blank}
    counts = {"cached": 0, "computed": 0, "blank": len(blank), "empty_fallback": 0}
    if not backend.cacheable:
        results.update(zip(todo, backend(todo), strict=True))
        counts["computed"] = len(todo)
        return results, counts

    params = backend.cache_params()
    keys = {t: cache_key(backend.name, params, t) for t in todo}
    hits = cache.get_many(list(keys.values()))
    raw = {t: hits[keys[t]] for t in todo if keys[t] in hits}
    misses = [t for t in todo if keys[t] not in hits]
    counts["cached"] = len(raw)
    log.info("%s: %d distinct captions, %d in the cache, %d to compute (batches of %d)",
             backend.name, len(unique), len(raw), len(misses), batch_size)
    with progress(total=len(misses), unit="captions", desc=f"augment {backend.name}", disable=not misses) as bar:
        for start in range(0, len(misses), batch_size):
            batch = misses[start:start + batch_size]
            outputs = backend(batch)
            if len(outputs) != len(batch) or not all(isinstance(o, str) for o in outputs):
                raise RuntimeError(f"backend {backend.name} returned {len(outputs)} outputs for "
                                   f"{len(batch)} captions (or a non-string)")
            cache.put_many((keys[t], backend.name, t, o) for t, o in zip(batch, outputs, strict=True))
            raw.update(zip(batch, outputs, strict=True))
            counts["computed"] += len(batch)
            bar.update(len(batch))
    # The fallback is applied after the cache so it is counted on every run, not only the first.
    for text, output in raw.items():
        if output.strip():
            results[text] = output
        else:
            results[text] = text
            counts["empty_fallback"] += 1
    if counts["empty_fallback"]:
        log.warning("%s returned blank text for %d caption(s); their source caption is used",
                    backend.name, counts["empty_fallback"])
    return results, counts


def augment_captions(annotations: str | Path, out: str | Path, backend: Backend, *,
                     cache_path: str | Path | None = None, batch_size: int | None = None,
                     splits: Sequence[str] = DEFAULT_SPLITS) -> AugmentSummary:
    """Write ``captions_aug.parquet`` (caption_id, caption, caption_aug, backend), sorted by caption_id."""
    start = time.perf_counter()
    df = read_captions(annotations, splits)
    if cache_path is not None and not backend.cacheable:
        log.info("backend %s computes nothing; --cache %s is not used", backend.name, cache_path)
        cache_path = None
    with AugmentCache(cache_path) as cache:
        results, counts = augment_texts(df["caption"].to_list(), backend, cache, batch_size)
    table = pl.DataFrame(
        {
            "caption_id": df["caption_id"],
            "caption": df["caption"],
            "caption_aug": [results[t] for t in df["caption"]],
            "backend": [backend.name] * df.height,
        },
        schema={"caption_id": pl.Int64, "caption": pl.String, "caption_aug": pl.String, "backend": pl.String},
    )
    write_parquet_atomic(table, out)
    summary = AugmentSummary(rows=table.height, unique_captions=len(results), **counts,
                             seconds=time.perf_counter() - start)
    changed = (table["caption"] != table["caption_aug"]).sum()
    log.info("wrote %s: %d captions of split(s) %s, %d changed by %s; %d distinct: %d cached, %d computed, "
             "%d blank, %d blank outputs replaced (%.1f s)", out, summary.rows, ",".join(splits), changed,
             backend.name, summary.unique_captions, summary.cached, summary.computed, summary.blank,
             summary.empty_fallback, summary.seconds)
    return summary
