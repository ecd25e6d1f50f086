"""The TBPS-CLIP model: recipe changes (docs/method.md#recipe-changes), parameter groups (#optimisation) and strict weight loading."""

from __future__ import annotations

import math
from dataclasses import replace

import open_clip
import pytest
import torch
import torch.nn.functional as F

from tbps.config import ModelConfig
from tbps.errors import UserInputError
from tbps.losses import clamped_logit_scale
from tbps.model import (
    TINY_RN,
    TINY_VIT,
    build_model,
    load_checkpoint_weights,
    param_groups,
    register_tiny_configs,
)
from tbps.model.clip import assemble_model, text_layer_plan
from tbps.published import COMPRESSION_TABLE

TINY_VIT_CFG = ModelConfig(name=TINY_VIT, pretrained=None, image_size=(96, 32))
TINY_RN_CFG = ModelConfig(name=TINY_RN, pretrained=None, image_size=(64, 64))


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def vit_b16_full():
    torch.manual_seed(0)
    return build_model(ModelConfig(pretrained=None), with_simclr_head=True)


@pytest.fixture()
def tiny_vit():
    torch.manual_seed(0)
    return build_model(TINY_VIT_CFG, with_simclr_head=True)


# ---------------------------------------------------------------- ViT-B/16 recipe (docs/method.md#recipe-changes)

def test_vit_b16_trainable_parameter_counts_match_the_spec(vit_b16_full):
    model = vit_b16_full.model
    assert trainable(model) == 149_162_625
    assert sum(p.numel() for p in model.clip.parameters()) == 149_620_737
    assert not model.clip.visual.conv1.weight.requires_grad
    assert model.clip.visual.conv1.weight.numel() == 589_824
    assert sum(p.numel() for p in model.clip.transformer.resblocks[0].parameters()) == 3_152_384
    assert isinstance(model.clip.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert vit_b16_full.load_report is None  # random init: nothing loaded


def test_vit_b16_simplified_preset_has_no_head():
    simplified = build_model(ModelConfig(pretrained=None), with_simclr_head=False).model
    assert simplified.simclr_head is None
    assert trainable(simplified) == 149_030_913
    with pytest.raises(RuntimeError, match="without the SimCLR head"):
        simplified.simclr(torch.zeros(1, 3, 224, 224))


@pytest.mark.parametrize("mode", ["freeze", "drop"])
def test_vit_b16_trainable_parameters_match_table_17_when_text_layers_are_frozen_or_dropped(vit_b16_full, mode):
    """The paper's Table 17 for x = 0..5, both presets, exactly: one text layer is 3,152,384 parameters."""
    clip = vit_b16_full.model.clip
    blocks = clip.transformer.resblocks
    full = {"tbps_clip": (149_162_625, True), "tbps_clip_simplified": (149_030_913, False)}
    try:
        for preset, (trainable_x0, head) in full.items():
            for row in COMPRESSION_TABLE:
                cfg = ModelConfig(pretrained=None, **{f"{mode}_text_layers": row.text_layers})
                model, counts = assemble_model(clip, cfg, text_layer_plan(cfg, clip), with_simclr_head=head)
                assert counts.trainable == trainable(model) == trainable_x0 - row.x * 3_152_384, (preset, row.x)
                assert round(counts.trainable / 1e6, 1) == row.trainable_millions[preset], (preset, row.x)
                assert len(model.clip.transformer.resblocks) == 12 - (row.x if mode == "drop" else 0)
                clip.transformer.resblocks, clip.transformer.layers = blocks, 12
    finally:
        clip.transformer.resblocks, clip.transformer.layers = blocks, 12
        for p in clip.parameters():
            p.requires_grad_(True)
        clip.visual.conv1.requires_grad_(False)
    assert trainable(vit_b16_full.model) == 149_162_625  # the shared fixture is as it was


def test_param_groups_follow_the_weight_decay_rule(vit_b16_full):
    model = vit_b16_full.model
    groups = {g["group_name"]: g for g in param_groups(model, 0.02)}
    assert groups["decay"]["weight_decay"] == 0.02 and groups["no_decay"]["weight_decay"] == 0.0
    decay, no_decay = set(groups["decay"]["names"]), set(groups["no_decay"]["names"])
    assert not decay & no_decay
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == trainable(model)
    assert "clip.visual.conv1.weight" not in decay | no_decay  # frozen: left out
    for name in ("clip.logit_scale", "clip.visual.class_embedding", "clip.ln_final.weight", "clip.ln_final.bias",
                 "clip.visual.ln_pre.weight", "clip.transformer.resblocks.0.attn.in_proj_bias",
                 "clip.transformer.resblocks.0.mlp.c_fc.bias", "simclr_head.0.bias"):
        assert name in no_decay, name
    for name in ("clip.token_embedding.weight", "clip.positional_embedding", "clip.visual.positional_embedding",
                 "clip.text_projection", "clip.visual.proj", "clip.transformer.resblocks.0.attn.in_proj_weight",
                 "clip.visual.transformer.resblocks.11.mlp.c_proj.weight", "simclr_head.0.weight",
                 "simclr_head.2.weight"):
        assert name in decay, name
    params = dict(model.named_parameters())
    assert all(params[n].ndim < 2 for n in no_decay)
    assert all(params[n].ndim >= 2 and not n.endswith(".bias") for n in decay)
    torch.optim.AdamW(param_groups(model, 0.02), lr=1e-4)  # usable as-is


def test_vit_b16_tokenizer_is_open_clips_77_token_bpe(vit_b16_full):
    tokens = vit_b16_full.tokenizer(["a woman in a red coat", "a man"])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    assert tokens[0, 0] == 49406


# ---------------------------------------------------------------- tiny models

def test_tiny_configs_are_registered_with_open_clip_once():
    register_tiny_configs()
    before = open_clip.list_models()
    register_tiny_configs()
    assert open_clip.list_models() == before
    assert TINY_VIT in before and TINY_RN in before
    assert open_clip.get_tokenizer(TINY_RN)(["a man"]).shape == (1, 32)


@pytest.mark.parametrize("cfg", [TINY_VIT_CFG, TINY_RN_CFG], ids=["vit", "rn"])
def test_encoders_return_unit_vectors(cfg):
    torch.manual_seed(0)
    built = build_model(cfg, with_simclr_head=True)
    model = built.model.eval()
    h, w = cfg.image_size
    images = torch.randn(3, 3, h, w)
    tokens = built.tokenizer(["a man in a blue shirt", "a woman", "a child with a bag"])
    assert tokens.shape == (3, 32)
    out = model(images=images, tokens=tokens, simclr_images=images)
    for key in ("image", "text", "simclr"):
        assert out[key].shape == (3, 128)
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out["image"], model.encode_image(images))
    # The head acts on the projected embedding: its output differs from the embedding itself.
    assert not torch.allclose(out["simclr"], out["image"], atol=1e-3)
    assert not model.clip.visual.conv1.weight.requires_grad  # the stem conv is frozen in both towers


