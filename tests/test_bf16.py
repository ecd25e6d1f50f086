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


@pytest.mark.parametrize("chunk", [0, 4])
def test_bf16_step_runs_every_pass_under_autocast_and_keeps_fp32_state(chunk):
    """Full preset (soft labels, MVS, SimCLR): every encoder pass gives bf16 embeddings, the loss is a finite
    fp32 number, gradients and weights stay fp32, and the gradients equal fp32's to bf16 accuracy."""
    cfg = tiny()
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
    batch = random_batch(cfg, bundle.tokenizer)
    loss, terms = train_step(model, optimizer, scaler, spy, batch, cfg.loss, alpha=0.4, chunk=chunk, dist=single)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in terms.values()), terms
    assert {dtype for *_, dtype in passes} == {torch.bfloat16}
    nograd = {name for name, grad, *_ in passes if not grad}
    assert {"image", "text", "image_mvs"} <= nograd  # the soft-label pass (and pass 1 of gradient caching)
    with_grad = [(name, rows) for name, grad, rows, _ in passes if grad]
    assert {name for name, _ in with_grad} == {"image", "text", "image_mvs", "simclr_a", "simclr_b"}
    assert {rows for _, rows in with_grad} == ({4} if chunk else {16})  # the gradient cache's re-forward
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
    cfg = tiny(train={"precision": "bf16", "grad_cache_chunk": 8, "max_steps": 2})
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


def test_bf16_evaluation_metrics_stay_close_to_fp32(synthetic_shards):
    """eval.precision=bf16 against fp32 on the same tiny model and split.

    Constructed case: a freshly initialised tiny model (fixed seed) on the test shards (16 people). bf16 features
    keep ~3 significant digits, so a score can move by ~1e-2 of its scale and near-ties may swap: the features
    must agree to cosine > 0.99 and each metric within 5 points (of 100); identical is not expected."""
    cfg = tiny("tiny_tbps_clip_simplified")
    torch.manual_seed(0)
    bundle = build_model(cfg.model, with_simclr_head=False)
    results = {}
    for precision in ("fp32", "bf16"):
        encoded = encode_split(bundle.model, bundle.tokenizer, synthetic_shards["test"],
                               image_size=cfg.model.image_size, normalisation=cfg.data.normalisation,
                               batch_size=64, device=torch.device("cpu"), num_workers=0, precision=precision)
        assert encoded.image_features.dtype == torch.float32 and encoded.text_features.dtype == torch.float32
        results[precision] = (encoded, score(encoded).metrics)
    (enc32, m32), (enc16, m16) = results["fp32"], results["bf16"]
    for a, b in ((enc32.image_features, enc16.image_features), (enc32.text_features, enc16.text_features)):
        assert not torch.equal(a, b)  # bf16 really ran
        assert torch.nn.functional.cosine_similarity(a, b, dim=1).min() > 0.99
    for direction in ("t2i", "i2t"):
        for metric in METRICS:
            assert abs(m32[direction][metric] - m16[direction][metric]) <= 5.0, (direction, metric)


def test_eval_precision_is_a_checked_config_field():
    from tbps.errors import UserInputError

    assert load_experiment(os.path.join(EXPERIMENTS, "tiny_tbps_clip.yaml")).eval.precision == "fp32"
    with pytest.raises(UserInputError, match="eval.precision"):
        load_experiment(os.path.join(EXPERIMENTS, "tiny_tbps_clip.yaml"), {"eval": {"precision": "fp16"}})
    # Evaluation arithmetic does not change the weights: a run may resume with another eval.precision.
    base = load_experiment(os.path.join(EXPERIMENTS, "tiny_tbps_clip.yaml"))
    bf16 = load_experiment(os.path.join(EXPERIMENTS, "tiny_tbps_clip.yaml"), {"eval": {"precision": "bf16"}})
    assert base.resume_sha256() == bf16.resume_sha256() and base.sha256() != bf16.sha256()
