"""Tests for tbps.metrics: the worked example of docs/method.md#worked-example, edge cases, chunking, ties, dtypes."""

import warnings

import numpy as np
import pytest
import torch

from tbps.metrics import (
    rank_queries,
    rank_queries_by_features,
    retrieval_metrics,
    retrieval_metrics_from_features,
    similarity_rows,
    similarity_topk,
    topk_indices,
)

# Spec §8 worked example: gallery ids A B A C B, queries A and B.
A, B, C = 0, 1, 2
EXAMPLE_SIM = [[0.50, 0.90, 0.30, 0.80, 0.10], [0.20, 0.90, 0.40, 0.70, 0.10]]
EXAMPLE_QUERY_IDS = [A, B]
EXAMPLE_GALLERY_IDS = [A, B, A, C, B]


def reference_metrics(sim: np.ndarray, q_ids, g_ids, ks=(1, 5, 10)) -> dict[str, float]:
    """Spec §8 read literally: one full stable descending argsort per query."""
    sim = np.asarray(sim, dtype=np.float64)
    q_ids, g_ids = np.asarray(q_ids), np.asarray(g_ids)
    hits = {k: 0 for k in ks}
    ap_sum = inp_sum = 0.0
    for q in range(sim.shape[0]):
        order = np.argsort(-sim[q], kind="stable")  # ties: lower gallery index first
        m = (g_ids[order] == q_ids[q]).astype(np.int64)
        for k in ks:
            hits[k] += int(m[:k].sum() >= 1)
        ranks = np.flatnonzero(m) + 1
        ap_sum += float(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        inp_sum += len(ranks) / ranks[-1]
    n = sim.shape[0]
    out = {f"R{k}": 100.0 * hits[k] / n for k in ks}
    out["mAP"] = 100.0 * ap_sum / n
    out["mINP"] = 100.0 * inp_sum / n
    return out


def assert_close(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-10), key


def random_case(seed: int, num_q: int = 60, num_g: int = 80, num_ids: int = 12, decimals: int | None = None):
    """Random ids (several positives per id, some ids much more frequent) and scores."""
    rng = np.random.default_rng(seed)
    g_ids = rng.integers(0, num_ids, size=num_g)
    g_ids[:num_ids] = np.arange(num_ids)  # every id present, so every query has a positive
    g_ids[num_ids : num_ids + 15] = 0  # one id with many positives: uneven padding within a chunk
    q_ids = rng.integers(0, num_ids, size=num_q)
    sim = rng.standard_normal((num_q, num_g)).astype(np.float32)
    if decimals is not None:
        sim = np.round(sim, decimals)  # deliberate ties, also between positives and negatives
    return sim, q_ids, g_ids


def test_worked_example_spec_8():
    sim = torch.tensor(EXAMPLE_SIM)
    got = retrieval_metrics(sim, EXAMPLE_QUERY_IDS, EXAMPLE_GALLERY_IDS)
    assert got["R1"] == 50.0 and got["R5"] == 100.0 and got["R10"] == 100.0
    assert got["mAP"] == pytest.approx(55.8333333333, abs=1e-9)
    assert got["mINP"] == pytest.approx(45.0, abs=1e-12)
    assert all(type(v) is float for v in got.values())

    small_k = retrieval_metrics(sim, EXAMPLE_QUERY_IDS, EXAMPLE_GALLERY_IDS, ks=(1, 2, 3))
    assert (small_k["R1"], small_k["R2"], small_k["R3"]) == (50.0, 50.0, 100.0)
    assert list(small_k) == ["R1", "R2", "R3", "mAP", "mINP"]


@pytest.mark.parametrize(
    "scores, gallery_ids, query_id, ks, expected",
    [
        # single positive at rank 3: AP = INP = 1/3
        (
            [0.9, 0.8, 0.7, 0.1],
            [1, 2, 3, 4],
            3,
            (1, 2, 3),
            {"R1": 0, "R2": 0, "R3": 100, "mAP": 100 / 3, "mINP": 100 / 3},
        ),
        # all positives at the end (ranks 4, 5): AP = (1/4 + 2/5)/2, INP = 2/5
        (
            [0.9, 0.8, 0.7, 0.2, 0.1],
            [0, 0, 0, 1, 1],
            1,
            (3, 4),
            {"R3": 0, "R4": 100, "mAP": 32.5, "mINP": 40.0},
        ),
        # every gallery item positive: ranks 1..G, perfect scores
        ([0.1, 0.4, 0.3, 0.2], [7, 7, 7, 7], 7, (1,), {"R1": 100, "mAP": 100.0, "mINP": 100.0}),
        # K beyond the gallery covers the whole list (positive last, rank 3)
        (
            [0.9, 0.8, 0.7],
            [0, 1, 2],
            2,
            (1, 3, 10, 1000),
            {"R1": 0, "R3": 100, "R10": 100, "R1000": 100, "mAP": 100 / 3, "mINP": 100 / 3},
        ),
        # all scores tied: gallery order decides, positives (index 1, 3) get ranks 2 and 4
        ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 1, (1, 2), {"R1": 0, "R2": 100, "mAP": 50.0, "mINP": 50.0}),
        # positive tied with a later negative ranks before it (rank 2)
        ([0.9, 0.5, 0.5], [0, 1, 0], 1, (1, 2), {"R1": 0, "R2": 100, "mAP": 50.0, "mINP": 50.0}),
        # positive tied with an earlier negative ranks after it (rank 3)
        ([0.9, 0.5, 0.5], [0, 0, 1], 1, (2, 3), {"R2": 0, "R3": 100, "mAP": 100 / 3, "mINP": 100 / 3}),
        # tied positives around a tied negative: ranks 1 and 3; AP = (1 + 2/3)/2, INP = 2/3
        (
            [0.5, 0.5, 0.5, 0.1],
            [1, 0, 1, 0],
            1,
            (1, 2),
            {"R1": 100, "R2": 100, "mAP": 250 / 3, "mINP": 200 / 3},
        ),
    ],
)
def test_single_query_rankings_computed_by_hand_including_ties(scores, gallery_ids, query_id, ks, expected):
    got = retrieval_metrics(torch.tensor([scores]), [query_id], gallery_ids, ks=ks)
    assert_close(got, {key: float(value) for key, value in expected.items()})