def test_tiny_model_sizes_are_checked():
    with pytest.raises(UserInputError, match="square size divisible by 32"):
        build_model(replace(TINY_RN_CFG, image_size=(96, 32)), with_simclr_head=False)
    with pytest.raises(UserInputError, match="multiple of"):
        build_model(replace(TINY_VIT_CFG, image_size=(100, 32)), with_simclr_head=False)
    with pytest.raises(UserInputError, match="not an open_clip model config"):
        build_model(replace(TINY_VIT_CFG, name="TBPS-Huge"), with_simclr_head=False)


def test_freeze_can_be_turned_off():
    model = build_model(replace(TINY_VIT_CFG, freeze_patch_embed=False), with_simclr_head=False).model
    assert model.clip.visual.conv1.weight.requires_grad


# ---------------------------------------------------------------- text attention dropout

def test_attention_dropout_is_set_in_text_blocks_only(tiny_vit):
    clip = tiny_vit.model.clip
    assert [b.attn.dropout for b in clip.transformer.resblocks] == [0.05]
    assert [b.attn.dropout for b in clip.visual.transformer.resblocks] == [0.0] * 4


def test_attention_dropout_acts_in_train_mode_only(tiny_vit):
    model = tiny_vit.model
    tokens = tiny_vit.tokenizer(["a man in a blue shirt and black trousers"] * 4)
    images = torch.randn(4, 3, 96, 32)
    model.train()
    torch.manual_seed(1)
    assert not torch.equal(model.encode_text(tokens), model.encode_text(tokens))
    assert torch.equal(model.encode_image(images), model.encode_image(images))  # no dropout in the image tower
    model.eval()
    assert torch.equal(model.encode_text(tokens), model.encode_text(tokens))

    no_dropout = build_model(replace(TINY_VIT_CFG, text_attn_dropout=0.0), with_simclr_head=False).model.train()
    assert torch.equal(no_dropout.encode_text(tokens), no_dropout.encode_text(tokens))


