"""Word-level text augmentations of the paper's ablation (SR, RI, RS, EDA): units, counts, seeds."""

from collections import Counter

import numpy as np
import pytest

from tbps.augment.synonyms import SynonymTable
from tbps.data.synonym_sources import SynonymLookup, vocabulary_phrases
from tbps.data.word_ops import (
    EDA_OPS,
    WordAugmenter,
    operation_count,
    random_insertion,
    random_swap,
    synonym_replacement,
    unit_deletion,
)
from tbps.data.word_units import UnitSplitter, join_slots

# 24 words; table words: woman, t-shirt, flip flops, baseball cap, pants, navy blue, backpack.
CAPTION = ("a woman in a red t-shirt, black flip flops and a baseball cap is carrying a backpack "
           "and walking in navy blue pants")
MULTI_WORD = ("t-shirt", "flip flops", "baseball cap", "navy blue")


@pytest.fixture(scope="module")
def splitter():
    return UnitSplitter(vocabulary_phrases())


@pytest.fixture(scope="module")
def table_synonyms():
    return SynonymLookup("table")


def words(slots):
    return [s.text for s in slots if s.word]


def punctuation(slots):
    return [(i, s.text) for i, s in enumerate(slots) if not s.word]


def test_multi_word_names_are_one_unit_and_splitting_is_lossless(splitter):
    text = "a man in a baseball cap, flip flops, a t - shirt and a dark-blue man's bag/purse"
    slots = splitter.split(text)
    assert join_slots(slots) == text
    assert words(slots) == ["a", "man", "in", "a", "baseball cap", "flip flops", "a", "t - shirt", "and", "a",
                            "dark-blue", "man's", "bag/purse"]
    assert [s.text for s in slots if not s.word] == [",", ","]


def test_operation_count_follows_eda_rounding():
    assert operation_count(0.05, "one two three four five") == 1  # max(1, int(0.25))
    assert operation_count(0.1, " ".join(["w"] * 25)) == 2  # int(2.5)
    assert operation_count(0.2, " ".join(["w"] * 24)) == 4  # int(4.8)
    assert operation_count(0.2, "") == 0


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_synonym_replacement_replaces_exactly_n_units_by_true_synonyms(splitter, table_synonyms, alpha):
    table = SynonymTable.load()
    slots = splitter.split(CAPTION)
    n = operation_count(alpha, CAPTION)
    for seed in range(20):
        out, count = synonym_replacement(slots, n, table_synonyms, np.random.default_rng(seed))
        assert count == n
        changed = [(a.text, b.text) for a, b in zip(slots, out, strict=True) if a.text != b.text]
        assert len(changed) == n and all(new in table_synonyms(old) for old, new in changed)
        # Every change stays inside a table group: the caption means the same.
        assert table.canonical_tokens(join_slots(out)) == table.canonical_tokens(CAPTION)
        assert punctuation(out) == punctuation(slots)


def test_synonym_replacement_with_few_candidates_replaces_them_all(splitter, table_synonyms):
    slots = splitter.split("a woman walks down the street with a red bag and black shoes")
    out, count = synonym_replacement(slots, 5, table_synonyms, np.random.default_rng(0))
    assert count == 1 and words(out)[1] == "lady"
    none, count = synonym_replacement(splitter.split("red bag"), 3, table_synonyms, np.random.default_rng(0))
    assert count == 0 and join_slots(none) == "red bag"


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_random_insertion_inserts_exactly_n_synonyms(splitter, table_synonyms, alpha):
    slots = splitter.split(CAPTION)
    original = words(slots)
    n = operation_count(alpha, CAPTION)
    allowed = {syn for unit in original for syn in table_synonyms(unit)}
    for seed in range(20):
        out, count = random_insertion(slots, n, table_synonyms, np.random.default_rng(seed))
        assert count == n
        new = words(out)
        assert len(new) == len(original) + n
        # The original units keep their order; the rest are synonyms of the caption's own units.
        inserted = list(new)
        for unit in original:
            inserted.remove(unit)
        assert all(unit in allowed for unit in inserted)
        it = iter(new)
        assert all(unit in it for unit in original)
        # Each insertion is a separate unit of the text (nothing glued to a neighbour).
        assert words(splitter.split(join_slots(out))) == new


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_random_swap_moves_whole_units(splitter, alpha):
    slots = splitter.split(CAPTION)
    n = operation_count(alpha, CAPTION)
    moved = 0
    for seed in range(20):
        out, count = random_swap(slots, n, np.random.default_rng(seed))
        assert count == n
        assert Counter(words(out)) == Counter(words(slots)) and punctuation(out) == punctuation(slots)
        text = join_slots(out)
        assert all(name in text for name in MULTI_WORD)
        moved += words(out) != words(slots)
    assert moved >= 15
    one, count = random_swap(splitter.split("jacket"), 3, np.random.default_rng(0))
    assert count == 0 and join_slots(one) == "jacket"


