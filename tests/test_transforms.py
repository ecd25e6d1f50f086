"""Image transforms (docs/method.md#image-processing): shapes, per-sample determinism, the pool's op draw and op effects."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from tbps.config import ImageAugConfig
from tbps.data.transforms import (
    NORMALISATIONS,
    POOL_OPS,
    eval_transform,
    simclr_transform,
    train_transform,
)
from tbps.errors import UserInputError

SIZES = [(224, 224), (384, 128), (64, 64)]
RECIPE = train_transform((64, 64))  # the recipe's pool; its op draw does not depend on the image size
MEAN, STD = (torch.tensor(v).view(3, 1, 1) for v in NORMALISATIONS["imagenet"])


def colourful(h=160, w=72, seed=0, mode="RGB") -> Image.Image:
    pixels = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("make", [eval_transform, train_transform, simclr_transform],
                         ids=["eval", "pool", "simclr"])
def test_output_shape_and_dtype(make, size):
    transform = make(size, "imagenet")
    for image in (colourful(), colourful(mode="L"), colourful(mode="RGBA"),
                  TF.to_image(colourful()), TF.to_dtype(TF.to_image(colourful()), torch.float32, scale=True)):
        x = transform(image, 3)
        assert type(x) is torch.Tensor and x.dtype == torch.float32 and x.shape == (3, *size)
        assert torch.isfinite(x).all()


@pytest.mark.parametrize("make", [train_transform, simclr_transform], ids=["pool", "simclr"])
def test_same_seed_same_view_different_seeds_differ(make):
    transform, image = make((64, 64), "imagenet"), colourful()
    views = [transform(image, seed) for seed in range(12)]
    for seed in (0, 5):
        assert torch.equal(transform(image, seed), views[seed])
        assert torch.equal(transform(image, torch.Generator().manual_seed(seed)), views[seed])
    distinct = {v.numpy().tobytes() for v in views}
    assert len(distinct) >= 9  # a few pool draws can leave an image unchanged (e.g. flip+grayscale not firing)
    gen = torch.Generator().manual_seed(1)
    assert not torch.equal(transform(image, gen), transform(image, gen))  # a shared generator moves on (MVS view)


def test_views_do_not_depend_on_or_disturb_the_global_rng():
    transform, image = train_transform((64, 64)), colourful()
    torch.manual_seed(0)
    a = transform(image, 11)
    torch.manual_seed(12345)
    b = transform(image, 11)
    assert torch.equal(a, b)
    torch.manual_seed(0)
    torch.rand(1)
    state = torch.get_rng_state()
    simclr_transform((64, 64))(image, 4)
    transform(image, 4)
    assert torch.equal(state, torch.get_rng_state())


def test_op_pair_is_uniform_with_replacement_over_seeds():
    n = 3600
    counts = Counter(RECIPE.draw_ops(seed) for seed in range(n))
    assert set(counts) == set(itertools.product(POOL_OPS, repeat=2))  # all 36 ordered pairs, same-op included
    expected = n / 36
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 66.6  # 99.9th percentile of chi-square with 35 degrees of freedom
    assert RECIPE.draw_ops(7) == RECIPE.draw_ops(torch.Generator().manual_seed(7))


def test_disabled_pool_is_bilinear_resize_and_normalise_only():
    image = colourful()
    x = train_transform((64, 32), aug=ImageAugConfig(strategy="none"))(image, 0)
    resized = TF.to_dtype(TF.to_image(image.resize((32, 64), Image.Resampling.BILINEAR)), torch.float32, scale=True)
    torch.testing.assert_close(unnormalise(x), resized, atol=1e-5, rtol=0)
    assert torch.equal(x, train_transform((64, 32), aug=ImageAugConfig(strategy="none"))(image, 1))


def test_erasing_writes_zero_before_normalisation():
    """On a white image only erasing (and rotation corners) can create black pixels: erased pixels must
    normalise to exactly -mean/std, form one rectangle covering 10-20% of the image."""
    transform = train_transform((64, 64), "imagenet")
    white = Image.new("RGB", (40, 90), (255, 255, 255))
    erased_seen = 0
    for seed in range(400):
        ops = RECIPE.draw_ops(seed)
        if sorted(ops) != ["erasing", "hflip"]:
            continue
        x = transform(white, seed)
        black = torch.isclose(x, -MEAN / STD, atol=1e-6).all(dim=0)
        white_px = torch.isclose(x, (1 - MEAN) / STD, atol=1e-6).all(dim=0)
        assert (black | white_px).all()
        if black.any():
            erased_seen += 1
            rows, cols = black.any(dim=1).nonzero(), black.any(dim=0).nonzero()
            box = black[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert box.all()  # one solid rectangle
            assert 0.09 <= black.float().mean() <= 0.21  # area ~U[0.10, 0.20] up to rounding
    assert erased_seen >= 5


def test_grayscale_gives_equal_channels_with_probability_0_1():
    transform = train_transform((32, 32))
    x = TF.to_dtype(TF.to_image(colourful(32, 32)), torch.float32, scale=True)
    luma = (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]).expand(3, -1, -1)
    applied = trials = 0
    for seed in range(6000):
        ops = RECIPE.draw_ops(seed)
        if "grayscale" not in ops and seed >= 300:
            continue  # enough gray-free draws checked
        out = transform.augment(x.clone(), seed)
        gray = torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
        if "grayscale" not in ops:
            assert not gray
        elif ops == ("grayscale", "grayscale"):
            trials += 1
            applied += gray
            assert torch.allclose(out, luma, atol=1e-6) if gray else torch.equal(out, x)
    # P(at least one of two p=0.1 coins) = 0.19; ~167 trials.
    assert 0.09 <= applied / trials <= 0.30


def test_eval_transform_is_deterministic_bicubic():
    image = colourful()
    transform = eval_transform((64, 32), "clip")
    x = transform(image)
    assert torch.equal(x, transform(image, 99))
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALISATIONS["clip"])
    bicubic = TF.to_dtype(TF.to_image(image.resize((32, 64), Image.Resampling.BICUBIC)), torch.float32, scale=True)
    bilinear = TF.to_dtype(TF.to_image(image.resize((32, 64), Image.Resampling.BILINEAR)), torch.float32, scale=True)
    torch.testing.assert_close(x * std + mean, bicubic, atol=1e-5, rtol=0)
    assert not torch.allclose(x * std + mean, bilinear, atol=1e-2)


def test_normalisation_statistics():
    import open_clip

    assert NORMALISATIONS["clip"] == (tuple(open_clip.OPENAI_DATASET_MEAN), tuple(open_clip.OPENAI_DATASET_STD))
    assert NORMALISATIONS["imagenet"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_unknown_normalisation_is_a_user_error():
    with pytest.raises(UserInputError, match="data.normalisation"):
        eval_transform((64, 64), "cifar")


# ----------------------------------------------------------------------------- strategies and single ops

def stack_of(*ops, size=(64, 64), **params):
    """The 'stack' strategy over ``ops`` (one op = that op's single-op row of Table 2)."""
    return train_transform(size, aug=ImageAugConfig(strategy="stack", ops=ops, **params))


@pytest.mark.parametrize("op", ["resized_crop", "erasing", "grayscale", "color_jitter", "color_jitter_hue", "hflip",
                                "vflip", "gaussian_blur", "rotation"])
def test_each_single_op_is_deterministic_per_seed(op):
    transform, image = stack_of(op, grayscale_p=0.5), colourful()
    views = [transform(image, seed) for seed in range(8)]
    assert all(v.shape == (3, 64, 64) and torch.isfinite(v).all() for v in views)
    assert torch.equal(transform(image, 3), views[3])
    assert len({v.numpy().tobytes() for v in views}) >= 2  # the op's randomness shows across seeds


def test_stack_applies_every_op_in_the_listed_order():
    x = TF.to_dtype(TF.to_image(colourful(32, 32)), torch.float32, scale=True).as_subclass(torch.Tensor)
    gray_then_erase = stack_of("grayscale", "erasing", size=(32, 32), grayscale_p=1.0, erasing_p=1.0)
    out = gray_then_erase.augment(x.clone(), 5)
    erased = (out == 0).all(dim=0)
    assert erased.any() and torch.equal(out[0], out[1])  # erased zeros stay gray: erasing ran second
    flips = stack_of("hflip", "vflip", size=(32, 32), flip_p=1.0)
    assert torch.equal(flips.augment(x.clone(), 0), x.flip(-1).flip(-2))
    assert stack_of("hflip", "vflip").draw_ops(0) == ("hflip", "vflip")


def test_pool_draws_from_the_configured_ops():
    transform = train_transform((32, 32), aug=ImageAugConfig(ops=("hflip", "vflip"), pool_draws=3))
    draws = {transform.draw_ops(seed) for seed in range(200)}
    assert set(itertools.chain.from_iterable(draws)) == {"hflip", "vflip"} and len(draws) == 8


def test_op_parameters_follow_the_config():
    image = colourful(64, 64)
    x = TF.to_dtype(TF.to_image(image), torch.float32, scale=True).as_subclass(torch.Tensor)
    # The black corners of a turn by at most 7.5 degrees cover under 9% of a square.
    small = stack_of("rotation", rotation_degrees=7.5).augment(x.clone(), 1)
    assert (small == 0).all(dim=0).float().mean() < 0.09
    hue = stack_of("color_jitter_hue", jitter_hue=0.4).augment(x.clone(), 2)
    assert not torch.allclose(hue, x, atol=1e-3)
    torch.testing.assert_close(hue.amax(0), x.amax(0), atol=1e-5, rtol=0)  # hue keeps HSV value
    # Brightness/contrast/saturation strength 0 is the identity.
    assert torch.equal(stack_of("color_jitter", jitter=0.0).augment(x.clone(), 3), x)
    blurred = stack_of("gaussian_blur", blur_kernel=11).augment(x.clone(), 4)
    assert blurred.std() < x.std()


@pytest.mark.parametrize("strategy", ["autoaugment", "randaugment", "trivialaugment"])
def test_torchvision_policies_act_on_the_uint8_image_per_seed(strategy, monkeypatch):
    transform, image = train_transform((64, 64), aug=ImageAugConfig(strategy=strategy)), colourful()
    seen = []
    original = type(transform.policy).forward

    def spy(self, *inputs):
        seen.append(inputs[0].dtype)
        return original(self, *inputs)

    monkeypatch.setattr(type(transform.policy), "forward", spy)
    views = [transform(image, seed) for seed in range(10)]
    assert set(seen) == {torch.uint8}
    assert all(v.dtype == torch.float32 and v.shape == (3, 64, 64) for v in views)
    assert torch.equal(transform(image, 4), views[4])
    assert len({v.numpy().tobytes() for v in views}) >= 5


def test_randaugment_takes_n_and_m_from_the_config():
    policy = train_transform((32, 32), aug=ImageAugConfig(strategy="randaugment", randaugment_ops=3,
                                                          randaugment_magnitude=5)).policy
    assert (policy.num_ops, policy.magnitude, policy.num_magnitude_bins) == (3, 5, 31)
    assert train_transform((32, 32), aug=ImageAugConfig(strategy="randaugment")).policy.num_ops == 2


def test_default_ops_are_the_recipe_parameters():
    ops = train_transform((64, 64)).ops
    assert tuple(ops) == POOL_OPS
    assert ops["color_jitter"].brightness == ops["color_jitter"].contrast == ops["color_jitter"].saturation == (0.9, 1.1)
    assert ops["color_jitter"].hue is None
    assert ops["rotation"].degrees == [-15.0, 15.0]
    assert ops["resized_crop"].scale == (0.9, 1.0)
    assert ops["grayscale"].p == 0.1 and ops["hflip"].p == 0.5
    assert (ops["erasing"].p, ops["erasing"].scale, ops["erasing"].value) == (0.5, (0.10, 0.20), [0.0])
