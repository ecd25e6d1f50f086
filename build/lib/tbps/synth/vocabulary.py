"""What a synthetic pedestrian can wear and carry, how each thing looks and what people call it.

Shared by the renderer (the RGB of a colour, which garments have sleeves) and the caption
writer (the words for a colour or a garment, whether a noun is plural). The vocabularies are
small and realistic, so that different identities often share most attributes, as in the real
datasets where many people wear black trousers.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]


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
