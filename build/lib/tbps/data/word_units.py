"""A cleaned caption as a sequence of word units, for the word-level augmentations (SR, RI, RS, EDA).

spaCy's blank English tokenizer (no trained model, nothing to download) splits the caption; a
``PhraseMatcher`` on lowercase text over the pedestrian vocabulary then makes each multi-word name
ONE unit ("baseball cap", "flip flops", "high heels", "t-shirt" and "t - shirt"), so that a swap,
insertion, replacement or deletion moves or changes the whole name, never half of it. Pieces written
without a space between them also stay one unit ("dark-blue", "man's", "bag/purse"); punctuation
written apart from words (the comma after "jacket,") is not a unit and stays where it is.

spaCy is imported on first use only: loader workers whose runs use no word-level augmentation, and
evaluation, never import it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """One piece of a caption: a word unit or a punctuation mark, with the whitespace after it."""

    text: str
    space: str
    word: bool
    """False for punctuation, which the augmentations leave in place."""


def join_slots(slots: Sequence[Slot]) -> str:
    """The caption text of ``slots`` (the inverse of :meth:`UnitSplitter.split`)."""
    return "".join(slot.text + slot.space for slot in slots)


class UnitSplitter:
    """``split(text)`` -> slots; ``phrases`` are the multi-word names kept whole (matched lowercase)."""

    def __init__(self, phrases: Iterable[str]):
        self.phrases = tuple(sorted(set(phrases)))

    @functools.cached_property
    def _pipeline(self):
        import spacy
        from spacy.matcher import PhraseMatcher

        nlp = spacy.blank("en")
        matcher = PhraseMatcher(nlp.vocab, attr="LOWER")
        patterns = [doc for doc in map(nlp.make_doc, self.phrases) if len(doc) > 1]
        if patterns:
            matcher.add("PEDESTRIAN_VOCABULARY", patterns)
        return nlp, matcher

    def __getstate__(self):
        # spaCy objects are rebuilt per process (loader workers) rather than pickled.
        state = dict(self.__dict__)
        state.pop("_pipeline", None)
        return state

    def split(self, text: str) -> list[Slot]:
        from spacy.util import filter_spans

        nlp, matcher = self._pipeline
        doc = nlp.make_doc(text)
        # Longest non-overlapping matches: "navy blue" wins over "navy".
        phrase_end = {span.start: span.end for span in filter_spans([doc[s:e] for _, s, e in matcher(doc)])}
        pieces = []  # (text, trailing whitespace, is punctuation)
        i = 0
        while i < len(doc):
            end = phrase_end.get(i, i + 1)
            pieces.append((doc[i:end].text, doc[end - 1].whitespace_, end - i == 1 and doc[i].is_punct))
            i = end
        slots: list[Slot] = []
        for k, (piece, space, punct) in enumerate(pieces):
            glued_to_word = bool(slots) and slots[-1].word and slots[-1].space == ""
            next_is_word = k + 1 < len(pieces) and not pieces[k + 1][2]
            # Punctuation joins a unit only inside it ("t-shirt", "bag/purse"), not at its end ("jacket,").
            if glued_to_word and (not punct or (space == "" and next_is_word)):
                slots[-1] = Slot(slots[-1].text + piece, space, True)
            else:
                slots.append(Slot(piece, space, not punct))
        return slots