def test_unit_deletion_is_bernoulli_per_unit(splitter):
    slots = splitter.split(CAPTION)
    units = len(words(slots))
    deleted = []
    for seed in range(400):
        out, count = unit_deletion(slots, 0.2, np.random.default_rng(seed))
        assert len(words(out)) == units - count
        assert all(name in join_slots(out) or name not in words(out) for name in MULTI_WORD)
        assert not [w for w in words(out) if w not in words(slots)]  # no half names
        deleted.append(count)
    assert np.mean(deleted) == pytest.approx(0.2 * units, rel=0.1)
    assert join_slots(unit_deletion(slots, 0.5, np.random.default_rng(1))[0]).count("  ") == 0
    alone, count = unit_deletion(splitter.split("baseball cap"), 1.0, np.random.default_rng(0))
    assert count == 0 and join_slots(alone) == "baseball cap"
    kept, count = unit_deletion(splitter.split("red flip flops"), 1.0, np.random.default_rng(0))
    assert count == 1 and join_slots(kept) in ("red", "flip flops")


def test_deletion_and_insertion_keep_spacing_around_punctuation(splitter, table_synonyms):
    slots = splitter.split("red jacket, black pants")
    outcomes = {join_slots(unit_deletion(slots, 0.5, np.random.default_rng(seed))[0]) for seed in range(200)}
    assert "red, black pants" in outcomes and "red jacket, pants" in outcomes
    for text in outcomes:
        assert "  " not in text and " ," not in text and text == text.strip()
    inserted = {join_slots(random_insertion(splitter.split("a woman, red pants"), 1, table_synonyms,
                                            np.random.default_rng(seed))[0]) for seed in range(200)}
    assert "a woman, red pants trousers" in inserted and "a woman, trousers red pants" in inserted
    assert "lady a woman, red pants" in inserted
    for text in inserted:
        assert "  " not in text and " ," not in text and text == text.strip()


@pytest.mark.parametrize("op", EDA_OPS)
def test_every_op_is_deterministic_per_seed(splitter, table_synonyms, op):
    augment = WordAugmenter(table_synonyms, splitter)
    outputs = {augment.apply(op, CAPTION, 0.2, np.random.default_rng(seed))[0] for seed in range(10)}
    assert len(outputs) > 1
    for seed in range(10):
        first = augment.apply(op, CAPTION, 0.2, np.random.default_rng(seed))
        assert augment.apply(op, CAPTION, 0.2, np.random.default_rng(seed)) == first


def test_eda_picks_each_op_with_a_quarter_of_the_captions(splitter, table_synonyms):
    augment = WordAugmenter(table_synonyms, splitter, eda_alpha=0.1)
    rng = np.random.default_rng(0)
    counts = Counter(augment.eda_choice(rng) for _ in range(4000))
    assert set(counts) == set(EDA_OPS)
    for op in EDA_OPS:
        assert abs(counts[op] - 1000) < 120, counts  # 4.4 binomial standard deviations


def test_eda_applies_the_chosen_op_at_alpha(splitter, table_synonyms):
    augment = WordAugmenter(table_synonyms, splitter, eda_alpha=0.2)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        op = augment.eda_choice(rng)
        expected, _ = augment.apply(op, CAPTION, 0.2, rng)
        assert augment(CAPTION, np.random.default_rng(seed)) == expected


def test_ops_run_in_order_and_only_when_on(splitter, table_synonyms):
    off = WordAugmenter(table_synonyms, splitter)
    rng = np.random.default_rng(3)
    assert off(CAPTION, rng) == CAPTION
    assert rng.random() == np.random.default_rng(3).random()  # no draw when every op is off
    both = WordAugmenter(table_synonyms, splitter, synonym_replacement_alpha=0.1, random_swap_alpha=0.1)
    rng = np.random.default_rng(5)
    expected, _ = both.apply("SR", CAPTION, 0.1, rng)
    expected, _ = both.apply("RS", expected, 0.1, rng)
    assert both(CAPTION, np.random.default_rng(5)) == expected
    with pytest.raises(ValueError, match="random_swap_alpha"):
        WordAugmenter(table_synonyms, splitter, random_swap_alpha=1.5)
