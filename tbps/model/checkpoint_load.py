"""Loading weights into a model with a complete report and no silent partial loads.

Pretrained CLIP weights come through open_clip: a tag such as ``"openai"`` is resolved by
``open_clip.get_pretrained_cfg`` and fetched (or found in its cache) by
``open_clip.download_pretrained``; a local file is read with open_clip's own reader. The tensors
then go through :func:`load_checkpoint_weights` rather than ``open_clip.create_model(pretrained=...)``
because open_clip discards the load result and always resizes position embeddings bicubically;
here every missing, unexpected or mis-shaped key is reported, and the grid is resized bilinearly
(docs/method.md#d10-resolution: "bilinearly interpolated position embeddings") with open_clip's ``resize_pos_embed``.

A ``final.pt`` written by ``tbps train`` is accepted as pretrained weights too: its CLIP weights
(the ``clip.`` part of the saved TBPSModel) load into a model of the same architecture, so a
model of ours can stand in for pre-trained CLIP (the synthetic compression and few-shot probes).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
from open_clip.factory import load_state_dict as open_clip_read_state_dict
from open_clip.model import resize_pos_embed
from torch import nn

from tbps.errors import UserInputError, input_error

log = logging.getLogger(__name__)

_LISTED = 10  # keys named per category in an error message; the report keeps all of them
_VISUAL_POS = "visual.positional_embedding"


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """In the model, absent from the checkpoint."""
    unexpected: list[str] = field(default_factory=list)
    """In the checkpoint, absent from the model."""
    shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    """(key, checkpoint shape, model shape)."""
    ignored: list[str] = field(default_factory=list)
    """Checkpoint keys dropped on purpose (``ignore_prefixes``)."""
    resized: list[str] = field(default_factory=list)
    """Keys whose values were interpolated to the model's shape (position-embedding grids)."""

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded from {self.source}"]
        for name, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                           ("shape mismatches", self.shape_mismatches), ("ignored", self.ignored),
                           ("resized", self.resized)):
            if keys:
                parts.append(f"{len(keys)} {name}")
        return ", ".join(parts)


def _listing(title: str, items: list) -> str:
    shown = "; ".join(str(i) for i in items[:_LISTED])
    more = f" ... and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return f"{title} ({len(items)}): {shown}{more}"


def _prefix_hint(ckpt_keys: list[str], model_keys: list[str]) -> str | None:
    """Name a whole-checkpoint key-prefix difference (e.g. 'clip.'), the usual cause of a total misfit."""
    model_set = set(model_keys)
    ckpt_heads = {k.split(".", 1)[0] for k in ckpt_keys}
    if len(ckpt_heads) == 1 and all("." in k for k in ckpt_keys):
        prefix = next(iter(ckpt_heads)) + "."
        if {k[len(prefix):] for k in ckpt_keys} & model_set:
            return (f"every checkpoint key starts with {prefix!r} but the model's do not: strip that prefix "
                    f"(or load the whole wrapper model it came from)")
    for prefix in sorted({k.split(".", 1)[0] + "." for k in model_keys if "." in k}):
        if {prefix + k for k in ckpt_keys} & model_set:
            return (f"the checkpoint's keys lack the model's {prefix!r} prefix: it belongs to the sub-module "
                    f"{prefix[:-1]!r} (for open_clip weights set model.pretrained to the file instead)")
    return None


