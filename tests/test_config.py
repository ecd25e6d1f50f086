"""Typed experiment configuration: dotted overrides, type checks, unknown keys, inheritance, hashes."""

from __future__ import annotations

import re

import pytest
import yaml

from tbps.config import (
    ExperimentConfig,
    apply_overrides,
    check_allowed,
    config_from_dict,
    load_experiment,
    parse_dotted,
)
from tbps.errors import UserInputError


def test_parse_dotted_nests_keys_and_reads_values_as_yaml():
    assert parse_dotted(["optim.lr=1e-3", "train.max_steps=10", "model.image_size=[384, 128]",
                         "train.max_steps=null", "model.name=a=b"]) == {
        "optim": {"lr": "1e-3"},  # YAML 1.1 reads 1e-3 (no dot) as text; apply_overrides makes it a float
        "train": {"max_steps": None},  # the last of repeated keys wins
        "model": {"image_size": [384, 128], "name": "a=b"},  # only the first "=" separates
    }


def test_parse_dotted_without_a_value_says_how():
    with pytest.raises(UserInputError, match="expected KEY=VALUE, e.g. optim.lr=1e-3"):
        parse_dotted(["optim.lr"])


def test_overrides_change_only_their_keys_with_types_coerced():
    cfg = ExperimentConfig()
    out = apply_overrides(cfg, parse_dotted(["optim.lr=1e-3", "model.image_size=[384, 128]", "train.max_steps=5"]))
    assert out is cfg
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)
    assert cfg.model.image_size == (384, 128)
    assert cfg.train.max_steps == 5
    assert cfg.optim.epochs == ExperimentConfig().optim.epochs  # untouched siblings keep their defaults


@pytest.mark.parametrize(("overrides", "message"), [
    ({"optim": {"learning_rate": 1.0}}, r"overrides\.optim: unknown key\(s\) \['learning_rate'\]. Fix: use one of \["),
    ({"optimiser": {"lr": 1.0}}, r"overrides: unknown key\(s\) \['optimiser'\]"),
    ({"data": {"batch_size": "big"}}, r"overrides\.data\.batch_size: expected an integer, got 'big'"),
    ({"data": {"batch_size": True}}, r"overrides\.data\.batch_size: expected an integer"),
    ({"data": {"batch_size": None}}, r"overrides\.data\.batch_size: expected an integer, got None"),
    ({"loss": {"mvs_i": "yes"}}, r"overrides\.loss\.mvs_i: expected true/false"),
    ({"model": {"image_size": [224]}}, r"overrides\.model\.image_size: expected a list of 2 values"),
    ({"optim": 3}, r"overrides\.optim: expected a mapping"),
])
def test_bad_overrides_name_the_key_and_the_problem(overrides, message):
    with pytest.raises(UserInputError, match=message):
        apply_overrides(ExperimentConfig(), overrides)


def test_optional_values_accept_null():
    cfg = apply_overrides(ExperimentConfig(), {"train": {"max_steps": 3}})
    assert apply_overrides(cfg, {"train": {"max_steps": None}}).train.max_steps is None


def test_experiment_files_inherit_and_unknown_keys_name_the_file(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"optim": {"epochs": 2, "lr": 0.5}}))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({"inherit": "base", "optim": {"lr": 0.25}}))
    cfg = load_experiment(tmp_path / "child.yaml", {"data": {"batch_size": 8}})
    assert (cfg.name, cfg.optim.epochs, cfg.optim.lr, cfg.data.batch_size) == ("child", 2, 0.25, 8)

    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({"inherit": "base", "data": {"batch": 8}}))
    with pytest.raises(UserInputError, match=r"typo\.yaml\.data: unknown key\(s\) \['batch'\]"):
        load_experiment(tmp_path / "typo.yaml")


