"""The few-shot table (paper §4.5, Tables 11 and 16): CoOp and CLIP-Adapter on a frozen model, the shared
few-shot subset, the batch of a small subset, and the table next to the paper's numbers."""

import os
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch

from tbps import checkpoint
from tbps.cli import main
from tbps.config import ExperimentConfig, ModelConfig, load_experiment
from tbps.data.loader import few_shot_images, pair_table
from tbps.errors import UserInputError
from tbps.few_shot import few_shot_table
from tbps.model import PROBE_VIT, build_model, load_trained_model
from tbps.model.peft import PromptContext
from tbps.provenance import FIELDS
from tbps.published import FEW_SHOT_METHODS, few_shot_published
from tbps.shards.index import ShardIndex
from tbps.train import train, training_batch

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "config", "experiments")
PROBE = ModelConfig(name=PROBE_VIT, pretrained=None, image_size=(64, 32))
CONTEXT_WORDS_IN_CLIP_BPE = [320, 18256, 1125, 539]  # "a", "pedestrian", "photo", "of": one token each


# ----------------------------------------------------------------------------- the methods


def test_coop_context_starts_as_the_token_embeddings_of_the_four_words():
    built = build_model(replace(PROBE, peft="coop"), with_simclr_head=False)
    clip, context = built.model.clip, built.model.prompt_context
    assert context.ctx.shape == (4, clip.token_embedding.weight.shape[1])
    assert torch.equal(context.ctx, clip.token_embedding.weight[CONTEXT_WORDS_IN_CLIP_BPE])
    assert built.tokenizer(["a pedestrian photo of"])[0, 1:5].tolist() == CONTEXT_WORDS_IN_CLIP_BPE
    assert [n for n, p in built.model.named_parameters() if p.requires_grad] == ["prompt_context.ctx"]


def test_the_context_goes_after_the_start_token_and_a_long_caption_keeps_its_end_token():
    context = PromptContext(torch.zeros(4, 8))
    tokens = torch.tensor([[49406, 11, 12, 49407, 0, 0, 0, 0, 0, 0], [49406, *range(1, 9), 49407]])
    shifted = context.shift(tokens)
    assert shifted[0].tolist() == [49406, 0, 0, 0, 0, 11, 12, 49407, 0, 0]
    assert shifted[1].tolist() == [49406, 0, 0, 0, 0, 1, 2, 3, 4, 49407]


def test_on_vit_b16_the_methods_train_4_context_vectors_or_a_512_128_512_adapter():
    from open_clip.model import CLIP

    from tbps.model.clip import _model_config, peft_modules

    clip = CLIP(**_model_config(ModelConfig()))
    coop = peft_modules(ModelConfig(peft="coop"), clip)["prompt_context"]
    adapter = peft_modules(ModelConfig(peft="clip_adapter"), clip)["image_adapter"]
    assert coop.ctx.shape == (4, 512)
    assert [tuple(p.shape) for p in adapter.parameters()] == [(128, 512), (512, 128)]
    with pytest.raises(UserInputError, match="SimCLR head"):
        build_model(replace(PROBE, peft="coop"), with_simclr_head=True)


def test_the_adapter_blends_its_output_with_the_embedding():
    built = build_model(replace(PROBE, peft="clip_adapter"), with_simclr_head=False)
    model, images = built.model.eval(), torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        f = model.clip.encode_image(images)
        expected = torch.nn.functional.normalize(0.4 * model.image_adapter.fc(f) + 0.6 * f, dim=-1)
        assert torch.allclose(model.encode_image(images), expected, atol=1e-6)
    model.train()
    assert not model.clip.training and model.image_adapter.training  # the frozen backbone stays in eval mode


def peft_experiment(name: str, **sections):
    overrides = {"model": {"pretrained": None},
                 "data": {"batch_size": 32, "num_workers": 0, "few_shot_fraction": 0.5},
                 "optim": {"epochs": 3, "lr": 1e-2, "warmup_epochs": 0.2},
                 "train": {"checkpoint_every_steps": 1000, "log_every_steps": 1000, "eval_every_epoch": False}}
    for key, value in sections.items():
        overrides[key] = {**overrides.get(key, {}), **value}
    return load_experiment(os.path.join(EXPERIMENTS, f"{name}.yaml"), overrides)


