"""Module importance (paper App. A.4, B.2): removing and interpolating modules, C¹, C², the probe stage."""

import json
from dataclasses import replace

import polars as pl
import pytest
import torch

from tbps import checkpoint
from tbps.cli import main
from tbps.config import ExperimentConfig, ModelConfig
from tbps.errors import UserInputError
from tbps.evaluate import evaluate_model
from tbps.model import PROBE_VIT, build_model, load_trained_model
from tbps.probe.importance import alpha_grid, contribution, criticality
from tbps.probe.modules import KINDS, Module, interpolated, modules_of, removed, tower_blocks

PROBE_CFG = ModelConfig(name=PROBE_VIT, pretrained=None, image_size=(64, 32))


@pytest.fixture(scope="module")
def probe():
    torch.manual_seed(0)
    built = build_model(PROBE_CFG, with_simclr_head=False)
    images = torch.randn(5, 3, 64, 32)
    tokens = built.tokenizer(["a man in a red coat", "a woman with a bag", "a child", "a man in blue jeans",
                              "a woman in a white dress"])
    return built.model.eval(), images, tokens


@torch.no_grad()
def embeddings(model, images, tokens):
    return model.encode_image(images), model.encode_text(tokens)


# ----------------------------------------------------------------------------- removal


@pytest.mark.parametrize("module", [Module("image", 2, "SA"), Module("image", 6, "FF"), Module("text", 1, "Whole"),
                                    Module("text", 4, "SA")], ids=str)
def test_removing_a_module_changes_only_its_towers_embeddings(probe, module):
    model, images, tokens = probe
    image, text = embeddings(model, images, tokens)
    with removed(model, module):
        image_removed, text_removed = embeddings(model, images, tokens)
    changed, other = ((image_removed, text_removed), (image, text)) if module.tower == "image" else \
        ((text_removed, image_removed), (text, image))
    assert torch.equal(changed[1], other[1])  # the other tower: bit for bit
    assert not torch.allclose(changed[0], other[0], atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(embeddings(model, images, tokens), (image, text), strict=True))


def test_a_removed_whole_layer_passes_its_input_through_and_a_removed_branch_skips_only_it(probe):
    model, images, tokens = probe
    block = tower_blocks(model, "text")[2]
    seen = {}
    handle = block.register_forward_hook(lambda m, args, out: seen.update(x=args[0].clone(), y=out.clone()))
    try:
        with torch.no_grad(), removed(model, Module("text", 3, "Whole")):
            model.encode_text(tokens)
        assert torch.equal(seen["x"], seen["y"])
        with torch.no_grad(), removed(model, Module("text", 3, "SA")):
            model.encode_text(tokens)
        x = seen["x"]
        expected = x + block.ls_2(block.mlp(block.ln_2(x)))  # only the feed-forward branch is left
        torch.testing.assert_close(seen["y"], expected, rtol=0, atol=1e-6)
    finally:
        handle.remove()


def test_a_resnet_image_tower_cannot_be_probed():
    model = build_model(ModelConfig(name="TBPS-Tiny-RN", pretrained=None, image_size=(64, 64)),
                        with_simclr_head=False).model
    with pytest.raises(UserInputError, match="no transformer blocks"):
        modules_of(model)


def test_every_module_of_both_towers_is_probed(probe):
    modules = modules_of(probe[0])
    assert len(modules) == 2 * 6 * 3
    assert modules[0] == Module("image", 1, "SA") and modules[-1] == Module("text", 6, "Whole")


# ----------------------------------------------------------------------------- interpolation


def test_interpolation_gives_the_trained_weights_at_1_and_the_initial_ones_at_0(probe):
    model, images, tokens = probe
    torch.manual_seed(1)
    theta0 = build_model(PROBE_CFG, with_simclr_head=False).model.state_dict()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = Module("text", 2, "FF")
    names = module.parameter_names(model)
    assert names and all(n.startswith("clip.transformer.resblocks.1.") for n in names)
    assert {n.split(".")[4] for n in names} == {"ln_2", "mlp"}
    reference = embeddings(model, images, tokens)
    with interpolated(model, module, theta0, 1.0):
        assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
        assert all(torch.equal(a, b) for a, b in zip(embeddings(model, images, tokens), reference, strict=True))
    with interpolated(model, module, theta0, 0.0):
        state = model.state_dict()
        assert all(torch.equal(state[n], theta0[n]) for n in names)
        assert all(torch.equal(state[k], v) for k, v in before.items() if k not in names)
    with interpolated(model, module, theta0, 0.25):
        for n in names:
            torch.testing.assert_close(model.state_dict()[n], 0.75 * theta0[n] + 0.25 * before[n])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # restored


# ----------------------------------------------------------------------------- C¹ and C²


