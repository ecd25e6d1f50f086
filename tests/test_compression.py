"""Frozen and dropped text layers (paper §3.5, Table 17): configuration, model, training, layer choice,
the pre-trained stand-in as model.pretrained, and the compression table."""

import itertools
import os
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch

from tbps import checkpoint
from tbps.cli import main
from tbps.config import (
    ExperimentConfig,
    ImportanceChoice,
    ModelConfig,
    apply_overrides,
    load_experiment,
    parse_dotted,
)
from tbps.errors import UserInputError
from tbps.model import PROBE_VIT, TINY_VIT, build_model, load_trained_model
from tbps.probe.compression import compression_table, run_kind
from tbps.probe.layer_choice import choose_text_layers, resolve_importance_choice
from tbps.probe.modules import Module, removed
from tbps.provenance import FIELDS
from tbps.train import train

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "config", "experiments")
PROBE_CFG = ModelConfig(name=PROBE_VIT, pretrained=None, image_size=(64, 32))


def importance_table(scores: dict[int, tuple[float, float]], model: str = PROBE_VIT) -> pl.DataFrame:
    """Whole-layer text rows with the given (C1, C2), plus rows the choice must ignore."""
    rows = [{"tower": "text", "layer": layer, "module": "Whole", "C1": c1, "C2": c2} for layer, (c1, c2) in scores.items()]
    rows += [{"tower": "text", "layer": layer, "module": "SA", "C1": -5.0, "C2": 0.0} for layer in scores]
    rows += [{"tower": "image", "layer": layer, "module": "Whole", "C1": -5.0, "C2": 0.0} for layer in scores]
    return pl.DataFrame(rows).with_columns(pl.lit(model).alias("model"))


# ----------------------------------------------------------------------------- configuration and model


def test_layer_ids_are_typed_and_ranged_in_the_config():
    cfg = apply_overrides(ExperimentConfig(), parse_dotted(["model.freeze_text_layers=[3, 7, 8]"]))
    assert cfg.model.freeze_text_layers == (3, 7, 8)
    assert cfg.to_dict()["model"]["freeze_text_layers"] == [3, 7, 8]
    with pytest.raises(UserInputError, match=r"drop_text_layers: \(0, 2\) is not allowed"):
        apply_overrides(ExperimentConfig(), {"model": {"drop_text_layers": [0, 2]}})
    with pytest.raises(UserInputError, match="expected a list"):
        apply_overrides(ExperimentConfig(), {"model": {"drop_text_layers": 3}})
    with pytest.raises(UserInputError, match="mode"):
        apply_overrides(ExperimentConfig(), {"model": {"compress_from_importance": {"mode": "prune"}}})


@pytest.mark.parametrize(("frozen", "dropped", "message"), [
    ((7,), (), r"layer\(s\) \[7\] do not exist; the text encoder has 6 layers"),
    ((2, 2), (), "listed twice"),
    ((2,), (2, 3), r"text layer\(s\) \[2\] are both frozen and dropped"),
    ((), (1, 2, 3, 4, 5, 6), "drops every one of the 6 text layers"),
])
def test_impossible_layer_ids_are_user_errors(frozen, dropped, message):
    with pytest.raises(UserInputError, match=message):
        build_model(replace(PROBE_CFG, freeze_text_layers=frozen, drop_text_layers=dropped), with_simclr_head=False)


def test_an_unresolved_importance_choice_is_refused_by_the_model_builder(tmp_path):
    cfg = replace(PROBE_CFG, compress_from_importance=ImportanceChoice(table=str(tmp_path / "t.parquet"), x=1))
    with pytest.raises(UserInputError, match="still unresolved"):
        build_model(cfg, with_simclr_head=False)


