"""Training augmentation on the device (docs/method.md#augmentation-on-the-device).

The work is split at the batch boundary:

- in the loader worker, :class:`ViewDraws` resizes the decoded image to the training size (a uint8
  tensor: the only image that crosses to the training process) and draws every view's random
  parameters from the sample's generator. It draws them with the very transform objects of the CPU
  path (their torchvision ``make_params`` and the same coin flips, in the same order, under the same
  seeding), so a sample's parameters are the ones the CPU path would have used for that seed;
- on the training device, :class:`DeviceAugment` turns the uint8 batch into the normalised main view,
  MVS view and SimCLR views with the batched per-image ops of :mod:`tbps.data.batched_ops`.

A view's parameters are a fixed number of *slots*, each an op code (``SKIP`` when a coin said no)
and ``SLOT_WIDTH`` numbers: one float64 tensor of shape (slots, 1 + SLOT_WIDTH) per view, so a
batch collates into one (N, slots, 1 + SLOT_WIDTH) tensor per view (:func:`split_view`). Nothing here touches torch's global
random stream outside the seeded draws, and the device side draws nothing.
"""

from __future__ import annotations

import math

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from tbps.data import batched_ops as ops
from tbps.data.transforms import (
    NORMALISATIONS,
    RandomSource,
    SimCLRTransform,
    TrainTransform,
    _generator,
    _resized_image,
    _seeded_global_rng,
)

DEVICE_OPS = ("resized_crop", "erasing", "grayscale", "color_jitter", "hflip", "vflip", "gaussian_blur",
              "rotation", "radius_blur")
"""Op codes of a slot (index into this tuple). color_jitter covers both jitter ops of the ablation (its
factors say which steps run); radius_blur is the SimCLR views' blur (PIL's GaussianBlur by radius)."""
SKIP = -1
SLOT_WIDTH = 8
_CODE = {name: code for code, name in enumerate(DEVICE_OPS)}
_COINS = (v2.RandomGrayscale, v2.RandomHorizontalFlip, v2.RandomVerticalFlip, v2.RandomErasing)
"""torchvision ops that flip a coin (``torch.rand(1) >= p`` skips) before drawing their parameters."""


def _slot(name: str | None, values=()) -> list[float]:
    values = [float(v) for v in values]
    return [float(SKIP if name is None else _CODE[name]), *values, *[math.nan] * (SLOT_WIDTH - len(values))]


def _probe(height: int, width: int) -> Tensor:
    """A zero-storage CHW tensor of the given size: torchvision's samplers only read the shape."""
    return torch.empty(1).expand(3, height, width)


