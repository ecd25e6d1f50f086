"""English -> French -> English back-translation with MarianMT (the ``backtranslation`` backend).

The paper back-translates through French with an unnamed MT system (spec §3,
§10 item 14); we record ours: Helsinki-NLP's OPUS-MT Marian models by default,
beam search, no sampling, so a caption always gets the same paraphrase.

transformers is used directly rather than through nlpaug's
``BackTranslationAug``. Read in nlpaug 1.1.11's source
(``nlpaug/model/lang_models/machine_translation_transformers.py``), that
wrapper does accept local folders and a device, but:
- ``generate`` gets only ``max_length`` (default 300): the beam width cannot be
  set, so decoding follows whatever each model's generation config says;
- every call builds a torch ``DataLoader`` with ``num_workers=1``, i.e. starts a
  worker process per direction per call; our cache commits after every batch,
  so that would be two process start-ups per batch;
- the French pivot is not returned (no way to inspect or log it) and models
  are held in a module-global dict for the life of the process.
The direct code below is about 40 lines and sets all of it explicitly.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tbps.data.captions import fix_sentence_spacing
from tbps.errors import UserInputError, input_error

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_EN_FR = "Helsinki-NLP/opus-mt-en-fr"
DEFAULT_FR_EN = "Helsinki-NLP/opus-mt-fr-en"
DEFAULT_NUM_BEAMS = 4
"""OPUS-MT's own generation default; 1 (greedy) is ~2x faster but paraphrases less fluently."""
DEFAULT_MAX_NEW_TOKENS = 256
"""Room for the longest captions (~100 words ~ 150 French tokens); also stops a looping output."""
ALGORITHM_VERSION = 1
"""Bump when a change to this module changes outputs (it is part of the cache key)."""


def model_fingerprint(name_or_dir: str) -> str:
    """What identifies a model's outputs: the content hash of a local folder, else the hub name.

    Hashing a folder's files (not its path) keeps the cache valid when the
    folder moves and invalidates it when the weights change.
    """
    path = Path(name_or_dir)
    if not path.is_dir():
        return name_or_dir
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return f"dir-sha256:{h.hexdigest()}"


TRANSLATE_EXTRA = ("transformers", "sentencepiece")
"""Modules of the ``translate`` extra that MarianMT needs (its tokenizer is a SentencePiece model)."""


def missing_extra_error(missing: list[str], detail: str = "") -> UserInputError:
    return UserInputError(
        f"the backtranslation backend needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
        f"not installed{f' ({detail})' if detail else ''}. Fix: install the translate extra: "
        "pip install 'tbps[translate]' (or use the backend synonyms or none)")


def require_translate_extra() -> None:
    """A clear error, instead of an ImportError deep inside transformers, when the extra is missing."""
    missing = []
    for module in TRANSLATE_EXTRA:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise missing_extra_error(missing)


class _Translator:
    """One MarianMT direction: tokenizer + model on a device."""

    def __init__(self, name_or_dir: str, device: torch.device):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_dir)
            self.model = AutoModelForSeq2SeqLM.from_pretrained(name_or_dir).to(device).eval()
        except ImportError as e:  # a dependency transformers loads lazily for this model
            raise missing_extra_error([getattr(e, "name", None) or "a module"], str(e)[:200]) from None
        except (OSError, ValueError) as e:
            raise input_error(
                name_or_dir, f"cannot load the translation model ({type(e).__name__}: {str(e)[:300]})",
                "pass a local folder saved with save_pretrained, or a hub name that is in the Hugging Face "
                "cache (download it once on a machine with internet, e.g. `hf download "
                f"{name_or_dir}`, then copy ~/.cache/huggingface)") from None
        self.device = device

    def __call__(self, texts: Sequence[str], num_beams: int, max_new_tokens: int) -> list[str]:
        import torch

        batch = self.tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**batch, num_beams=num_beams, do_sample=False,
                                      max_new_tokens=max_new_tokens)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)


class BackTranslationBackend:
    """Paraphrase captions by MarianMT English -> French -> English, batched, on GPU when available."""

    name = "backtranslation"
    default_batch_size = 32
    cacheable = True

    def __init__(self, model_en_fr: str = DEFAULT_EN_FR, model_fr_en: str = DEFAULT_FR_EN,
                 device: str = "auto", num_beams: int = DEFAULT_NUM_BEAMS,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
        if num_beams < 1 or max_new_tokens < 1:
            raise UserInputError(
                f"--num-beams {num_beams} / --max-new-tokens {max_new_tokens}: both must be >= 1. "
                "Fix: pass positive values")
        self.model_en_fr = model_en_fr
        self.model_fr_en = model_fr_en
        self.device = device
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self._models: tuple[_Translator, _Translator] | None = None

    def cache_params(self) -> dict:
        # The device is left out on purpose: CPU and GPU give the same translations
        # up to float rounding, and a cache filled on a GPU node should serve CPU reruns.
        return {"algorithm": ALGORITHM_VERSION, "en_fr": model_fingerprint(self.model_en_fr),
                "fr_en": model_fingerprint(self.model_fr_en), "num_beams": self.num_beams,
                "max_new_tokens": self.max_new_tokens}

    def _load(self) -> tuple[_Translator, _Translator]:
        # Loaded on first use: a fully cached rerun never touches the models.
        if self._models is None:
            from tbps.device import resolve_device

            require_translate_extra()
            device = resolve_device(self.device)
            log.info("loading %s and %s on %s", self.model_en_fr, self.model_fr_en, device)
            self._models = (_Translator(self.model_en_fr, device), _Translator(self.model_fr_en, device))
        return self._models

    def translate_pivot(self, texts: Sequence[str]) -> tuple[list[str], list[str]]:
        """Return (French, back-translated English) for ``texts``."""
        en_fr, fr_en = self._load()
        french = en_fr([fix_sentence_spacing(t) for t in texts], self.num_beams, self.max_new_tokens)
        return french, fr_en(french, self.num_beams, self.max_new_tokens)

    def __call__(self, texts: Sequence[str]) -> list[str]:
        return self.translate_pivot(texts)[1]