def test_saved_config_round_trips_and_hashes_ignore_names_and_resumable_keys():
    cfg = apply_overrides(ExperimentConfig(), {"optim": {"lr": 0.002}, "loss": {"ss_i_weight": 0.0}})
    again = config_from_dict(cfg.to_dict())
    assert again == cfg and again.sha256() == cfg.sha256()

    renamed = config_from_dict({**cfg.to_dict(), "name": "other", "description": "same science"})
    assert renamed.sha256() == cfg.sha256()
    shorter = apply_overrides(config_from_dict(cfg.to_dict()), {"train": {"max_steps": 10}})
    assert shorter.sha256() != cfg.sha256() and shorter.resume_sha256() == cfg.resume_sha256()
    faster = apply_overrides(config_from_dict(cfg.to_dict()), {"optim": {"lr": 0.001}})
    assert faster.resume_sha256() != cfg.resume_sha256()

    with pytest.raises(UserInputError, match=r"saved config\.data: unknown key\(s\) \['shuffle_buffer'\]"):
        config_from_dict({**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "shuffle_buffer": 2000}})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"optim": {"epochs": 0}}, "optim.epochs: 0 is not allowed. Fix: use a value >= 1"),
        ({"optim": {"epochs": -3}}, "optim.epochs"),
        ({"optim": {"lr": -1e-4}}, "optim.lr"),
        ({"optim": {"lr": 1e12}}, "<= 1"),
        ({"optim": {"lr": float("nan")}}, "finite"),
        ({"optim": {"lr": float("inf")}}, "finite"),
        ({"optim": {"betas": [0.9, 1.0]}}, "optim.betas"),
        ({"data": {"batch_size": 0}}, "data.batch_size"),
        ({"data": {"num_workers": -1}}, "data.num_workers"),
        ({"data": {"max_words": 0}}, "data.max_words"),
        ({"data": {"word_deletion_prob": 1.5}}, "data.word_deletion_prob"),
        ({"data": {"backtranslation_prob": -0.1}}, "data.backtranslation_prob"),
        ({"data": {"few_shot_fraction": 0.0}}, "data.few_shot_fraction"),
        ({"data": {"normalisation": "cifar"}}, "one of 'imagenet', 'clip'"),
        ({"loss": {"mvs_mode": "sum"}}, "loss.mvs_mode"),
        ({"loss": {"soft_label_alpha": 2.0}}, "loss.soft_label_alpha"),
        ({"model": {"image_size": [224, 0]}}, "model.image_size"),
        ({"model": {"text_attn_dropout": 1.2}}, "model.text_attn_dropout"),
        ({"train": {"precision": "fp8"}}, "one of 'auto', 'fp32', 'bf16', 'fp16'"),
        ({"train": {"checkpoint_every_steps": 0}}, "train.checkpoint_every_steps"),
        ({"train": {"log_every_steps": 0}}, "train.log_every_steps"),
        ({"train": {"max_steps": 0}}, "train.max_steps"),
    ],
)
def test_out_of_range_settings_are_refused_where_the_config_is_built(override, message):
    with pytest.raises(UserInputError, match=re.escape(message)):
        apply_overrides(ExperimentConfig(), override)


def test_every_default_is_within_its_declared_range():
    check_allowed(ExperimentConfig())


def test_saved_config_with_out_of_range_value_is_refused():
    saved = ExperimentConfig().to_dict()
    saved["optim"]["epochs"] = 0
    with pytest.raises(UserInputError, match=r"saved config\.optim\.epochs"):
        config_from_dict(saved)


def test_check_allowed_catches_values_set_in_code():
    cfg = ExperimentConfig()
    cfg.data.batch_size = 0
    with pytest.raises(UserInputError, match="DataConfig.batch_size"):
        check_allowed(cfg)


def test_optional_setting_accepts_null_and_checks_values():
    cfg = apply_overrides(ExperimentConfig(), {"train": {"max_steps": None}})
    assert cfg.train.max_steps is None
    assert apply_overrides(cfg, {"train": {"max_steps": 3}}).train.max_steps == 3


# ----------------------------------------------------------------------------- data.image_aug

# Every image-augmentation row of the paper's Table 2 and every point of its sweeps, as overrides on
# top of CLIP* (the study file builds on these names).
TABLE_2_ROWS = {
    "none": {"strategy": "none"},
    **{f"single {op}": {"strategy": "stack", "ops": [op]} for op in
       ("resized_crop", "erasing", "grayscale", "color_jitter", "color_jitter_hue", "hflip", "vflip",
        "gaussian_blur", "rotation")},
    "stacking all": {"strategy": "stack"},
    "autoaugment": {"strategy": "autoaugment"},
    "randaugment": {"strategy": "randaugment", "randaugment_ops": 2, "randaugment_magnitude": 9},
    "trivialaugment": {"strategy": "trivialaugment"},
    "pool": {"strategy": "pool"},
    **{f"rrc {s}": {"strategy": "stack", "ops": ["resized_crop"], "crop_min_scale": s} for s in (0.3, 0.6, 0.9)},
    **{f"re {a}": {"strategy": "stack", "ops": ["erasing"], "erasing_area": a}
       for a in ([0.02, 0.10], [0.10, 0.20], [0.20, 0.30])},
    **{f"blur {k}": {"strategy": "stack", "ops": ["gaussian_blur"], "blur_kernel": k} for k in (3, 7, 11)},
    **{f"cj {c}": {"strategy": "stack", "ops": ["color_jitter"], "jitter": c} for c in (0.1, 0.2, 0.4)},
    **{f"hue {c}": {"strategy": "stack", "ops": ["color_jitter_hue"], "jitter_hue": c} for c in (0.1, 0.2, 0.4)},
    **{f"rot {d}": {"strategy": "stack", "ops": ["rotation"], "rotation_degrees": d} for d in (7.5, 15, 30)},
}