@pytest.mark.parametrize(("name", "prefix"), [("tiny_probe_coop", "prompt_context."),
                                              ("tiny_probe_clip_adapter", "image_adapter.")])
def test_coop_and_the_adapter_train_only_their_parameters_and_learn(synthetic_shards, tmp_path, name, prefix):
    """From a random frozen probe model (a stand-in good enough to show R@1 above chance costs minutes on
    2 cores: the synthetic few-shot target shows that, BENCHMARKS.md#few-shot-table), the method's own
    parameters, and nothing else, change, and they lower the training loss."""
    cfg = peft_experiment(name)
    torch.manual_seed(cfg.train.seed)  # what training starts from
    initial = build_model(cfg.model, with_simclr_head=False).model.state_dict()
    final = train(cfg, synthetic_shards["train"], tmp_path / "run")
    saved = checkpoint.load(final)
    assert set(saved["model"]) == set(initial)
    for key, value in saved["model"].items():
        if key.startswith(prefix):
            assert not torch.equal(value, initial[key]), key
        else:
            assert torch.equal(value, initial[key]), key  # the backbone's weights and buffers, the logit scale
    assert saved["trainable_parameters"] == sum(v.numel() for k, v in saved["model"].items() if k.startswith(prefix))
    assert saved["few_shot"]["seed"] == 0 and saved["config"]["data"]["few_shot_seed"] == 0
    loss = pl.read_parquet(tmp_path / "run" / "train_log.parquet").group_by("epoch").agg(pl.col("loss_total").mean())
    first, last = (loss.sort("epoch")["loss_total"][i] for i in (0, -1))
    assert last < first - 0.05, (first, last)
    trained = load_trained_model(final, torch.device("cpu"))
    assert trained.config.model.peft == cfg.model.peft
    metrics = tmp_path / "test.parquet"
    assert main(["evaluate", "--checkpoint", str(final), "--shards", str(synthetic_shards["test"]), "--out",
                 str(metrics), "--dataset", "synthetic", "--experiment", f"{name}-fs0.5", "--workers", "0"]) == 0
    assert pl.read_parquet(metrics)["R1"].is_finite().all()


# ----------------------------------------------------------------------------- the subset


def test_every_preset_of_one_fraction_draws_the_same_images(synthetic_shards):
    index = ShardIndex.from_manifest(synthetic_shards["train"])
    configs = [load_experiment(os.path.join(EXPERIMENTS, f"{name}.yaml"), {"data": {"few_shot_fraction": 0.25}})
               for name in ("tiny_probe_clip", "tiny_probe_tbps_clip", "tiny_probe_tbps_clip_simplified",
                            "tiny_probe_coop", "tiny_probe_clip_adapter", "tbps_clip")]
    assert {cfg.train.seed for cfg in configs} == {0, 1}
    tables = [pair_table(index, cfg.data.few_shot_fraction, cfg.data.few_shot_seed) for cfg in configs]
    for table in tables[1:]:
        assert np.array_equal(table, tables[0])
    assert len(np.unique(tables[0][:, 0])) == len(index.samples) // 4
    other = pair_table(index, 0.25, seed=1)
    assert not np.array_equal(other, tables[0]) and len(other) > 0


def test_the_subset_is_floor_of_f_times_n_images():
    assert len(few_shot_images(34_054, 0.05, 0)) == 1_702  # the paper draft's 5 % of CUHK-PEDES
    assert len(few_shot_images(100, 0.29, 0)) == 29  # 0.29 * 100 is 28.999... in floating point
    assert len(few_shot_images(2_025, 0.01, 0)) == 20 and len(few_shot_images(50, 0.01, 0)) == 1
    assert np.array_equal(few_shot_images(500, 0.1, 3), few_shot_images(500, 0.1, 3))


def test_a_subset_smaller_than_a_batch_trains_with_one_batch_of_all_its_pairs():
    few = ExperimentConfig()
    few.data.few_shot_fraction, few.data.batch_size = 0.01, 64
    assert training_batch(few, 40, world_size=1) == 40
    assert training_batch(few, 41, world_size=2) == 40
    assert training_batch(few, 500, world_size=1) == 64
    full = ExperimentConfig()
    full.data.batch_size = 64
    assert training_batch(full, 40, world_size=1) == 64  # all the data and still too small: the usual error


