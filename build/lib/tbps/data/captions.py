"""Caption text processing shared by training and evaluation (spec §3).

``clean_caption`` is the ONE cleaning function used for train captions, their
augmented versions and test captions alike; ``random_word_deletion`` is the
per-step Bernoulli deletion used at training time; ``fix_sentence_spacing``
repairs missing spaces after sentence punctuation before machine translation.
"""

from __future__ import annotations

import re

import numpy as np

MAX_WORDS = 77

# Spec §3 step 2: exactly these characters become spaces; commas, apostrophes,
# hyphens, slashes, '?' and digits survive.
_CLEAN_CHARS = re.compile(r'[.!"()*#:;~]')
# Spec §3 step 3 collapses runs of TWO or more whitespace characters. A single
# tab or newline is left as it is, like the reference implementation.
_WHITESPACE_RUN = re.compile(r"\s{2,}")


def clean_caption(text: str, max_words: int = MAX_WORDS) -> str:
    """Clean a caption as specified in spec §3.

    Lowercase; replace each of ``. ! " ( ) * # : ; ~`` with a space; collapse
    runs of 2+ whitespace characters to one space; strip; keep the first
    ``max_words`` space-separated words.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    text = _CLEAN_CHARS.sub(" ", text.lower())
    text = _WHITESPACE_RUN.sub(" ", text).strip()
    return " ".join(text.split(" ")[:max_words])


def random_word_deletion(text: str, p: float, rng: np.random.Generator) -> str:
    """Drop each whitespace-separated word independently with probability ``p`` (spec §3).

    If every word is dropped, one uniformly chosen original word is returned; a
    caption of at most one word is returned unchanged. Survivors are re-joined
    with single spaces. This is NOT nlpaug's ``RandomWordAug(action="delete")``,
    which deletes a fixed count of words (spec §3).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"deletion probability must be in [0, 1], got {p}")
    words = text.split()
    if len(words) <= 1:
        return text
    keep = rng.random(len(words)) >= p
    if not keep.any():
        return words[int(rng.integers(len(words)))]
    return " ".join(word for word, kept in zip(words, keep, strict=True) if kept)


# A sentence end glued to the next word ("jacket.His", "shoes!she"). The two
# letters before the mark keep abbreviations ("e.g.he", "a.m.", "U.S.") and the
# letter after keeps decimals ("1.5") and ellipses intact. spaCy's blank English
# tokenizer was measured to split only "word.Upper" (not "jacket.his",
# "shoes!She" or "pants;he"), so a rule is used instead of it.
_GLUED_SENTENCE_END = re.compile(r"(?<=[^\W\d_]{2})([.!?])(?=[^\W\d_])")
# A clause mark glued to the next word ("bag,and"); digits ("1,000") are left alone.
_GLUED_CLAUSE_MARK = re.compile(r"(?<=[^\W\d_])([,;:])(?=[^\W\d_])")


def fix_sentence_spacing(text: str) -> str:
    """Insert the missing space after sentence and clause punctuation.

    RSTPReid captions often read ``"black jacket.His shoes"``; a translation
    model treats ``jacket.His`` as one unknown word. Only a space is ever
    inserted: hyphenated words (``t-shirt``), decimals, ellipses and
    abbreviations (``e.g.``, ``a.m.``) are unchanged.
    """
    text = _GLUED_SENTENCE_END.sub(r"\1 ", text)
    return _GLUED_CLAUSE_MARK.sub(r"\1 ", text)