def _op_slot(name: str, op: v2.Transform, probe: Tensor) -> list[float]:
    """Draw what ``op(probe)`` would draw from torch's global generator, as one slot."""
    if isinstance(op, _COINS) and not bool(torch.rand(1) < op.p):
        return _slot(None)
    params = op.make_params([probe])
    if isinstance(op, v2.ColorJitter):
        factors = [params[k] for k in ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")]
        return _slot("color_jitter", [math.nan if f is None else f for f in factors] + params["fn_idx"].tolist())
    if isinstance(op, v2.RandomRotation):
        return _slot("rotation", [params["angle"]])
    if isinstance(op, v2.RandomResizedCrop):
        return _slot("resized_crop", [params["top"], params["left"], params["height"], params["width"]])
    if isinstance(op, v2.RandomErasing):
        return _slot(None) if params["v"] is None else _slot("erasing", [params[k] for k in "ijhw"])
    if isinstance(op, v2.GaussianBlur):
        return _slot("gaussian_blur", [params["sigma"][0], op.kernel_size[0]])
    if isinstance(op, v2.RandomGrayscale):
        return _slot("grayscale")
    if isinstance(op, v2.RandomHorizontalFlip):
        return _slot("hflip")
    if isinstance(op, v2.RandomVerticalFlip):
        return _slot("vflip")
    raise ValueError(f"no device version of {type(op).__name__} ({name})")


def _pack(slots: list[list[float]]) -> Tensor:
    return torch.tensor(slots, dtype=torch.float64).reshape(len(slots), SLOT_WIDTH + 1)


def split_view(view: Tensor) -> tuple[Tensor, Tensor]:
    """A (batch of) view table(s) -> op codes (int64) and parameters (float64), slot by slot."""
    return view[..., 0].to(torch.int64), view[..., 1:]


class ViewDraws:
    """Loader-worker side: the resized uint8 image and each view's parameters of one sample.

    ``views(image, rng)`` consumes ``rng`` exactly as the CPU path's transforms would, in the CPU path's
    order: main view, MVS view, SimCLR view a, SimCLR view b.
    """

    def __init__(self, train: TrainTransform, *, mvs: bool = False, simclr: SimCLRTransform | None = None):
        if train.policy is not None:
            raise ValueError(f"strategy {train.aug.strategy!r} has no device version")
        self.train, self.mvs, self.simclr = train, mvs, simclr
        self.size = train.size
        self.probe = _probe(*self.size)

    def slots(self) -> int:
        """Slots of a main/MVS view (0 without augmentation)."""
        return {"pool": self.train.aug.pool_draws, "stack": len(self.train.aug.ops)}.get(self.train.aug.strategy, 0)

    def train_view(self, gen: torch.Generator) -> Tensor:
        """The parameters :meth:`TrainTransform.augment` would use (it draws nothing for strategy 'none')."""
        names = self.train.draw_ops(gen)
        slots = []
        if self.train.aug.strategy in ("pool", "stack"):
            with _seeded_global_rng(gen):
                slots = [_op_slot(name, self.train.ops[name], self.probe) for name in names]
        return _pack(slots)

    def simclr_view(self, gen: torch.Generator, source_size: tuple[int, int]) -> Tensor:
        """The parameters of :class:`SimCLRTransform` for an image of ``source_size`` (height, width); the crop
        box becomes the same share of the training-size image, which is what the device crops."""
        crop, jitter, gray, blur, flip = self.simclr.ops.transforms
        height0, width0 = source_size
        h, w = self.size
        with _seeded_global_rng(gen):
            box = crop.make_params([_probe(height0, width0)])
            slots = [_slot("resized_crop", [box["top"] * h / height0, box["left"] * w / width0,
                                            box["height"] * h / height0, box["width"] * w / width0])]
            probe = self.probe
            applied = bool(torch.rand(1) < jitter.p)  # v2.RandomApply's coin: torch.rand(1) >= p skips
            slots.append(_op_slot("color_jitter", jitter.transforms[0], probe) if applied else _slot(None))
            slots.append(_op_slot("grayscale", gray, probe))
            applied = bool(torch.rand(1) < blur.p)
            slots.append(_slot("radius_blur", [blur.transforms[0].draw_radius()]) if applied else _slot(None))
            slots.append(_op_slot("hflip", flip, probe))
        return _pack(slots)

    def __call__(self, image: Image.Image, rng: RandomSource) -> dict:
        gen = _generator(rng)
        base = _resized_image(image, self.size, InterpolationMode.BILINEAR)
        views = {"image": self.train_view(gen)}
        if self.mvs:
            views["image_mvs"] = self.train_view(gen)
        if self.simclr is not None:
            source = (image.height, image.width) if isinstance(image, Image.Image) else tuple(image.shape[-2:])
            views["simclr_a"] = self.simclr_view(gen, source)
            views["simclr_b"] = self.simclr_view(gen, source)
        return {"image": base, "views": views}


def _color_jitter(x: Tensor, params: Tensor) -> Tensor:
    """ColorJitter with per-image factors (NaN = step off) applied in each image's own order."""
    factors, order = params[:, :4], params[:, 4:8].to(torch.int64)
    x = x.clone()
    for position in range(4):
        for step, fn in enumerate(ops.COLOR_STEPS):
            chosen = ((order[:, position] == step) & ~torch.isnan(factors[:, step])).nonzero().squeeze(1)
            if len(chosen):
                where = chosen.to(x.device)
                x[where] = fn(x[where], factors[chosen, step])
    return x


class DeviceAugment:
    """Training-device side: uint8 batch + drawn parameters -> normalised float views, batched.

    ``augment(batch, device)`` returns the batch with ``image`` (and ``image_mvs``, ``simclr_a``,
    ``simclr_b`` when drawn) as normalised float32 tensors on ``device``; the other entries pass
    through unchanged. The op codes and parameters stay on the CPU, where the grouping of images by
    op is decided without waiting for the device.
    """

    def __init__(self, normalisation: str = "imagenet", *, radius_blur_max: float = 2.0):
        self.mean, self.std = NORMALISATIONS[normalisation]
        self.radius_blur_max = radius_blur_max

    def _apply(self, code: int, x: Tensor, params: Tensor) -> Tensor:
        name = DEVICE_OPS[code]
        if name == "resized_crop":
            return ops.resized_crop(x, params[:, :4])
        if name == "erasing":
            return ops.erase(x, params[:, :4])
        if name == "color_jitter":
            return _color_jitter(x, params)
        if name == "rotation":
            return ops.rotate(x, params[:, 0])
        if name == "gaussian_blur":
            return ops.gaussian_blur(x, params[:, 0], int(params[0, 1]))
        if name == "radius_blur":
            return ops.radius_blur(x, params[:, 0], self.radius_blur_max)
        return {"grayscale": ops.grayscale, "hflip": ops.hflip, "vflip": ops.vflip}[name](x)

    def view(self, x: Tensor, table: Tensor) -> Tensor:
        """Apply each image's slots (a collated view table) in order to ``x`` ([0, 1] float, on the device);
        returns [0, 1]."""
        codes, params = split_view(table.cpu())
        x = x.clone()
        for slot in range(codes.shape[1]):
            for code in codes[:, slot].unique().tolist():
                if code == SKIP:
                    continue
                chosen = (codes[:, slot] == code).nonzero().squeeze(1)
                if len(chosen) == len(x):
                    x = self._apply(code, x, params[:, slot])
                else:
                    where = chosen.to(x.device)
                    x[where] = self._apply(code, x[where], params[chosen, slot])
        return x

    def __call__(self, batch: dict, device: torch.device | str) -> dict:
        base = batch["image"].to(device, non_blocking=True)
        x = base.to(torch.float32).mul_(1.0 / 255)  # torchvision's uint8 -> float scaling
        out = {k: v for k, v in batch.items() if k not in ("image", "views")}
        for name, view in batch["views"].items():
            out[name] = ops.normalise(self.view(x, view), self.mean, self.std)
        return out
