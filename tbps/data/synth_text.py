"""Synthetic pedestrians: who they are (attributes) and how people describe them (captions).

An identity is a fixed set of visible attributes drawn from small, realistic
vocabularies, so that different identities often share most of them (as in
the real datasets, where many people wear black trousers). A caption mentions
a random subset of the attributes, in random order, through varied sentence
patterns and synonyms, so a model has to learn the attributes rather than
memorise a template. Captions never mention an attribute the person lacks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]


# --- vocabularies -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Colour:
    key: str
    rgb: RGB
    words: tuple[str, ...]
    """Synonyms used in captions (the first is the canonical name)."""


COLOURS: dict[str, Colour] = {
    c.key: c
    for c in (
        Colour("black", (28, 28, 30), ("black",)),
        Colour("white", (236, 236, 232), ("white",)),
        Colour("grey", (128, 128, 128), ("grey", "gray")),
        Colour("red", (192, 32, 36), ("red",)),
        Colour("blue", (40, 84, 196), ("blue",)),
        Colour("navy", (26, 36, 92), ("navy", "dark blue", "navy blue")),
        Colour("light blue", (140, 184, 228), ("light blue", "pale blue")),
        Colour("green", (44, 140, 62), ("green",)),
        Colour("yellow", (232, 204, 44), ("yellow",)),
        Colour("orange", (236, 132, 30), ("orange",)),
        Colour("pink", (236, 144, 184), ("pink",)),
        Colour("purple", (122, 62, 152), ("purple",)),
        Colour("brown", (112, 70, 38), ("brown",)),
        Colour("beige", (212, 192, 150), ("beige", "khaki", "tan")),
    )
}

HAIR_COLOURS: dict[str, Colour] = {
    c.key: c
    for c in (
        Colour("black", (22, 20, 20), ("black", "dark")),
        Colour("dark brown", (60, 38, 24), ("dark brown", "brown")),
        Colour("brown", (110, 72, 40), ("brown",)),
        Colour("blonde", (222, 190, 120), ("blonde", "blond", "light")),
        Colour("grey", (170, 170, 168), ("grey", "gray", "white")),
        Colour("red", (160, 60, 30), ("red", "ginger")),
    )
}

SKIN_TONES: tuple[RGB, ...] = ((246, 214, 186), (228, 186, 150), (196, 146, 108), (150, 104, 70), (98, 66, 44))


@dataclass(frozen=True)
class Item:
    """A garment, bag or accessory as it is drawn (``key``) and named (``words``)."""

    key: str
    words: tuple[str, ...]
    plural: bool = False
    """Plural nouns ("jeans", "boots") take no article and "are"."""


def _items(*items: Item) -> dict[str, Item]:
    return {i.key: i for i in items}


UPPER = _items(
    Item("t-shirt", ("T-shirt", "t-shirt", "tee", "short-sleeved shirt")),
    Item("shirt", ("shirt", "long-sleeved shirt", "button-up shirt")),
    Item("blouse", ("blouse", "top")),
    Item("jacket", ("jacket",)),
    Item("coat", ("coat", "long coat", "overcoat")),
    Item("sweater", ("sweater", "jumper", "pullover")),
    Item("hoodie", ("hoodie", "hooded sweatshirt")),
    Item("tank top", ("tank top", "sleeveless top", "vest top")),
    Item("dress", ("dress", "knee-length dress")),
)
LOWER = _items(
    Item("trousers", ("trousers", "pants", "slacks"), plural=True),
    Item("jeans", ("jeans", "denim pants"), plural=True),
    Item("shorts", ("shorts",), plural=True),
    Item("skirt", ("skirt", "short skirt")),
    Item("long skirt", ("long skirt", "maxi skirt")),
    Item("dress", UPPER["dress"].words),
)
SHOES = _items(
    Item("sneakers", ("sneakers", "trainers", "sports shoes"), plural=True),
    Item("shoes", ("shoes", "leather shoes"), plural=True),
    Item("boots", ("boots",), plural=True),
)
BAGS = _items(
    Item("backpack", ("backpack", "rucksack", "back pack")),
    Item("handbag", ("handbag", "purse")),
    Item("shoulder bag", ("shoulder bag", "messenger bag", "bag")),
)
HATS = _items(
    Item("cap", ("cap", "baseball cap")),
    Item("hat", ("hat", "sun hat")),
    Item("beanie", ("beanie", "knit hat")),
)
GLASSES = Item("glasses", ("glasses", "eyeglasses", "spectacles"), plural=True)
SCARF = Item("scarf", ("scarf",))

HAIR_LENGTHS = ("short", "medium", "long", "ponytail")
SLEEVES = {"t-shirt": "short", "tank top": "none", "dress": "short"}
"""Sleeve length per upper garment (long unless listed)."""

# Weights are rough guesses at how common each attribute is in street scenes; they only need to be
# skewed enough that popular combinations recur across identities.
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

_UPPER_P = {
    "male": {"t-shirt": 25, "shirt": 16, "jacket": 24, "coat": 12, "sweater": 10, "hoodie": 10, "tank top": 3},
    "female": {
        "t-shirt": 20, "shirt": 8, "blouse": 15, "jacket": 19, "coat": 15,
        "sweater": 10, "hoodie": 7, "tank top": 6,
    },
}
_LOWER_P = {
    "male": {"trousers": 45, "jeans": 35, "shorts": 20},
    "female": {"trousers": 24, "jeans": 25, "shorts": 10, "skirt": 15, "long skirt": 8, "dress": 18},
}
_UPPER_COLOUR_P = {
    "black": 15, "white": 13, "grey": 10, "red": 7, "blue": 8, "navy": 7, "light blue": 5, "green": 6,
    "yellow": 5, "orange": 4, "pink": 5, "purple": 4, "brown": 5, "beige": 6,
}
_LOWER_COLOUR_P = {
    "black": 30, "grey": 15, "blue": 12, "navy": 10, "beige": 10, "brown": 7, "white": 6, "light blue": 5,
    "red": 2, "green": 2, "pink": 1,
}
_JEANS_COLOUR_P = {"blue": 40, "navy": 20, "light blue": 20, "black": 15, "grey": 5}
_SHOE_COLOUR_P = {"black": 40, "white": 30, "brown": 12, "grey": 8, "blue": 6, "red": 4}
_BAG_COLOUR_P = {"black": 35, "brown": 15, "grey": 10, "blue": 10, "navy": 5, "red": 8, "pink": 5, "beige": 7,
                 "green": 5}
_ANY_COLOUR_P = {key: 1.0 for key in COLOURS}
_HAIR_COLOUR_P = {"black": 40, "dark brown": 20, "brown": 15, "blonde": 12, "grey": 8, "red": 5}
_HAIR_LENGTH_P = {"male": {"short": 85, "medium": 10, "long": 5}, "female": {"short": 15, "medium": 30, "long": 40,
                                                                           "ponytail": 15}}
_BAG_P = {
    "male": {None: 38, "backpack": 35, "handbag": 4, "shoulder bag": 23},
    "female": {None: 30, "backpack": 25, "handbag": 27, "shoulder bag": 18},
}
_HAT_P = {None: 75, "cap": 12, "hat": 7, "beanie": 6}
_SHOES_P = {"male": {"sneakers": 55, "shoes": 35, "boots": 10}, "female": {"sneakers": 45, "shoes": 30, "boots": 25}}
_BUILD_P = {"slim": 30, "average": 50, "heavy": 20}

LOOKALIKE_P = 0.12
"""Share of identities that copy the visible attributes of a recent identity (hard negatives)."""
LOOKALIKE_WINDOW = 40


@dataclass(frozen=True)
class Person:
    """The fixed visible attributes of one synthetic identity."""

    gender: str
    build: str
    skin: RGB
    hair_colour: str
    hair_length: str
    upper: str
    upper_colour: str
    lower: str
    lower_colour: str
    shoes: str
    shoes_colour: str
    bag: str | None
    bag_colour: str | None
    hat: str | None
    hat_colour: str | None
    glasses: bool
    scarf_colour: str | None
    tint: tuple[int, int, int]
    """Per-identity shade offset so two people in "red" are not the identical red."""

    def colour_keys(self) -> set[str]:
        """Palette colours this person wears (hair excluded)."""
        keys = {self.upper_colour, self.lower_colour, self.shoes_colour, self.bag_colour, self.hat_colour,
                self.scarf_colour}
        keys.discard(None)
        return keys  # type: ignore[return-value]

    def rgb(self, colour_key: str) -> RGB:
        base = COLOURS[colour_key].rgb
        return tuple(int(min(255, max(0, c + t))) for c, t in zip(base, self.tint, strict=True))  # type: ignore


def _pick(rng: np.random.Generator, weights: dict) -> object:
    keys = list(weights)
    p = np.asarray([weights[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def random_person(rng: np.random.Generator) -> Person:
    """Draw attributes from the vocabularies (also used for passers-by in the background)."""
    gender = "male" if rng.random() < 0.5 else "female"
    lower = _pick(rng, _LOWER_P[gender])
    if lower == "dress":
        # A dress is one garment: it is both the upper and the lower part, in one colour.
        upper = "dress"
        upper_colour = lower_colour = _pick(rng, _UPPER_COLOUR_P)
    else:
        upper = _pick(rng, _UPPER_P[gender])
        upper_colour = _pick(rng, _UPPER_COLOUR_P)
        lower_colour = _pick(rng, _JEANS_COLOUR_P if lower == "jeans" else _LOWER_COLOUR_P)
    bag = _pick(rng, _BAG_P[gender])
    hat = _pick(rng, _HAT_P)
    return Person(
        gender=gender,
        build=_pick(rng, _BUILD_P),
        skin=SKIN_TONES[int(rng.integers(len(SKIN_TONES)))],
        hair_colour=_pick(rng, _HAIR_COLOUR_P),
        hair_length=_pick(rng, _HAIR_LENGTH_P[gender]),
        upper=upper,
        upper_colour=upper_colour,
        lower=lower,
        lower_colour=lower_colour,
        shoes=_pick(rng, _SHOES_P[gender]),
        shoes_colour=_pick(rng, _SHOE_COLOUR_P),
        bag=bag,
        bag_colour=_pick(rng, _BAG_COLOUR_P) if bag else None,
        hat=hat,
        hat_colour=_pick(rng, _ANY_COLOUR_P) if hat else None,
        glasses=bool(rng.random() < 0.18),
        scarf_colour=_pick(rng, _ANY_COLOUR_P) if rng.random() < 0.1 else None,
        tint=tuple(int(v) for v in rng.integers(-14, 15, size=3)),  # type: ignore[arg-type]
    )


def _identity_rng(seed: int, identity: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, identity])


def person_attributes(seed: int, identity: int) -> Person:
    """Attributes of synthetic identity number ``identity`` (0-based) for ``seed``.

    A pure function of its arguments: the generator, the tests and anyone
    inspecting a dataset can recompute who an identity is.
    """
    rng = _identity_rng(seed, identity, 0)
    person = random_person(rng)
    if identity > 0 and rng.random() < LOOKALIKE_P:
        # Copy the look of a recent identity (same split, usually) and keep only the skin and the
        # shade offsets; sometimes one accessory also differs, as with two real commuters.
        other = random_person(_identity_rng(seed, int(rng.integers(max(0, identity - LOOKALIKE_WINDOW), identity)), 0))
        person = Person(**{**other.__dict__, "skin": person.skin, "tint": person.tint})
        if rng.random() < 0.5:
            change = ("shoes_colour", "glasses", "hat")[int(rng.integers(3))]
            if change == "shoes_colour":
                person = _replace(person, shoes_colour=_pick(rng, _SHOE_COLOUR_P))
            elif change == "glasses":
                person = _replace(person, glasses=not person.glasses)
            else:
                hat = _pick(rng, _HAT_P)
                person = _replace(person, hat=hat, hat_colour=_pick(rng, _ANY_COLOUR_P) if hat else None)
    return person


def _replace(person: Person, **changes) -> Person:
    return Person(**{**person.__dict__, **changes})


# --- captions ---------------------------------------------------------------------------------


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