@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_full_argsort_reference_for_any_chunk(seed, decimals):
    sim, q_ids, g_ids = random_case(seed, decimals=decimals)
    ks = (1, 2, 5, 10, 100)
    want = reference_metrics(sim, q_ids, g_ids, ks=ks)
    results = [
        retrieval_metrics(
            torch.from_numpy(sim), torch.from_numpy(q_ids), torch.from_numpy(g_ids), ks=ks, query_chunk=chunk
        )
        for chunk in (1, 7, 59, 60, 1000)
    ]
    assert_close(results[0], want)
    for other in results[1:]:
        assert other == results[0]  # bit-identical whatever the chunking


def test_image_to_text_is_the_transposed_call():
    sim, q_ids, g_ids = random_case(3, num_q=50, num_g=50, decimals=1)
    # image->text: images query, captions form the gallery; every image id has a caption
    q_ids = g_ids[np.random.default_rng(3).permutation(50)]
    want = reference_metrics(sim.T, g_ids, q_ids)
    got_torch = retrieval_metrics(torch.from_numpy(sim).T, g_ids, q_ids, query_chunk=8)  # non-contiguous view
    got_numpy = retrieval_metrics(sim.T, g_ids, q_ids, query_chunk=8)
    assert_close(got_torch, want)
    assert got_numpy == got_torch