def test_frozen_layers_train_nothing_and_a_dropped_layer_equals_a_removed_one():
    torch.manual_seed(0)
    full = build_model(PROBE_CFG, with_simclr_head=False)
    torch.manual_seed(0)
    compressed = build_model(replace(PROBE_CFG, freeze_text_layers=(1,), drop_text_layers=(2, 5)),
                             with_simclr_head=False)
    model = compressed.model.eval()
    assert len(model.clip.transformer.resblocks) == 4 and model.clip.transformer.layers == 4
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters()
                      if n.startswith(("clip.transformer.resblocks.0.", "clip.visual.conv1."))}
    layer = sum(p.numel() for p in full.model.clip.transformer.resblocks[0].parameters())
    assert compressed.parameters.total == full.parameters.total - 2 * layer
    assert compressed.parameters.trainable == full.parameters.trainable - 3 * layer

    # (Without frozen layers: CPU kernels may round differently for weights that need no gradient.)
    torch.manual_seed(0)
    dropped = build_model(replace(PROBE_CFG, drop_text_layers=(2, 5)), with_simclr_head=False).model.eval()
    tokens = full.tokenizer(["a man in a red coat", "a woman with a black bag"])
    with torch.no_grad(), removed(full.model.eval(), Module("text", 2, "Whole")), \
            removed(full.model, Module("text", 5, "Whole")):
        expected = full.model.encode_text(tokens)
    with torch.no_grad():
        assert torch.equal(dropped.encode_text(tokens), expected)


# ----------------------------------------------------------------------------- a run of ours as pre-trained CLIP


def test_a_tbps_checkpoint_is_accepted_as_pretrained_weights(tmp_path):
    torch.manual_seed(3)
    source = build_model(PROBE_CFG, with_simclr_head=True).model
    path = tmp_path / "final.pt"
    checkpoint.save(path, {"model": source.state_dict(), "config": ExperimentConfig(model=PROBE_CFG).to_dict()})
    built = build_model(replace(PROBE_CFG, pretrained=str(path)), with_simclr_head=False)
    report = built.load_report
    assert report.complete and report.source == str(path)
    assert sorted(report.ignored) == sorted(k for k in source.state_dict() if k.startswith("simclr_head."))
    for key, value in source.clip.state_dict().items():
        assert torch.equal(built.model.clip.state_dict()[key], value), key

    with pytest.raises(UserInputError, match="tbps checkpoint of 'TBPS-Probe-ViT', not of 'TBPS-Tiny-ViT'"):
        build_model(ModelConfig(name=TINY_VIT, pretrained=str(path), image_size=(96, 32)), with_simclr_head=False)
    dropped = replace(PROBE_CFG, drop_text_layers=(3,))
    checkpoint.save(path, {"model": build_model(dropped, with_simclr_head=False).model.state_dict(),
                           "config": ExperimentConfig(model=dropped).to_dict()})
    with pytest.raises(UserInputError, match=r"text layers \[3\] were dropped"):
        build_model(replace(PROBE_CFG, pretrained=str(path)), with_simclr_head=False)


# ----------------------------------------------------------------------------- choosing layers


def test_the_choice_is_the_minimum_over_all_subsets_and_nested():
    rng = np.random.default_rng(0)
    scores = {layer: (float(rng.uniform(-0.1, 1)), float(rng.choice([0.0, 0.05, 0.5, 1.0]))) for layer in range(1, 13)}
    table = importance_table(scores)
    previous: tuple[int, ...] = ()
    for x in range(6):
        brute = min(itertools.combinations(range(1, 13), x), key=lambda s: sum(sum(scores[i]) for i in s))
        chosen = choose_text_layers(table, x)
        assert chosen == brute and set(previous) <= set(chosen)
        previous = chosen
    with pytest.raises(UserInputError, match="cannot choose 12 of its 12"):
        choose_text_layers(table, 12)


def test_a_table_shaped_like_the_papers_gives_table_17s_layers():
    order = [7, 8, 3, 5, 6]  # least important first
    scores = {layer: (0.9, 1.0) for layer in range(1, 13)}
    scores.update({layer: (0.1 * i, 0.05 * i) for i, layer in enumerate(order)})
    table = importance_table(scores, model="ViT-B-16")
    assert [choose_text_layers(table, x) for x in range(1, 6)] == [(7,), (7, 8), (3, 7, 8), (3, 5, 7, 8),
                                                                    (3, 5, 6, 7, 8)]


