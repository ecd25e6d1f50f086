"""Training stage: every loss term runs, resume is exact, DDP and gradient caching match one big batch."""

import os
import shutil
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
import torch

from tbps import checkpoint
from tbps.config import load_experiment
from tbps.errors import UserInputError
from tbps.fileio import sha256_file
from tbps.model import load_trained_model
from tbps.train import train, val_curve_schema

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "config", "experiments")


def experiment(name, **sections):
    overrides = {"data": {"batch_size": 32, "num_workers": 0}, "optim": {"epochs": 2},
                 "train": {"checkpoint_every_steps": 1000, "log_every_steps": 1000}}
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return load_experiment(os.path.join(EXPERIMENTS, f"{name}.yaml"), overrides)


def weights(path):
    return checkpoint.load(path)["model"]


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        if atol == 0.0:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-4, msg=key)


def test_full_preset_logs_every_loss_term_and_loads_for_inference_without_the_head(synthetic_shards, tmp_path):
    cfg = experiment("tiny_tbps_clip", optim={"epochs": 1}, data={"few_shot_fraction": 0.4})
    final = train(cfg, synthetic_shards["train"], tmp_path, val_manifest=synthetic_shards["val"])
    log = pl.read_parquet(tmp_path / "train_log.parquet")
    for term in ("loss_n_itc", "loss_n_itc_mvs", "loss_r_itc", "loss_ss_i", "loss_c_itc", "loss_total"):
        assert term in log.columns and log[term].is_finite().all(), term
    assert log["alpha"][0] == 0.0 and 0 < log["alpha"][-1] < 0.5  # soft-label ramp in epoch 1
    assert {"lr", "logit_scale", "samples_per_s"} <= set(log.columns)
    val = pl.read_parquet(tmp_path / "val_curve.parquet")
    assert set(val["direction"]) == {"t2i", "i2t"} and (val["epoch"] == 1).all()
    saved = checkpoint.load(final)
    assert saved["config"]["loss"]["ss_i_weight"] == 0.4
    assert any(k.startswith("simclr_head.") for k in saved["model"])
    assert (tmp_path / "config.yaml").is_file()
    trained = load_trained_model(final, torch.device("cpu"))
    assert trained.model.simclr_head is None and not trained.model.training
    assert (trained.epochs, trained.seed, trained.config.loss.ss_i_weight) == (1, cfg.train.seed, 0.4)


def test_resume_after_interruption_matches_an_uninterrupted_run(synthetic_shards, tmp_path):
    """Stop mid-epoch (train.max_steps acts as the kill), resume with a different worker count:
    the final weights equal an uninterrupted run bit for bit (dropout and augmentations included)."""
    shards = synthetic_shards["train"]
    base = dict(data={"few_shot_fraction": 0.35})
    full = train(experiment("tiny_tbps_clip", **base), shards, tmp_path / "full")
    # Without --val the curve is still written (the workflow declares it): no rows, same columns.
    no_val = pl.read_parquet(tmp_path / "full" / "val_curve.parquet")
    assert no_val.height == 0 and no_val.schema == pl.Schema(val_curve_schema())
    steps_per_epoch = checkpoint.load(full)["global_step"] // 2
    assert steps_per_epoch >= 3

    cut = experiment("tiny_tbps_clip", train={"max_steps": steps_per_epoch + 1}, **base)
    train(cut, shards, tmp_path / "cut")
    state = checkpoint.load(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["next_batch"]) == (1, 1)  # mid-epoch 2
    assert checkpoint.load(tmp_path / "cut" / "final.pt")["stopped_by_max_steps"]

    resumed_cfg = experiment("tiny_tbps_clip", data={"few_shot_fraction": 0.35, "num_workers": 2})
    resumed = train(resumed_cfg, shards, tmp_path / "cut", resume=True)
    assert_same_weights(weights(resumed), weights(full))
    assert not checkpoint.load(resumed)["stopped_by_max_steps"]
    # Resuming a run that already reached max_steps does no further step.
    again = train(cut, shards, tmp_path / "again_src")
    assert checkpoint.load(again)["global_step"] == steps_per_epoch + 1
    assert checkpoint.load(train(cut, shards, tmp_path / "again_src", resume=True))["global_step"] == steps_per_epoch + 1
    log = pl.read_parquet(tmp_path / "cut" / "train_log.parquet")
    assert log["global_step"].to_list() == list(range(1, 2 * steps_per_epoch + 1))


