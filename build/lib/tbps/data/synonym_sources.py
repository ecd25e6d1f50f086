"""Where synonym replacement (SR), random insertion (RI) and EDA find synonyms.

Two sources (``data.synonym_source``, docs/method.md D21):

- ``table``: the shipped pedestrian synonym table (``tbps/resources/pedestrian_synonyms.yaml``),
  the same one the offline ``synonyms`` paraphrasing backend uses. Only its words have synonyms,
  and only the other words of their group.
- ``wordnet``: NLTK's WordNet through nlpaug, as in EDA's reference code, when ``nltk`` and the
  WordNet data are installed (``NLTK_DATA`` pointing at a folder with ``corpora/wordnet``). No POS
  tagger is available offline, so a word gets the lemmas of all its synsets; without a tagger
  WordNet turns "black" into "inkiness" and "cap" into "cake", so its candidates are restricted:
  identity words (colours, garments, bags, shoes, hats, hair, person nouns: the words of the
  table's groups and of the synthetic vocabulary) take synonyms from the table only, and WordNet
  never offers an identity word as the synonym of another word. Proper nouns (capitalised lemmas:
  "young" -> "Brigham Young") are never offered either.

Both skip stop-words (spaCy's English list), as EDA's reference does. ``auto`` resolves once per run
(:func:`resolve_synonym_source`): WordNet when available, else the table. Nothing here imports spaCy,
nltk or nlpaug at module level: loader workers and evaluation never pay for them.
"""

from __future__ import annotations

import functools
import re

from tbps.augment.synonyms import SynonymTable
from tbps.errors import UserInputError

SOURCES = ("table", "wordnet")
NONE = "none"
"""What a run that draws no synonyms records as its source."""

# Categories of the table whose words describe the person; 'generic' words (big/large, photo/picture)
# are ordinary words.
_IDENTITY_CATEGORIES = ("colour", "pattern", "garment", "footwear", "bag", "accessory", "hair", "person")
# Person nouns the synthetic captions use beyond the table's groups, and the noun every hair
# description hangs on (untagged WordNet offers "tomentum" and "pilus" for it).
_PERSON_WORDS = ("male", "female", "girl", "boy", "person", "pedestrian", "young man", "young woman", "hair")
# A usable WordNet lemma: lowercase words (capitalised lemmas are proper nouns: "Brigham_Young").
_WORDNET_LEMMA = re.compile(r"[a-z]+(?:[-_ ][a-z]+)*")
_HYPHEN_SPACING = re.compile(r"\s*-\s*")
_SPACES = re.compile(r"\s+")


def unit_key(unit: str) -> str:
    """A word unit as the vocabularies spell it: lowercase, single spaces, no spaces around hyphens
    (spaCy writes the unit "t - shirt" of a caption that spells it so; the table says "t-shirt")."""
    return _SPACES.sub(" ", _HYPHEN_SPACING.sub("-", unit.lower())).strip()


def wordnet_available() -> bool:
    """nltk is importable and its data path holds WordNet (no download is ever attempted)."""
    try:
        import nltk.data
    except ImportError:
        return False
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        return False
    return True


def resolve_synonym_source(choice: str) -> str:
    """``auto`` -> ``wordnet`` when :func:`wordnet_available`, else ``table``; a concrete choice is
    checked (``wordnet`` without the data is an error naming the fix)."""
    if choice == "auto":
        return "wordnet" if wordnet_available() else "table"
    if choice == "wordnet" and not wordnet_available():
        raise UserInputError(
            "data.synonym_source=wordnet: WordNet is not available (needs the nltk package and NLTK data with "
            "corpora/wordnet). Fix: `pip install nltk` and set NLTK_DATA to a folder holding corpora/wordnet "
            "(docs/method.md D21), or set data.synonym_source to table or auto"
        )
    if choice not in SOURCES:
        raise ValueError(f"synonym source must be auto or one of {SOURCES}, got {choice!r}")
    return choice


def synonym_source_used(data_cfg) -> str:
    """The source recorded for a run: ``table`` or ``wordnet`` when its text augmentation draws synonyms
    (its saved config holds the resolved value), ``none`` otherwise."""
    return data_cfg.synonym_source if data_cfg.uses_synonyms else NONE


@functools.cache
def identity_words() -> frozenset[str]:
    """Words and phrases that name who a caption describes (see the module docstring)."""
    from tbps.synth import vocabulary as vocab

    table = SynonymTable.load()
    words = {entry for group, category in zip(table.groups, table.categories, strict=True)
             if category in _IDENTITY_CATEGORIES for entry in group}
    for colours in (vocab.COLOURS, vocab.HAIR_COLOURS):
        words |= {w for colour in colours.values() for w in (colour.key, *colour.words)}
    for items in (vocab.UPPER, vocab.LOWER, vocab.SHOES, vocab.BAGS, vocab.HATS):
        words |= {w for item in items.values() for w in (item.key, *item.words)}
    words |= {vocab.GLASSES.key, *vocab.GLASSES.words, vocab.SCARF.key, *vocab.SCARF.words, *vocab.HAIR_LENGTHS}
    words |= set(_PERSON_WORDS)
    return frozenset(unit_key(w) for w in words)


def vocabulary_phrases() -> tuple[str, ...]:
    """Every word and phrase of the table and of the identity vocabulary: the units that word-level
    augmentation must keep whole."""
    table = SynonymTable.load()
    return tuple(sorted(identity_words() | {entry for group in table.groups for entry in group}))


class SynonymLookup:
    """``lookup(unit)``: the synonyms of a word unit, sorted (empty when it has none or is a stop-word)."""

    def __init__(self, source: str, table: SynonymTable | None = None):
        if source not in SOURCES:
            raise ValueError(f"synonym source must be one of {SOURCES} (resolve 'auto' first), got {source!r}")
        self.source = source
        self.table = table or SynonymTable.load()
        self._groups = {entry: group for group in self.table.groups for entry in group}
        self._identity = identity_words()

    @functools.cached_property
    def _stop_words(self) -> frozenset[str]:
        from spacy.lang.en.stop_words import STOP_WORDS

        return frozenset(STOP_WORDS)

    @functools.cached_property
    def _wordnet(self):
        # nlpaug's reader calls nltk.download when WordNet is missing: refuse before it can.
        resolve_synonym_source("wordnet")
        from nlpaug.model.word_dict import WordNet

        return WordNet(lang="eng", is_synonym=True)

    def __getstate__(self):
        # Loader workers rebuild the readers on first use instead of pickling them.
        state = dict(self.__dict__)
        state.pop("_wordnet", None)
        state.pop("_stop_words", None)
        state.pop("_cache", None)
        return state

    def __call__(self, unit: str) -> tuple[str, ...]:
        cache = self.__dict__.setdefault("_cache", {})
        key = unit_key(unit)
        if key not in cache:
            cache[key] = self._lookup(key)
        return cache[key]

    def _lookup(self, key: str) -> tuple[str, ...]:
        if key in self._stop_words:
            return ()
        group = self._groups.get(key)
        if group is not None:
            return tuple(sorted(entry for entry in group if entry != key))
        if self.source == "table" or key in self._identity or not _WORDNET_LEMMA.fullmatch(key):
            return ()
        lemmas = {name.replace("_", " ") for name in self._wordnet.predict(key.replace(" ", "_"))
                  if _WORDNET_LEMMA.fullmatch(name)}
        return tuple(sorted(lemma for lemma in lemmas if lemma != key and lemma not in self._identity))

