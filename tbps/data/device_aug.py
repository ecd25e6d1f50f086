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

import functools
import math
import struct

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
    _view_seed,
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


class _Replay:
    """torchvision's parameter samplers replayed on an explicit generator.

    Each method makes the torch calls of the torchvision ``make_params`` (or coin flip) it names, in the
    same order and with the same arguments, but on ``gen`` instead of torch's global generator: a
    generator seeded with s yields what the global one seeded with s yields, so the values are the
    ones the CPU path draws (tests/test_device_aug.py compares them with torchvision's own samplers).
    This avoids forking and restoring the global generator's state for every view, and torchvision's
    per-call input inspection, which were most of a worker's drawing time.
    """

    def __init__(self, gen: torch.Generator):
        self.gen = gen

    def uniform(self, low: float, high: float) -> float:
        return torch.empty(1).uniform_(low, high, generator=self.gen).item()

    def coin(self, p: float) -> bool:
        """torchvision's ``torch.rand(1) >= p`` skip test, as 'applied'. torch compares a float32 tensor with
        ``p`` rounded to float32; both are float32 values, so comparing them as Python floats is the same."""
        return torch.rand(1, generator=self.gen).item() < _float32(p)

    def randint(self, low: int, high: int) -> int:
        return torch.randint(low, high, size=(1,), generator=self.gen).item()

    def log_uniform(self, log_ratio: tuple[float, float]) -> float:
        return torch.exp(torch.empty(1).uniform_(*log_ratio, generator=self.gen)).item()

    def crop_box(self, op: v2.RandomResizedCrop, height: int, width: int) -> tuple[int, int, int, int]:
        """``RandomResizedCrop.make_params`` for an image of (height, width): (top, left, height, width)."""
        area = height * width
        for _ in range(10):
            target_area = area * self.uniform(*op.scale)
            aspect_ratio = self.log_uniform(_log_ratio(op))
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < w <= width and 0 < h <= height:
                return self.randint(0, height - h + 1), self.randint(0, width - w + 1), h, w
        in_ratio = float(width) / float(height)  # torchvision's fallback: the central crop
        if in_ratio < min(op.ratio):
            w = width
            h = int(round(w / min(op.ratio)))
        elif in_ratio > max(op.ratio):
            h = height
            w = int(round(h * max(op.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def erasing_box(self, op: v2.RandomErasing, height: int, width: int) -> tuple[int, int, int, int] | None:
        """``RandomErasing.make_params`` for a fill value (no noise drawn): (i, j, h, w), or None (nothing erased)."""
        area = height * width
        for _ in range(10):
            erase_area = area * self.uniform(*op.scale)
            aspect_ratio = self.log_uniform(_log_ratio(op))
            h = int(round(math.sqrt(erase_area * aspect_ratio)))
            w = int(round(math.sqrt(erase_area / aspect_ratio)))
            if h < height and w < width:
                return self.randint(0, height - h + 1), self.randint(0, width - w + 1), h, w
        return None

    def jitter(self, op: v2.ColorJitter) -> list[float]:
        """``ColorJitter.make_params``: the four factors (NaN = step off), then the step order."""
        order = torch.randperm(4, generator=self.gen).tolist()
        factors = [math.nan if r is None else float(self.uniform(r[0], r[1]))
                   for r in (op.brightness, op.contrast, op.saturation, op.hue)]
        return factors + order


@functools.cache
def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


@functools.cache
def _log_ratio(op: v2.Transform) -> tuple[float, float]:
    """The op's aspect-ratio range in log space, exactly as torchvision passes it to ``uniform_``."""
    return tuple(float(v) for v in op._log_ratio)


def _op_slot(name: str, op: v2.Transform, draw: _Replay, size: tuple[int, int]) -> list[float]:
    """Draw what ``op`` would draw from torch's global generator on an image of ``size``, as one slot."""
    if isinstance(op, _COINS) and not draw.coin(op.p):
        return _slot(None)
    if isinstance(op, v2.ColorJitter):
        return _slot("color_jitter", draw.jitter(op))
    if isinstance(op, v2.RandomRotation):
        return _slot("rotation", [draw.uniform(*op.degrees)])
    if isinstance(op, v2.RandomResizedCrop):
        return _slot("resized_crop", draw.crop_box(op, *size))
    if isinstance(op, v2.RandomErasing):
        box = draw.erasing_box(op, *size)
        return _slot(None) if box is None else _slot("erasing", box)
    if isinstance(op, v2.GaussianBlur):
        return _slot("gaussian_blur", [draw.uniform(*op.sigma), op.kernel_size[0]])
    if isinstance(op, v2.RandomGrayscale):
        return _slot("grayscale")
    if isinstance(op, v2.RandomHorizontalFlip):
        return _slot("hflip")
    if isinstance(op, v2.RandomVerticalFlip):
        return _slot("vflip")
    raise ValueError(f"no device version of {type(op).__name__} ({name})")


def _view_generator(gen: torch.Generator, view_gen: torch.Generator) -> _Replay:
    """Seed ``view_gen`` as the CPU path seeds the global generator for one view (tbps.data.transforms)."""
    view_gen.manual_seed(_view_seed(gen))
    return _Replay(view_gen)


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
        erasing = train.ops.get("erasing")
        if erasing is not None and erasing.value is None:
            raise ValueError("random-noise erasing (value=None) has no device version")

    def slots(self) -> int:
        """Slots of a main/MVS view (0 without augmentation)."""
        return {"pool": self.train.aug.pool_draws, "stack": len(self.train.aug.ops)}.get(self.train.aug.strategy, 0)

    def train_view(self, gen: torch.Generator) -> Tensor:
        """The parameters :meth:`TrainTransform.augment` would use (it draws nothing for strategy 'none')."""
        return _pack(self._train_slots(gen, torch.Generator()))

    def simclr_view(self, gen: torch.Generator, source_size: tuple[int, int]) -> Tensor:
        """The parameters of :class:`SimCLRTransform` for an image of ``source_size`` (height, width); the crop
        box becomes the same share of the training-size image, which is what the device crops."""
        return _pack(self._simclr_slots(gen, source_size, torch.Generator()))

    def _train_slots(self, gen: torch.Generator, view_gen: torch.Generator) -> list[list[float]]:
        names = self.train.draw_ops(gen)
        if self.train.aug.strategy not in ("pool", "stack"):
            return []
        draw = _view_generator(gen, view_gen)
        return [_op_slot(name, self.train.ops[name], draw, self.size) for name in names]

    def _simclr_slots(self, gen: torch.Generator, source_size: tuple[int, int],
                      view_gen: torch.Generator) -> list[list[float]]:
        crop, jitter, gray, blur, flip = self.simclr.ops.transforms
        height0, width0 = source_size
        h, w = self.size
        draw = _view_generator(gen, view_gen)
        top, left, box_h, box_w = draw.crop_box(crop, height0, width0)
        slots = [_slot("resized_crop", [top * h / height0, left * w / width0, box_h * h / height0, box_w * w / width0])]
        slots.append(_slot("color_jitter", draw.jitter(jitter.transforms[0])) if draw.coin(jitter.p) else _slot(None))
        slots.append(_op_slot("grayscale", gray, draw, self.size))
        radius = blur.transforms[0].sigma
        slots.append(_slot("radius_blur", [draw.uniform(*radius)]) if draw.coin(blur.p) else _slot(None))
        slots.append(_op_slot("hflip", flip, draw, self.size))
        return slots

    def __call__(self, image: Image.Image, rng: RandomSource) -> dict:
        gen, view_gen = _generator(rng), torch.Generator()  # one scratch generator, reseeded per view
        base = _resized_image(image, self.size, InterpolationMode.BILINEAR)
        views = {"image": self._train_slots(gen, view_gen)}
        if self.mvs:
            views["image_mvs"] = self._train_slots(gen, view_gen)
        if self.simclr is not None:
            source = (image.height, image.width) if isinstance(image, Image.Image) else tuple(image.shape[-2:])
            views["simclr_a"] = self._simclr_slots(gen, source, view_gen)
            views["simclr_b"] = self._simclr_slots(gen, source, view_gen)
        # One tensor for all views (a torch.tensor call costs more than the rows it holds), split per view.
        tables = _pack([row for slots in views.values() for row in slots]).split([len(v) for v in views.values()])
        return {"image": base, "views": dict(zip(views, tables))}


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