def test_device_augmentation_trains_and_resumes_exactly(synthetic_shards, tmp_path):
    """data.image_aug.on_device (here on the CPU): the full preset's four views made from the uint8 batch
    after it reaches the device; a run cut mid-epoch and resumed with other workers ends bit for bit
    like the uninterrupted run."""
    shards = synthetic_shards["train"]
    sections = dict(data={"few_shot_fraction": 0.25, "image_aug": {"on_device": True}})
    full = train(experiment("tiny_tbps_clip", **sections), shards, tmp_path / "full")
    saved = checkpoint.load(full)
    assert saved["config"]["data"]["image_aug"]["on_device"] is True
    steps_per_epoch = saved["global_step"] // 2
    log = pl.read_parquet(tmp_path / "full" / "train_log.parquet")
    assert log["loss_ss_i"].is_finite().all() and log["loss_n_itc_mvs"].is_finite().all()

    train(experiment("tiny_tbps_clip", train={"max_steps": steps_per_epoch + 1}, **sections), shards, tmp_path / "cut")
    resumed_cfg = experiment("tiny_tbps_clip", data={"few_shot_fraction": 0.25, "num_workers": 2,
                                                     "image_aug": {"on_device": True}})
    resumed = train(resumed_cfg, shards, tmp_path / "cut", resume=True)
    assert_same_weights(weights(resumed), weights(full))


def test_changed_configuration_starts_over_instead_of_resuming(synthetic_shards, tmp_path):
    shards = synthetic_shards["train"]
    small = dict(data={"few_shot_fraction": 0.2}, optim={"epochs": 1})
    train(experiment("tiny_tbps_clip_simplified", **small), shards, tmp_path)
    changed = experiment("tiny_tbps_clip_simplified", optim={"epochs": 1, "lr": 5e-4}, data={"few_shot_fraction": 0.2})
    fresh = train(changed, shards, tmp_path / "fresh")
    resumed = train(changed, shards, tmp_path, resume=True)
    assert_same_weights(weights(resumed), weights(fresh))


def test_rebuilt_training_shards_start_over_instead_of_resuming(synthetic_shards, tmp_path, caplog):
    """The workflow reruns training when the train shards change (e.g. another caption
    augmentation) with the experiment unchanged: the finished last.pt must not be continued."""
    cfg = experiment("tiny_tbps_clip_simplified", data={"few_shot_fraction": 0.2}, optim={"epochs": 1})
    first = train(cfg, synthetic_shards["train"], tmp_path / "run")
    steps = checkpoint.load(first)["global_step"]
    first_log = pl.read_parquet(tmp_path / "run" / "train_log.parquet")
    # Same samples, another manifest (as after a rebuild that changed the shards' bytes).
    rebuilt = tmp_path / "rebuilt"
    shutil.copytree(synthetic_shards["train"].parent, rebuilt)
    manifest = rebuilt / "manifest.json"
    manifest.write_text(manifest.read_text() + "\n")
    with caplog.at_level("WARNING", logger="tbps.train"):
        again = train(cfg, manifest, tmp_path / "run", resume=True)
    assert "trained on other shards" in caplog.text
    assert checkpoint.load(again)["global_step"] == steps
    log = pl.read_parquet(tmp_path / "run" / "train_log.parquet")
    assert log["global_step"].to_list() == list(range(1, steps + 1))
    # Every step ran again (fresh timings), instead of the old log being carried over.
    assert (log["samples_per_s"] != first_log["samples_per_s"]).all()
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["train_data_sha256"] == sha256_file(manifest)


