"""Exact top-K over a gallery of any size, in bounded memory.

The gallery's float16 embeddings are read in blocks of ``gallery_chunk`` rows (from the memory
map: only one block is in memory as float32 at a time); each block is ranked by
:func:`tbps.metrics.similarity_topk` (itself chunked over queries) and its best ``k`` are merged
with the best so far. Memory: about ``gallery_chunk x (D x 6 bytes + queries x 4 bytes)``
whatever the gallery size. The result is exactly the full ranking's first ``k``, ties in the
order of :func:`tbps.metrics.retrieval_metrics` (equal scores: lower gallery row first).
"""

from __future__ import annotations

import numpy as np
import torch

from tbps.metrics import similarity_topk

GALLERY_CHUNK = 65536


def top_k(queries: torch.Tensor, embeddings: np.ndarray, k: int, *, gallery_chunk: int = GALLERY_CHUNK,
          query_chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, rows), each Q x min(k, N), best first: the ``k`` gallery rows with the highest dot product."""
    if gallery_chunk < 1:
        raise ValueError(f"gallery_chunk must be >= 1, got {gallery_chunk}")
    num_gallery = int(embeddings.shape[0])
    if num_gallery == 0:
        raise ValueError("the gallery is empty")
    queries = queries.float()
    best_scores = best_rows = None
    for start in range(0, num_gallery, gallery_chunk):
        block = torch.from_numpy(np.array(embeddings[start:start + gallery_chunk]))  # a writable copy
        scores, rows = similarity_topk(queries, block, k, query_chunk=query_chunk)
        rows += start
        if best_scores is None:
            best_scores, best_rows = scores, rows
            continue
        # Earlier blocks hold lower rows: a stable sort of [best, new] keeps ties in row order.
        merged_scores = torch.cat([best_scores, scores], dim=1)
        merged_rows = torch.cat([best_rows, rows], dim=1)
        order = torch.sort(merged_scores, dim=1, descending=True, stable=True).indices[:, :k]
        best_scores, best_rows = merged_scores.gather(1, order), merged_rows.gather(1, order)
    return best_scores, best_rows