def test_an_importance_choice_is_resolved_into_layer_ids(tmp_path):
    path = tmp_path / "importance.parquet"
    importance_table({1: (1.0, 1.0), 2: (0.1, 0.0), 3: (0.5, 0.5), 4: (0.9, 1.0), 5: (0.0, 0.1), 6: (1.0, 1.0)}
                     ).write_parquet(path)
    cfg = ExperimentConfig(model=replace(PROBE_CFG, compress_from_importance=ImportanceChoice(str(path), 2, "drop")))
    resolved, record = resolve_importance_choice(cfg)
    assert resolved.model.drop_text_layers == (2, 5) and resolved.model.freeze_text_layers == ()
    assert resolved.model.compress_from_importance == ImportanceChoice()
    assert cfg.model.compress_from_importance.table == str(path)  # the input is left alone
    assert record["layers"] == [2, 5] and record["mode"] == "drop" and len(record["table_sha256"]) == 64
    assert resolve_importance_choice(ExperimentConfig()) == (ExperimentConfig(), None)

    with pytest.raises(UserInputError, match="both set"):
        resolve_importance_choice(ExperimentConfig(model=replace(cfg.model, freeze_text_layers=(1,))))
    other = ExperimentConfig(model=replace(cfg.model, name=TINY_VIT))
    with pytest.raises(UserInputError, match=r"measured \['TBPS-Probe-ViT'\], not the experiment's 'TBPS-Tiny-ViT'"):
        resolve_importance_choice(other)


# ----------------------------------------------------------------------------- training


def probe_experiment(**model):
    overrides = {"model": {"pretrained": None, **model},
                 "data": {"batch_size": 32, "num_workers": 0, "few_shot_fraction": 0.5},
                 "optim": {"epochs": 1}, "train": {"checkpoint_every_steps": 1000, "log_every_steps": 1000,
                                                   "eval_every_epoch": False}}
    return load_experiment(os.path.join(EXPERIMENTS, "tiny_probe_tbps_clip_simplified.yaml"), overrides)


def test_layers_chosen_from_a_table_and_frozen_stay_bit_identical_through_training(synthetic_shards, tmp_path):
    table = tmp_path / "importance.parquet"
    importance_table({1: (1.0, 1.0), 2: (0.0, 0.0), 3: (0.5, 0.5), 4: (0.9, 1.0), 5: (0.1, 0.0), 6: (1.0, 1.0)}
                     ).write_parquet(table)
    cfg = probe_experiment(compress_from_importance={"table": str(table), "x": 2, "mode": "freeze"})
    torch.manual_seed(cfg.train.seed)  # what training starts from
    initial = build_model(replace(cfg.model, compress_from_importance=ImportanceChoice()),
                          with_simclr_head=False).model.state_dict()
    saved = checkpoint.load(train(cfg, synthetic_shards["train"], tmp_path / "run"))

    frozen = ("clip.transformer.resblocks.1.", "clip.transformer.resblocks.4.", "clip.visual.conv1.")
    for key, value in saved["model"].items():
        if key.startswith(frozen):
            assert torch.equal(value, initial[key]), key
    assert not torch.equal(saved["model"]["clip.transformer.resblocks.0.attn.in_proj_weight"],
                           initial["clip.transformer.resblocks.0.attn.in_proj_weight"])
    assert saved["config"]["model"]["freeze_text_layers"] == [2, 5]
    assert saved["config"]["model"]["compress_from_importance"]["table"] is None
    assert saved["text_layer_choice"]["layers"] == [2, 5] and saved["text_layer_choice"]["table"] == str(table)
    built = build_model(replace(PROBE_CFG, freeze_text_layers=(2, 5)), with_simclr_head=False)
    assert saved["trainable_parameters"] == built.parameters.trainable


def test_dropped_layers_are_gone_from_the_checkpoint_and_the_trained_model_loads(synthetic_shards, tmp_path):
    final = train(probe_experiment(drop_text_layers=[2, 5]), synthetic_shards["train"], tmp_path / "run")
    saved = checkpoint.load(final)
    blocks = {int(k.split(".")[3]) for k in saved["model"] if k.startswith("clip.transformer.resblocks.")}
    assert blocks == {0, 1, 2, 3}
    assert saved["config"]["model"]["drop_text_layers"] == [2, 5]
    assert saved["total_parameters"] == sum(v.numel() for v in saved["model"].values())
    trained = load_trained_model(final, torch.device("cpu"))
    assert len(trained.model.clip.transformer.resblocks) == 4
    metrics = tmp_path / "test.parquet"
    assert main(["evaluate", "--checkpoint", str(final), "--shards", str(synthetic_shards["test"]), "--out",
                 str(metrics), "--dataset", "synthetic", "--experiment", "tiny_probe_tbps_clip_simplified-drop2",
                 "--workers", "0"]) == 0
    assert pl.read_parquet(metrics)["R1"].is_finite().all()


