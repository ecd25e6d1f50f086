"""Image transforms (spec §4): evaluation, the training augmentation pool, SimCLR views.

Every transform maps a PIL image (or a CHW tensor: uint8, or float in [0, 1]) to a normalised
float32 CHW tensor of the model's (H, W). Training transforms are called as
``transform(image, rng)`` with ``rng`` a per-sample ``torch.Generator`` (or an int seed), so a
sample's augmentation depends on its own seed only, never on worker or epoch interleaving.

Per-sample determinism: the random choices that are ours (which 2 of the 6 pool ops) come
straight from ``rng``. The torchvision v2 ops keep their exact parameter samplers, which draw
from torch's global CPU generator; each call therefore runs them inside
``torch.random.fork_rng`` with that generator seeded from ``rng`` and restored afterwards, so
the global random stream outside the call is untouched. (Safe in DataLoader worker processes;
not for several threads sharing one process.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from PIL import Image, ImageFilter
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from tbps.errors import UserInputError

NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # the official implementation's
    # CLIP pre-training's, as open_clip.OPENAI_DATASET_MEAN/STD (not imported: keeps loader workers light)
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
POOL_OPS = ("color_jitter", "rotation", "resized_crop", "grayscale", "hflip", "erasing")
"""The augmentation pool, in the spec's order; indices into this tuple are what gets drawn."""
POOL_DRAWS = 2

RandomSource = torch.Generator | int
ImageInput = Image.Image | Tensor


def normalisation_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if name not in NORMALISATIONS:
        raise UserInputError(f"data.normalisation={name!r}: unknown. Fix: use one of {sorted(NORMALISATIONS)}")
    return NORMALISATIONS[name]


def _size(image_size) -> tuple[int, int]:
    h, w = (int(v) for v in image_size)
    if h <= 0 or w <= 0:
        raise UserInputError(f"image size {[h, w]}: must be positive (height, width)")
    return h, w


def _generator(rng: RandomSource) -> torch.Generator:
    if isinstance(rng, torch.Generator):
        return rng
    if isinstance(rng, bool) or not isinstance(rng, int):
        raise TypeError(f"rng must be a torch.Generator or an int seed, got {type(rng).__name__}")
    return torch.Generator().manual_seed(rng)


@contextmanager
def _seeded_global_rng(gen: torch.Generator) -> Iterator[None]:
    """Run torchvision's samplers on torch's global CPU generator, seeded from ``gen``, then restore it."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def _rgb(image: ImageInput) -> ImageInput:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a CHW RGB tensor, got shape {tuple(image.shape)}")
    return image


def _to_float(image: ImageInput) -> Tensor:
    """PIL or uint8 -> float32 in [0, 1]; a float tensor is taken to be in [0, 1] already."""
    x = TF.to_image(image) if isinstance(image, Image.Image) else image
    return TF.to_dtype(x, torch.float32, scale=True)


def _resized(image: ImageInput, size: tuple[int, int], interpolation: InterpolationMode) -> Tensor:
    image = TF.resize(_rgb(image), list(size), interpolation=interpolation, antialias=True)
    # Bicubic overshoots on float tensors; PIL's uint8 output is clipped the same way.
    return _to_float(image).clamp_(0.0, 1.0)


class _Normalise:
    def __init__(self, normalisation: str):
        self.mean, self.std = normalisation_stats(normalisation)

    def __call__(self, x: Tensor) -> Tensor:
        return TF.normalize(x, list(self.mean), list(self.std)).as_subclass(Tensor)


class EvalTransform:
    """RGB, bicubic antialiased resize to (H, W), [0, 1], normalise. Deterministic."""

    def __init__(self, image_size, normalisation: str = "imagenet"):
        self.size = _size(image_size)
        self.normalise = _Normalise(normalisation)

    def __call__(self, image: ImageInput, rng: RandomSource | None = None) -> Tensor:
        return self.normalise(_resized(image, self.size, InterpolationMode.BICUBIC))


def pool_ops(image_size) -> dict[str, v2.Transform]:
    """The six pool ops with the recipe's parameters; they act on [0, 1] float tensors."""
    h, w = _size(image_size)
    return {
        "color_jitter": v2.ColorJitter(brightness=(0.9, 1.1), contrast=(0.9, 1.1), saturation=(0.9, 1.1), hue=0),
        "rotation": v2.RandomRotation(degrees=(-15.0, 15.0), interpolation=InterpolationMode.NEAREST, fill=0),
        "resized_crop": v2.RandomResizedCrop((h, w), scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3),
                                             interpolation=InterpolationMode.BILINEAR, antialias=True),
        "grayscale": v2.RandomGrayscale(p=0.1),
        "hflip": v2.RandomHorizontalFlip(p=0.5),
        "erasing": v2.RandomErasing(p=0.5, scale=(0.10, 0.20), ratio=(0.3, 3.3), value=0),
    }