def test_attention_dropout_drops_attention_probabilities(tiny_vit):
    """With every probability dropped, attention returns out_proj(0) = its bias (dropping the
    block's output instead would give 0)."""
    attn = tiny_vit.model.clip.transformer.resblocks[0].attn
    with torch.no_grad():
        attn.out_proj.bias.fill_(0.25)
    attn.dropout = 1.0
    seen = []
    attn.register_forward_hook(lambda _m, _i, out: seen.append(out[0]))
    tiny_vit.model.train().encode_text(tiny_vit.tokenizer(["a man"]))
    torch.testing.assert_close(seen[0], torch.full_like(seen[0], 0.25))


def test_dropout_out_of_range_is_a_user_error():
    with pytest.raises(UserInputError, match="text_attn_dropout"):
        build_model(replace(TINY_VIT_CFG, text_attn_dropout=1.0), with_simclr_head=False)


# ---------------------------------------------------------------- logit scale

@pytest.mark.parametrize("s_raw, s_used", [(200.0, 100.0), (50.0, 50.0)])
def test_clamped_scale_value_and_gradient(s_raw, s_used):
    theta = torch.tensor(math.log(s_raw), requires_grad=True)
    s = clamped_logit_scale(theta, 100.0)
    s.backward()
    assert s.item() == pytest.approx(s_used)
    assert theta.grad.item() == pytest.approx(s_used)  # dL/dθ = s·∂L/∂s with L = s


def test_logit_scale_init_and_value(tiny_vit):
    assert tiny_vit.model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))  # open_clip's random init
    model = build_model(replace(TINY_VIT_CFG, logit_scale_init=250.0, logit_scale_max=100.0),
                        with_simclr_head=False).model
    assert model.logit_scale.item() == pytest.approx(math.log(250.0))
    assert model.logit_scale_value().item() == pytest.approx(100.0)
    with pytest.raises(UserInputError, match="logit_scale_init"):
        build_model(replace(TINY_VIT_CFG, logit_scale_init=-1.0), with_simclr_head=False)


# ---------------------------------------------------------------- weight loading

def save_tiny_vit(path, image_size):
    torch.manual_seed(7)
    clip = build_model(replace(TINY_VIT_CFG, image_size=image_size), with_simclr_head=False).model.clip
    torch.save(clip.state_dict(), path)
    return clip.state_dict()


def test_local_pretrained_file_loads_every_tensor(tmp_path):
    saved = save_tiny_vit(tmp_path / "w.pt", (96, 32))
    built = build_model(replace(TINY_VIT_CFG, pretrained=str(tmp_path / "w.pt")), with_simclr_head=True)
    report = built.load_report
    assert report.complete and not report.resized and sorted(report.loaded) == sorted(saved)
    loaded = built.model.clip.state_dict()
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key


