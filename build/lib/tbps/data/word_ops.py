"""The word-level text augmentations of the paper's ablation (§3.2, Table 3): SR, RI, RS and EDA.

Definitions follow EDA (Wei & Zou 2019), whose meaning of α the paper adopts (App. B.1); the
recipe itself uses none of them (docs/method.md#text-augmentation-ablation, D21):

- **SR**, synonym replacement: n distinct word units that have synonyms are each replaced by one of
  their synonyms (all of them when fewer than n have any).
- **RI**, random insertion: n times, a synonym of a random word unit that has synonyms is inserted
  before a random word unit or at the end (nothing when no unit has synonyms).
- **RS**, random swap: n times, two distinct random word units exchange places (nothing below two).
- **RD** inside EDA: each word unit is dropped with probability α; if all are dropped one random unit
  is kept; a one-unit caption is unchanged (the recipe's Bernoulli deletion, per unit).
- **EDA**: per caption, one of SR, RI, RS and RD chosen uniformly, applied at α.

n = max(1, int(α·L)) with L the number of words (whitespace-separated) of the caption, the rounding
of EDA's reference code. Units come from :mod:`tbps.data.word_units` (multi-word garment names are
one unit); synonyms from :mod:`tbps.data.synonym_sources` (identity words keep their meaning).
Punctuation is never moved, replaced or deleted. Every draw comes from the caller's numpy
Generator, so a caption's augmentation is fixed by its per-sample seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tbps.data.word_units import Slot, UnitSplitter, join_slots

Synonyms = Callable[[str], tuple[str, ...]]
EDA_OPS = ("SR", "RI", "RS", "RD")


def operation_count(alpha: float, text: str) -> int:
    """n = max(1, int(α·L)), L = words in ``text`` (EDA's reference rounding); 0 for an empty caption."""
    words = len(text.split())
    return max(1, int(alpha * words)) if words else 0


def _word_positions(slots: Sequence[Slot]) -> list[int]:
    return [k for k, slot in enumerate(slots) if slot.word]


def synonym_replacement(slots: Sequence[Slot], n: int, synonyms: Synonyms,
                        rng: np.random.Generator) -> tuple[list[Slot], int]:
    """SR: replace min(n, units with synonyms) distinct units. Returns (slots, replacements made)."""
    slots = list(slots)
    candidates = [k for k in _word_positions(slots) if synonyms(slots[k].text)]
    count = min(n, len(candidates))
    if count == 0:
        return slots, 0
    for pick in rng.choice(len(candidates), size=count, replace=False):
        k = candidates[int(pick)]
        options = synonyms(slots[k].text)
        slots[k] = Slot(options[int(rng.integers(len(options)))], slots[k].space, True)
    return slots, count


def _insert(slots: list[Slot], position: int, text: str) -> None:
    """Insert a word unit before ``slots[position]`` (or at the end), spaced like a typed word."""
    if position > 0:
        before = slots[position - 1]
        slots[position - 1] = Slot(before.text, " ", before.word)
        slots.insert(position, Slot(text, before.space if position == len(slots) else " ", True))
    else:
        slots.insert(0, Slot(text, " ", True))


def random_insertion(slots: Sequence[Slot], n: int, synonyms: Synonyms,
                     rng: np.random.Generator) -> tuple[list[Slot], int]:
    """RI: n insertions of a synonym of a random unit (of the caption as given) at a random place."""
    slots = list(slots)
    candidates = [slots[k].text for k in _word_positions(slots) if synonyms(slots[k].text)]
    if not candidates:
        return slots, 0
    for _ in range(n):
        options = synonyms(candidates[int(rng.integers(len(candidates)))])
        word = options[int(rng.integers(len(options)))]
        gaps = [*_word_positions(slots), len(slots)]
        _insert(slots, gaps[int(rng.integers(len(gaps)))], word)
    return slots, n


def random_swap(slots: Sequence[Slot], n: int, rng: np.random.Generator) -> tuple[list[Slot], int]:
    """RS: n swaps of two distinct random units (their texts change places; spacing stays)."""
    slots = list(slots)
    words = _word_positions(slots)
    if len(words) < 2:
        return slots, 0
    for _ in range(n):
        a, b = (words[int(i)] for i in rng.choice(len(words), size=2, replace=False))
        slots[a], slots[b] = Slot(slots[b].text, slots[a].space, True), Slot(slots[a].text, slots[b].space, True)
    return slots, n


def unit_deletion(slots: Sequence[Slot], p: float, rng: np.random.Generator) -> tuple[list[Slot], int]:
    """RD per unit: drop each unit with probability ``p`` (one random unit survives if all would go;
    a caption of one unit is unchanged). Returns (slots, units deleted)."""
    slots = list(slots)
    words = _word_positions(slots)
    if len(words) <= 1:
        return slots, 0
    keep = rng.random(len(words)) >= p
    if not keep.any():
        keep[int(rng.integers(len(words)))] = True
    dropped = {k for k, kept in zip(words, keep, strict=True) if not kept}
    out: list[Slot] = []
    for k, slot in enumerate(slots):
        if k not in dropped:
            out.append(slot)
        elif out:
            # The gap the unit leaves takes its trailing space: "red jacket, black" -> "red, black".
            out[-1] = Slot(out[-1].text, slot.space, out[-1].word)
    return out, len(dropped)


@dataclass
class WordAugmenter:
    """SR, RI and RS at their α (in this order, each when > 0), then EDA when its α > 0.

    ``synonyms`` and ``splitter`` load their resources (spaCy, WordNet) on first use only.
    """

    synonyms: Synonyms
    splitter: UnitSplitter
    synonym_replacement_alpha: float = 0.0
    random_insertion_alpha: float = 0.0
    random_swap_alpha: float = 0.0
    eda_alpha: float = 0.0

    def __post_init__(self):
        for name in ("synonym_replacement_alpha", "random_insertion_alpha", "random_swap_alpha", "eda_alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def apply(self, op: str, text: str, alpha: float, rng: np.random.Generator) -> tuple[str, int]:
        """One op at α on ``text``: (augmented text, operations made: replacements, insertions,
        swaps or deletions)."""
        slots = self.splitter.split(text)
        if op == "RD":
            slots, count = unit_deletion(slots, alpha, rng)
        else:
            n = operation_count(alpha, text)
            if op == "SR":
                slots, count = synonym_replacement(slots, n, self.synonyms, rng)
            elif op == "RI":
                slots, count = random_insertion(slots, n, self.synonyms, rng)
            elif op == "RS":
                slots, count = random_swap(slots, n, rng)
            else:
                raise ValueError(f"unknown word op {op!r}; expected one of {EDA_OPS}")
        return join_slots(slots), count

    def eda_choice(self, rng: np.random.Generator) -> str:
        """EDA's op for one caption, uniform over SR, RI, RS and RD."""
        return EDA_OPS[int(rng.integers(len(EDA_OPS)))]

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        for op, alpha in (("SR", self.synonym_replacement_alpha), ("RI", self.random_insertion_alpha),
                          ("RS", self.random_swap_alpha)):
            if alpha > 0:
                text, _ = self.apply(op, text, alpha, rng)
        if self.eda_alpha > 0:
            text, _ = self.apply(self.eda_choice(rng), text, self.eda_alpha, rng)
        return text


def word_augmenter(data_cfg, synonym_source: str) -> WordAugmenter | None:
    """The word-level augmentation of a run's ``DataConfig`` (None when SR, RI, RS and EDA are all off).

    ``synonym_source`` is the resolved source ('table' or 'wordnet').
    """
    from tbps.data.synonym_sources import SynonymLookup, vocabulary_phrases

    if not data_cfg.uses_word_ops:
        return None
    return WordAugmenter(
        synonyms=SynonymLookup(synonym_source), splitter=UnitSplitter(vocabulary_phrases()),
        synonym_replacement_alpha=data_cfg.synonym_replacement_alpha,
        random_insertion_alpha=data_cfg.random_insertion_alpha, random_swap_alpha=data_cfg.random_swap_alpha,
        eda_alpha=data_cfg.eda_alpha,
    )
