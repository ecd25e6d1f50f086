"""Exact retrieval metrics (R@K, mAP, mINP) at any gallery size with bounded memory.

Definitions follow docs/method.md#retrieval-metrics: for each query the gallery is ranked by similarity,
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

**From features.** The matrix itself is Q x G floats (1.5 GiB at ICFG size, 37 GiB at
100k x 100k). :func:`retrieval_metrics_from_features` and :func:`rank_queries_by_features`
take the query and gallery features instead and compute each chunk's rows of the product
when ranking it, so nothing larger than a chunk exists; the scores are the same bits as one
full product (:func:`similarity_rows`), so are the metrics.

**Directions.** Text->image (the reported direction) ranks the images for every caption
(caption features and ids as the queries). Image->text is the same call with the roles
swapped; with a matrix, pass ``similarity.T`` (no copy is made beyond one chunk).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "QueryRanks",
    "rank_queries",
    "rank_queries_by_features",
    "retrieval_metrics",
    "retrieval_metrics_from_features",
    "similarity_rows",
    "similarity_topk",
    "summarise",
    "topk_indices",
]

ArrayLike = torch.Tensor | np.ndarray


@dataclass(frozen=True)
class QueryRanks:
    """Per-query outcome of ranking a gallery: what every metric (and the examples) is made of."""

    first_positive: torch.Tensor
    """Q int64: 1-based rank of each query's best-ranked positive (R@K counts first_positive <= K)."""
    average_precision: torch.Tensor
    """Q float64: AP_q in [0, 1]."""
    inverse_negative_penalty: torch.Tensor
    """Q float64: INP_q in (0, 1]."""


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

    Ties are ranked by gallery index (see the module docstring). Without the matrix in
    memory: :func:`retrieval_metrics_from_features` (what the importance probe uses).
    """
    ks = _check_ks(ks)
    return summarise(rank_queries(similarity, query_ids, gallery_ids, query_chunk=query_chunk), ks)


def retrieval_metrics_from_features(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    query_ids: ArrayLike | Sequence[int],
    gallery_ids: ArrayLike | Sequence[int],
    *,
    ks: Sequence[int] = (1, 5, 10),
    query_chunk: int = 1024,
) -> dict[str, float]:
    """:func:`retrieval_metrics` of ``queries @ gallery.T``, never holding more than a chunk of it.

    The same numbers as ``retrieval_metrics(queries @ gallery.T, ...)`` (see
    :func:`similarity_rows` for why the scores are the same bits); memory O(query_chunk x G)
    on top of the features.
    """
    ks = _check_ks(ks)
    ranks = rank_queries_by_features(queries, gallery, query_ids, gallery_ids, query_chunk=query_chunk)
    return summarise(ranks, ks)


def summarise(ranks: QueryRanks, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@K, mAP and mINP in percent from per-query ranks (one ``R{K}`` per K, then mAP and mINP)."""
    ks = _check_ks(ks)
    num_q = ranks.first_positive.numel()
    result = {f"R{k}": 100.0 * int((ranks.first_positive <= k).sum()) / num_q for k in ks}
    # fsum over the per-query values: the result does not depend on how queries were chunked.
    result["mAP"] = 100.0 * math.fsum(ranks.average_precision.tolist()) / num_q
    result["mINP"] = 100.0 * math.fsum(ranks.inverse_negative_penalty.tolist()) / num_q
    return result


def rank_queries(
    similarity: ArrayLike,
    query_ids: ArrayLike | Sequence[int],
    gallery_ids: ArrayLike | Sequence[int],
    *,
    query_chunk: int = 1024,
) -> QueryRanks:
    """Per-query ranks of a Q x G similarity matrix (arguments and errors as :func:`retrieval_metrics`)."""
    sim, work_dtype = _check_similarity(similarity)
    num_q, num_g = sim.shape
    device = sim.device if isinstance(sim, torch.Tensor) else torch.device("cpu")
    return _rank_chunks(lambda start, stop: _chunk_rows(sim, start, stop, work_dtype, device),
                        num_q, num_g, query_ids, gallery_ids, query_chunk, device)


def rank_queries_by_features(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    query_ids: ArrayLike | Sequence[int],
    gallery_ids: ArrayLike | Sequence[int],
    *,
    query_chunk: int = 1024,
) -> QueryRanks:
    """Per-query ranks of ``queries @ gallery.T``, each chunk of rows computed when it is ranked.

    ``queries`` (Q x D) and ``gallery`` (G x D) are feature rows; the work happens on the
    gallery's device, in float32 (float64 if either is float64).
    """
    dtype = _check_features(queries, gallery)
    gallery = gallery.to(dtype)
    return _rank_chunks(lambda start, stop: similarity_rows(queries, gallery, slice(start, stop)),
                        queries.shape[0], gallery.shape[0], query_ids, gallery_ids, query_chunk, gallery.device)