def test_position_grid_is_interpolated_when_the_size_changes(tmp_path):
    saved = save_tiny_vit(tmp_path / "w64.pt", (64, 64))  # 8x8 grid
    built = build_model(replace(TINY_VIT_CFG, pretrained=str(tmp_path / "w64.pt")), with_simclr_head=False)
    clip = built.model.clip
    assert built.load_report.resized == ["visual.positional_embedding"]
    assert tuple(clip.visual.grid_size) == (12, 4)
    pos, old = clip.visual.positional_embedding.detach(), saved["visual.positional_embedding"]
    assert pos.shape == (1 + 12 * 4, 128)
    torch.testing.assert_close(pos[0], old[0])  # class token untouched
    grid = old[1:].reshape(1, 8, 8, 128).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(12, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(pos[1:], expected.permute(0, 2, 3, 1).reshape(48, 128))
    for key, value in saved.items():
        if key != "visual.positional_embedding":
            assert torch.equal(clip.state_dict()[key], value), key


def test_a_non_square_grid_cannot_be_resized(tmp_path):
    save_tiny_vit(tmp_path / "w.pt", (96, 32))
    with pytest.raises(UserInputError, match="not a square grid"):
        build_model(replace(TINY_VIT_CFG, image_size=(64, 64), pretrained=str(tmp_path / "w.pt")),
                    with_simclr_head=False)


def test_a_checkpoint_of_another_model_is_refused_with_its_keys(tmp_path):
    torch.manual_seed(0)
    rn = build_model(TINY_RN_CFG, with_simclr_head=False).model.clip
    torch.save(rn.state_dict(), tmp_path / "rn.pt")
    with pytest.raises(UserInputError) as err:
        build_model(replace(TINY_VIT_CFG, pretrained=str(tmp_path / "rn.pt")), with_simclr_head=False)
    message, report = str(err.value), err.value.report
    assert message.startswith(f"{tmp_path / 'rn.pt'}: checkpoint does not fit")
    for category in ("missing from the checkpoint (", "not in the model (", "wrong shape ("):
        assert category in message
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in report.missing
    assert "visual.layer1.0.conv1.weight" in report.unexpected
    assert ("visual.conv1.weight", (8, 3, 3, 3), (128, 3, 8, 8)) in report.shape_mismatches
    assert report.missing[0] in message and report.unexpected[0] in message  # keys are named


class NotWeights:
    """An arbitrary pickled object: torch.load(weights_only=True) must refuse it."""


def test_bad_pretrained_values_are_user_errors(tmp_path):
    with pytest.raises(UserInputError, match="neither an open_clip tag"):
        build_model(replace(TINY_VIT_CFG, pretrained=str(tmp_path / "missing.pt")), with_simclr_head=False)

    torch.save({"x": NotWeights()}, tmp_path / "pickle.pt")
    with pytest.raises(UserInputError, match="cannot be read as weights"):
        build_model(replace(TINY_VIT_CFG, pretrained=str(tmp_path / "pickle.pt")), with_simclr_head=False)
    torch.save({"x": 1}, tmp_path / "not_tensors.pt")
    with pytest.raises(UserInputError, match="flat name -> tensor"):
        build_model(replace(TINY_VIT_CFG, pretrained=str(tmp_path / "not_tensors.pt")), with_simclr_head=False)


def test_load_checkpoint_weights_reports_every_key(tiny_vit):
    model = tiny_vit.model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = build_model(TINY_VIT_CFG, with_simclr_head=True).model
    report = load_checkpoint_weights(fresh, state, source="ckpt.pt")
    assert report.complete and len(report.loaded) == len(state)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())

    partial = {k: v for k, v in state.items() if not k.startswith("simclr_head.")}
    partial["extra.weight"] = torch.zeros(1)
    with pytest.raises(UserInputError, match=r"ckpt\.pt.*simclr_head\.0\.weight.*extra\.weight"):
        load_checkpoint_weights(fresh, partial, source="ckpt.pt")
    report = load_checkpoint_weights(fresh, partial, strict=False, source="ckpt.pt")
    assert sorted(report.missing) == sorted(k for k in state if k.startswith("simclr_head."))
    assert report.unexpected == ["extra.weight"]

    bad = dict(state)
    bad["clip.text_projection"] = torch.zeros(3, 3)
    with pytest.raises(UserInputError, match=r"clip\.text_projection is \(3, 3\) in the checkpoint, \(128, 128\) in the model"):
        load_checkpoint_weights(fresh, bad, strict=False, source="ckpt.pt")

    no_head = build_model(TINY_VIT_CFG, with_simclr_head=False).model
    report = load_checkpoint_weights(no_head, state, source="ckpt.pt", ignore_prefixes=("simclr_head.",))
    assert report.complete and len(report.ignored) == 4


def test_a_prefix_mismatch_is_diagnosed(tiny_vit):
    wrapped = tiny_vit.model.state_dict()
    clip = build_model(TINY_VIT_CFG, with_simclr_head=False).model.clip
    with pytest.raises(UserInputError, match="starts with 'clip.'"):
        load_checkpoint_weights(clip, {k: v for k, v in wrapped.items() if k.startswith("clip.")}, source="x.pt")
    with pytest.raises(UserInputError, match="lack the model's 'clip.' prefix"):
        load_checkpoint_weights(tiny_vit.model, tiny_vit.model.clip.state_dict(), source="x.pt")


def test_pretrained_tags_go_through_open_clips_download(tmp_path, monkeypatch):
    """A tag resolves via open_clip.get_pretrained_cfg + download_pretrained (its cache); the tag's
    QuickGELU flag picks the activation. Both are faked here: no network in tests."""
    saved = save_tiny_vit(tmp_path / "cached.pt", (96, 32))
    tag_cfg = {"hf_hub": "org/tiny/", "quick_gelu": True}
    real_cfg = open_clip.get_pretrained_cfg
    monkeypatch.setattr(open_clip, "get_pretrained_cfg",
                        lambda name, tag: tag_cfg if (name, tag) == (TINY_VIT, "faketag") else real_cfg(name, tag))
    monkeypatch.setattr(open_clip, "download_pretrained", lambda cfg, **kw: str(tmp_path / "cached.pt"))
    built = build_model(replace(TINY_VIT_CFG, pretrained="faketag"), with_simclr_head=False)
    assert built.load_report.complete and built.load_report.source == str(tmp_path / "cached.pt")
    assert torch.equal(built.model.clip.token_embedding.weight, saved["token_embedding.weight"])
    assert isinstance(built.model.clip.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)

    def offline(cfg, **kw):
        raise FileNotFoundError("no network")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(UserInputError, match="could not find .* weights in its cache nor download them"):
        build_model(replace(TINY_VIT_CFG, pretrained="faketag"), with_simclr_head=False)