def test_criticality_is_the_smallest_grid_alpha_within_epsilon():
    grid = alpha_grid(0.05)
    assert len(grid) == 21 and grid[0] == 0.0 and grid[-1] == 1.0
    # R@1 recovers linearly from 40 (alpha 0) to 50 (alpha 1): within 3 points once 10(1 - alpha) < 3.
    seen = []

    def linear(alpha):
        seen.append(alpha)
        return 50.0 - 10.0 * (1.0 - alpha)

    assert criticality(linear, 50.0, grid, 3.0) == (0.75, 47.5, 16)
    assert seen == grid[:16]
    # Not monotone: the first qualifying alpha wins, even when a larger one fails again.
    dips = {0.0: 40.0, 0.05: 48.0, 0.1: 41.0}
    assert criticality(lambda a: dips.get(a, 50.0), 50.0, grid, 3.0)[:2] == (0.05, 48.0)
    # A module that matters at every alpha below 1: C² = 1, the trained model itself, never measured.
    assert criticality(lambda a: 0.0, 50.0, grid, 3.0) == (1.0, 50.0, 20)
    with pytest.raises(UserInputError, match="whole steps"):
        alpha_grid(0.3)


def test_contribution_is_each_drop_over_the_largest():
    assert contribution([2.0, 8.0, -1.0, 0.0]) == [0.25, 1.0, -0.125, 0.0]
    assert contribution([-1.0, 0.0]) == [0.0, 0.0]


# ----------------------------------------------------------------------------- the stage


def save_run(path, model, cfg: ExperimentConfig):
    checkpoint.save(path, {"model": model.state_dict(), "config": cfg.to_dict(), "epochs": 1, "seed": cfg.train.seed})


def test_probe_importance_end_to_end_with_a_known_criticality(synthetic_shards, tmp_path):
    """θ₀ = the model's own weights: interpolating changes nothing, so every C² is 0 after one encode."""
    torch.manual_seed(0)
    model = build_model(PROBE_CFG, with_simclr_head=False).model
    stand_in = tmp_path / "stand_in.pt"
    save_run(stand_in, model, ExperimentConfig(model=PROBE_CFG))
    cfg = ExperimentConfig(model=replace(PROBE_CFG, pretrained=str(stand_in)))
    run = tmp_path / "final.pt"
    save_run(run, model, cfg)
    out, summary = tmp_path / "importance.parquet", tmp_path / "importance.json"
    argv = ["probe", "importance", "--checkpoint", str(run), "--shards", str(synthetic_shards["val"]), "--out",
            str(out), "--summary", str(summary), "--dataset", "synthetic", "--experiment", "probe", "--split", "val",
            "--workers", "0", "--html", str(tmp_path / "importance.html")]
    assert main(argv) == 0
    assert "module importance: probe on synthetic" in (tmp_path / "importance.html").read_text()

    table = pl.read_parquet(out)
    assert table.height == 36 and set(table["module"]) == set(KINDS) and set(table["tower"]) == {"image", "text"}
    assert (table["C2"] == 0.0).all() and (table["encodes"] == 2).all()  # removal + alpha 0
    trained = load_trained_model(run, torch.device("cpu"))
    r1 = evaluate_model(trained.model, trained.tokenizer, synthetic_shards["val"], trained.config,
                        torch.device("cpu"), num_workers=0).metrics["t2i"]["R1"]
    assert (table["R1_reference"] == r1).all()
    assert (table["drop_removed"] == r1 - table["R1_removed"]).all()
    for tower in ("image", "text"):
        rows = table.filter(pl.col("tower") == tower)
        largest = rows["drop_removed"].max()
        expected = rows["drop_removed"] / largest if largest > 0 else rows["drop_removed"] * 0
        assert rows["C1"].to_list() == pytest.approx(expected.to_list())
    assert set(table["theta0_source"]) == {f"pretrained: {stand_in}"}
    assert {"config_sha256", "data_sha256", "code_version", "epsilon", "alpha_step"} <= set(table.columns)
    facts = json.loads(summary.read_text())
    assert facts["encodes"] == {"image": 1 + 18 * 2, "text": 1 + 18 * 2} and facts["modules"] == 36

    figure = tmp_path / "importance.png"
    assert main(["probe", "heatmaps", "--importance", str(out), "--out", str(figure)]) == 0
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_theta0_pretrained_needs_a_pretrained_run(tmp_path, synthetic_shards):
    torch.manual_seed(0)
    run = tmp_path / "final.pt"
    save_run(run, build_model(PROBE_CFG, with_simclr_head=False).model, ExperimentConfig(model=PROBE_CFG))
    with pytest.raises(UserInputError, match="--theta0 random"):
        from tbps.probe.importance import probe_importance

        probe_importance(run, synthetic_shards["val"], tmp_path / "x.parquet", dataset="synthetic",
                         experiment="probe", split="val", theta0="pretrained", num_workers=0)