def test_numpy_and_torch_inputs_agree():
    sim, q_ids, g_ids = random_case(4, decimals=2)
    from_torch = retrieval_metrics(torch.from_numpy(sim), torch.from_numpy(q_ids), torch.from_numpy(g_ids))
    from_numpy = retrieval_metrics(sim, q_ids, g_ids)
    from_lists = retrieval_metrics(sim, q_ids.tolist(), g_ids.tolist(), query_chunk=5)
    read_only = sim.copy()
    read_only.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when wrapping non-writable arrays
        from_read_only = retrieval_metrics(read_only, q_ids.astype(np.int32), g_ids.astype(np.int32))
    assert from_torch == from_numpy == from_lists == from_read_only


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    sim, q_ids, g_ids = random_case(5)
    half = torch.from_numpy(sim).to(dtype)  # low precision: many ties, widened exactly
    want = reference_metrics(half.float().numpy(), q_ids, g_ids)
    assert_close(retrieval_metrics(half, q_ids, g_ids, query_chunk=16), want)


def test_numpy_float16_input():
    sim, q_ids, g_ids = random_case(6)
    half = sim.astype(np.float16)
    assert_close(
        retrieval_metrics(half, q_ids, g_ids), reference_metrics(half.astype(np.float32), q_ids, g_ids)
    )


def test_float64_is_not_narrowed():
    # Equal in float32, but in float64 the negative scores higher than the positive.
    sim = torch.tensor([[1.0, 1.0 + 1e-12]], dtype=torch.float64)
    got = retrieval_metrics(sim, [1], [1, 0], ks=(1,))
    assert got["R1"] == 0.0 and got["mAP"] == 50.0
    assert retrieval_metrics(sim.float(), [1], [1, 0], ks=(1,))["R1"] == 100.0  # tie -> index order


def test_query_without_positive_is_an_error():
    sim = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"2 of 3 queries have no positive.*query indices 0, 2"):
        retrieval_metrics(sim, [9, 1, 8], [1, 2, 3, 4])


@pytest.mark.parametrize(
    "sim, q_ids, g_ids, kwargs, message",
    [
        (torch.tensor([[0.1, float("nan")]]), [0], [0, 1], {}, "NaN or infinite"),
        (torch.tensor([[0.1, float("inf")]]), [0], [0, 1], {}, "NaN or infinite"),
        (torch.tensor([[1, 2]]), [0], [0, 1], {}, "floating dtype"),
        (torch.zeros(2, 3), [0], [0, 1, 2], {}, "query_ids must be a vector of length 2"),
        (torch.zeros(1, 3), [0], [0, 1], {}, "gallery_ids must be a vector of length 3"),
        (torch.zeros(1, 2), [0.5], [0, 1], {}, "query_ids must hold integers"),
        (torch.zeros(3), [0], [0], {}, "queries x gallery matrix"),
        (torch.zeros(1, 2), [0], [0, 1], {"ks": (0,)}, "positive integer"),
        (torch.zeros(1, 2), [0], [0, 1], {"query_chunk": 0}, "query_chunk"),
    ],
)
def test_bad_inputs_raise_clear_errors(sim, q_ids, g_ids, kwargs, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(sim, q_ids, g_ids, **kwargs)


def test_topk_indices_follow_the_same_tie_order():
    sim, _, _ = random_case(7, decimals=1)
    want = np.argsort(-sim, axis=1, kind="stable")[:, :10]
    for chunk in (1, 13, 1000):
        assert np.array_equal(topk_indices(torch.from_numpy(sim), 10, query_chunk=chunk).numpy(), want)
    assert topk_indices(sim, 500).shape == (sim.shape[0], sim.shape[1])  # k beyond the gallery
    example = topk_indices(torch.tensor(EXAMPLE_SIM), 5)
    assert example.tolist() == [[1, 3, 0, 2, 4], [1, 3, 2, 0, 4]]  # the worked example's orderings


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_similarity_topk_equals_a_full_stable_ranking(chunk):
    gen = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(37, 8, generator=gen), dim=1)
    gallery = torch.nn.functional.normalize(torch.randn(53, 8, generator=gen), dim=1)
    gallery[10] = gallery[3]  # exact ties: the lower gallery index must come first
    gallery[40] = gallery[3]
    scores, indices = similarity_topk(queries, gallery, 7, query_chunk=chunk)
    full = queries @ gallery.t()
    expected = torch.sort(full, dim=1, descending=True, stable=True)
    assert torch.equal(indices, expected.indices[:, :7])
    assert torch.equal(scores, expected.values[:, :7])  # the bits of the full product
    assert torch.equal(indices, topk_indices(full, 7))


