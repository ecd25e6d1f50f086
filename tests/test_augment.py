"""The augment stage: synonym backend (meaning kept), cache, interruption, CLI, back-translation.

The back-translation test runs the real MarianMT code on a tiny random model
pair built locally (tests/helpers/tiny_marian.py): no hub, no download.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sqlite3
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pytest

from tbps.augment import backtranslation as bt
from tbps.augment.backends import IdentityBackend, make_backend
from tbps.augment.cache import AugmentCache
from tbps.augment.stage import augment_captions, read_captions
from tbps.augment.synonyms import SynonymBackend, SynonymTable
from tbps.cli import main
from tbps.errors import UserInputError


def _load_helper(name: str):
    # By path, so it works whether or not tests/ is a package.
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "helpers" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Hand-written captions in the style of CUHK-PEDES / ICFG-PEDES / RSTPReid.
REALISTIC = [
    "A woman wearing a grey T-shirt, blue trousers and white sneakers. She carries a black backpack.",
    "The man has short black hair and is wearing a navy blue hoodie, gray pants and black shoes.",
    "A young lady with long blonde hair in a ponytail, a pink long-sleeved shirt and a black skirt.",
    "This guy is wearing glasses, a red baseball cap, a white tee and khaki shorts.",
    "The woman's handbag is brown; she is wearing a knee-length striped dress and high heels.",
    "A man in a dark-grey jacket and jeans walks towards the camera holding a cell phone.",
    "The kid has a blue rucksack on his back and wears a short sleeve tank top.",
    "A person in a black and white checkered shirt, denim jacket and flip flops. The kids' shoes are red.",
    "The lady appears to be carrying a large shopping bag and wears sunglasses.",
    "A gentleman with a beanie, a colourful scarf and trainers.",
    "Man in a black coat.His trousers are grey and he carries a hand bag.",
    "  The woman with shoulder-length hair wears a gray hooded sweatshirt.  ",
]

# Independently of the table: words that name DIFFERENT things. No table group may
# hold two words of one set, whatever the table's authors thought.
DISTINCT = [
    {"jacket", "coat", "blazer", "vest", "hoodie", "sweater", "cardigan", "sweatshirt", "windbreaker",
     "parka", "jumper", "fleece", "denim jacket", "raincoat"},
    {"shirt", "t-shirt", "blouse", "top", "tank top", "polo shirt", "button-up shirt"},
    {"trousers", "jeans", "shorts", "skirt", "leggings", "tights", "capri pants", "slacks", "overalls"},
    {"shoes", "sneakers", "boots", "sandals", "high heels", "flip-flops", "slippers", "loafers"},
    {"bag", "backpack", "handbag", "purse", "shoulder bag", "suitcase", "briefcase", "tote", "satchel",
     "wallet", "messenger bag", "backpacks", "handbags"},
    {"red", "blue", "navy blue", "black", "white", "grey", "green", "yellow", "purple", "pink", "brown",
     "orange", "beige", "maroon", "burgundy", "tan", "cream", "khaki", "light blue", "dark blue"},
    {"man", "woman", "boy", "girl", "kid", "men", "women", "person"},
    {"glasses", "sunglasses", "hat", "cap", "beanie", "baseball cap", "scarf", "helmet", "hood"},
    {"blonde", "brown", "ponytail", "bun", "braid", "shoulder-length", "long", "short"},
    {"striped", "checkered", "plaid", "polka-dot", "floral", "plain"},
    {"long-sleeved", "short-sleeved", "sleeveless", "knee-length", "ankle-length"},
]
IDENTITY_CATEGORIES = {"colour", "pattern", "garment", "footwear", "bag", "accessory", "hair", "person"}


@pytest.fixture(scope="module")
def table() -> SynonymTable:
    return SynonymTable.load()


@pytest.fixture(scope="module")
def synonyms(table) -> SynonymBackend:
    return SynonymBackend(table, aug_p=0.5, seed=0)


def identity_concepts(table: SynonymTable, text: str) -> Counter:
    """Multiset of the identity-defining concepts (colour, garment, bag, hair...) in ``text``."""
    vocabulary = _identity_vocabulary(table)
    return Counter(t for t in table.canonical_tokens(text) if t in vocabulary)


@functools.cache
def _identity_vocabulary(table: SynonymTable) -> frozenset[str]:
    words = {w for s in DISTINCT for w in s}
    words |= {e for g, c in zip(table.groups, table.categories, strict=True) if c in IDENTITY_CATEGORIES
              for e in g}
    # canonical forms, as canonical_tokens() reports them
    return frozenset(" ".join(table.canonical_tokens(w)) if " " not in w else w for w in words) | words


# ---------------------------------------------------------------- synonym table


def test_table_groups_never_merge_distinct_concepts(table) -> None:
    group_of = {e: i for i, g in enumerate(table.groups) for e in g}
    for distinct in DISTINCT:
        grouped = [(group_of[w], w) for w in distinct if w in group_of]
        by_group: dict[int, list[str]] = {}
        for gid, w in grouped:
            by_group.setdefault(gid, []).append(w)
        merged = {table.groups[g][0]: ws for g, ws in by_group.items() if len(ws) > 1}
        assert not merged, f"table groups different things together: {merged}"


def test_shipped_synonym_table_covers_identity_categories_and_is_hashed(table) -> None:
    assert len(table.groups) >= 40
    assert set(table.categories) >= IDENTITY_CATEGORIES
    assert ("trousers", "pants") in table.groups and ("grey", "gray") in table.groups
    assert re.fullmatch(r"[0-9a-f]{64}", table.sha256)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"version: 1\ngroups:\n  colour:\n    - [grey, gray]\n  other:\n    - [gray, grey2]\n", "in groups 0 and 1"),
        (b"version: 1\ngroups:\n  colour:\n    - [Grey, gray]\n", "not lowercase"),
        (b"version: 1\ngroups:\n  colour:\n    - [grey]\n", "2+ entries"),
        (b"version: 1\ngroups:\n  colour:\n    - [grey,  gray]\n    - ['a  b', c]\n", "single spaces"),
        (b"version: 2\ngroups: {}\n", "version: 1"),
        (b"groups: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_synonym_table_is_a_user_error_naming_the_file(tmp_path, text: bytes, problem: str) -> None:
    path = tmp_path / "table.yaml"
    path.write_bytes(text)
    with pytest.raises(UserInputError, match=re.escape(problem)) as err:
        SynonymTable.load(path)
    assert str(path) in str(err.value)
    with pytest.raises(UserInputError, match="not found"):
        SynonymTable.load(tmp_path / "missing.yaml")


# ---------------------------------------------------------------- synonym backend


def test_synonyms_keep_identity_and_reach_every_entry(table) -> None:
    """Every output describes the same person; every table entry is produced somewhere."""
    probes = [f"A person with {e} and a bag, walking." for g in table.groups for e in g]
    produced: set[str] = set()
    changed = 0
    for seed in range(6):
        backend = SynonymBackend(table, aug_p=0.5, seed=seed)
        for text in REALISTIC + probes:
            out = backend.augment_one(text)
            assert table.canonical_tokens(out) == table.canonical_tokens(text), (text, out)
            assert identity_concepts(table, out) == identity_concepts(table, text), (text, out)
            changed += out != text
            produced |= {e for g in table.groups for e in g
                         if re.search(rf"(?<![\w-]){re.escape(e)}(?![\w-])", out.lower())}
    assert changed >= 0.95 * 6 * (len(REALISTIC) + len(probes))  # all have a table word
    assert produced == {e for g in table.groups for e in g}


def test_synonyms_only_touch_table_words_and_keep_formatting(table) -> None:
    backend = SynonymBackend(table, aug_p=1.0, seed=0)
    assert backend.augment_one("A man's  grey (T-shirt).") in {
        "A guy's  gray (Tee shirt).", "A guy's  gray (Tee).",
        "A gentleman's  gray (Tee shirt).", "A gentleman's  gray (Tee).",
    }
    assert backend.augment_one("Woman, grey.").startswith("Lady, ")  # capitalisation kept
    for text in [
        "A dark-grey sweat-shirt, a manly walk; (black) boots!",  # compounds, words containing entries
        "The boys' coats: red, 1.5 m... ok? the girl’s bags",
        "A Navy Blue Tee Shirt and Capri Pants",  # case-mismatched phrases are left whole
        "",
        "   ",
    ]:
        out = backend.augment_one(text)
        assert table.canonical_tokens(out) == table.canonical_tokens(text)
        assert out == text
    assert backend.augment_one("  woman  ").startswith("  lady") and backend.augment_one("  woman  ").endswith("  ")


def test_synonyms_possessives(table) -> None:
    backend = SynonymBackend(table, aug_p=1.0, seed=0)
    assert backend.augment_one("the kids' coats") == "the children's coats"
    assert backend.augment_one("the ladies’ bags") == "the women’s bags"
    assert backend.augment_one("The Woman's backpack's strap") in {
        "The Lady's rucksack's strap", "The Lady's knapsack's strap", "The Lady's back pack's strap"}
    assert backend.augment_one("don't") == "don't"
    for text in ("the men's shoes", "a guy's bag", "Children's toys"):
        out = backend.augment_one(text)
        assert out != text and table.canonical_tokens(out) == table.canonical_tokens(text)
        assert not re.search(r"s's|[^s]'(?!s)", out), out


def test_synonyms_aug_p_counts_replaceable_words(table) -> None:
    text = "a woman in grey trousers walks towards us"  # 4 two-word groups: exactly one alternative each
    for aug_p, expected in ((1.0, 4), (0.5, 2), (0.1, 1)):
        for seed in range(5):
            out = SynonymBackend(table, aug_p=aug_p, seed=seed).augment_one(text)
            assert sum(a != b for a, b in zip(out.split(), text.split(), strict=True)) == expected


def test_synonyms_deterministic_and_independent_of_batch(table, synonyms) -> None:
    single = [synonyms.augment_one(t) for t in REALISTIC]
    assert synonyms(REALISTIC) == single
    assert synonyms(REALISTIC[::-1]) == single[::-1]
    assert SynonymBackend(table, aug_p=0.5, seed=0)(REALISTIC) == single
    other = SynonymBackend(table, aug_p=0.5, seed=1)(REALISTIC)
    assert other != single


# ---------------------------------------------------------------- stage plumbing


def write_annotations(path: Path, captions: dict[str, list[str]], shuffle: bool = False) -> pl.DataFrame:
    """annotations.parquet per the contract, captions grouped by split in the given order."""
    rows = [(split, c) for split, caps in captions.items() for c in caps]
    n = len(rows)
    df = pl.DataFrame(
        {
            "caption_id": list(range(n)),
            "dataset": ["synthetic"] * n,
            "split": [s for s, _ in rows],
            "person_id": [i // 2 for i in range(n)],
            "train_id": [i // 2 if s == "train" else None for i, (s, _) in enumerate(rows)],
            "image_index": [i // 2 for i in range(n)],
            "image_path": [f"imgs/{i // 2:04d}.jpg" for i in range(n)],
            "caption_index": [i % 2 for i in range(n)],
            "caption": [c for _, c in rows],
            "width": [64] * n,
            "height": [128] * n,
        },
        schema_overrides={"caption_index": pl.Int32, "width": pl.Int32, "height": pl.Int32,
                          "train_id": pl.Int64},
    )
    if shuffle:
        df = df.sample(fraction=1.0, shuffle=True, seed=3)
    df.write_parquet(path)
    return df


class CountingBackend:
    """Deterministic fake: upper-cases text; records calls; can fail on the k-th call."""

    name = "fake"
    default_batch_size = 2
    cacheable = True

    def __init__(self, fail_on_call: int | None = None, blank_for: Sequence[str] = (), version: int = 1):
        self.calls: list[list[str]] = []
        self.fail_on_call = fail_on_call
        self.blank_for = set(blank_for)
        self.version = version

    def cache_params(self) -> dict:
        return {"version": self.version}

    def __call__(self, texts: Sequence[str]) -> list[str]:
        self.calls.append(list(texts))
        if self.fail_on_call == len(self.calls):
            raise KeyboardInterrupt("simulated interruption")
        return ["" if t in self.blank_for else t.upper() for t in texts]

    @property
    def computed(self) -> list[str]:
        return [t for call in self.calls for t in call]


TRAIN = [f"caption number {i} with a grey coat" for i in range(9)]
SPLITS = {"train": TRAIN[:5], "test": ["a test caption", "another test caption"], "val": ["val one"]}


def test_identity_backend_contract(tmp_path) -> None:
    ann = tmp_path / "annotations.parquet"
    write_annotations(ann, SPLITS, shuffle=True)
    out = tmp_path / "captions_aug.parquet"
    summary = augment_captions(ann, out, IdentityBackend())
    df = pl.read_parquet(out)
    assert df.schema == {"caption_id": pl.Int64, "caption": pl.String, "caption_aug": pl.String,
                         "backend": pl.String}
    assert df["caption_id"].to_list() == [0, 1, 2, 3, 4]
    assert df["caption"].to_list() == TRAIN[:5]
    assert df["caption_aug"].to_list() == TRAIN[:5]
    assert set(df["backend"]) == {"none"}
    assert summary.rows == 5 and summary.computed == 5 and summary.cached == 0
    augment_captions(ann, out, IdentityBackend(), splits=("train", "test"))
    assert pl.read_parquet(out)["caption_id"].to_list() == list(range(7))


def test_cache_reuse_and_new_captions_only(tmp_path) -> None:
    ann, out, cache = tmp_path / "a.parquet", tmp_path / "o.parquet", tmp_path / "cache.sqlite"
    write_annotations(ann, {"train": TRAIN[:4] + [TRAIN[0]], "test": ["t"]})  # one duplicate caption
    first = CountingBackend()
    s1 = augment_captions(ann, out, first, cache_path=cache, batch_size=2)
    assert sorted(first.computed) == sorted(TRAIN[:4])  # duplicate computed once, test split not at all
    assert (s1.cached, s1.computed) == (0, 4)
    df = pl.read_parquet(out)
    assert df["caption_aug"].to_list() == [t.upper() for t in TRAIN[:4] + [TRAIN[0]]]
    first_bytes = out.read_bytes()

    again = CountingBackend()
    s2 = augment_captions(ann, out, again, cache_path=cache, batch_size=2)
    assert again.calls == [] and (s2.cached, s2.computed) == (4, 0)
    assert out.read_bytes() == first_bytes  # byte-identical from the cache

    write_annotations(ann, {"train": TRAIN})
    more = CountingBackend()
    s3 = augment_captions(ann, out, more, cache_path=cache, batch_size=2)
    assert sorted(more.computed) == sorted(TRAIN[4:]) and (s3.cached, s3.computed) == (4, 5)

    changed = CountingBackend(version=2)  # other backend parameters -> other cache keys
    augment_captions(ann, out, changed, cache_path=cache)
    assert sorted(changed.computed) == sorted(TRAIN)


def test_interrupted_run_loses_at_most_one_batch(tmp_path) -> None:
    ann, out, cache = tmp_path / "a.parquet", tmp_path / "o.parquet", tmp_path / "cache.sqlite"
    write_annotations(ann, {"train": TRAIN})
    crashing = CountingBackend(fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        augment_captions(ann, out, crashing, cache_path=cache, batch_size=2)
    assert not out.exists()  # atomic output: nothing half-written
    assert not list(tmp_path.glob(".o.parquet*"))
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 4  # two committed batches
    resumed = CountingBackend()
    augment_captions(ann, out, resumed, cache_path=cache, batch_size=2)
    done_before = {t for call in crashing.calls[:2] for t in call}
    assert sorted(resumed.computed) == sorted(set(TRAIN) - done_before)  # only the rest, incl. the lost batch
    reference = tmp_path / "ref.parquet"
    augment_captions(ann, reference, CountingBackend(), batch_size=4)
    assert out.read_bytes() == reference.read_bytes()


def test_blank_captions_and_blank_outputs(tmp_path) -> None:
    ann, out = tmp_path / "a.parquet", tmp_path / "o.parquet"
    write_annotations(ann, {"train": ["  ", "red coat", "blue bag"]})
    backend = CountingBackend(blank_for=["blue bag"])
    summary = augment_captions(ann, out, backend, cache_path=tmp_path / "c.sqlite")
    assert "  " not in backend.computed
    assert pl.read_parquet(out)["caption_aug"].to_list() == ["  ", "RED COAT", "blue bag"]
    assert (summary.blank, summary.empty_fallback, summary.computed) == (1, 1, 2)
    summary = augment_captions(ann, out, CountingBackend(), cache_path=tmp_path / "c.sqlite")
    assert summary.empty_fallback == 1  # counted again when served from the cache


def test_output_independent_of_input_row_order(tmp_path, synonyms) -> None:
    ann1, ann2 = tmp_path / "a1.parquet", tmp_path / "a2.parquet"
    write_annotations(ann1, {"train": REALISTIC, "test": ["x"]})
    write_annotations(ann2, {"train": REALISTIC, "test": ["x"]}, shuffle=True)
    augment_captions(ann1, tmp_path / "o1.parquet", synonyms)
    augment_captions(ann2, tmp_path / "o2.parquet", synonyms, batch_size=3)
    assert (tmp_path / "o1.parquet").read_bytes() == (tmp_path / "o2.parquet").read_bytes()


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda df: df.drop("caption"), "missing column(s) caption"),
        (lambda df: df.with_columns(pl.col("caption_id").cast(pl.String)), "caption_id is String"),
        (lambda df: df.with_columns(pl.when(pl.col("caption_id") == 2).then(None)
                                    .otherwise(pl.col("caption")).alias("caption")), "caption is null"),
        (lambda df: df.with_columns(pl.when(pl.col("caption_id") == 3).then(1)
                                    .otherwise(pl.col("caption_id")).alias("caption_id")), "caption_id 1 is not unique"),
        (lambda df: df.filter(pl.col("split") != "train"), "no rows with split 'train'"),
    ],
)
def test_bad_annotations_name_the_file_record_and_fix(tmp_path, mutate, problem: str) -> None:
    ann = tmp_path / "a.parquet"
    mutate(write_annotations(ann, SPLITS)).write_parquet(ann)
    with pytest.raises(UserInputError, match=re.escape(problem)) as err:
        read_captions(ann)
    assert str(ann) in str(err.value) and "Fix:" in str(err.value)
    if "null" in problem:
        assert "record 2" in str(err.value)


def test_cli_errors_exit_2_without_traceback(tmp_path, capsys) -> None:
    ann = tmp_path / "a.parquet"
    ann.write_text("not parquet")
    assert main(["augment", "--captions", str(ann), "--out", str(tmp_path / "o.parquet"),
                 "--backend", "none"]) == 2
    err = capsys.readouterr().err
    assert "not a readable Parquet file" in err and "Traceback" not in err
    write_annotations(ann, SPLITS)
    bad_cache = tmp_path / "cache.sqlite"
    bad_cache.write_text("this is not sqlite " * 100)
    assert main(["augment", "--captions", str(ann), "--out", str(tmp_path / "o.parquet"),
                 "--backend", "synonyms", "--cache", str(bad_cache)]) == 2
    assert "not a usable tbps augmentation cache" in capsys.readouterr().err
    assert main(["augment", "--captions", str(tmp_path / "missing.parquet"), "--out",
                 str(tmp_path / "o.parquet"), "--backend", "none"]) == 2
    assert "run `tbps prepare` first" in capsys.readouterr().err


def test_cli_synonyms_end_to_end(tmp_path) -> None:
    ann = tmp_path / "annotations.parquet"
    write_annotations(ann, {"train": REALISTIC, "test": ["a grey coat"]})
    outs = []
    for name, extra in (("o1", ["--cache", str(tmp_path / "c.sqlite")]),
                        ("o2", ["--cache", str(tmp_path / "c.sqlite")]), ("o3", [])):
        out = tmp_path / f"{name}.parquet"
        assert main(["augment", "--captions", str(ann), "--out", str(out), "--backend", "synonyms",
                     "--seed", "7", *extra]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]  # cached, recomputed: byte-identical
    df = pl.read_parquet(tmp_path / "o1.parquet")
    assert df["caption"].to_list() == REALISTIC and set(df["backend"]) == {"synonyms"}
    assert df["caption_aug"].to_list() == SynonymBackend(seed=7)(REALISTIC)
    with AugmentCache(tmp_path / "c.sqlite") as cache:
        assert len(cache) == len(REALISTIC)


# ---------------------------------------------------------------- back-translation


def test_spacing_is_fixed_before_translation() -> None:
    seen: list[list[str]] = []

    def fake(texts, num_beams, max_new_tokens):
        seen.append(list(texts))
        return [t[::-1] for t in texts]

    backend = bt.BackTranslationBackend("a", "b")
    backend._models = (fake, fake)
    assert backend(["red jacket.His bag"]) == ["red jacket. His bag"]
    assert seen[0] == ["red jacket. His bag"]


def test_model_fingerprint_follows_folder_content_not_its_path(tmp_path) -> None:
    assert bt.model_fingerprint("Helsinki-NLP/opus-mt-en-fr") == "Helsinki-NLP/opus-mt-en-fr"
    a = tmp_path / "a"
    a.mkdir()
    (a / "config.json").write_text("{}")
    fp = bt.model_fingerprint(str(a))
    assert fp.startswith("dir-sha256:")
    moved = a.rename(tmp_path / "b")
    assert bt.model_fingerprint(str(moved)) == fp
    (moved / "config.json").write_text('{"d_model": 1}')
    assert bt.model_fingerprint(str(moved)) != fp


def test_make_backend_builds_backends_by_name_and_rejects_unknown_names() -> None:
    assert make_backend("none").name == "none"
    backend = make_backend("backtranslation", num_beams=2, model_en_fr="x", model_fr_en="y")
    assert backend.num_beams == 2 and backend.cache_params()["en_fr"] == "x"
    assert backend.cache_params()["max_new_tokens"] == bt.DEFAULT_MAX_NEW_TOKENS
    with pytest.raises(ValueError, match="unknown augmentation backend"):
        make_backend("eda")


@pytest.fixture(scope="module")
def tiny_marian(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        helper = _load_helper("tiny_marian")
        yield helper.build_tiny_marian_pair(tmp_path_factory.mktemp("marian"))


def test_backtranslation_end_to_end_with_tiny_marian(tmp_path, tiny_marian, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    en_fr, fr_en = tiny_marian
    ann, cache = tmp_path / "annotations.parquet", tmp_path / "bt.sqlite"
    write_annotations(ann, {"train": REALISTIC[:8], "test": ["A test caption."]})
    args = ["augment", "--captions", str(ann), "--backend", "backtranslation", "--model-en-fr", str(en_fr),
            "--model-fr-en", str(fr_en), "--device", "cpu", "--num-beams", "2", "--max-new-tokens", "8",
            "--batch-size", "3"]
    out1 = tmp_path / "bt1.parquet"
    assert main([*args, "--out", str(out1), "--cache", str(cache)]) == 0
    df = pl.read_parquet(out1)
    assert df["caption_id"].to_list() == list(range(8)) and df["caption"].to_list() == REALISTIC[:8]
    assert all(isinstance(s, str) and s.strip() for s in df["caption_aug"])
    assert (df["caption_aug"] != df["caption"]).all()  # random weights: gibberish, but produced
    assert df["caption_aug"].n_unique() > 1  # output depends on the input
    with AugmentCache(cache) as c:
        assert len(c) == 8

    # Rerun: everything from the cache; the models must not even be loaded.
    def no_load(self):
        raise AssertionError("models loaded although every caption is cached")

    monkeypatch.setattr(bt.BackTranslationBackend, "_load", no_load)
    out2 = tmp_path / "bt2.parquet"
    assert main([*args, "--out", str(out2), "--cache", str(cache)]) == 0
    assert out2.read_bytes() == out1.read_bytes()
    monkeypatch.undo()

    # Recomputed without cache, in other batches: same bytes (deterministic beam search,
    # outputs aligned with their captions whatever the batch composition).
    out3 = tmp_path / "bt3.parquet"
    assert main([*args[:-2], "--batch-size", "1", "--out", str(out3)]) == 0
    assert out3.read_bytes() == out1.read_bytes()

    backend = bt.BackTranslationBackend(str(en_fr), str(fr_en), device="cpu", num_beams=2, max_new_tokens=8)
    french, english = backend.translate_pivot(REALISTIC[:2])
    assert len(french) == len(english) == 2 and all(isinstance(f, str) for f in french)


def test_backtranslation_missing_model_is_a_user_error(tmp_path, tiny_marian, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backend = bt.BackTranslationBackend(str(tmp_path / "no-such-model"), str(tiny_marian[1]), device="cpu")
    with pytest.raises(UserInputError, match="cannot load the translation model") as err:
        backend(["a red coat"])
    assert "no-such-model" in str(err.value) and "Fix:" in str(err.value)