def load_checkpoint_weights(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    *,
    strict: bool = True,
    source: str | os.PathLike = "<state dict>",
    ignore_prefixes: tuple[str, ...] = (),
) -> LoadReport:
    """Load ``state_dict`` into ``model`` and report every key's fate.

    With ``strict`` any missing or unexpected key raises :class:`UserInputError` naming ``source``
    and listing the keys, and nothing is loaded. Shape mismatches always raise (a partly loaded
    tensor set is never what anyone wants). Without ``strict`` missing/unexpected keys are logged
    as warnings and listed in the report. Keys under ``ignore_prefixes`` are dropped and reported
    (e.g. ``("simclr_head.",)`` to evaluate a full-preset checkpoint without building the head).
    """
    source = str(source)
    report = LoadReport(source=source)
    wanted = model.state_dict()
    usable: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if any(key.startswith(p) for p in ignore_prefixes):
            report.ignored.append(key)
        elif key not in wanted:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(wanted[key].shape):
            report.shape_mismatches.append((key, tuple(value.shape), tuple(wanted[key].shape)))
        else:
            usable[key] = value
    report.missing = [k for k in wanted if k not in state_dict]

    fatal = bool(report.shape_mismatches) or (strict and not report.complete)
    if fatal:
        problems = [
            _listing(title, items)
            for title, items in (("missing from the checkpoint", report.missing),
                                 ("not in the model", report.unexpected),
                                 ("wrong shape", [f"{k} is {tuple(a)} in the checkpoint, {tuple(b)} in the model"
                                                  for k, a, b in report.shape_mismatches]))
            if items
        ]
        hint = _prefix_hint(list(state_dict), list(wanted))
        err = input_error(
            source,
            f"checkpoint does not fit the {type(model).__name__} model ({'; '.join(problems)})",
            hint or "use a checkpoint made for this model.name and model.image_size, or set model.pretrained "
                    "to null to start from random weights",
        )
        err.report = report  # type: ignore[attr-defined]
        raise err
    for title, items in (("missing keys left as initialised", report.missing),
                         ("unexpected keys skipped", report.unexpected)):
        if items:
            log.warning("%s: %s", source, _listing(title, items))
    model.load_state_dict(usable, strict=False)
    report.loaded = list(usable)
    log.info("%s", report.summary())
    return report


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file with open_clip's reader (safetensors, or torch.load with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "weights file not found", "check model.pretrained (a tag such as 'openai', "
                          "a path to an existing file, or null)")
    try:
        state = open_clip_read_state_dict(str(path), device="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad input file
        raise input_error(path, f"cannot be read as weights ({type(e).__name__}: {e})",
                          "use an open_clip state dict (.pt/.bin saved with torch.save, or .safetensors); "
                          "TorchScript archives (OpenAI's original .pt) cannot be read with weights_only=True") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise input_error(path, "does not hold a flat name -> tensor state dict", "save model.state_dict()")
    return state


def resolve_pretrained(model_name: str, pretrained: str) -> Path:
    """A pretrained tag or local path -> the weights file (tags via open_clip's cache/download)."""
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if tag_cfg:
        try:
            return Path(open_clip.download_pretrained(tag_cfg))
        except Exception as e:  # noqa: BLE001 - network/cache failures all have the same fix
            raise UserInputError(
                f"model.pretrained={pretrained!r}: open_clip could not find {model_name} weights in its cache "
                f"nor download them ({type(e).__name__}: {e}). Fix: run once with network access (the file is "
                f"cached under ~/.cache/huggingface), or download it elsewhere and set model.pretrained to the "
                f"local file's path"
            ) from e
    path = Path(pretrained).expanduser()
    if not path.is_file():
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise UserInputError(
            f"model.pretrained={pretrained!r}: neither an open_clip tag for {model_name} nor an existing file. "
            f"Fix: use one of the tags {tags}, a path to a weights file or to a `tbps train` final.pt, or null "
            f"for random initialisation"
        )
    return path


def resize_position_grid(state_dict: dict[str, torch.Tensor], clip_model: nn.Module, source: str) -> bool:
    """Interpolate a ViT checkpoint's square position grid to the model's (H/p, W/p) grid, in place.

    Returns whether a resize happened. open_clip's helper infers the old grid as a square, so a
    non-square old grid cannot be resized and is left to fail as a shape mismatch, with a clearer note.
    """
    old = state_dict.get(_VISUAL_POS)
    new = getattr(getattr(clip_model, "visual", None), "positional_embedding", None)
    if old is None or new is None or old.shape == new.shape or old.ndim != 2:
        return False
    side = math.isqrt(old.shape[0] - 1)
    if side * side != old.shape[0] - 1:
        raise input_error(
            source, f"its position grid has {old.shape[0] - 1} cells, not a square grid, so it cannot be "
                    f"interpolated to the model's {tuple(clip_model.visual.grid_size)} grid",
            "set model.image_size to the size the checkpoint was trained at")
    resize_pos_embed(state_dict, clip_model, interpolation="bilinear", antialias=False)
    log.info("%s: position grid %dx%d interpolated bilinearly to %s", source, side, side,
             tuple(clip_model.visual.grid_size))
    return True


_CLIP_PREFIX = "clip."
_HEAD_PREFIX = "simclr_head."


def read_tbps_checkpoint(path: Path) -> dict | None:
    """The payload of a ``final.pt``/``last.pt`` written by ``tbps train``, or None for any other file."""
    try:
        # mmap: telling the kinds of file apart must not read a large weights file twice.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a torch zip archive: the open_clip reader reports it
        return None
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and isinstance(state.get("config"), dict):
        return state
    return None


def require_tbps_checkpoint(path: Path) -> dict:
    """:func:`read_tbps_checkpoint` for the tables and probes that need a run's own ``final.pt``."""
    state = read_tbps_checkpoint(path)
    if state is None:
        raise input_error(path, "not a checkpoint written by `tbps train`", "pass the run's train/final.pt")
    return state


def clip_weights_of_checkpoint(state: dict, model_name: str, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The CLIP tensors of a ``tbps train`` checkpoint (``clip.`` stripped) and the head keys left out."""
    saved = state["config"].get("model", {})
    if saved.get("name") != model_name:
        raise input_error(path, f"it is a tbps checkpoint of {saved.get('name')!r}, not of {model_name!r}",
                          f"set model.name to {saved.get('name')!r}, or use a checkpoint of {model_name}")
    if saved.get("drop_text_layers"):
        raise input_error(path, f"its text layers {saved['drop_text_layers']} were dropped, so it no longer has "
                                f"the full {model_name} architecture", "start from a checkpoint without dropped layers")
    weights, head = {}, []
    for key, value in state["model"].items():
        if key.startswith(_CLIP_PREFIX):
            weights[key[len(_CLIP_PREFIX):]] = value
        elif key.startswith(_HEAD_PREFIX):
            head.append(key)  # a training-only branch of the source run, not part of CLIP
        else:
            weights[key] = value  # left to the strict load to report
    return weights, head


def load_pretrained(clip_model: nn.Module, model_name: str, pretrained: str) -> LoadReport:
    """Load pretrained weights (open_clip tag or file, or a ``tbps train`` checkpoint) into an open_clip
    ``CLIP``; every key must fit."""
    path = resolve_pretrained(model_name, pretrained)
    ours = read_tbps_checkpoint(path) if path.suffix != ".safetensors" else None
    ignored: list[str] = []
    if ours is not None:
        state_dict, ignored = clip_weights_of_checkpoint(ours, model_name, path)
    else:
        state_dict = read_weights_file(path)
    theta = state_dict.get("logit_scale")
    if theta is not None and theta.ndim != clip_model.logit_scale.ndim:  # scalar vs [1] across releases
        state_dict["logit_scale"] = theta.reshape(clip_model.logit_scale.shape)
    resized = resize_position_grid(state_dict, clip_model, str(path))
    report = load_checkpoint_weights(clip_model, state_dict, strict=True, source=path)
    if resized:
        report.resized.append(_VISUAL_POS)
    report.ignored.extend(ignored)
    return report
