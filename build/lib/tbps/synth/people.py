"""Synthetic identities: the fixed set of visible attributes of each person.

An identity's attributes are drawn from the vocabularies (:mod:`tbps.synth.vocabulary`) with
street-scene frequencies, skewed so that popular combinations recur across identities; a share
of identities copy a recent identity's look (hard negatives). Everything is a pure function of
(seed, identity), so anyone can recompute who an identity is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tbps.synth.vocabulary import COLOURS, RGB, SKIN_TONES

# Weights are rough guesses at how common each attribute is in street scenes; they only need to be
# skewed enough that popular combinations recur across identities.
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

