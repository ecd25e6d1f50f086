"""Training data: (image, caption) pairs read from the shards by index.

One training sample per (image, caption) pair, uniform random batches that are
reshuffled every epoch with the last incomplete batch dropped (spec §7). The
shards are indexed once (:class:`tbps.shards.index.ShardIndex`), then read by
random access, so:

- a global batch is the same set of pairs for 1 process x B or P processes x B/P
  (rank r takes slice r of every global batch), which makes GlobalGrad testable;
- resuming at step k skips k batches without decoding anything;
- every augmentation draw comes from a generator seeded by (seed, epoch, pair),
  so results don't depend on the number of workers or processes.

The caption is augmented per pair and step (docs/method.md#text-augmentation): back-translation,
cleaning, the optional word-level ops of the paper's ablation (:mod:`tbps.data.word_ops`), then
Bernoulli deletion. Losses that need more caption views (MVS-T/MVS-IT: ``tokens_mvs``; SS-T:
``tokens_ss_a``, ``tokens_ss_b``) get independent draws of the same augmentation, each from its own
generator seeded by (pair seed, view), so the main caption is the same with or without them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from tbps.data.captions import clean_caption, random_word_deletion
from tbps.data.word_ops import WordAugmenter
from tbps.errors import UserInputError
from tbps.shards.index import IndexedSample, ShardIndex
from tbps.shards.reader import shard_image


def pair_table(index: ShardIndex, few_shot_fraction: float = 1.0, seed: int = 0) -> np.ndarray:
    """All (sample, caption) pairs as an int64 array of shape (n, 2), in index order.

    ``few_shot_fraction`` < 1 keeps a seeded random subset of the training images (spec §9).
    """
    samples = np.arange(len(index.samples))
    if few_shot_fraction < 1.0:
        rng = np.random.default_rng([seed, 0xF5])
        keep = max(1, round(len(samples) * few_shot_fraction))
        samples = np.sort(rng.choice(samples, size=keep, replace=False))
    pairs = [(s, c) for s in samples for c in range(len(index.samples[s].meta["captions"]))]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


# Extra caption views a loss can ask for, with the stream number that seeds each one's generator.
TEXT_VIEW_STREAMS = {"tokens_mvs": 1, "tokens_ss_a": 2, "tokens_ss_b": 3}


def sample_seed(seed: int, epoch: int, pair: int) -> int:
    """A 63-bit seed for one pair in one epoch, independent of workers and processes."""
    return int(np.random.SeedSequence([seed, epoch, pair]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class EpochBatchSampler(Sampler):
    """This process's share of the global batches of one epoch, from ``start_batch`` on.

    Global batch g is pairs ``perm[g*B:(g+1)*B]`` of a seeded per-epoch permutation; rank r
    takes its r-th slice of B/P. Yields lists of (pair, sample_seed).
    """

    def __init__(self, num_pairs: int, global_batch: int, *, seed: int, epoch: int,
                 rank: int = 0, world_size: int = 1, start_batch: int = 0):
        if global_batch % world_size:
            raise UserInputError(
                f"batch size {global_batch} is not divisible by {world_size} processes. "
                "Fix: set data.batch_size to a multiple of the number of GPUs"
            )
        if num_pairs < global_batch:
            raise UserInputError(
                f"only {num_pairs} training pairs for a batch of {global_batch}. "
                "Fix: lower data.batch_size or use more data"
            )
        self.num_pairs, self.global_batch = num_pairs, global_batch
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.start_batch = start_batch
        self.local_batch = global_batch // world_size

    def steps_per_epoch(self) -> int:
        return self.num_pairs // self.global_batch

    def __len__(self) -> int:
        return self.steps_per_epoch() - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.num_pairs, generator=g).numpy()
        for step in range(self.start_batch, self.steps_per_epoch()):
            lo = step * self.global_batch + self.rank * self.local_batch
            yield [(int(p), sample_seed(self.seed, self.epoch, int(p))) for p in perm[lo:lo + self.local_batch]]


class TrainPairs(Dataset):
    """Decodes and augments one (image, caption) pair; index = (pair, sample_seed).

    Images take one of two paths. CPU path: ``image_transform`` (and ``mvs_transform``,
    ``simclr_transform``) make the normalised views here. Device path: ``view_draws``
    (:class:`tbps.data.device_aug.ViewDraws`) returns the resized uint8 ``image`` and each view's
    drawn parameters under ``views``; the training process makes the views on its device.
    ``word_ops``: the word-level caption augmentation (None = off); ``text_views``: extra caption
    views to return (keys of ``TEXT_VIEW_STREAMS``).
    """

    def __init__(self, index: ShardIndex, pairs: np.ndarray, *, tokenize: Callable[[list[str]], torch.Tensor],
                 image_transform: Callable | None = None, mvs_transform: Callable | None = None,
                 simclr_transform: Callable | None = None, view_draws: Callable | None = None,
                 backtranslation_prob: float = 0.1, word_deletion_prob: float = 0.05, max_words: int = 77,
                 word_ops: WordAugmenter | None = None, text_views: tuple[str, ...] = ()):
        if (image_transform is None) == (view_draws is None):
            raise ValueError("give either image_transform (CPU path) or view_draws (device path)")
        self.index, self.pairs, self.tokenize = index, pairs, tokenize
        self.image_transform, self.mvs_transform, self.simclr_transform = image_transform, mvs_transform, simclr_transform
        self.view_draws = view_draws
        self.backtranslation_prob, self.word_deletion_prob, self.max_words = backtranslation_prob, word_deletion_prob, max_words
        unknown = [v for v in text_views if v not in TEXT_VIEW_STREAMS]
        if unknown:
            raise ValueError(f"unknown caption view(s) {unknown}; expected some of {list(TEXT_VIEW_STREAMS)}")
        self.word_ops, self.text_views = word_ops, tuple(text_views)
        self._files: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def _image(self, sample: IndexedSample) -> Image.Image:
        fd = self._files.get(sample.shard)
        if fd is None:  # one descriptor per shard and worker process
            fd = self._files[sample.shard] = os.open(self.index.shard_paths[sample.shard], os.O_RDONLY)
        data = os.pread(fd, sample.image_size, sample.image_offset)
        return shard_image(self.index.shard_paths[sample.shard], sample.key, data)

    def caption_text(self, sample: IndexedSample, caption: int, rng: np.random.Generator) -> str:
        text = sample.meta["captions"][caption]
        augmented = (sample.meta.get("captions_aug") or [None] * (caption + 1))[caption]
        if augmented and rng.random() < self.backtranslation_prob:
            text = augmented
        text = clean_caption(text, max_words=self.max_words)
        if self.word_ops is not None:
            text = self.word_ops(text, rng)
        if self.word_deletion_prob > 0:
            text = random_word_deletion(text, self.word_deletion_prob, rng)
        return text

    def __getitem__(self, key: tuple[int, int]) -> dict:
        pair, seed = key
        sample_id, caption = (int(v) for v in self.pairs[pair])
        sample = self.index.samples[sample_id]
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        captions = [self.caption_text(sample, caption, rng)]
        captions += [self.caption_text(sample, caption, np.random.default_rng([seed, TEXT_VIEW_STREAMS[view]]))
                     for view in self.text_views]
        tokens = self.tokenize(captions)
        out = self._image_views(self._image(sample), gen)
        out["tokens"] = tokens[0]
        out["train_id"] = torch.tensor(sample.meta["train_id"], dtype=torch.long)
        out["pair"] = torch.tensor(pair, dtype=torch.long)
        out.update(zip(self.text_views, tokens[1:]))
        return out

    def _image_views(self, image: Image.Image, gen: torch.Generator) -> dict:
        """The sample's image entries; ``gen`` is consumed in the order main, MVS, SimCLR a, SimCLR b."""
        if self.view_draws is not None:
            return self.view_draws(image, gen)
        out = {"image": self.image_transform(image, gen)}
        if self.mvs_transform is not None:
            out["image_mvs"] = self.mvs_transform(image, gen)
        if self.simclr_transform is not None:
            out["simclr_a"] = self.simclr_transform(image, gen)
            out["simclr_b"] = self.simclr_transform(image, gen)
        return out

    def __getstate__(self):
        # File descriptors are per process: workers open their own.
        state = dict(self.__dict__)
        state["_files"] = {}
        return state
