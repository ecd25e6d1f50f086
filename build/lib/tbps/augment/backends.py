"""Augmentation backends: what turns a caption into its paraphrase (spec §3 "Offline, once").

- ``backtranslation``: MarianMT English -> French -> English (:mod:`tbps.augment.backtranslation`),
  what the paper does; needs the two translation models.
- ``synonyms``: swaps true synonyms from a shipped table (:mod:`tbps.augment.synonyms`);
  offline, no model, the default of the embedded demo.
- ``none``: ``caption_aug = caption``, so training's back-translation pick
  (probability 0.1) becomes a no-op while the table keeps its shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

BACKENDS = ("none", "synonyms", "backtranslation")


class Backend(Protocol):
    name: str
    default_batch_size: int
    cacheable: bool

    def cache_params(self) -> dict:
        """JSON-serialisable settings that change the output (part of the cache key)."""
        ...

    def __call__(self, texts: Sequence[str]) -> list[str]:
        """One output per input text, in order."""
        ...


class IdentityBackend:
    """``caption_aug = caption`` (backend ``none``); nothing to compute or cache."""

    name = "none"
    default_batch_size = 1 << 20
    cacheable = False

    def cache_params(self) -> dict:
        return {}

    def __call__(self, texts: Sequence[str]) -> list[str]:
        return list(texts)


def make_backend(name: str, *, seed: int = 0, synonym_table: str | Path | None = None,
                 synonym_p: float = 0.5, device: str = "auto", model_en_fr: str | None = None,
                 model_fr_en: str | None = None, num_beams: int | None = None,
                 max_new_tokens: int | None = None) -> Backend:
    """Build a backend by name; options that do not apply to it are ignored."""
    if name == "none":
        return IdentityBackend()
    if name == "synonyms":
        from tbps.augment.synonyms import SynonymBackend, SynonymTable

        return SynonymBackend(SynonymTable.load(synonym_table), aug_p=synonym_p, seed=seed)
    if name == "backtranslation":
        from tbps.augment import backtranslation as bt

        return bt.BackTranslationBackend(
            model_en_fr=model_en_fr or bt.DEFAULT_EN_FR, model_fr_en=model_fr_en or bt.DEFAULT_FR_EN,
            device=device, num_beams=num_beams or bt.DEFAULT_NUM_BEAMS,
            max_new_tokens=max_new_tokens or bt.DEFAULT_MAX_NEW_TOKENS)
    raise ValueError(f"unknown augmentation backend {name!r}; expected one of {BACKENDS}")
