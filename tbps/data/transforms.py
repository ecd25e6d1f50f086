"""Image transforms (docs/method.md#image-processing): evaluation, training augmentation, SimCLR views.

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

from tbps.config import RECIPE_POOL_OPS, ImageAugConfig
from tbps.errors import UserInputError

NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # the official implementation's
    # CLIP pre-training's, as open_clip.OPENAI_DATASET_MEAN/STD (not imported: keeps loader workers light)
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
POOL_OPS = RECIPE_POOL_OPS
"""The augmentation pool, in the pool table's order; indices into ``ImageAugConfig.ops`` are what gets drawn."""
CROP_RATIO = (3 / 4, 4 / 3)
ERASING_RATIO = (0.3, 3.3)

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


def _view_seed(gen: torch.Generator) -> int:
    """The seed one view's samplers run from, drawn from ``gen`` (the device path replays the same draw)."""
    return int(torch.randint(0, 2**62, (1,), generator=gen))


@contextmanager
def _seeded_global_rng(gen: torch.Generator) -> Iterator[None]:
    """Run torchvision's samplers on torch's global CPU generator, seeded from ``gen``, then restore it."""
    seed = _view_seed(gen)
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


def _resized_image(image: ImageInput, size: tuple[int, int], interpolation: InterpolationMode) -> Tensor:
    """RGB, antialiased resize to ``size``; a PIL image becomes a uint8 tensor, a tensor keeps its dtype."""
    image = TF.resize(_rgb(image), list(size), interpolation=interpolation, antialias=True)
    return TF.to_image(image).as_subclass(Tensor) if isinstance(image, Image.Image) else image


def _resized(image: ImageInput, size: tuple[int, int], interpolation: InterpolationMode) -> Tensor:
    # Bicubic overshoots on float tensors; PIL's uint8 output is clipped the same way.
    return _to_float(_resized_image(image, size, interpolation)).clamp_(0.0, 1.0)


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


def image_ops(image_size, aug: ImageAugConfig | None = None) -> dict[str, v2.Transform]:
    """Every single op of the ablation (paper Table 2) with ``aug``'s parameters; they act on [0, 1] float
    tensors of the training size. The defaults give the recipe's pool ops exactly."""
    aug = aug or ImageAugConfig()
    h, w = _size(image_size)
    jitter = (1.0 - aug.jitter, 1.0 + aug.jitter)
    return {
        "color_jitter": v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=0),
        "color_jitter_hue": v2.ColorJitter(hue=aug.jitter_hue),
        "rotation": v2.RandomRotation(degrees=(-aug.rotation_degrees, aug.rotation_degrees),
                                      interpolation=InterpolationMode.NEAREST, fill=0),
        "resized_crop": v2.RandomResizedCrop((h, w), scale=(aug.crop_min_scale, 1.0), ratio=CROP_RATIO,
                                             interpolation=InterpolationMode.BILINEAR, antialias=True),
        "grayscale": v2.RandomGrayscale(p=aug.grayscale_p),
        "hflip": v2.RandomHorizontalFlip(p=aug.flip_p),
        "vflip": v2.RandomVerticalFlip(p=aug.flip_p),
        "erasing": v2.RandomErasing(p=aug.erasing_p, scale=tuple(aug.erasing_area), ratio=ERASING_RATIO, value=0),
        "gaussian_blur": v2.GaussianBlur(aug.blur_kernel, sigma=tuple(aug.blur_sigma)),
    }


def policy_transform(aug: ImageAugConfig) -> v2.Transform | None:
    """The torchvision policy of an auto-augment strategy (uint8 input), or None for the other strategies."""
    if aug.strategy == "autoaugment":
        return v2.AutoAugment()  # the default ImageNet policy
    if aug.strategy == "randaugment":
        return v2.RandAugment(num_ops=aug.randaugment_ops, magnitude=aug.randaugment_magnitude)
    if aug.strategy == "trivialaugment":
        return v2.TrivialAugmentWide()
    return None


class TrainTransform:
    """Training view: RGB, bilinear resize, the configured augmentation, normalise (docs/method.md#augmentation-pool).

    'pool' (the recipe): ``pool_draws`` of ``ops`` uniformly with replacement, in draw order, on [0, 1]
    tensors; 'stack': every op of ``ops`` in order; the torchvision policies act on the resized uint8
    image before scaling (docs/method.md#d29-multi-augmentation-strategies); 'none': no augmentation.
    """

    def __init__(self, image_size, normalisation: str = "imagenet", aug: ImageAugConfig | None = None):
        self.size = _size(image_size)
        self.aug = aug or ImageAugConfig()
        self.ops = {name: op for name, op in image_ops(self.size, self.aug).items() if name in self.aug.ops}
        self.policy = policy_transform(self.aug)
        self.normalise = _Normalise(normalisation)

    def draw_ops(self, rng: RandomSource) -> tuple[str, ...]:
        """The ops of one view, in order: the pool draws ``pool_draws`` uniformly with replacement (advancing
        ``rng``); 'stack' takes every op; the other strategies have none."""
        if self.aug.strategy == "pool":
            names = self.aug.ops
            picks = torch.randint(0, len(names), (self.aug.pool_draws,), generator=_generator(rng))
            return tuple(names[int(i)] for i in picks)
        return tuple(self.aug.ops) if self.aug.strategy == "stack" else ()

    def augment(self, x: Tensor, rng: RandomSource) -> Tensor:
        """Apply a fresh draw of the pool or the stack to a [0, 1] tensor of the target size; returns [0, 1]."""
        gen = _generator(rng)
        names = self.draw_ops(gen)
        with _seeded_global_rng(gen):
            for name in names:
                x = self.ops[name](x)
        return x

    def __call__(self, image: ImageInput, rng: RandomSource) -> Tensor:
        if self.policy is not None:
            x = TF.to_dtype(_resized_image(image, self.size, InterpolationMode.BILINEAR), torch.uint8, scale=True)
            with _seeded_global_rng(_generator(rng)):
                x = self.policy(x)
            return self.normalise(_to_float(x))
        x = _resized(image, self.size, InterpolationMode.BILINEAR)
        if self.aug.strategy in ("pool", "stack"):
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

    def draw_radius(self) -> float:
        """σ from torch's global generator (the device path replays this call: tbps.data.device_aug)."""
        return float(torch.empty(1).uniform_(*self.sigma))

    def forward(self, image: Image.Image) -> Image.Image:
        return image.filter(ImageFilter.GaussianBlur(radius=self.draw_radius()))


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


def train_transform(image_size, normalisation: str = "imagenet", aug: ImageAugConfig | None = None) -> TrainTransform:
    return TrainTransform(image_size, normalisation, aug)


def simclr_transform(image_size, normalisation: str = "imagenet") -> SimCLRTransform:
    return SimCLRTransform(image_size, normalisation)