def test_sigkill_mid_epoch_then_resume(synthetic_shards, tmp_path):
    """A real kill -9 of the training process, then --resume, ends with the uninterrupted weights."""
    shards = synthetic_shards["train"]
    reference = train(experiment("tiny_tbps_clip_simplified", data={"few_shot_fraction": 0.5}), shards,
                      tmp_path / "reference")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tbps", "train", "--experiment",
           os.path.join(EXPERIMENTS, "tiny_tbps_clip_simplified.yaml"), "--train", str(shards), "--out", str(out),
           "--set", "data.batch_size=32", "--set", "data.num_workers=0", "--set", "optim.epochs=2",
           "--set", "data.few_shot_fraction=0.5", "--set", "train.checkpoint_every_steps=1",
           "--set", "train.log_every_steps=1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if last.exists() and checkpoint.load(last)["global_step"] >= 3:
                break
            time.sleep(0.05)
        else:
            pytest.fail("training wrote no checkpoint in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "final.pt").exists()
    resumed = train(experiment("tiny_tbps_clip_simplified", data={"few_shot_fraction": 0.5}), shards, out,
                    resume=True)
    assert_same_weights(weights(resumed), weights(reference))
    # A kill during a checkpoint write leaves a hidden temporary; the next write of it removes it.
    assert not list(out.rglob(".*.tmp"))


def _layernorm_model(**extra):
    # The tiny ResNet tower has BatchNorm, whose statistics depend on how the batch is split;
    # the ViT tower (like ViT-B/16) has only LayerNorm, so batch splitting is exact.
    # Dropout off: its masks are drawn per process/chunk, the one legitimate difference.
    # Adam eps 1e-3: the attention key bias has a mathematically zero gradient (softmax is shift
    # invariant), and Adam would turn its 1e-10 round-off into +-lr steps of random sign.
    sections = {"model": {"name": "TBPS-Tiny-ViT", "text_attn_dropout": 0.0},
                "data": {"few_shot_fraction": 0.2}, "optim": {"epochs": 1, "eps": 1e-3}}
    for key, values in extra.items():
        sections.setdefault(key, {}).update(values)
    return sections


def test_gradient_cache_chunks_train_like_one_batch(synthetic_shards, tmp_path):
    shards = synthetic_shards["train"]
    plain = train(experiment("tiny_tbps_clip", **_layernorm_model()), shards, tmp_path / "plain")
    chunked = train(experiment("tiny_tbps_clip", **_layernorm_model(train={"grad_cache_chunk": 7})), shards,
                    tmp_path / "chunked")
    assert checkpoint.load(plain)["global_step"] >= 2
    assert_same_weights(weights(chunked), weights(plain), atol=2e-5)


@pytest.mark.timeout(300)
def test_torchrun_two_processes_match_one_process(synthetic_shards, tmp_path):
    """GlobalGrad end to end: `torchrun --nproc_per_node 2 -m tbps train` (gloo, CPU) at batch 32
    (16 per process) ends with the weights of one process at batch 32."""
    shards = synthetic_shards["train"]
    single = train(experiment("tiny_tbps_clip", **_layernorm_model()), shards, tmp_path / "single")
    sets = ["model.name=TBPS-Tiny-ViT", "model.text_attn_dropout=0.0", "data.few_shot_fraction=0.2",
            "optim.epochs=1", "optim.eps=1e-3", "data.batch_size=32", "data.num_workers=0", "train.checkpoint_every_steps=1000"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "tbps",
           "train", "--experiment", os.path.join(EXPERIMENTS, "tiny_tbps_clip.yaml"), "--train", str(shards),
           "--out", str(tmp_path / "ddp"), "--device", "cpu"]
    for item in sets:
        cmd += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stderr
    assert_same_weights(weights(tmp_path / "ddp" / "final.pt"), weights(single), atol=2e-5)


# The paper's ablation variants that the recipe leaves off: every text op and loss variant at once.
ABLATION_VARIANTS = dict(
    loss={"mvs_t": True, "mvs_it": True, "ss_t_weight": 0.4},
    data={"few_shot_fraction": 0.2, "synonym_replacement_alpha": 0.1, "random_insertion_alpha": 0.1,
          "random_swap_alpha": 0.05, "eda_alpha": 0.1},
    train={"max_steps": 2},
)


def test_ablation_variants_train_chunk_like_one_batch_and_leave_evaluation_alone(synthetic_shards, tmp_path,
                                                                                 monkeypatch):
    """MVS-T, MVS-IT, SS-T (with the recipe's SS-I: SS-IT) and SR/RI/RS/EDA train; gradient caching gives
    the one-batch weights; the synonym source reaches config, checkpoint and metrics; evaluation uses
    neither the word ops nor the text head."""
    from tbps.data import synonym_sources
    from tbps.data.word_ops import WordAugmenter
    from tbps.evaluate import evaluate

    monkeypatch.setattr(synonym_sources, "wordnet_available", lambda: False)
    shards = synthetic_shards["train"]
    plain = train(experiment("tiny_tbps_clip", **_layernorm_model(**ABLATION_VARIANTS)), shards, tmp_path / "plain")
    chunked_variants = {**ABLATION_VARIANTS, "train": {"max_steps": 2, "grad_cache_chunk": 7}}
    chunked = train(experiment("tiny_tbps_clip", **_layernorm_model(**chunked_variants)), shards, tmp_path / "chunked")
    assert_same_weights(weights(chunked), weights(plain), atol=2e-5)

    log = pl.read_parquet(tmp_path / "plain" / "train_log.parquet")
    for term in ("n_itc", "n_itc_mvs", "n_itc_mvs_t", "n_itc_mvs_it", "ss_i", "ss_t", "r_itc", "c_itc", "total"):
        assert log[f"loss_{term}"].is_finite().all(), term
    saved = checkpoint.load(plain)
    assert saved["synonym_source"] == "table" and saved["config"]["data"]["synonym_source"] == "table"
    assert any(k.startswith("text_simclr_head.") for k in saved["model"])
    assert "synonym_source: table" in (tmp_path / "plain" / "config.yaml").read_text()

    def refuse(self, text, rng):
        raise AssertionError("a word-level op ran at evaluation")

    monkeypatch.setattr(WordAugmenter, "__call__", refuse)
    rows = evaluate(plain, synthetic_shards["test"], tmp_path / "metrics.parquet", dataset="synthetic",
                    experiment="ablation")
    assert set(rows["synonym_source"]) == {"table"}
    trained = load_trained_model(plain, torch.device("cpu"))
    assert trained.model.text_simclr_head is None and trained.model.simclr_head is None


def test_emulated_processes_train_without_global_grad(synthetic_shards, tmp_path):
    """One process emulating 4 without GlobalGrad trains (and differs from the one-device gradient);
    emulation with GlobalGrad on is refused before anything runs."""
    shards = synthetic_shards["train"]
    sections = dict(data={"few_shot_fraction": 0.2}, train={"max_steps": 2})
    emulated = train(experiment("tiny_clip_baseline", loss={"emulated_processes": 4}, **sections), shards,
                     tmp_path / "emulated")
    one_device = train(experiment("tiny_clip_baseline", **sections), shards, tmp_path / "one_device")
    a, b = weights(emulated), weights(one_device)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert checkpoint.load(emulated)["config"]["loss"]["emulated_processes"] == 4
    with pytest.raises(UserInputError, match="loss.global_grad"):
        train(experiment("tiny_tbps_clip", loss={"emulated_processes": 4}, **sections), shards, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
