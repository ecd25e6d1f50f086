"""bf16 on the CPU (CPU autocast): the paths a GPU run takes with train.precision=bf16 and eval.precision=bf16.

A GPU run autocasts to bf16 (train.precision 'auto'); these tests run the same code under CPU autocast,
so dtype mistakes show up before any GPU time is spent: the soft-label pass and both gradient-cache
passes run in bf16, the loss and everything saved (weights, optimiser state, metrics) stay fp32.
"""

import os

import polars as pl
import pytest
import torch

from tbps import checkpoint
from tbps.config import load_experiment
from tbps.distributed import DistInfo
from tbps.evaluate import encode_split, evaluate, score
from tbps.model import build_model, param_groups
from tbps.train import autocast_dtype, make_encode, train, train_step

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "config", "experiments")
METRICS = ("R1", "R5", "R10", "mAP", "mINP")


def tiny(name="tiny_tbps_clip", **sections):
    overrides = {"data": {"batch_size": 32, "num_workers": 0}, "optim": {"epochs": 1},
                 "train": {"precision": "bf16", "checkpoint_every_steps": 1000, "log_every_steps": 1000}}
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return load_experiment(os.path.join(EXPERIMENTS, f"{name}.yaml"), overrides)


def random_batch(cfg, tokenizer, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h, w = cfg.model.image_size

    def images():
        return torch.randn(size, 3, h, w, generator=gen)

    captions = [f"a person wearing a {c} shirt and dark trousers" for c in ("red", "blue", "green", "grey")] * 4
    return {"image": images(), "image_mvs": images(), "simclr_a": images(), "simclr_b": images(),
            "tokens": tokenizer(captions[:size]), "train_id": torch.arange(size) // 2, "pair": torch.arange(size)}


def test_bf16_autocast_follows_the_device():
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert autocast_dtype("auto", torch.device("cpu")) is None  # fp32 on a CPU unless asked
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16


def test_bf16_step_runs_every_pass_under_autocast_and_keeps_fp32_state():
    """Full preset (soft labels, MVS, SimCLR): every encoder pass gives bf16 embeddings, the loss is a finite
    fp32 number, gradients and weights stay fp32, and the gradients equal fp32's to bf16 accuracy."""
    cfg, chunk = tiny(), 4
    torch.manual_seed(0)
    bundle = build_model(cfg.model, with_simclr_head=True)
    model = bundle.model.train()
    device = torch.device("cpu")
    amp = autocast_dtype(cfg.train.precision, device)
    encode_bf16 = make_encode(model, device, amp)
    passes = []

    def spy(name, x):
        out = encode_bf16(name, x)
        passes.append((name, torch.is_grad_enabled(), x.shape[0], out.dtype))
        return out

    optimizer = torch.optim.AdamW(param_groups(model, 0.02), lr=1e-5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    single = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    batch = random_batch(cfg, bundle.tokenizer, size=8)
    loss, terms = train_step(model, optimizer, scaler, spy, batch, cfg.loss, alpha=0.4, chunk=chunk, dist=single)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in terms.values()), terms
    assert {dtype for *_, dtype in passes} == {torch.bfloat16}
    nograd = {name for name, grad, *_ in passes if not grad}
    assert {"image", "text", "image_mvs"} <= nograd  # the soft-label pass (and pass 1 of gradient caching)
    with_grad = [(name, rows) for name, grad, rows, _ in passes if grad]
    assert {name for name, _ in with_grad} == {"image", "text", "image_mvs", "simclr_a", "simclr_b"}
    assert {rows for _, rows in with_grad} == {4}  # the gradient cache's re-forward, chunk by chunk
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    state = optimizer.state_dict()["state"]
    assert state and all(v.dtype == torch.float32 for s in state.values() for k, v in s.items() if k != "step")

    # The same step's gradients in fp32 and in bf16, from the same weights and random state (dropout masks):
    # bf16 keeps 8 mantissa bits, so they agree in direction (stated tolerance: cosine > 0.98), not bit for bit.
    grads = {}
    for label, dtype in (("bf16", amp), ("fp32", None)):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        frozen = torch.optim.SGD(model.parameters(), lr=0.0)
        train_step(model, frozen, scaler, make_encode(model, device, dtype), batch, cfg.loss, alpha=0.4, chunk=chunk,
                   dist=single)
        grads[label] = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    cosine = torch.nn.functional.cosine_similarity(grads["bf16"], grads["fp32"], dim=0)
    assert cosine > 0.98, f"bf16 vs fp32 gradient cosine {cosine:.4f}"  # measured 0.99 on CPU


def test_bf16_training_saves_fp32_weights_and_evaluates_to_fp32_metrics(synthetic_shards, tmp_path):
    """`tbps train` with train.precision=bf16 and gradient caching, then `tbps evaluate` in both precisions."""
    cfg = tiny(train={"precision": "bf16", "grad_cache_chunk": 8, "max_steps": 2}, data={"batch_size": 16})
    final = train(cfg, synthetic_shards["train"], tmp_path / "run")
    log = pl.read_parquet(tmp_path / "run" / "train_log.parquet")
    assert log.height == 2 and all(log[c].is_finite().all() for c in log.columns if c.startswith("loss_"))
    for path in (final, tmp_path / "run" / "checkpoints" / "last.pt"):
        saved = checkpoint.load(path)
        floats = {k: v.dtype for k, v in saved["model"].items() if v.is_floating_point()}
        assert set(floats.values()) == {torch.float32}, path
        assert saved["config"]["train"]["precision"] == "bf16"
    rows = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.parquet"
        evaluate(final, synthetic_shards["test"], out, dataset="synthetic", experiment="tiny_tbps_clip",
                 device="cpu", num_workers=0, precision=precision)
        rows[precision] = pl.read_parquet(out)
        assert set(rows[precision]["eval_precision"]) == {precision}
        assert all(rows[precision][m].dtype == pl.Float64 and rows[precision][m].is_finite().all() for m in METRICS)


def fragile_share(sim32: torch.Tensor, sim16: torch.Tensor, text_ids, image_ids) -> tuple[float, float]:
    """(largest score change, % of queries with a non-positive gallery score within 2x that of their best
    positive). A query that is not fragile keeps its first positive's rank exactly, so each R@K moves by at
    most the fragile share."""
    err = float((sim16 - sim32).abs().max())
    positive = torch.as_tensor(text_ids[:, None] == image_ids[None, :])
    best_positive = sim32.masked_fill(~positive, -2.0).max(dim=1, keepdim=True).values
    near = ((sim32 - best_positive).abs() <= 2 * err) & ~positive
    return err, 100.0 * float(near.any(dim=1).float().mean())


def test_bf16_evaluation_runs_the_towers_in_bf16_and_returns_fp32_features(synthetic_shards):
    """eval.precision=bf16 against fp32 on the same (freshly initialised) tiny model and split: the features
    are fp32 tensors, really computed in bf16, and the scores agree to bf16 accuracy (stated: 0.02 on cosine
    similarities in [-1, 1]). Such a model scores everything nearly alike, so its metrics may move a lot
    (near-ties swap); the metric bound is checked on the constructed case below."""
    cfg = tiny("tiny_tbps_clip_simplified")
    torch.manual_seed(0)
    bundle = build_model(cfg.model, with_simclr_head=False)
    encoded = {}
    for precision in ("fp32", "bf16"):
        encoded[precision] = encode_split(bundle.model, bundle.tokenizer, synthetic_shards["test"],
                                          image_size=cfg.model.image_size, normalisation=cfg.data.normalisation,
                                          batch_size=64, device=torch.device("cpu"), num_workers=0,
                                          precision=precision)
        assert encoded[precision].image_features.dtype == torch.float32
        assert encoded[precision].text_features.dtype == torch.float32
    e32, e16 = encoded["fp32"], encoded["bf16"]
    assert not torch.equal(e32.image_features, e16.image_features)  # bf16 really ran
    err, _ = fragile_share(e32.text_features @ e32.image_features.t(), e16.text_features @ e16.image_features.t(),
                           e32.text_ids, e32.image_ids)
    assert 0.0 < err <= 0.02
    metrics = score(e16).metrics
    assert all(0.0 <= metrics[d][k] <= 100.0 for d in metrics for k in METRICS)


def test_bf16_rounded_features_move_recall_by_at_most_the_fragile_share():
    """Constructed case: 200 captions and 100 images of 20 identities, features scattered around one centre
    per identity (as benchmarks/eval_ranking.py builds them), then rounded to bf16 as bf16 evaluation rounds its
    features. Stated tolerance: each R@K moves by at most the share of fragile queries (near-ties within twice
    the largest score change), which here is a minority, and mAP/mINP by at most 5 points."""
    from tbps.evaluate import Encoded

    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(20, 64, generator=gen)
    text_ids, image_ids = torch.arange(200) % 20, torch.arange(100) % 20

    def features(ids):
        return torch.nn.functional.normalize(centres[ids] + 1.2 * torch.randn(len(ids), 64, generator=gen), dim=1)

    texts, images = features(text_ids), features(image_ids)
    exact = Encoded(images, image_ids.numpy(), [""] * 100, texts, text_ids.numpy(), [""] * 200)
    rounded = Encoded(images.bfloat16().float(), image_ids.numpy(), [""] * 100, texts.bfloat16().float(),
                      text_ids.numpy(), [""] * 200)
    m32, m16 = score(exact).metrics["t2i"], score(rounded).metrics["t2i"]
    err, fragile = fragile_share(texts @ images.t(), rounded.text_features @ rounded.image_features.t(),
                                 exact.text_ids, exact.image_ids)
    assert 0.0 < err <= 0.02 and fragile < 50.0
    for metric in ("R1", "R5", "R10"):
        assert abs(m32[metric] - m16[metric]) <= fragile + 1e-9, (metric, fragile)
    for metric in ("mAP", "mINP"):
        assert abs(m32[metric] - m16[metric]) <= 5.0, metric


def test_eval_precision_is_a_checked_config_field():
    from tbps.errors import UserInputError

    assert load_experiment(os.path.join(EXPERIMENTS, "tiny_tbps_clip.yaml")).eval.precision == "fp32"
    with pytest.raises(UserInputError, match="eval.precision"):
        load_experiment(os.path.join(EXPERIMENTS, "tiny_tbps_clip.yaml"), {"eval": {"precision": "fp16"}})
    # Evaluation arithmetic does not change the weights: a run may resume with another eval.precision.
    base = load_experiment(os.path.join(EXPERIMENTS, "tiny_tbps_clip.yaml"))
    bf16 = load_experiment(os.path.join(EXPERIMENTS, "tiny_tbps_clip.yaml"), {"eval": {"precision": "bf16"}})
    assert base.resume_sha256() == bf16.resume_sha256() and base.sha256() != bf16.sha256()