class PoolTransform:
    """Training view: RGB, bilinear resize, [0, 1], 2 of the 6 pool ops (with replacement, in draw order), normalise.

    With ``enabled=False`` only the resize and normalisation remain (no augmentation).
    """

    def __init__(self, image_size, normalisation: str = "imagenet", *, enabled: bool = True):
        self.size = _size(image_size)
        self.enabled = enabled
        self.ops = pool_ops(self.size)
        self.normalise = _Normalise(normalisation)

    @staticmethod
    def draw_ops(rng: RandomSource) -> tuple[str, ...]:
        """Uniform draw of ``POOL_DRAWS`` op names with replacement (advances ``rng``)."""
        picks = torch.randint(0, len(POOL_OPS), (POOL_DRAWS,), generator=_generator(rng))
        return tuple(POOL_OPS[int(i)] for i in picks)

    def augment(self, x: Tensor, rng: RandomSource) -> Tensor:
        """Apply a fresh op draw to a [0, 1] tensor of the target size; returns [0, 1] (before normalising)."""
        gen = _generator(rng)
        names = self.draw_ops(gen)
        with _seeded_global_rng(gen):
            for name in names:
                x = self.ops[name](x)
        return x

    def __call__(self, image: ImageInput, rng: RandomSource) -> Tensor:
        x = _resized(image, self.size, InterpolationMode.BILINEAR)
        if self.enabled:
            x = self.augment(x, rng)
        return self.normalise(x)


class PILGaussianBlur(torch.nn.Module):
    """MoCo-v2's blur: PIL ``GaussianBlur`` with radius σ ~ U[sigma], σ drawn from torch's global generator.

    MoCo-v2 blurs PIL images this way, with no kernel size; it is also ~30x faster than
    torchvision's dense 2-D convolution with a 23x23 kernel (about 2.5 ms vs 80 ms at 224x224).
    """

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)):
        super().__init__()
        self.sigma = sigma

    def forward(self, image: Image.Image) -> Image.Image:
        radius = float(torch.empty(1).uniform_(*self.sigma))
        return image.filter(ImageFilter.GaussianBlur(radius=radius))


class SimCLRTransform:
    """MoCo-v2 view: RRC scale [0.2, 1], jitter 0.4/0.4/0.4/0.1 p=0.8, grayscale p=0.2, blur p=0.5, flip, normalise.

    As in MoCo-v2 the ops run on the PIL image (the crop on the original decoded image), then
    it becomes a [0, 1] tensor and is normalised.
    """

    def __init__(self, image_size, normalisation: str = "imagenet"):
        self.size = _size(image_size)
        self.ops = v2.Compose([
            v2.RandomResizedCrop(self.size, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                                 interpolation=InterpolationMode.BILINEAR, antialias=True),
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([PILGaussianBlur((0.1, 2.0))], p=0.5),
            v2.RandomHorizontalFlip(p=0.5),
        ])
        self.normalise = _Normalise(normalisation)

    def __call__(self, image: ImageInput, rng: RandomSource) -> Tensor:
        if isinstance(image, Tensor):
            image = TF.to_pil_image(_to_float(_rgb(image)))
        with _seeded_global_rng(_generator(rng)):
            image = self.ops(_rgb(image))
        return self.normalise(_to_float(image))


def eval_transform(image_size, normalisation: str = "imagenet") -> EvalTransform:
    return EvalTransform(image_size, normalisation)


def train_pool_transform(image_size, normalisation: str = "imagenet", *, enabled: bool = True) -> PoolTransform:
    return PoolTransform(image_size, normalisation, enabled=enabled)


def simclr_transform(image_size, normalisation: str = "imagenet") -> SimCLRTransform:
    return SimCLRTransform(image_size, normalisation)
