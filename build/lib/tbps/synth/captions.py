"""How annotators describe a synthetic pedestrian: one caption from a person's attributes.

A caption mentions a random subset of the attributes, in random order, through varied sentence
patterns and synonyms, so a model has to learn the attributes rather than memorise a template.
Captions never mention an attribute the person lacks, nor one the photo does not show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tbps.synth.people import Person
from tbps.synth.vocabulary import BAGS, COLOURS, GLASSES, HAIR_COLOURS, HATS, LOWER, SCARF, SHOES, UPPER, Item

_GENDER_NOUNS = {
    "male": ("man", "man", "man", "guy", "male", "gentleman", "young man"),
    "female": ("woman", "woman", "woman", "lady", "girl", "female", "young woman"),
}
_PRONOUN = {"male": ("He", "His"), "female": ("She", "Her")}
_BUILD_WORDS = {"slim": ("slim", "thin", "skinny"), "average": (), "heavy": ("heavy-set", "chubby", "stout")}
_HAIR_LENGTH_WORDS = {
    "short": ("short",),
    "medium": ("shoulder-length", "medium-length"),
    "long": ("long",),
    "ponytail": (),
}


@dataclass(frozen=True)
class CaptionStyle:
    """How one dataset's annotators wrote (roughly)."""

    min_attributes: int
    max_attributes: int
    missing_space_p: float = 0.0
    """Chance that a sentence follows the previous "." with no space (RSTPReid: "jacket.His")."""
    max_sentences: int = 2


CAPTION_STYLES = {
    "cuhk-pedes": CaptionStyle(3, 6),
    "icfg-pedes": CaptionStyle(4, 7, max_sentences=3),
    "rstpreid": CaptionStyle(3, 6, missing_space_p=0.6),
}

# Relative chance that a caption mentions each attribute (clothing dominates real descriptions).
_MENTION_W = {"upper": 6.0, "lower": 4.5, "hair": 3.0, "bag": 3.0, "shoes": 2.0, "hat": 2.5, "glasses": 1.5,
              "scarf": 1.5, "build": 1.0}
_ROLE = {"upper": "wear", "lower": "wear", "shoes": "wear", "hat": "wear", "glasses": "wear", "scarf": "wear",
         "hair": "hair", "bag": "carry"}
_PREDICATES = {
    # role: (participle forms after the subject, finite forms)
    "wear": (("wearing", "wearing", "in", "dressed in"), ("is wearing", "wears", "is dressed in", "has on")),
    "hair": (("with",), ("has",)),
    "carry": (("carrying", "with", "holding"), ("is carrying", "carries", "has")),
}
_FILLERS = ("{He} is walking.", "{He} is walking down the street.", "{He} walks.", "{He} is standing.")


