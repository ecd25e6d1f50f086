"""Offline paraphrasing by swapping true synonyms (the ``synonyms`` augmentation backend).

Substitution is done by nlpaug's ``ReservedAug`` over a hand-made table of
interchangeable words (``tbps/resources/pedestrian_synonyms.yaml``), so no model
or download is needed. Only words listed in the table ever change, and only to
another word of the same group, so colours, garments, bags and hair keep their
meaning. WordNet synonyms (nlpaug ``SynonymAug``) are not offered: WordNet data
is not installed here, no POS tagger is available offline, and without one the
platform notes measured outputs such as "a brigham young woman wearing a crimson
coat and inkiness pant" and "a red cake"; restricting WordNet to generic words
safely would amount to writing this table anyway.

Two deviations from stock ``ReservedAug``, both in :class:`_SeededReservedAug`:
- it draws from a per-caption ``random.Random`` seeded from (seed, caption), not
  from the global ``random`` module, so a caption's paraphrase does not depend on
  which other captions were processed before it (cache hits, batch order);
- ``aug_p`` is the fraction of *replaceable* words that change (at least one),
  not a fraction of all tokens.
Multi-word entries are joined into single tokens before nlpaug sees them and
split again afterwards, and our tokenizer is lossless: with its own phrase
handling and tokenizer, stock ``ReservedAug`` turns
"The man's grey sweat-shirt, dark-blue t-shirt." into
"The man ' s gray sweatnnnnn - nnnnnshirt, dark - blue tnnnnn - nnnnnshirt."
(phrase regexes without word boundaries, tokens re-joined with spaces).
Possessives get groups of their own ("kids'" -> "children's", not "children'").
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from tbps.errors import input_error

# Private-use character standing for the space inside a multi-word entry while
# nlpaug works on the text; it never occurs in real captions.
_JOINER = "\ue000"
# Lossless tokenization: a word (hyphenated words and joined phrases stay whole,
# a possessive "'s" or plural "'" stays attached), a whitespace run, or any other
# single character. "".join(tokens) == text.
_APOSTROPHES = ("'", "\u2019")
_TOKEN = re.compile(rf"[\w{_JOINER}]+(?:-[\w{_JOINER}]+)*(?:['\u2019]s?(?!\w))?|\s+|[^\w\s]")
# A table entry must stand alone: not part of a longer word or hyphenated compound.
_BEFORE = r"(?<![\w-])"
_AFTER = r"(?![\w-])"
_ENTRY = re.compile(r"[^\W_]+(?:-[^\W_]+)*(?: [^\W_]+(?:-[^\W_]+)*)*")

DEFAULT_TABLE = "pedestrian_synonyms.yaml"
ALGORITHM_VERSION = 1
"""Bump when a change to this module changes outputs (it is part of the cache key)."""


def _tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _detokenize(tokens: Sequence[str]) -> str:
    return "".join(tokens)


@dataclass(frozen=True)
class SynonymTable:
    """Groups of interchangeable lowercase words/phrases; the first entry is canonical."""

    groups: tuple[tuple[str, ...], ...]
    categories: tuple[str, ...]
    """Category of each group (colour, garment, bag, ...), aligned with ``groups``."""
    sha256: str
    """Hash of the table's content (part of the augmentation cache key)."""

    @classmethod
    def load(cls, path: str | Path | None = None) -> SynonymTable:
        """Read and validate a table; ``None`` reads the one shipped with tbps."""
        if path is None:
            resource = importlib.resources.files("tbps").joinpath("resources", DEFAULT_TABLE)
            return cls.parse(resource.read_bytes(), f"tbps/resources/{DEFAULT_TABLE}")
        path = Path(path)
        if not path.is_file():
            raise input_error(path, "synonym table not found", "pass an existing YAML file to --synonym-table")
        return cls.parse(path.read_bytes(), path)

    @classmethod
    def parse(cls, data: bytes, source: str | Path) -> SynonymTable:
        fix = "see tbps/resources/pedestrian_synonyms.yaml for the format"
        try:
            doc = yaml.safe_load(data)
        except yaml.YAMLError as e:
            raise input_error(source, f"not valid YAML ({e})", fix) from None
        if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("groups"), dict):
            raise input_error(source, "expected a mapping with 'version: 1' and 'groups: {category: [[...]]}'", fix)
        groups: list[tuple[str, ...]] = []
        categories: list[str] = []
        seen: dict[str, int] = {}
        for category, cat_groups in doc["groups"].items():
            if not isinstance(cat_groups, list):
                raise input_error(source, f"category {category!r} is not a list of groups", fix)
            for group in cat_groups:
                index = len(groups)
                if not isinstance(group, list) or len(group) < 2:
                    raise input_error(source, f"{category} group {group!r} is not a list of 2+ entries", fix,
                                      record=index)
                for entry in group:
                    if not isinstance(entry, str) or entry != entry.lower() or not _ENTRY.fullmatch(entry):
                        raise input_error(
                            source, f"entry {entry!r} is not lowercase words separated by single spaces",
                            fix, record=index)
                    if entry in seen:
                        raise input_error(
                            source, f"entry {entry!r} is in groups {seen[entry]} and {index}",
                            "keep each word in one group (a word with two meanings belongs in none)",
                            record=index)
                    seen[entry] = index
                groups.append(tuple(group))
                categories.append(str(category))
        return cls(tuple(groups), tuple(categories), hashlib.sha256(data).hexdigest())

    def canonical_tokens(self, text: str) -> list[str]:
        """Lowercased words of ``text`` with every table entry replaced by its group's canonical form.

        Two captions with the same canonical tokens describe the same thing as
        far as the table is concerned (used by tests to prove meaning is kept).
        """
        joined = self._phrases.sub(lambda m: _join(m.group(0)), text.lower())
        return [self._canonical.get(tok, tok).replace(_JOINER, " ")
                for tok in _tokenize(joined) if tok[0].isalnum() or tok[0] == "_"]

    @functools.cached_property
    def _canonical(self) -> dict[str, str]:
        canonical = {_join(entry): _join(group[0]) for group in self.groups for entry in group}
        for apostrophe in _APOSTROPHES:
            canonical |= {_possessive(entry, apostrophe): _possessive(canon, apostrophe)
                          for entry, canon in list(canonical.items()) if apostrophe not in entry}
        return canonical

    @functools.cached_property
    def _phrases(self) -> re.Pattern[str]:
        return _phrase_pattern([entry for group in self.groups for entry in group])


