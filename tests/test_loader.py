"""Training data path: the batch sampler's arithmetic, per-pair seeds, safe shard indexing."""

import io
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch

from tbps.data.loader import EpochBatchSampler, TrainPairs, pair_table, sample_seed
from tbps.data.transforms import train_transform
from tbps.errors import UserInputError
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


def test_index_reads_every_pair_and_ignores_planted_pickles(synthetic_shards, tmp_path, monkeypatch):
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
    planted = ShardIndex.from_manifest(copy / "manifest.json")
    assert planted.ignored_members == 1 and len(planted.samples) == len(index.samples)
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
