"""Write a tiny WordNet 3.0 database that NLTK's WordNet reader opens (no download, a few synsets).

The files follow WordNet's own formats (wndb(5WN)): ``data.<pos>`` lines keyed by their byte
offset, ``index.<pos>`` lines pointing at those offsets, empty exception lists and sense index, and
the fixed 45-entry ``lexnames`` list that NLTK reads at start-up. Point ``nltk.data.path`` (or
``NLTK_DATA``) at the returned root.
"""

from __future__ import annotations

from pathlib import Path

LEXNAMES = """adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute
noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group
noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession
noun.process noun.quantity noun.relation noun.shape noun.state noun.substance noun.time
verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption
verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession
verb.social verb.stative verb.weather adj.ppl""".split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_POS_LETTER = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
# Licence header lines start with two spaces; NLTK reads the version from the "WordNet 3.0 Copyright" line.
_HEADER = ("  1 A tiny test database in the format of WordNet 3.0.\n"
           "  2 WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.\n")

SYNSETS = {
    "noun": [["walk", "stroll"], ["coat", "overcoat"], ["street", "road", "red"], ["baseball_cap", "ball_cap"],
             ["young", "Brigham_Young"]],
    "verb": [["walk", "stride"], ["carry", "transport", "hold_up"]],
    "adj": [["young", "youthful", "black"]],
    "adv": [],
}
"""Synsets by part of speech. 'red', 'black' and 'Brigham_Young' sit in odd synsets on purpose: identity
words and proper nouns must never be offered as the synonym of another word."""


def build_tiny_wordnet(root: Path) -> Path:
    """Write ``root/corpora/wordnet`` and return ``root`` (the NLTK data folder)."""
    folder = Path(root) / "corpora" / "wordnet"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lexnames").write_text(
        "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES)))
    (folder / "index.sense").write_text("")
    for pos, synsets in SYNSETS.items():
        letter = _POS_LETTER[pos]
        data, offsets = _HEADER, {}
        for lemmas in synsets:
            offset = len(data.encode())
            frames = " 00" if letter == "v" else ""
            words = " ".join(f"{lemma} 0" for lemma in lemmas)
            data += f"{offset:08d} 03 {letter} {len(lemmas):02x} {words} 000{frames} | a test synset\n"
            for lemma in lemmas:
                offsets.setdefault(lemma, []).append(offset)
        (folder / f"data.{pos}").write_text(data)
        (folder / f"index.{pos}").write_text(_HEADER + "".join(
            f"{lemma} {letter} {len(offs)} 0 {len(offs)} 0 {' '.join(f'{o:08d}' for o in offs)}\n"
            for lemma, offs in sorted(offsets.items())))
        (folder / f"{pos}.exc").write_text("")
    return Path(root)