def similarity_rows(queries: torch.Tensor, gallery: torch.Tensor, rows: slice | Sequence[int] | torch.Tensor
                    ) -> torch.Tensor:
    """The given rows of ``queries @ gallery.T`` (float32, or float64 if either input is), on the gallery's device.

    The same bits as those rows of the full product: BLAS libraries pick another kernel for
    products of very few rows (MKL: fewer than 12, measured), which rounds differently, so a
    short request is computed within a product of at least ``_MIN_PRODUCT_ROWS`` query rows
    (or all of them) and cut out. Ranking in chunks, or scoring a handful of example queries,
    then gives exactly the numbers of one full product.
    """
    dtype = _check_features(queries, gallery)
    gallery = gallery.to(dtype)
    num_q = queries.shape[0]
    wanted = min(_MIN_PRODUCT_ROWS, num_q)
    if isinstance(rows, slice):
        start, stop, step = rows.indices(num_q)
        if step != 1:
            raise ValueError(f"rows must be a contiguous slice, got step {step}")
        low = max(0, min(start, stop - wanted))
        high = max(stop, low + wanted)
        block = queries[low:high].to(device=gallery.device, dtype=dtype) @ gallery.t()
        return block[start - low : stop - low]
    index = torch.as_tensor(rows, dtype=torch.int64).flatten().cpu()
    if index.numel() and (int(index.min()) < -num_q or int(index.max()) >= num_q):
        raise ValueError(f"rows must index the {num_q} queries")
    index = index % max(num_q, 1)
    padding = torch.ones(num_q, dtype=torch.bool)
    padding[index] = False
    padding = padding.nonzero().flatten()[: max(0, wanted - index.numel())]
    block = queries[torch.cat([index, padding])].to(device=gallery.device, dtype=dtype) @ gallery.t()
    return block[: index.numel()]


_MIN_PRODUCT_ROWS = 64
"""Fewest query rows per matrix product in :func:`similarity_rows` (MKL changes kernels below 12)."""


def _check_features(queries: torch.Tensor, gallery: torch.Tensor) -> torch.dtype:
    """The dtype to compute ``queries @ gallery.T`` in; an error for anything but two Q x D, G x D float tensors."""
    if not isinstance(queries, torch.Tensor) or not isinstance(gallery, torch.Tensor):
        raise ValueError("queries and gallery must be torch tensors of features")
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"expected Q x D and G x D features, got {tuple(queries.shape)} and {tuple(gallery.shape)}")
    if queries.shape[0] == 0 or gallery.shape[0] == 0:
        raise ValueError(f"need at least one query and one gallery item, got {queries.shape[0]} and {gallery.shape[0]}")
    if not queries.is_floating_point() or not gallery.is_floating_point():
        raise ValueError(f"features must have a floating dtype, got {queries.dtype} and {gallery.dtype}")
    return torch.float64 if torch.float64 in (queries.dtype, gallery.dtype) else torch.float32


def _rank_chunks(
    chunk_of: Callable[[int, int], torch.Tensor],
    num_q: int,
    num_g: int,
    query_ids: ArrayLike | Sequence[int],
    gallery_ids: ArrayLike | Sequence[int],
    query_chunk: int,
    device: torch.device,
) -> QueryRanks:
    """Rank the rows ``chunk_of(start, stop)`` (C x G scores) chunk by chunk; keep per-query values only."""
    q_ids = _as_id_tensor(query_ids, "query_ids", num_q, device)
    g_ids = _as_id_tensor(gallery_ids, "gallery_ids", num_g, device)
    if query_chunk < 1:
        raise ValueError(f"query_chunk must be >= 1, got {query_chunk}")

    no_positive = ~torch.isin(q_ids, g_ids)
    if bool(no_positive.any()):
        missing = torch.nonzero(no_positive).flatten().tolist()
        shown = ", ".join(str(i) for i in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise ValueError(
            f"{len(missing)} of {num_q} queries have no positive in the gallery "
            f"(query indices {shown}); the protocol requires every query id to appear among "
            "gallery_ids. Fix: evaluate on a gallery that holds every query identity."
        )

    g_sorted_ids, g_order = torch.sort(g_ids, stable=True)
    first_rank = torch.empty(num_q, dtype=torch.int64, device=device)
    ap = torch.empty(num_q, dtype=torch.float64, device=device)
    inp = torch.empty(num_q, dtype=torch.float64, device=device)
    for start in range(0, num_q, query_chunk):
        stop = min(start + query_chunk, num_q)
        chunk = chunk_of(start, stop)
        # A finite sum is the cheap common case; only an inf/NaN sum needs the full check.
        if not bool(torch.isfinite(chunk.sum())) and not bool(torch.isfinite(chunk).all()):
            raise ValueError(
                f"similarity rows {start}..{stop - 1} contain NaN or infinite values; "
                "ranks are undefined. Fix: check the embeddings that produced them."
            )
        ranks, counts = _positive_ranks(chunk, q_ids[start:stop], g_order, g_sorted_ids)
        del chunk
        first_rank[start:stop] = ranks[:, 0]
        last_rank = ranks.gather(1, (counts - 1).unsqueeze(1)).squeeze(1)
        j = torch.arange(1, ranks.shape[1] + 1, device=device, dtype=torch.float64)
        # cumsum runs left to right, so the sum up to n_q ignores the padding after it
        # and is the same whatever the chunk's padded width is.
        precision_sum = torch.cumsum(j / ranks.to(torch.float64), dim=1)
        ap[start:stop] = precision_sum.gather(1, (counts - 1).unsqueeze(1)).squeeze(1) / counts
        inp[start:stop] = counts.to(torch.float64) / last_rank.to(torch.float64)
    return QueryRanks(first_rank, ap, inp)


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
    O(query_chunk x G); the scores are computed in float32 (or float64 for float64 inputs) and
    are the bits of the full product (:func:`similarity_rows`).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if query_chunk < 1:
        raise ValueError(f"query_chunk must be >= 1, got {query_chunk}")
    dtype = _check_features(queries, gallery)
    gallery = gallery.to(dtype)
    num_q, num_g = queries.shape[0], gallery.shape[0]
    k = min(k, num_g)
    scores = torch.empty(num_q, k, dtype=dtype, device=gallery.device)
    indices = torch.empty(num_q, k, dtype=torch.int64, device=gallery.device)
    for start in range(0, num_q, query_chunk):
        stop = min(start + query_chunk, num_q)
        chunk = similarity_rows(queries, gallery, slice(start, stop))
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