def _article(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def _join(parts: list[str], rng: np.random.Generator) -> str:
    if len(parts) == 1:
        return parts[0]
    last_sep = ", and " if len(parts) > 2 and rng.random() < 0.25 else " and "
    return ", ".join(parts[:-1]) + last_sep + parts[-1]


def _word(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _noun_phrase(rng: np.random.Generator, item: Item, colour: str | None) -> str:
    noun = _word(rng, item.words)
    colour_word = _word(rng, COLOURS[colour].words) if colour else ""
    phrase = f"{colour_word} {noun}".strip()
    if item.plural:
        if colour and rng.random() < 0.25 and item is not GLASSES:
            return f"a pair of {phrase}"
        return phrase
    return _article(phrase)


def _hair_phrase(rng: np.random.Generator, person: Person) -> str:
    colour = _word(rng, HAIR_COLOURS[person.hair_colour].words)
    if person.hair_length == "ponytail":
        return _article(f"{colour} ponytail") if rng.random() < 0.5 else f"{colour} hair in a ponytail"
    length = _word(rng, _HAIR_LENGTH_WORDS[person.hair_length])
    return f"{length} {colour} hair" if rng.random() < 0.8 else f"{colour} {length} hair"


def _attribute_phrase(rng: np.random.Generator, person: Person, attribute: str) -> str:
    if attribute == "upper":
        return _noun_phrase(rng, UPPER[person.upper], person.upper_colour)
    if attribute == "lower":
        return _noun_phrase(rng, LOWER[person.lower], person.lower_colour)
    if attribute == "shoes":
        return _noun_phrase(rng, SHOES[person.shoes], person.shoes_colour)
    if attribute == "hat":
        return _noun_phrase(rng, HATS[person.hat], person.hat_colour)
    if attribute == "bag":
        return _noun_phrase(rng, BAGS[person.bag], person.bag_colour)
    if attribute == "glasses":
        return _noun_phrase(rng, GLASSES, None)
    if attribute == "scarf":
        return _noun_phrase(rng, SCARF, person.scarf_colour)
    if attribute == "hair":
        return _hair_phrase(rng, person)
    raise ValueError(attribute)


def mentionable_attributes(person: Person) -> list[str]:
    """Attributes a caption of ``person`` may mention (a dress counts once, as ``upper``)."""
    present = {
        "upper": True,
        "lower": person.lower != "dress",
        "hair": True,
        "bag": person.bag is not None,
        "shoes": True,
        "hat": person.hat is not None,
        "glasses": person.glasses,
        "scarf": person.scarf_colour is not None,
        "build": bool(_BUILD_WORDS[person.build]),
    }
    return [a for a in _MENTION_W if present[a]]


def _choose_mentions(rng: np.random.Generator, person: Person, style: CaptionStyle,
                     hidden: frozenset[str]) -> list[str]:
    available = [a for a in mentionable_attributes(person) if a not in hidden]
    k = min(len(available), int(rng.integers(style.min_attributes, style.max_attributes + 1)))
    # Weighted sampling without replacement: smallest Exp(1)/weight keys (much cheaper than
    # Generator.choice(replace=False, p=...), which dominated caption writing).
    keys = rng.exponential(size=len(available)) / np.asarray([_MENTION_W[a] for a in available])
    chosen = [available[i] for i in np.argsort(keys, kind="stable")[:k]]
    if "upper" not in chosen and "lower" not in chosen:
        # Every real description mentions some clothing.
        chosen[-1 if chosen[-1] != "build" else 0] = "upper"
    return chosen


def _predicate(rng: np.random.Generator, role: str, phrases: list[str], finite: bool) -> str:
    verb = _word(rng, _PREDICATES[role][1 if finite else 0])
    return f"{verb} {_join(phrases, rng)}"


def _clauses(rng: np.random.Generator, person: Person, attributes: list[str], finite: bool) -> str:
    """Predicates for ``attributes`` grouped by role (what is worn / carried / hair), in mention order."""
    groups: dict[str, list[str]] = {}
    for attribute in attributes:
        groups.setdefault(_ROLE[attribute], []).append(_attribute_phrase(rng, person, attribute))
    predicates = [_predicate(rng, role, phrases, finite) for role, phrases in groups.items()]
    if finite:
        return _join(predicates, rng)
    return ", ".join(predicates) if rng.random() < 0.6 else " ".join(predicates)


def _possessive_sentence(rng: np.random.Generator, person: Person, attribute: str) -> str | None:
    """RSTPReid-style "His jacket is grey." for one garment, or None if it does not read well."""
    item, colour = {
        "upper": (UPPER[person.upper], person.upper_colour),
        "lower": (LOWER[person.lower], person.lower_colour),
        "shoes": (SHOES[person.shoes], person.shoes_colour),
        "bag": (BAGS.get(person.bag or ""), person.bag_colour),
        "hat": (HATS.get(person.hat or ""), person.hat_colour),
    }.get(attribute, (None, None))
    if item is None or colour is None:
        return None
    possessive = _PRONOUN[person.gender][1]
    verb = "are" if item.plural else "is"
    return f"{possessive} {_word(rng, item.words)} {verb} {_word(rng, COLOURS[colour].words)}."


def _capitalise(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def write_caption(person: Person, rng: np.random.Generator, style: CaptionStyle,
                  hidden: frozenset[str] = frozenset()) -> str:
    """One natural-language description of ``person`` mentioning a random subset of attributes.

    ``hidden`` lists attributes the photo does not show; they are never mentioned.
    """
    mentions = _choose_mentions(rng, person, style, hidden)
    build = _word(rng, _BUILD_WORDS[person.build]) + " " if "build" in mentions else ""
    attributes = [a for a in mentions if a != "build"]
    pronoun = _PRONOUN[person.gender][0]
    noun = _word(rng, _GENDER_NOUNS[person.gender])

    n_sentences = 1 if len(attributes) < 2 or rng.random() < 0.4 else int(rng.integers(2, style.max_sentences + 1))
    n_sentences = min(n_sentences, len(attributes))
    cuts = sorted(rng.choice(np.arange(1, len(attributes)), size=n_sentences - 1, replace=False)) if n_sentences > 1 else []
    chunks = [attributes[a:b] for a, b in zip([0, *cuts], [*cuts, len(attributes)], strict=True)]

    if rng.random() < 0.5:
        first = f"{_article(build + noun)} {_clauses(rng, person, chunks[0], finite=False)}."
    else:
        det = "The" if rng.random() < 0.6 else "This"
        first = f"{det} {build}{noun} {_clauses(rng, person, chunks[0], finite=True)}."
    sentences = [_capitalise(first)]
    for chunk in chunks[1:]:
        sentence = _possessive_sentence(rng, person, chunk[0]) if len(chunk) == 1 and rng.random() < 0.5 else None
        sentences.append(sentence or f"{pronoun} {_clauses(rng, person, chunk, finite=True)}.")
    if rng.random() < 0.08:
        sentences.append(_word(rng, _FILLERS).format(He=pronoun))

    text = sentences[0]
    for sentence in sentences[1:]:
        text += ("" if rng.random() < style.missing_space_p else " ") + sentence
    if rng.random() < 0.08:
        text = text[:-1]  # annotators often drop the final full stop
    if rng.random() < 0.04:
        text = text.lower()
    return text


def processed_tokens(caption: str) -> list[str]:
    """Lower-case word tokens, the ``processed_tokens`` field of CUHK-PEDES and ICFG-PEDES."""
    return re.findall(r"[a-z0-9]+", caption.lower())
