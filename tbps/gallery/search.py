"""Answer descriptions from a gallery index: rank, score and path of the top-K images per query.

Only the index is read (its embeddings memory-mapped, in chunks), never the images: the
cost after the model is loaded is one text forward pass per query plus a float32 matrix
product per gallery chunk (see BENCHMARKS.md for the figures at 10k to 1M images).
"""

from __future__ import annotations

import logging
import time

import polars as pl

from tbps.gallery.encoder import SearchModel
from tbps.gallery.layout import GalleryIndex
from tbps.gallery.queries import Query, check_queries
from tbps.gallery.ranking import GALLERY_CHUNK, top_k

log = logging.getLogger(__name__)

RESULT_SCHEMA = {
    "query_index": pl.Int64, "query": pl.Utf8, "query_person_id": pl.Int64, "rank": pl.Int64, "score": pl.Float64,
    "image_path": pl.Utf8, "person_id": pl.Int64, "correct": pl.Boolean, "row": pl.Int64,
}


def search_index(index: GalleryIndex, model: SearchModel, queries: list[Query], top: int, *,
                 gallery_chunk: int = GALLERY_CHUNK) -> pl.DataFrame:
    """One row per (query, rank): see ``RESULT_SCHEMA``; ``row`` is the entry's row in the index."""
    check_queries(queries)
    started = time.perf_counter()
    features = model.encode_queries([q.text for q in queries])
    encoded = time.perf_counter()
    scores, rows = top_k(features, index.embeddings, top, gallery_chunk=gallery_chunk)
    ranked = time.perf_counter()
    log.info("%d queries: encoded in %.0f ms, %d images ranked in %.0f ms", len(queries),
             1000 * (encoded - started), index.count, 1000 * (ranked - encoded))
    needed = sorted(set(rows.flatten().tolist()))
    picked = index.entries.select("path", "person_id")[needed]
    path_of = dict(zip(needed, picked["path"].to_list(), strict=True))
    person_of = dict(zip(needed, picked["person_id"].to_list(), strict=True))
    records = []
    for q, query in enumerate(queries):
        for rank, (score, row) in enumerate(zip(scores[q].tolist(), rows[q].tolist(), strict=True), start=1):
            person_id = person_of[row]
            correct = None if query.person_id is None or person_id is None else person_id == query.person_id
            records.append({"query_index": q, "query": query.text, "query_person_id": query.person_id, "rank": rank,
                            "score": score, "image_path": path_of[row], "person_id": person_id, "correct": correct,
                            "row": row})
    return pl.DataFrame(records, schema=RESULT_SCHEMA)