# ----------------------------------------------------------------------------- the table


ENVIRONMENT = {name: 1 if kind is int else f"example {name}" for name, kind in FIELDS.items()}


def fake_run(tmp_path, method: str, fraction: float, r1: float, *, subset: str = "s" * 64, dataset="cuhk-pedes"):
    """A few-shot run's eval/test.parquet and final.pt as `tbps evaluate` and `tbps train` write them."""
    run = f"{method}-fs{fraction:g}"
    folder = tmp_path / run
    (folder / "eval").mkdir(parents=True)
    rows = [{"dataset": dataset, "experiment": run, "split": "test", "direction": d, "epoch": 5,
             "selection": "last", "R1": r1, "R5": 50.0, "R10": 60.0, "mAP": 30.0, "mINP": 10.0, "num_queries": 10,
             "num_gallery": 5, "seed": 1, "config_sha256": "c" * 64, "data_sha256": "d" * 64, "synonym_source": "none",
             "eval_precision": "fp32", **ENVIRONMENT, "checkpoint": "x", "created_at": "2024-01-01T00:00:00+00:00"} for d in ("t2i", "i2t")]
    pl.DataFrame(rows).write_parquet(folder / "eval" / "test.parquet")
    config = ExperimentConfig()
    config.model.peft = {"coop": "coop", "clip_adapter": "clip_adapter"}.get(method, "none")
    config.data.few_shot_fraction = fraction
    checkpoint.save(folder / "final.pt", {
        "model": {"clip.logit_scale": torch.ones(())}, "config": config.to_dict(), "trainable_parameters": 2048,
        "total_parameters": 150_000_000, "batch_size": 320,
        "few_shot": {"fraction": fraction, "seed": 0, "images": 1702, "pairs": 3404, "of_images": 34054,
                     "image_paths_sha256": subset}})
    return folder / "eval" / "test.parquet", folder / "final.pt"


def test_the_few_shot_table_sets_ours_next_to_the_papers(tmp_path):
    runs = {(m, f): fake_run(tmp_path, m, f, 20.0 + i) for i, (f, m) in enumerate(
        (f, m) for f in (0.05, 0.01) for m in FEW_SHOT_METHODS)}
    methods = [m for m, _ in runs]
    metrics, checkpoints = zip(*runs.values(), strict=True)
    out, page = tmp_path / "few_shot.parquet", tmp_path / "few_shot.html"
    assert main(["probe", "few-shot", "--methods", *methods, "--metrics", *map(str, metrics), "--checkpoints",
                 *map(str, checkpoints), "--dataset", "cuhk-pedes", "--out", str(out), "--html", str(page)]) == 0
    table = pl.read_parquet(out)
    assert table.select("fraction", "method").rows() == [(f, m) for f in (0.01, 0.05) for m in FEW_SHOT_METHODS]
    coop = table.filter((pl.col("method") == "coop") & (pl.col("fraction") == 0.05)).row(0, named=True)
    assert (coop["paper_R1"], coop["R1"]) == (11.37, 21.0) and coop["delta_R1"] == pytest.approx(21.0 - 11.37)
    assert coop["images"] == 1702 and coop["trainable_parameters"] == 2048
    assert few_shot_published("simplified", 0.1, "cuhk-pedes").R1 == 50.26
    assert few_shot_published("simplified", 0.1, "rstpreid") is None
    assert "Few-shot: cuhk-pedes" in page.read_text() and "<td>coop-fs0.05</td>" in page.read_text()

    other = fake_run(tmp_path / "other", "tbps_clip", 0.01, 30.0, subset="t" * 64)
    with pytest.raises(UserInputError, match="trained on different images"):
        few_shot_table(["clip", "tbps_clip"], [metrics[5], other[0]], [checkpoints[5], other[1]], "cuhk-pedes")
    with pytest.raises(UserInputError, match="needs model.peft 'coop'"):
        few_shot_table(["coop"], [metrics[0]], [checkpoints[0]], "cuhk-pedes")
    with pytest.raises(UserInputError, match="repeat a"):
        few_shot_table(["clip", "clip"], [metrics[0]] * 2, [checkpoints[0]] * 2, "cuhk-pedes")
