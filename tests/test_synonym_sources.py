"""Synonym sources of SR/RI/EDA: the table, WordNet restricted to non-identity words, and 'auto'."""

import importlib.util
from pathlib import Path

import pytest

from tbps.config import ExperimentConfig
from tbps.data import synonym_sources
from tbps.data.synonym_sources import (
    SynonymLookup,
    identity_words,
    resolve_synonym_source,
    synonym_source_used,
)
from tbps.errors import UserInputError
from tbps.train import resolve_synonym_source as resolve_for_run


def _helper(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "helpers" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_source_offers_only_the_other_words_of_a_group():
    lookup = SynonymLookup("table")
    assert lookup("pants") == ("trousers",)
    assert lookup("t - shirt") == ("tee", "tee shirt")  # spaCy's spelling of the unit
    assert lookup("Baseball cap") == ("ball cap",)
    assert lookup("big") == ("large",)  # a generic word of the table
    for word in ("black", "coat", "walking", "the", "with"):
        assert lookup(word) == (), word


class _StubWordNet:
    """nlpaug's WordNet model as SynonymLookup uses it: predict(word) -> lemma names."""

    def __init__(self):
        self.asked = []

    def predict(self, word, pos=None):
        self.asked.append(word)
        return {"walking": ["walking", "walk", "red", "pedestrian_walk", "x-ray2", "Walking_Stick"],
                "carrying": ["carrying", "transport", "trousers"]}.get(word, [])


def test_wordnet_source_never_changes_an_identity_word():
    lookup = SynonymLookup("wordnet")
    stub = lookup.__dict__["_wordnet"] = _StubWordNet()
    # WordNet lemmas, minus identity words ('red', 'trousers'), non-words and proper nouns; '_' is a space.
    assert lookup("walking") == ("pedestrian walk", "walk")
    assert lookup("carrying") == ("transport",)
    # Identity words take the table's synonyms or none, without asking WordNet; stop-words none.
    assert lookup("pants") == ("trousers",)
    assert lookup("black") == () and lookup("coat") == () and lookup("woman") == ("lady",)
    assert lookup("the") == () and lookup("man's") == () and lookup("hair") == ()
    assert stub.asked == ["walking", "carrying"]
    assert {"black", "coat", "woman", "girl", "baseball cap", "navy blue", "t-shirt", "backpack"} <= identity_words()


def test_auto_resolves_to_wordnet_only_when_it_is_available(monkeypatch):
    monkeypatch.setattr(synonym_sources, "wordnet_available", lambda: True)
    assert resolve_synonym_source("auto") == "wordnet" and resolve_synonym_source("wordnet") == "wordnet"
    monkeypatch.setattr(synonym_sources, "wordnet_available", lambda: False)
    assert resolve_synonym_source("auto") == "table" and resolve_synonym_source("table") == "table"
    with pytest.raises(UserInputError, match="NLTK_DATA.*data.synonym_source"):
        resolve_synonym_source("wordnet")


def test_a_run_records_the_resolved_source_only_when_it_draws_synonyms(monkeypatch):
    monkeypatch.setattr(synonym_sources, "wordnet_available", lambda: False)
    recipe = ExperimentConfig()
    assert resolve_for_run(recipe) is recipe and synonym_source_used(recipe.data) == "none"
    swap_only = ExperimentConfig()
    swap_only.data.random_swap_alpha = 0.1  # RS draws no synonyms
    assert resolve_for_run(swap_only).data.synonym_source == "auto" and synonym_source_used(swap_only.data) == "none"
    sr = ExperimentConfig()
    sr.data.synonym_replacement_alpha = 0.1
    resolved = resolve_for_run(sr)
    assert resolved.data.synonym_source == "table" and sr.data.synonym_source == "auto"  # a copy
    assert synonym_source_used(resolved.data) == "table" and resolved.sha256() != sr.sha256()
    monkeypatch.setattr(synonym_sources, "wordnet_available", lambda: True)
    assert resolve_for_run(sr).data.synonym_source == "wordnet"


@pytest.fixture()
def tiny_wordnet(tmp_path, monkeypatch):
    nltk_data = pytest.importorskip("nltk.data")
    root = _helper("tiny_wordnet").build_tiny_wordnet(tmp_path / "nltk_data")
    monkeypatch.setattr(nltk_data, "path", [str(root)])
    return root


def test_wordnet_through_nlpaug_on_a_tiny_wordnet_folder(tiny_wordnet):
    assert synonym_sources.wordnet_available()
    assert resolve_synonym_source("auto") == "wordnet"
    lookup = SynonymLookup("wordnet")
    assert lookup("walk") == ("stride", "stroll")
    assert lookup("street") == ("road",)  # 'red' is an identity word: never offered
    assert lookup("young") == ("youthful",)  # neither 'black' nor the proper noun 'Brigham Young'
    assert lookup("carry") == ("hold up", "transport")
    assert lookup("coat") == ()  # an identity word outside the table: WordNet is not asked
    assert lookup("baseball cap") == ("ball cap",)  # the table's, not WordNet's


def test_without_wordnet_data_auto_falls_back_to_the_table(tmp_path, monkeypatch):
    nltk_data = pytest.importorskip("nltk.data")
    monkeypatch.setattr(nltk_data, "path", [str(tmp_path)])
    assert not synonym_sources.wordnet_available()
    assert resolve_synonym_source("auto") == "table"