def test_similarity_topk_breaks_ties_at_the_cut_by_gallery_index():
    queries = torch.ones(2, 1)
    gallery = torch.tensor([[0.5], [1.0], [0.5], [0.5], [0.2]])
    scores, indices = similarity_topk(queries, gallery, 3)
    assert indices.tolist() == [[1, 0, 2], [1, 0, 2]]
    assert scores.tolist() == [[1.0, 0.5, 0.5], [1.0, 0.5, 0.5]]
    assert similarity_topk(queries, gallery, 99)[1].shape == (2, 5)  # k beyond the gallery


def features_case(seed: int, num_q: int = 90, num_g: int = 70, dim: int = 24):
    gen = torch.Generator().manual_seed(seed)
    g_ids = torch.arange(num_g) % 9
    q_ids = g_ids[torch.randint(0, num_g, (num_q,), generator=gen)]
    queries = torch.nn.functional.normalize(torch.randn(num_q, dim, generator=gen), dim=1)
    gallery = torch.nn.functional.normalize(torch.randn(num_g, dim, generator=gen), dim=1)
    gallery[5] = gallery[3]  # exact ties between gallery items
    return queries, gallery, q_ids, g_ids


@pytest.mark.parametrize("rows", [slice(0, 1), slice(3, 10), slice(85, 90), slice(0, 90), [4], [89, 0, 17, 4], []])
def test_similarity_rows_are_the_bits_of_the_full_product(rows):
    queries, gallery, _, _ = features_case(0)
    full = queries @ gallery.t()
    assert torch.equal(similarity_rows(queries, gallery, rows), full[rows])


def test_features_in_metrics_equal_the_matrix_metrics_for_any_chunk():
    queries, gallery, q_ids, g_ids = features_case(1)
    full = queries @ gallery.t()
    ks = (1, 3, 10)
    want = retrieval_metrics(full, q_ids, g_ids, ks=ks)
    assert_close(want, reference_metrics(full.numpy(), q_ids.numpy(), g_ids.numpy(), ks=ks))
    want_ranks = rank_queries(full, q_ids, g_ids)
    for chunk in (5, 64, 89, 1000):
        assert retrieval_metrics_from_features(queries, gallery, q_ids, g_ids, ks=ks, query_chunk=chunk) == want
        ranks = rank_queries_by_features(queries, gallery, q_ids, g_ids, query_chunk=chunk)
        assert torch.equal(ranks.first_positive, want_ranks.first_positive)
        assert torch.equal(ranks.average_precision, want_ranks.average_precision)
    # The other direction: the gallery queries the captions.
    has_caption = torch.isin(g_ids, q_ids)
    assert retrieval_metrics_from_features(gallery[has_caption], queries, g_ids[has_caption], q_ids, query_chunk=7) == (
        retrieval_metrics(full.t()[has_caption], g_ids[has_caption], q_ids))


@pytest.mark.parametrize(
    "queries, gallery, message",
    [
        (torch.zeros(2, 3), torch.zeros(4, 2), "Q x D and G x D"),
        (torch.zeros(0, 3), torch.zeros(4, 3), "at least one query"),
        (torch.zeros(2, 3, dtype=torch.int64), torch.zeros(4, 3), "floating dtype"),
        (np.zeros((2, 3)), torch.zeros(4, 3), "torch tensors"),
    ],
)
def test_features_in_bad_inputs_raise_clear_errors(queries, gallery, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics_from_features(queries, gallery, [0, 0], [0, 0, 0, 0])
