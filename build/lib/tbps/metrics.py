"""Exact retrieval metrics (R@K, mAP, mINP) at any gallery size with bounded memory.

Definitions follow spec §8: for each query the gallery is ranked by similarity,
descending; m_q(k) = 1 when the item at rank k shares the query's id and
n_q = sum_k m_q(k) >= 1.

- R@K  = 100/Q * #{q : some positive has rank <= K}  (K beyond the gallery covers it all)
- AP_q = 1/n_q * sum_j j / rank_j  over the positives sorted by rank (j = 1..n_q)
- INP_q = n_q / rank of the last positive  (IRRA's mINP)

**Tie order.** Equal scores are ranked by gallery index, lower index first:
exactly the order of a *stable* descending argsort. The rank of gallery item g
for a query with scores s is therefore

    rank(g) = #{h : s_h > s_g} + #{h < g : s_h == s_g} + 1.

**Why no argsort.** Sorting the whole Q x G matrix (what most peers do) needs
~3 GB of int64 indices plus temporaries at ICFG size (19,848^2). Every metric
above only needs the ranks of the positives, so each query chunk sorts just
its positives' scores (n_q per query) and places every gallery score among them
with a binary search (``torch.searchsorted``); a per-query histogram of those
positions gives "how many gallery items score above each positive". Only
positives whose score is shared by another gallery item (rare with real
features) fall back to a direct count for the index tie-break. Memory is
O(query_chunk x G): measured ~13-16 bytes x query_chunk x G at the peak for
float32 scores (benchmarks/eval_ranking.py), against ~12 GB for a full argsort at
ICFG size.

**Directions.** Text->image (the reported direction) passes the caption x image
similarity with caption ids and image ids. Image->text is the same call with the
transposed matrix (``similarity.T``; no copy is made beyond one chunk) and the
id vectors swapped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["retrieval_metrics", "topk_indices"]

ArrayLike = torch.Tensor | np.ndarray


def retrieval_metrics(
    similarity: ArrayLike,
    query_ids: ArrayLike | Sequence[int],
    gallery_ids: ArrayLike | Sequence[int],
    *,
    ks: Sequence[int] = (1, 5, 10),
    query_chunk: int = 1024,
) -> dict[str, float]:
    """R@K, mAP and mINP (percent) of a queries x gallery similarity matrix.

    Args:
        similarity: Q x G scores (torch tensor on any device, or numpy array),
            any floating dtype. float16/bfloat16 are widened to float32 (exactly, so
            ties are kept); float32 and float64 are used as they are. Must be finite.
        query_ids: Q integer identity labels.
        gallery_ids: G integer identity labels.
        ks: the K of each R@K; a K larger than G covers the whole gallery.
        query_chunk: queries processed at once; bounds memory to O(query_chunk x G).
            Results do not depend on it (bit-identical for any value on CPU; ranks
            and R@K are identical on any device).

    Returns:
        ``{"R1": .., "R5": .., "R10": .., "mAP": .., "mINP": ..}`` as Python floats in
        percent, with one ``R{K}`` entry per K in ``ks`` (in the given order).

    Raises:
        ValueError: on shape/dtype mismatches, non-finite scores, or when any query
            has no positive in the gallery. Spec §8 requires n_q >= 1; silently
            dropping such queries would inflate every metric, so the error says how
            many queries (and which) have none, and the caller must fix the ids or
            the gallery.

    Ties are ranked by gallery index (see the module docstring).
    """
    sim, work_dtype = _check_similarity(similarity)
    num_q, num_g = sim.shape
    device = sim.device if isinstance(sim, torch.Tensor) else torch.device("cpu")
    q_ids = _as_id_tensor(query_ids, "query_ids", num_q, device)
    g_ids = _as_id_tensor(gallery_ids, "gallery_ids", num_g, device)
    ks = _check_ks(ks)
    if query_chunk < 1:
        raise ValueError(f"query_chunk must be >= 1, got {query_chunk}")

    no_positive = ~torch.isin(q_ids, g_ids)
    if bool(no_positive.any()):
        missing = torch.nonzero(no_positive).flatten().tolist()
        shown = ", ".join(str(i) for i in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise ValueError(
            f"{len(missing)} of {num_q} queries have no positive in the gallery "
            f"(query indices {shown}); spec §8 requires every query id to appear among "
            "gallery_ids. Fix: evaluate on a gallery that holds every query identity."
        )

    g_sorted_ids, g_order = torch.sort(g_ids, stable=True)
    # Per-query values are kept (O(Q)) and reduced once at the end, so the result
    # does not depend on how the queries were chunked.
    first_rank = torch.empty(num_q, dtype=torch.int64, device=device)
    ap = torch.empty(num_q, dtype=torch.float64, device=device)
    inp = torch.empty(num_q, dtype=torch.float64, device=device)
    for start in range(0, num_q, query_chunk):
        stop = min(start + query_chunk, num_q)
        chunk = _chunk_rows(sim, start, stop, work_dtype, device)
        # A finite sum is the cheap common case; only an inf/NaN sum needs the full check.
        if not bool(torch.isfinite(chunk.sum())) and not bool(torch.isfinite(chunk).all()):
            raise ValueError(
                f"similarity rows {start}..{stop - 1} contain NaN or infinite values; "
                "ranks are undefined. Fix: check the embeddings that produced them."
            )
        ranks, counts = _positive_ranks(chunk, q_ids[start:stop], g_order, g_sorted_ids)
        first_rank[start:stop] = ranks[:, 0]
        last_rank = ranks.gather(1, (counts - 1).unsqueeze(1)).squeeze(1)
        j = torch.arange(1, ranks.shape[1] + 1, device=device, dtype=torch.float64)
        # cumsum runs left to right, so the sum up to n_q ignores the padding after it
        # and is the same whatever the chunk's padded width is.
        precision_sum = torch.cumsum(j / ranks.to(torch.float64), dim=1)
        ap[start:stop] = precision_sum.gather(1, (counts - 1).unsqueeze(1)).squeeze(1) / counts
        inp[start:stop] = counts.to(torch.float64) / last_rank.to(torch.float64)

    result = {f"R{k}": 100.0 * int((first_rank <= k).sum()) / num_q for k in ks}
    result["mAP"] = 100.0 * math.fsum(ap.tolist()) / num_q
    result["mINP"] = 100.0 * math.fsum(inp.tolist()) / num_q
    return result


def topk_indices(similarity: ArrayLike, k: int, *, query_chunk: int = 1024) -> torch.Tensor:
    """Top-k gallery indices per query (Q x min(k, G), int64, best first).

    Uses the same tie order as :func:`retrieval_metrics` (equal scores: lower gallery
    index first). Meant for showing retrieval examples; each chunk is sorted, so
    the cost is O(G log G) per query.
    """
    sim, work_dtype = _check_similarity(similarity)
    num_q, num_g = sim.shape
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if query_chunk < 1:
        raise ValueError(f"query_chunk must be >= 1, got {query_chunk}")
    device = sim.device if isinstance(sim, torch.Tensor) else torch.device("cpu")
    k = min(k, num_g)
    out = torch.empty(num_q, k, dtype=torch.int64, device=device)
    for start in range(0, num_q, query_chunk):
        stop = min(start + query_chunk, num_q)
        chunk = _chunk_rows(sim, start, stop, work_dtype, device)
        order = torch.sort(chunk, dim=1, descending=True, stable=True).indices
        out[start:stop] = order[:, :k]
    return out


def similarity_topk(
    queries: torch.Tensor, gallery: torch.Tensor, k: int, *, query_chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``k`` gallery items per query by dot product, without the full Q x G matrix.

    ``queries`` (Q x D) and ``gallery`` (G x D) are feature rows (L2-normalised for cosine
    similarity). Returns (scores, indices), each Q x min(k, G), best first, with the tie order of
    :func:`retrieval_metrics` (equal scores: lower gallery index first). Memory is
    O(query_chunk x G); the scores are computed in float32 (or float64 for float64 inputs).
    """
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"expected Q x D and G x D features, got {tuple(queries.shape)} and {tuple(gallery.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if query_chunk < 1:
        raise ValueError(f"query_chunk must be >= 1, got {query_chunk}")
    dtype = torch.float64 if torch.float64 in (queries.dtype, gallery.dtype) else torch.float32
    gallery = gallery.to(dtype)
    num_q, num_g = queries.shape[0], gallery.shape[0]
    k = min(k, num_g)
    scores = torch.empty(num_q, k, dtype=dtype, device=gallery.device)
    indices = torch.empty(num_q, k, dtype=torch.int64, device=gallery.device)
    for start in range(0, num_q, query_chunk):
        stop = min(start + query_chunk, num_q)
        chunk = queries[start:stop].to(device=gallery.device, dtype=dtype) @ gallery.t()
        scores[start:stop], indices[start:stop] = _stable_topk(chunk, k)
    return scores, indices


