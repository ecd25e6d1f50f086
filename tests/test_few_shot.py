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


@pytest.mark.parametrize(("peft", "trainable"), [("coop", 4 * 512), ("clip_adapter", 2 * 512 * 128)])
def test_on_vit_b16_only_the_methods_own_parameters_train(peft, trainable):
    built = build_model(ModelConfig(pretrained=None, peft=peft), with_simclr_head=False)
    assert built.parameters.trainable == trainable
    with pytest.raises(UserInputError, match="SimCLR head"):
        build_model(replace(PROBE, peft=peft), with_simclr_head=True)


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
                 "optim": {"epochs": 1}, "train": {"checkpoint_every_steps": 1000, "log_every_steps": 1000,
                                                   "eval_every_epoch": False}}
    for key, value in sections.items():
        overrides[key] = {**overrides.get(key, {}), **value}
    return load_experiment(os.path.join(EXPERIMENTS, f"{name}.yaml"), overrides)


@pytest.mark.parametrize(("name", "prefix"), [("tiny_probe_coop", "prompt_context."),
                                              ("tiny_probe_clip_adapter", "image_adapter.")])
def test_coop_and_the_adapter_train_only_their_parameters_and_load_for_evaluation(synthetic_shards, tmp_path,
                                                                                   name, prefix):
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
            assert torch.equal(value, initial[key]), key  # weights and buffers of the backbone, logit scale
    assert saved["trainable_parameters"] == sum(v.numel() for k, v in saved["model"].items() if k.startswith(prefix))
    assert saved["few_shot"]["seed"] == 0 and saved["config"]["data"]["few_shot_seed"] == 0
    trained = load_trained_model(final, torch.device("cpu"))
    assert trained.config.model.peft == cfg.model.peft
    metrics = tmp_path / "test.parquet"
    assert main(["evaluate", "--checkpoint", str(final), "--shards", str(synthetic_shards["test"]), "--out",
                 str(metrics), "--dataset", "synthetic", "--experiment", f"{name}-fs0.5", "--workers", "0"]) == 0
    assert pl.read_parquet(metrics)["R1"].is_finite().all()