@pytest.mark.parametrize("row", TABLE_2_ROWS, ids=str)
def test_every_table_2_row_is_expressible(row):
    cfg = apply_overrides(ExperimentConfig(), {"data": {"image_aug": TABLE_2_ROWS[row]}})
    check_allowed(cfg)
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    assert (row == "pool") == (cfg.sha256() == ExperimentConfig().sha256())


def test_image_aug_defaults_are_the_recipe_pool():
    aug = ExperimentConfig().data.image_aug
    assert (aug.strategy, aug.pool_draws, aug.on_device) == ("pool", 2, False)
    assert aug.ops == ("color_jitter", "rotation", "resized_crop", "grayscale", "hflip", "erasing")
    assert (aug.crop_min_scale, aug.erasing_p, aug.erasing_area, aug.grayscale_p, aug.flip_p) == (
        0.9, 0.5, (0.10, 0.20), 0.1, 0.5)
    assert (aug.jitter, aug.jitter_hue, aug.blur_kernel, aug.blur_sigma, aug.rotation_degrees) == (
        0.1, 0.1, 3, (0.1, 2.0), 15.0)
    assert (aug.randaugment_ops, aug.randaugment_magnitude) == (2, 9)


def test_variable_length_list_settings_coerce_and_check_each_item():
    cfg = apply_overrides(ExperimentConfig(), parse_dotted(["data.image_aug.ops=[hflip, vflip, rotation]"]))
    assert cfg.data.image_aug.ops == ("hflip", "vflip", "rotation")
    assert apply_overrides(cfg, {"data": {"image_aug": {"ops": [], "strategy": "none"}}}).data.image_aug.ops == ()
    with pytest.raises(UserInputError, match=r"image_aug\.ops: expected a list, got 'hflip'"):
        apply_overrides(ExperimentConfig(), {"data": {"image_aug": {"ops": "hflip"}}})
    with pytest.raises(UserInputError, match=r"image_aug\.ops\[1\]: expected a string, got 3"):
        apply_overrides(ExperimentConfig(), {"data": {"image_aug": {"ops": ["hflip", 3]}}})
    with pytest.raises(UserInputError, match=r"image_aug\.ops: \('hflip', 'shear'\) is not allowed. Fix: use "
                                             r"one of 'resized_crop'"):
        apply_overrides(ExperimentConfig(), {"data": {"image_aug": {"ops": ["hflip", "shear"]}}})


@pytest.mark.parametrize(("image_aug", "message"), [
    ({"strategy": "mixup"}, "image_aug.strategy: 'mixup' is not allowed"),
    ({"crop_min_scale": 0.0}, "image_aug.crop_min_scale"),
    ({"erasing_area": [0.3, 0.2]}, "image_aug.erasing_area: [0.3, 0.2] has low > high"),
    ({"erasing_area": [0.1, 1.0]}, "image_aug.erasing_area"),
    ({"blur_kernel": 4}, "image_aug.blur_kernel: 4 is even"),
    ({"blur_sigma": [2.0, 0.1]}, "image_aug.blur_sigma"),
    ({"jitter_hue": 0.6}, "image_aug.jitter_hue"),
    ({"rotation_degrees": -1}, "image_aug.rotation_degrees"),
    ({"randaugment_magnitude": 31}, "image_aug.randaugment_magnitude"),
    ({"pool_draws": 0}, "image_aug.pool_draws"),
    ({"ops": ["hflip", "hflip"]}, "['hflip'] listed more than once"),
    ({"ops": []}, "image_aug.ops: empty with strategy 'pool'"),
    ({"on_device": True, "strategy": "randaugment"}, "strategy 'randaugment' (a torchvision policy) runs only in the "
                                                      "loader workers. Fix: set on_device: false"),
    ({"image_pool": True}, "image_aug: unknown key(s) ['image_pool']"),
])
def test_bad_image_aug_settings_are_refused_with_the_fix(image_aug, message):
    with pytest.raises(UserInputError, match=re.escape(message)):
        apply_overrides(ExperimentConfig(), {"data": {"image_aug": image_aug}})


def test_cross_field_checks_also_cover_values_set_in_code():
    cfg = ExperimentConfig()
    cfg.data.image_aug.on_device, cfg.data.image_aug.strategy = True, "autoaugment"
    with pytest.raises(UserInputError, match="ImageAugConfig.on_device"):
        check_allowed(cfg)


def test_on_device_is_part_of_both_hashes():
    cfg = apply_overrides(ExperimentConfig(), {"data": {"image_aug": {"on_device": True}}})
    assert cfg.sha256() != ExperimentConfig().sha256()
    assert cfg.resume_sha256() != ExperimentConfig().resume_sha256()


def test_configs_saved_with_image_pool_still_load():
    saved = ExperimentConfig().to_dict()
    del saved["data"]["image_aug"]
    assert config_from_dict({**saved, "data": {**saved["data"], "image_pool": True}}) == ExperimentConfig()
    off = config_from_dict({**saved, "data": {**saved["data"], "image_pool": False}})
    assert off.data.image_aug.strategy == "none"