def _stable_topk(chunk: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk with ties broken by lower index, as a full stable sort would."""
    values, idx = torch.topk(chunk, k, dim=1)
    # Order the k winners by (score desc, index asc): sort by index, then stably by score.
    by_index = torch.sort(idx, dim=1).indices
    values, idx = values.gather(1, by_index), idx.gather(1, by_index)
    by_score = torch.sort(values, dim=1, descending=True, stable=True).indices
    values, idx = values.gather(1, by_score), idx.gather(1, by_score)
    # topk may keep a later index among items tied with the k-th score: redo those rows exactly.
    kth = values[:, -1:]
    ambiguous = (chunk == kth).sum(dim=1) != (values == kth).sum(dim=1)
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero().flatten()
        order = torch.sort(chunk[rows], dim=1, descending=True, stable=True)
        values[rows], idx[rows] = order.values[:, :k], order.indices[:, :k]
    return values, idx


def _positive_ranks(
    scores: torch.Tensor, q_ids: torch.Tensor, g_order: torch.Tensor, g_sorted_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks of each query's positives, ascending, padded with a huge value.

    ``g_order`` sorts the gallery by id and ``g_sorted_ids`` are the ids in that
    order, so each query's positives are one contiguous run found by binary search
    (no C x G id comparison). Returns ``(ranks, counts)``: ranks is C x P (P = the
    largest n_q in the chunk), row q holding its n_q = counts[q] ranks first.
    """
    num_c, num_g = scores.shape
    device = scores.device
    first = torch.searchsorted(g_sorted_ids, q_ids)
    counts = torch.searchsorted(g_sorted_ids, q_ids, right=True) - first
    width = int(counts.max())

    # Scatter each row's positive scores (and their gallery columns) into a table,
    # padded with +inf so padding sorts last and no finite score reaches it. One
    # extra +inf column keeps every searchsorted position a valid gather index.
    rows = torch.repeat_interleave(torch.arange(num_c, device=device), counts)
    row_start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.numel(), device=device) - row_start[rows]
    cols = g_order[first[rows] + slot]
    pos_scores = torch.full((num_c, width + 1), math.inf, dtype=scores.dtype, device=device)
    pos_cols = torch.full((num_c, width + 1), num_g, dtype=torch.int64, device=device)
    pos_scores[rows, slot] = scores[rows, cols]
    pos_cols[rows, slot] = cols
    pos_scores, perm = torch.sort(pos_scores, dim=1)
    pos_cols = pos_cols.gather(1, perm)
    del rows, cols, slot, perm, first

    # bucket[q, h] = #{positives of q scoring strictly below s_h}. A gallery item
    # outranks the positive u_j exactly when its bucket exceeds the bucket of u_j's
    # own value (the number of positives strictly below u_j), so a suffix sum of the
    # per-row bucket histogram counts the items scoring above each positive.
    bucket = torch.searchsorted(pos_scores, scores)  # C x G, values 0..width
    # Equal scores land in the bucket of the positive they equal; mark them.
    equal = scores == pos_scores.gather(1, bucket)
    num_bins = num_c * (width + 1)
    offsets = torch.arange(num_c, device=device) * (width + 1)
    flat = bucket.add_(offsets.unsqueeze(1)).flatten()  # bin of (row, bucket), in place
    hist = torch.bincount(flat, minlength=num_bins).view(num_c, width + 1)
    hist_equal = torch.bincount(flat[equal.flatten()], minlength=num_bins).view(num_c, width + 1)
    del bucket, flat, equal
    above_or_in = torch.flip(torch.cumsum(torch.flip(hist, [1]), 1), [1])  # #{bucket >= b}
    # A positive's own bucket is < width, so own_bucket + 1 is a valid column.
    own_bucket = torch.searchsorted(pos_scores, pos_scores[:, :width].contiguous())  # C x P
    greater = above_or_in.gather(1, own_bucket + 1)
    ties = torch.zeros_like(greater)

    # Index tie-break, only for positives whose score another gallery item shares:
    # count the equal-scoring items that come before them in the gallery.
    valid = torch.arange(width, device=device).unsqueeze(0) < counts.unsqueeze(1)
    tied = valid & (hist_equal.gather(1, own_bucket) > 1)
    if bool(tied.any()):
        t_rows, t_slots = torch.nonzero(tied, as_tuple=True)
        gallery_index = torch.arange(num_g, device=device)
        for b in range(0, t_rows.numel(), num_c):  # batches of <= C rows keep memory O(C x G)
            r, s = t_rows[b : b + num_c], t_slots[b : b + num_c]
            col = pos_cols[r, s]
            before = (scores[r] == pos_scores[r, s].unsqueeze(1)) & (
                gallery_index.unsqueeze(0) < col.unsqueeze(1)
            )
            ties[r, s] = before.sum(dim=1)

    ranks = greater + ties + 1
    padding = torch.iinfo(torch.int64).max
    ranks = torch.where(valid, ranks, torch.full_like(ranks, padding))
    ranks = torch.sort(ranks, dim=1).values
    return ranks, counts


