"""Training data path: the batch sampler's arithmetic, per-pair seeds, safe shard indexing, caption views."""

import io
import json
import logging
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch

from tbps.data.captions import clean_caption
from tbps.data.loader import EpochBatchSampler, TrainPairs, pair_table, sample_seed
from tbps.data.transforms import train_transform
from tbps.errors import UserInputError
from tbps.fileio import sha256_file
from tbps.shards.index import ShardIndex


def test_ranks_take_slices_of_the_same_global_batches():
    one = list(EpochBatchSampler(100, 16, seed=3, epoch=2))
    parts = [list(EpochBatchSampler(100, 16, seed=3, epoch=2, rank=r, world_size=4)) for r in range(4)]
    assert len(one) == 100 // 16  # last incomplete batch dropped
    for step, batch in enumerate(one):
        assert [p for r in range(4) for p in parts[r][step]] == batch


def test_epochs_reshuffle_and_resume_skips_batches():
    e0 = list(EpochBatchSampler(64, 8, seed=0, epoch=0))
    e1 = list(EpochBatchSampler(64, 8, seed=0, epoch=1))
    assert e0 != e1
    assert list(EpochBatchSampler(64, 8, seed=0, epoch=1, start_batch=3)) == e1[3:]
    pairs = [p for batch in e0 for p, _ in batch]
    assert sorted(pairs) == list(range(64))


def test_sample_seeds_depend_on_seed_epoch_and_pair_only():
    assert sample_seed(1, 2, 3) == sample_seed(1, 2, 3)
    assert len({sample_seed(1, 2, 3), sample_seed(1, 2, 4), sample_seed(1, 3, 3), sample_seed(2, 2, 3)}) == 4


def test_batch_must_divide_over_processes():
    with pytest.raises(UserInputError, match="multiple of the number of GPUs"):
        EpochBatchSampler(100, 10, seed=0, epoch=0, world_size=3)


def test_index_reads_every_pair_and_ignores_planted_pickles(synthetic_shards, tmp_path, caplog):
    manifest = synthetic_shards["train"]
    index = ShardIndex.from_manifest(manifest)
    pairs = pair_table(index)
    assert len(pairs) == sum(len(s.meta["captions"]) for s in index.samples)
    assert len(pair_table(index, few_shot_fraction=0.25, seed=0)) < len(pairs)

    # Plant a pickle member (as a malicious shard would) in a copy of the shards.
    copy = tmp_path / "shards"
    shutil.copytree(manifest.parent, copy)
    first = copy / index.shard_paths[0].name
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    data = pickle.dumps(Payload())
    with tarfile.open(first, "a") as tar:
        info = tarfile.TarInfo("evil-00000000.pyd")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    # The manifest vouches for the planted shard (as a crafted manifest would).
    manifest_data = json.loads((copy / "manifest.json").read_text())
    manifest_data["shards"][0].update(bytes=first.stat().st_size, sha256=sha256_file(first))
    (copy / "manifest.json").write_text(json.dumps(manifest_data))
    with caplog.at_level(logging.WARNING):
        planted = ShardIndex.from_manifest(copy / "manifest.json")
    assert len(planted.samples) == len(index.samples)
    assert "ignored 1 members of unknown type" in caplog.text
    assert not marker.exists()