def _join(entry: str) -> str:
    return entry.replace(" ", _JOINER)


def _possessive(entry: str, apostrophe: str) -> str:
    # Possessives are their own groups so "kids'" becomes "children's", never "children'".
    return entry + apostrophe if entry.endswith("s") else entry + apostrophe + "s"


def _phrase_pattern(entries: Sequence[str], flags: int = 0) -> re.Pattern[str]:
    """Match any multi-word entry as a whole; longest first so 'navy blue' beats 'navy'."""
    phrases = sorted({e for e in entries if " " in e}, key=lambda e: (-len(e), e))
    if not phrases:
        return re.compile(r"(?!)")
    return re.compile(_BEFORE + "(?:" + "|".join(map(re.escape, phrases)) + ")" + _AFTER, flags)


@functools.cache
def _reserved_aug_class():
    # nlpaug is imported lazily: it imports torch and transformers when installed (5-10 s).
    import nlpaug.augmenter.word as naw

    class _SeededReservedAug(naw.ReservedAug):
        rng: random.Random

        def sample(self, x, num=None):
            # Stock nlpaug samples from the global `random` module.
            if not isinstance(x, list):
                raise TypeError(f"unexpected nlpaug sample() argument {x!r}")
            return self.rng.sample(x, num)

        def _get_aug_idxes(self, tokens):
            # Stock nlpaug derives the count from ALL tokens (spaces, punctuation
            # included); we count over the replaceable words only.
            candidates = self.skip_aug(self.pre_skip_aug(tokens), tokens)
            if not candidates:
                return []
            count = min(self.generate_aug_cnt(len(candidates)), len(candidates))
            return self.sample(candidates, count)

    return _SeededReservedAug


class SynonymBackend:
    """Paraphrase captions by swapping table synonyms (deterministic per caption and seed)."""

    name = "synonyms"
    default_batch_size = 1024
    cacheable = True

    def __init__(self, table: SynonymTable | None = None, aug_p: float = 0.5, seed: int = 0):
        if not 0.0 < aug_p <= 1.0:
            raise ValueError(f"aug_p must be in (0, 1], got {aug_p}")
        self.table = table or SynonymTable.load()
        self.aug_p = aug_p
        self.seed = seed
        # Phrases are joined whatever their case: "Navy Blue" becomes one token that
        # matches no entry and stays as it is, instead of its "Navy" being replaced.
        self._phrases = _phrase_pattern([e for g in self.table.groups for e in g], re.IGNORECASE)

    @functools.cached_property
    def _aug(self):
        # Built on first use: a fully cached run never imports nlpaug.
        # Capitalised copies let a sentence-initial "Woman" become "Lady", not "lady".
        groups = [list(map(_join, g)) for g in self.table.groups]
        groups += [[e.capitalize() for e in g] for g in groups]
        groups += [[_possessive(e, a) for e in g] for a in _APOSTROPHES for g in groups]
        return _reserved_aug_class()(
            reserved_tokens=groups, case_sensitive=True, aug_p=self.aug_p, aug_min=1, aug_max=None,
            tokenizer=_tokenize, reverse_tokenizer=_detokenize)

    def cache_params(self) -> dict:
        return {"algorithm": ALGORITHM_VERSION, "table_sha256": self.table.sha256,
                "aug_p": self.aug_p, "seed": self.seed}

    def augment_one(self, text: str) -> str:
        if not text.strip() or _JOINER in text:
            return text
        digest = hashlib.sha256(f"{self.seed}\x00{text}".encode()).digest()
        self._aug.rng = random.Random(int.from_bytes(digest[:8], "little"))
        joined = self._phrases.sub(lambda m: _join(m.group(0)), text)
        # augment() strips the text; put the original outer whitespace back.
        core = self._aug.augment(joined)[0].replace(_JOINER, " ")
        lead = text[: len(text) - len(text.lstrip())]
        trail = text[len(text.rstrip()):]
        return lead + core + trail

    def __call__(self, texts: Sequence[str]) -> list[str]:
        return [self.augment_one(t) for t in texts]