def _check_similarity(similarity: ArrayLike) -> tuple[ArrayLike, torch.dtype]:
    """Validate the matrix; return it untouched plus the dtype to compute in."""
    if isinstance(similarity, np.ndarray):
        if not np.issubdtype(similarity.dtype, np.floating):
            raise ValueError(f"similarity must have a floating dtype, got numpy {similarity.dtype}")
        dtype = torch.float64 if similarity.dtype == np.float64 else torch.float32
    elif isinstance(similarity, torch.Tensor):
        if not similarity.is_floating_point():
            raise ValueError(f"similarity must have a floating dtype, got {similarity.dtype}")
        dtype = torch.float64 if similarity.dtype == torch.float64 else torch.float32
    else:
        raise ValueError(
            f"similarity must be a torch.Tensor or numpy.ndarray, got {type(similarity).__name__}"
        )
    if similarity.ndim != 2 or similarity.shape[0] == 0 or similarity.shape[1] == 0:
        raise ValueError(
            f"similarity must be a non-empty queries x gallery matrix, got shape {tuple(similarity.shape)}"
        )
    return similarity, dtype


def _chunk_rows(
    sim: ArrayLike, start: int, stop: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Rows start..stop-1 as a contiguous tensor of ``dtype`` (copies one chunk at most)."""
    if isinstance(sim, np.ndarray):
        # np.array copies just this chunk, so read-only or memory-mapped inputs are fine.
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        return torch.from_numpy(np.array(sim[start:stop], dtype=np_dtype, order="C"))
    return sim[start:stop].to(device=device, dtype=dtype).contiguous()


def _as_id_tensor(
    ids: ArrayLike | Sequence[int], name: str, length: int, device: torch.device
) -> torch.Tensor:
    if isinstance(ids, torch.Tensor):
        tensor = ids
    else:
        array = np.asarray(ids)
        if array.dtype == object or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
            raise ValueError(f"{name} must hold integers, got numpy dtype {array.dtype}")
        tensor = torch.from_numpy(array.astype(np.int64, copy=True))
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(f"{name} must hold integers, got {tensor.dtype}")
    if tensor.ndim != 1 or tensor.shape[0] != length:
        raise ValueError(
            f"{name} must be a vector of length {length} (similarity shape), got shape {tuple(tensor.shape)}"
        )
    return tensor.to(device=device, dtype=torch.int64)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks must name at least one K")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"every K in ks must be a positive integer, got {k!r}")
    return tuple(int(k) for k in ks)