def test_same_pair_and_seed_give_the_same_sample(synthetic_shards):
    index = ShardIndex.from_manifest(synthetic_shards["train"])
    pairs = pair_table(index)
    pool = train_transform((64, 64))

    def tokenize(texts):
        return torch.tensor([[len(t)] for t in texts])

    dataset = TrainPairs(index, pairs, tokenize=tokenize, image_transform=pool, mvs_transform=pool)
    a, b = dataset[(5, 123)], dataset[(5, 123)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image_mvs"], b["image_mvs"])
    assert not torch.equal(a["image"], a["image_mvs"])  # two independent pool views
    assert not torch.equal(a["image"], dataset[(5, 124)]["image"])
    assert int(a["train_id"]) == index.samples[int(pairs[5][0])].meta["train_id"]
    assert np.isfinite(a["image"].numpy()).all()


def _text_tokenizer(texts):
    """Tokens that decode back to the caption, so tests can read what the loader produced."""
    return torch.tensor([list(t.encode().ljust(400, b"\0")[:400]) for t in texts])


def _text(tokens):
    return bytes(tokens.tolist()).rstrip(b"\0").decode()


def test_extra_caption_views_are_independent_draws_and_leave_the_main_caption_as_it_was(synthetic_shards):
    index = ShardIndex.from_manifest(synthetic_shards["train"])
    pairs = pair_table(index)
    pool = train_transform((64, 64))
    common = dict(tokenize=_text_tokenizer, image_transform=pool, backtranslation_prob=0.5, word_deletion_prob=0.3)
    plain = TrainPairs(index, pairs, **common)
    views = ("tokens_mvs", "tokens_ss_a", "tokens_ss_b")
    viewed = TrainPairs(index, pairs, **common, text_views=views)
    differ = 0
    for pair in range(12):
        a, b = plain[(pair, 99 + pair)], viewed[(pair, 99 + pair)]
        assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["image"], b["image"])
        assert "tokens_mvs" not in a
        again = viewed[(pair, 99 + pair)]
        texts = [_text(b[key]) for key in ("tokens", *views)]
        assert texts == [_text(again[key]) for key in ("tokens", *views)]  # deterministic per seed
        differ += len(set(texts)) == 4
        source = index.samples[int(pairs[pair][0])].meta
        originals = {source["captions"][int(pairs[pair][1])], (source.get("captions_aug") or [""] * 9)[int(pairs[pair][1])]}
        for text in texts:  # every view is a deletion of the caption or of its paraphrase
            assert any(set(text.split()) <= set(clean_caption(o).split()) for o in originals if o)
    assert differ >= 8
    with pytest.raises(ValueError, match="unknown caption view"):
        TrainPairs(index, pairs, **common, text_views=("tokens_extra",))


def test_word_ops_change_training_captions_only(synthetic_shards):
    from tbps.data.synonym_sources import SynonymLookup, vocabulary_phrases
    from tbps.data.word_ops import WordAugmenter
    from tbps.data.word_units import UnitSplitter

    index = ShardIndex.from_manifest(synthetic_shards["train"])
    pairs = pair_table(index)
    splitter = UnitSplitter(vocabulary_phrases())
    swap = WordAugmenter(SynonymLookup("table"), splitter, random_swap_alpha=0.2)
    common = dict(tokenize=_text_tokenizer, image_transform=train_transform((64, 64)),
                  backtranslation_prob=0.0, word_deletion_prob=0.0)
    plain, swapped = TrainPairs(index, pairs, **common), TrainPairs(index, pairs, **common, word_ops=swap)
    changed = 0
    for pair in range(10):
        before, after = _text(plain[(pair, 7)]["tokens"]), _text(swapped[(pair, 7)]["tokens"])
        assert sorted(u.text for u in splitter.split(before)) == sorted(u.text for u in splitter.split(after))
        changed += before != after
        assert before == clean_caption(index.samples[int(pairs[pair][0])].meta["captions"][int(pairs[pair][1])])
    assert changed >= 7


_LAZY_IMPORT_CHECK = """
import sys
from pathlib import Path

from tbps.config import load_experiment
from tbps.model import build_model
from tbps.train import build_training_data

manifest, experiment = Path(sys.argv[1]), sys.argv[2]
heavy = ("spacy", "nltk", "nlpaug")
cfg = load_experiment(experiment, {"data": {"num_workers": 0}})
bundle = build_model(cfg.model, with_simclr_head=cfg.loss.uses_ss_i)
_, pairs, dataset = build_training_data(cfg, manifest, bundle)
dataset[(0, 1)]
print("recipe:", [m for m in heavy if m in sys.modules])
cfg.data.random_swap_alpha = 0.1
_, _, dataset = build_training_data(cfg, manifest, bundle)
dataset[(0, 1)]
print("swap:", [m for m in heavy if m in sys.modules])
"""


def test_the_recipe_never_imports_spacy(synthetic_shards):
    """Loader workers and the GPU machine pay for spaCy only when a word-level op is on."""
    import os
    import subprocess
    import sys

    experiment = os.path.join(os.path.dirname(__file__), "..", "config", "experiments", "tiny_tbps_clip.yaml")
    result = subprocess.run([sys.executable, "-c", _LAZY_IMPORT_CHECK, str(synthetic_shards["train"]), experiment],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "recipe: []" in result.stdout
    assert "swap: ['spacy']" in result.stdout
