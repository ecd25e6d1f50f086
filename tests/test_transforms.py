"""Image transforms (spec §4): shapes, per-sample determinism, the pool's op draw and op effects."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from tbps.data.transforms import (
    NORMALISATIONS,
    POOL_OPS,
    PoolTransform,
    eval_transform,
    simclr_transform,
    train_pool_transform,
)
from tbps.errors import UserInputError

SIZES = [(224, 224), (384, 128), (64, 64)]
MEAN, STD = (torch.tensor(v).view(3, 1, 1) for v in NORMALISATIONS["imagenet"])


def colourful(h=160, w=72, seed=0, mode="RGB") -> Image.Image:
    pixels = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("make", [eval_transform, train_pool_transform, simclr_transform],
                         ids=["eval", "pool", "simclr"])
def test_output_shape_and_dtype(make, size):
    transform = make(size, "imagenet")
    for image in (colourful(), colourful(mode="L"), colourful(mode="RGBA"),
                  TF.to_image(colourful()), TF.to_dtype(TF.to_image(colourful()), torch.float32, scale=True)):
        x = transform(image, 3)
        assert type(x) is torch.Tensor and x.dtype == torch.float32 and x.shape == (3, *size)
        assert torch.isfinite(x).all()


@pytest.mark.parametrize("make", [train_pool_transform, simclr_transform], ids=["pool", "simclr"])
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
    transform, image = train_pool_transform((64, 64)), colourful()
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
    counts = Counter(PoolTransform.draw_ops(seed) for seed in range(n))
    assert set(counts) == set(itertools.product(POOL_OPS, repeat=2))  # all 36 ordered pairs, same-op included
    expected = n / 36
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 66.6  # 99.9th percentile of chi-square with 35 degrees of freedom
    assert PoolTransform.draw_ops(7) == PoolTransform.draw_ops(torch.Generator().manual_seed(7))


def test_disabled_pool_is_bilinear_resize_and_normalise_only():
    image = colourful()
    x = train_pool_transform((64, 32), enabled=False)(image, 0)
    resized = TF.to_dtype(TF.to_image(image.resize((32, 64), Image.Resampling.BILINEAR)), torch.float32, scale=True)
    torch.testing.assert_close(unnormalise(x), resized, atol=1e-5, rtol=0)
    assert torch.equal(x, train_pool_transform((64, 32), enabled=False)(image, 1))


def test_erasing_writes_zero_before_normalisation():
    """On a white image only erasing (and rotation corners) can create black pixels: erased pixels must
    normalise to exactly -mean/std, form one rectangle covering 10-20% of the image."""
    transform = train_pool_transform((64, 64), "imagenet")
    white = Image.new("RGB", (40, 90), (255, 255, 255))
    erased_seen = 0
    for seed in range(400):
        ops = PoolTransform.draw_ops(seed)
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
    transform = train_pool_transform((32, 32))
    x = TF.to_dtype(TF.to_image(colourful(32, 32)), torch.float32, scale=True)
    luma = (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]).expand(3, -1, -1)
    applied = trials = 0
    for seed in range(6000):
        ops = PoolTransform.draw_ops(seed)
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