# ----------------------------------------------------------------------------- the compression table


ENVIRONMENT = {name: 1 if kind is int else f"example {name}" for name, kind in FIELDS.items()}


def fake_run(tmp_path, run: str, r1: float, *, model: str, depth: int, mode: str = "none",
             layers: tuple[int, ...] = (), trainable: int = 1000):
    """A run's eval/test.parquet and final.pt as `tbps evaluate` and `tbps train` write them."""
    folder = tmp_path / run
    (folder / "eval").mkdir(parents=True)
    rows = [{"dataset": "cuhk-pedes", "experiment": run, "split": "test", "direction": d, "epoch": 5,
             "selection": "last", "R1": r1, "R5": 80.0, "R10": 90.0, "mAP": 60.0, "mINP": 40.0, "num_queries": 10,
             "num_gallery": 5, "seed": 1, "config_sha256": "c" * 64, "data_sha256": "d" * 64, "synonym_source": "none",
             "eval_precision": "fp32",
             **ENVIRONMENT,
             "checkpoint": "x", "created_at": "2024-01-01T00:00:00+00:00"} for d in ("t2i", "i2t")]
    pl.DataFrame(rows).write_parquet(folder / "eval" / "test.parquet")
    kept = depth - (len(layers) if mode == "drop" else 0)
    config = ExperimentConfig(model=ModelConfig(name=model, **({f"{mode}_text_layers": layers} if layers else {})))
    checkpoint.save(folder / "final.pt", {
        "model": {f"clip.transformer.resblocks.{i}.ln_1.weight": torch.ones(2) for i in range(kept)},
        "config": config.to_dict(), "trainable_parameters": trainable, "total_parameters": 2000,
        "text_layer_choice": None})
    return folder / "eval" / "test.parquet", folder / "final.pt"


def test_the_compression_table_pairs_metrics_with_checkpoints(tmp_path):
    runs = [fake_run(tmp_path, "tbps_clip", 73.0, model="ViT-B-16", depth=12, trainable=149_162_625),
            fake_run(tmp_path, "tbps_clip-freeze2", 72.5, model="ViT-B-16", depth=12, mode="freeze", layers=(7, 8),
                     trainable=149_162_625 - 2 * 3_152_384),
            fake_run(tmp_path, "tbps_clip-drop2", 60.0, model="ViT-B-16", depth=12, mode="drop", layers=(7, 8),
                     trainable=149_162_625 - 2 * 3_152_384)]
    metrics, checkpoints = zip(*runs, strict=True)
    out, figure = tmp_path / "compression.parquet", tmp_path / "compression.png"
    argv = ["probe", "compression", "--metrics", *map(str, metrics), "--checkpoints", *map(str, checkpoints),
            "--dataset", "cuhk-pedes", "--out", str(out), "--figure", str(figure), "--html", str(tmp_path / "c.html")]
    assert main(argv) == 0
    page = (tmp_path / "c.html").read_text()
    assert "frozen vs dropped text layers: cuhk-pedes" in page and "<td>tbps_clip-drop2</td>" in page
    table = pl.read_parquet(out)
    assert table.select("mode", "x", "text_layers", "text_depth", "R1", "paper_trainable_M").rows() == [
        ("drop", 2, [7, 8], 12, 60.0, 142.9), ("freeze", 2, [7, 8], 12, 72.5, 142.9), ("none", 0, [], 12, 73.0, 149.2)]
    assert set(table["layers_source"]) == {"experiment config"}
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(UserInputError, match="one final.pt per metrics file"):
        compression_table(metrics, checkpoints[:2], "cuhk-pedes")
    with pytest.raises(UserInputError, match="should have 2 drop text layer"):
        compression_table([metrics[2]], [checkpoints[1]], "cuhk-pedes")
    with pytest.raises(UserInputError, match="exactly one uncompressed run"):
        compression_table(metrics[1:], checkpoints[1:], "cuhk-pedes")
    assert run_kind("tiny_probe_tbps_clip-drop3") == ("tiny_probe_tbps_clip", "drop", 3)
    assert run_kind("tbps_clip") == ("tbps_clip", "none", None)
