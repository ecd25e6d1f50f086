"""Caption cleaning, Bernoulli word deletion and sentence-spacing repair (docs/method.md#caption-cleaning, #random-deletion)."""

from __future__ import annotations

import numpy as np
import pytest

from tbps.data.captions import clean_caption, fix_sentence_spacing, random_word_deletion

# ---------------------------------------------------------------- clean_caption


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A Woman in a RED Jacket.", "a woman in a red jacket"),
        # every listed character becomes a space
        ('a.b!c"d(e)f*g#h:i;j~k', "a b c d e f g h i j k"),
        # commas, apostrophes, hyphens, slashes, '?' and digits survive; the dot in 3.5 does not
        ("The man's T-shirt, 1/2 price? 3.5", "the man's t-shirt, 1/2 price? 3 5"),
        # replacements that create double spaces are collapsed
        ("black jacket. His shoes", "black jacket his shoes"),
        ("jacket.His shoes", "jacket his shoes"),
        ("(grey)  trousers ;  white shoes!", "grey trousers white shoes"),
        # runs of 2+ whitespace characters of any kind -> one space; outer whitespace stripped
        ("  a  \n\n b   c \t", "a b c"),
        # a single tab or newline is not a run of two: kept, as in the reference implementation
        ("red\tshirt\nblue", "red\tshirt\nblue"),
        ("...", ""),
        ("", ""),
        ("other: é, ü & @ % + = < > [ ] { } | ^ $", "other é, ü & @ % + = < > [ ] { } | ^ $"),
    ],
)
def test_clean_caption_exact(raw: str, expected: str) -> None:
    assert clean_caption(raw) == expected
    assert clean_caption(expected) == expected  # idempotent


def test_clean_caption_keeps_first_77_words() -> None:
    words = [f"w{i}" for i in range(100)]
    assert clean_caption(" ".join(words)) == " ".join(words[:77])
    assert clean_caption(" ".join(words[:77])) == " ".join(words[:77])
    # words are counted after cleaning: punctuation-only tokens vanish first
    assert clean_caption("a . b . c . d", max_words=3) == "a b c"
    assert clean_caption("One two three", max_words=1) == "one"


def test_clean_caption_rejects_bad_max_words() -> None:
    with pytest.raises(ValueError, match="max_words"):
        clean_caption("a b", max_words=0)


# ---------------------------------------------------------------- random_word_deletion


def test_deletion_edge_cases() -> None:
    rng = np.random.default_rng(0)
    assert random_word_deletion("hello", 1.0, rng) == "hello"  # one word: unchanged
    assert random_word_deletion("  hello ", 1.0, rng) == "  hello "
    assert random_word_deletion("", 1.0, rng) == ""
    # p = 0 keeps everything but re-joins with single spaces
    assert random_word_deletion("a  b\tc\nd", 0.0, rng) == "a b c d"
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="probability"):
            random_word_deletion("a b", bad, rng)


def test_deletion_all_dropped_returns_one_uniform_original_word() -> None:
    rng = np.random.default_rng(1)
    words = ["red", "coat", "black", "bag"]
    outs = [random_word_deletion(" ".join(words), 1.0, rng) for _ in range(4000)]
    assert set(outs) == set(words)
    freq = np.array([outs.count(w) for w in words]) / len(outs)
    assert np.allclose(freq, 0.25, atol=0.03)


def test_deletion_keeps_order_and_is_seeded() -> None:
    text = "a man in a red coat with black shoes and a bag"
    words = text.split()
    outs = [random_word_deletion(text, 0.3, np.random.default_rng(s)) for s in range(200)]
    for out in outs:
        it = iter(words)
        assert all(w in it for w in out.split())  # survivors are an in-order subsequence
    again = [random_word_deletion(text, 0.3, np.random.default_rng(s)) for s in range(200)]
    assert outs == again
    assert len(set(outs)) > 50


def test_deletion_is_bernoulli_per_word() -> None:
    """Mean deletion rate ~ p and P(intact) ~ (1-p)^n: Bernoulli, not nlpaug's fixed count."""
    rng = np.random.default_rng(2)
    n, p, trials = 20, 0.05, 20000
    text = " ".join(f"w{i}" for i in range(n))
    kept = np.array([len(random_word_deletion(text, p, rng).split()) for _ in range(trials)])
    deletion_rate = 1 - kept.mean() / n
    assert abs(deletion_rate - p) < 0.003  # std of the estimate ~0.0003
    intact = (kept == n).mean()
    assert abs(intact - (1 - p) ** n) < 0.015  # (0.95)^20 = 0.358, std ~0.0034
    # the number of deletions follows Binomial(n, p): check its variance too (a count-based
    # deleter would always delete ceil(p*n) = 1 word, variance 0)
    assert abs((n - kept).var() - n * p * (1 - p)) < 0.1


def test_deletion_all_dropped_branch_frequency() -> None:
    """n=4, p=0.5: one word survives w.p. 4/16, none (-> one random word) w.p. 1/16."""
    rng = np.random.default_rng(3)
    outs = [random_word_deletion("a b c d", 0.5, rng) for _ in range(16000)]
    one_word = np.mean([len(o.split()) == 1 for o in outs])
    assert abs(one_word - 5 / 16) < 0.015


# ---------------------------------------------------------------- fix_sentence_spacing


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A man in a black jacket.His shoes are white.", "A man in a black jacket. His shoes are white."),
        ("black jacket.his shoes", "black jacket. his shoes"),
        ("white shoes!She carries", "white shoes! She carries"),
        ("a bag?He is", "a bag? He is"),
        ("a bag,and black shoes", "a bag, and black shoes"),
        ("grey pants;he wears", "grey pants; he wears"),
        ("colours:red and blue", "colours: red and blue"),
        ("a t-shirt.He has", "a t-shirt. He has"),
        ("She wears a coat.Her bag is red.She walks", "She wears a coat. Her bag is red. She walks"),
    ],
)
def test_fix_sentence_spacing_inserts_space(raw: str, expected: str) -> None:
    assert fix_sentence_spacing(raw) == expected
    assert fix_sentence_spacing(expected) == expected


@pytest.mark.parametrize(
    "text",
    [
        "a white t-shirt and dark-blue jeans",
        "about 1.5 meters tall",
        "costs 1,000 dollars",
        "e.g. a bag",
        "e.g.a bag",
        "i.e. the man",
        "at 9 a.m. walking",
        "U.S. army jacket",
        "wait...He",
        "already spaced. Fine, yes; ok: done",
        "the man's bag",
        "",
    ],
)
def test_fix_sentence_spacing_leaves_these_alone(text: str) -> None:
    assert fix_sentence_spacing(text) == text
