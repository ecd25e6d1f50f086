"""Evaluation stage: metrics rows with provenance, retrieval examples, zero-shot from a local weights file."""

import os

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from tbps import checkpoint
from tbps.cli import main
from tbps.config import load_experiment
from tbps.evaluate import Encoded, retrieval_examples, score
from tbps.metrics import retrieval_metrics, topk_indices
from tbps.model import build_model
from tbps.provenance import FIELDS, environment
from tbps.train import train

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "config", "experiments")
METRIC_COLUMNS = ["R1", "R5", "R10", "mAP", "mINP"]


@pytest.fixture(scope="module")
def trained(synthetic_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    cfg = load_experiment(os.path.join(EXPERIMENTS, "tiny_tbps_clip_simplified.yaml"),
                          {"data": {"batch_size": 32, "num_workers": 0}, "optim": {"epochs": 1}})
    return train(cfg, synthetic_shards["train"], out)


def test_evaluate_checkpoint_writes_rows_with_provenance(trained, synthetic_shards, tmp_path):
    out, examples = tmp_path / "test.parquet", tmp_path / "examples.parquet"
    code = main(["evaluate", "--checkpoint", str(trained), "--shards", str(synthetic_shards["test"]),
                 "--out", str(out), "--examples", str(examples), "--dataset", "synthetic",
                 "--experiment", "tiny_tbps_clip_simplified", "--workers", "0"])
    assert code == 0
    rows = pl.read_parquet(out)
    assert sorted(rows["direction"]) == ["i2t", "t2i"]
    t2i = rows.filter(pl.col("direction") == "t2i").row(0, named=True)
    test = pl.read_parquet(synthetic_shards["annotations"]).filter(pl.col("split") == "test")
    assert t2i["num_queries"] == test.height and t2i["num_gallery"] == test["image_index"].n_unique()
    assert t2i["epoch"] == 1 and t2i["selection"] == "last" and t2i["seed"] == 0
    assert len(t2i["config_sha256"]) == 64 and len(t2i["data_sha256"]) == 64 and t2i["code_version"]
    assert all(0 <= t2i[c] <= 100 for c in METRIC_COLUMNS) and t2i["R1"] <= t2i["R5"] <= t2i["R10"]
    # The environment that evaluated it, and the one that trained it: one record, one code_version.
    env = {name: t2i[name] for name in FIELDS}
    assert env == environment() and env["python_version"].startswith("3.") and len(env["lock_sha256"]) == 64
    assert env["cuda_version"] == (torch.version.cuda or "cpu") and env["torch_version"] == str(torch.__version__)
    final = checkpoint.load(trained)
    assert final["environment"] == env and final["code_version"] == env["code_version"]
    assert checkpoint.load(trained.parent / "checkpoints" / "last.pt")["environment"] == env
    ex = pl.read_parquet(examples)
    assert set(ex["kind"]) == {"sample", "worst"} and ex["rank"].max() == 5
    assert (ex["correct"] == (ex["person_id"] == ex["query_person_id"])).all()


def test_zero_shot_from_a_local_weights_file(synthetic_shards, tmp_path):
    """model.pretrained may be a local file (here: a tiny model's weights saved by the test)."""
    base = load_experiment(os.path.join(EXPERIMENTS, "tiny_tbps_clip.yaml"))
    weights = tmp_path / "tiny.pt"
    torch.save(build_model(base.model, with_simclr_head=False).model.clip.state_dict(), weights)
    experiment = tmp_path / "zs.yaml"
    experiment.write_text(yaml.safe_dump({"inherit": [os.path.abspath(os.path.join(EXPERIMENTS, "tiny_tbps_clip"))],
                                          "model": {"pretrained": str(weights)}}))
    out = tmp_path / "zs.parquet"
    assert main(["evaluate", "--zero-shot", str(experiment), "--shards", str(synthetic_shards["test"]),
                 "--out", str(out), "--dataset", "synthetic", "--experiment", "zero_shot", "--workers", "0"]) == 0
    rows = pl.read_parquet(out)
    assert set(rows["selection"]) == {"zero-shot"} and set(rows["epoch"]) == {0}


def test_perfect_embeddings_score_100():
    ids = torch.tensor([0, 0, 1, 2])
    feats = torch.nn.functional.one_hot(ids, 3).float()
    encoded = Encoded(feats, ids.numpy(), ["a", "b", "c", "d"], feats[[0, 2, 3]], ids[[0, 2, 3]].numpy(),
                      ["x", "y", "z"])
    result = score(encoded)
    assert result.metrics["t2i"]["R1"] == 100.0 and result.metrics["t2i"]["mAP"] == 100.0
    assert result.num_queries == {"t2i": 3, "i2t": 4}


def random_encoded(seed: int, num_images: int = 70, captions_per_image: int = 2, dim: int = 16) -> Encoded:
    """Features around one centre per identity, as a trained model gives (no exact ties)."""
    gen = torch.Generator().manual_seed(seed)
    image_ids = torch.randint(0, 12, (num_images,), generator=gen)
    centres = torch.randn(12, dim, generator=gen)
    images = torch.nn.functional.normalize(centres[image_ids] + 1.5 * torch.randn(num_images, dim, generator=gen), dim=1)
    text_ids = image_ids.repeat_interleave(captions_per_image)
    texts = torch.nn.functional.normalize(centres[text_ids] + 1.5 * torch.randn(len(text_ids), dim, generator=gen), dim=1)
    return Encoded(images, image_ids.numpy(), [f"imgs/{i}.jpg" for i in range(num_images)], texts, text_ids.numpy(),
                   [f"caption {i}" for i in range(len(text_ids))])


def dense_examples(encoded: Encoded, num_queries: int = 12, num_failures: int = 12, k: int = 5, seed: int = 0):
    """The examples table the simple way (the whole similarity matrix; what evaluate did before chunking)."""
    sim = encoded.text_features @ encoded.image_features.t()
    top = topk_indices(sim, k).numpy()
    positive = encoded.image_ids[None, :] == encoded.text_ids[:, None]
    best_positive = np.where(positive, sim.numpy(), -np.inf).max(axis=1)
    first_rank = (sim.numpy() > best_positive[:, None]).sum(axis=1) + 1
    sampled = np.random.default_rng(seed).choice(len(encoded.captions), size=min(num_queries, len(encoded.captions)),
                                                 replace=False)
    rows = []
    for kind, queries in (("sample", sampled), ("worst", np.argsort(-first_rank, kind="stable")[:num_failures])):
        for q in queries:
            for rank, g in enumerate(top[q], start=1):
                rows.append({"kind": kind, "query": int(q), "caption": encoded.captions[q],
                             "query_person_id": int(encoded.text_ids[q]), "first_positive_rank": int(first_rank[q]),
                             "rank": rank, "image_path": encoded.image_paths[g], "person_id": int(encoded.image_ids[g]),
                             "correct": bool(encoded.image_ids[g] == encoded.text_ids[q]), "score": float(sim[q, g])})
    return pl.DataFrame(rows)


@pytest.mark.parametrize("query_chunk", [1, 7, 1000])
def test_chunked_scoring_gives_the_numbers_of_the_full_matrix(query_chunk):
    encoded = random_encoded(0)
    sim = encoded.text_features @ encoded.image_features.t()
    result = score(encoded, query_chunk=query_chunk)
    # Exact: each chunk's scores are the bits of the full product, ranked with the same rules.
    assert result.metrics["t2i"] == retrieval_metrics(sim, encoded.text_ids, encoded.image_ids)
    assert result.metrics["i2t"] == retrieval_metrics(sim.t(), encoded.image_ids, encoded.text_ids)
    assert 0 < result.metrics["t2i"]["R1"] < 100  # a real ranking, not a trivial one
    examples = retrieval_examples(encoded, first_positive_rank=result.ranks["t2i"].first_positive)
    assert examples.equals(dense_examples(encoded))
    assert retrieval_examples(encoded, query_chunk=query_chunk).equals(examples)  # ranks itself when not given
    assert examples.filter(pl.col("kind") == "worst")["first_positive_rank"].max() > 5  # failures shown


def test_examples_first_positive_rank_follows_the_tie_order_of_the_metrics():
    # Caption 0 (id 1) scores image 0 (id 0) and image 1 (id 1) equally: image 0 comes first (lower index),
    # so the first positive is at rank 2, as in the ranked list shown and in R@1 = 0.
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    captions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    encoded = Encoded(images, np.array([0, 1, 2]), ["a", "b", "c"], captions, np.array([1, 2, 0]), ["x", "y", "z"])
    result = score(encoded)
    assert result.ranks["t2i"].first_positive.tolist() == [2, 1, 1] and result.metrics["t2i"]["R1"] == 200 / 3
    examples = retrieval_examples(encoded, first_positive_rank=result.ranks["t2i"].first_positive, k=3)
    first = examples.filter((pl.col("kind") == "sample") & (pl.col("query") == 0))
    assert first["image_path"].to_list() == ["a", "b", "c"] and first["first_positive_rank"].to_list() == [2, 2, 2]


def test_search_prints_the_best_matches(trained, synthetic_shards, tmp_path, capsys):
    out = tmp_path / "search.parquet"
    query = "a woman in a red coat with a black backpack"
    assert main(["search", "--checkpoint", str(trained), "--gallery", str(synthetic_shards["test"]), "--top", "3",
                 "--out", str(out), "--workers", "0", query]) == 0
    printed = capsys.readouterr().out
    assert query in printed and " 1. " in printed and " 3. " in printed
    rows = pl.read_parquet(out)
    assert rows["rank"].to_list() == [1, 2, 3]
    assert rows["score"].is_sorted(descending=True)
    assert all(path.startswith("imgs/") for path in rows["image_path"])
