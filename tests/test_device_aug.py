"""Augmentation on the device: the parameters drawn in the worker are the CPU path's, with the recipe's
distributions, and the batched ops reproduce the CPU path's images (docs/method.md#augmentation-on-the-device)."""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from tbps.config import IMAGE_AUG_OPS, ImageAugConfig
from tbps.data import batched_ops
from tbps.data.device_aug import (
    DEVICE_OPS,
    SKIP,
    DeviceAugment,
    ViewDraws,
    _op_slot,
    _Replay,
    _slot,
    split_view,
)
from tbps.data.loader import TrainPairs, pair_table
from tbps.data.transforms import NORMALISATIONS, POOL_OPS, simclr_transform, train_transform
from tbps.shards.index import ShardIndex

STD = torch.tensor(NORMALISATIONS["imagenet"][1]).view(1, 3, 1, 1)
CODE = {name: code for code, name in enumerate(DEVICE_OPS)}
POOL_TOLERANCE = 2e-5
"""Largest CPU-vs-device difference allowed for the pool and ablation ops, in [0, 1] pixel units
(measured: at most 1.4e-5, from the crop's bilinear weights; the other ops agree to 3e-7 or exactly)."""
SIMCLR_MEAN_TOLERANCE = 0.02
"""Mean |CPU - device| allowed for a SimCLR view on smooth images, in [0, 1] pixel units (measured 0.006 at
224 x 224 and 0.013 at 96 x 80): the CPU path crops the original image, jitters and blurs in PIL's uint8
arithmetic and box-blur approximation; the device path crops the resized image (enlarging where the CPU
path may shrink) and works in float with a true Gaussian."""


def smooth(seed: int, h: int = 160, w: int = 72) -> Image.Image:
    """A person-crop-sized image without pixel noise (most real photos are locally smooth)."""
    coarse = (np.random.default_rng(seed).random((h // 4, w // 4, 3)) * 255).astype(np.uint8)
    return Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)


def noise(seed: int, h: int = 160, w: int = 72) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def unnormalised_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) * STD).abs()


def device_views(draws: ViewDraws, images, seeds) -> dict:
    batch = default_collate([draws(image, seed) for image, seed in zip(images, seeds)])
    return batch, DeviceAugment()(batch, "cpu")


# ----------------------------------------------------------------------------- (a) the parameters

class Recorder:
    """Spies on a CPU transform's ops: every parameter set torchvision draws while the CPU path runs."""

    def __init__(self, named_ops: dict):
        self.calls: list[tuple[str, dict]] = []
        for name, op in named_ops.items():
            original = op.make_params

            def spy(flat, name=name, original=original):
                params = original(flat)
                self.calls.append((name, params))
                return params

            op.make_params = spy

    def take(self) -> list[tuple[str, dict]]:
        calls, self.calls = self.calls, []
        return calls


def slot_values(view: torch.Tensor) -> list[tuple[str, list[float]]]:
    codes, params = split_view(view)
    return [(DEVICE_OPS[int(c)], [v for v in p.tolist() if not math.isnan(v)])
            for c, p in zip(codes, params) if int(c) != SKIP]


def recorded_values(name: str, params: dict) -> tuple[str, list[float]] | None:
    if name in ("color_jitter", "color_jitter_hue"):
        factors = [params[k] for k in ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")]
        return "color_jitter", [f for f in factors if f is not None] + params["fn_idx"].tolist()
    if name == "rotation":
        return "rotation", [params["angle"]]
    if name == "resized_crop":
        return "resized_crop", [params[k] for k in ("top", "left", "height", "width")]
    if name == "erasing":
        return None if params["v"] is None else ("erasing", [params[k] for k in "ijhw"])
    if name == "gaussian_blur":
        return "gaussian_blur", [params["sigma"][0]]
    return name, []


@pytest.mark.parametrize("aug", [ImageAugConfig(), ImageAugConfig(strategy="stack", ops=IMAGE_AUG_OPS, jitter=0.3)],
                         ids=["recipe-pool", "stack-of-all-nine"])
def test_worker_draws_are_the_cpu_paths_parameters_seed_for_seed(aug):
    """Both ways: the parameters torchvision draws inside the CPU path, and the slots the device path
    draws for the same sample seed, are the same numbers (main view, then MVS view)."""
    cpu, draws = train_transform((56, 48), aug=aug), ViewDraws(train_transform((56, 48), aug=aug), mvs=True)
    recorder = Recorder(cpu.ops)
    image = smooth(0)
    compared = 0
    for seed in range(250 if aug.strategy == "pool" else 40):
        gen = torch.Generator().manual_seed(seed)
        views = draws(image, seed)["views"]
        for key in ("image", "image_mvs"):
            cpu(image, gen)
            expected = [r for r in (recorded_values(*call) for call in recorder.take()) if r is not None]
            got = slot_values(views[key])
            got = [(name, values[:-1] if name == "gaussian_blur" else values) for name, values in got]  # drop kernel
            assert len(got) == len(expected), seed
            for (name_g, values_g), (name_e, values_e) in zip(got, expected):
                assert name_g == name_e
                np.testing.assert_allclose(values_g, values_e, rtol=0, atol=1e-12)
            compared += len(got)
    assert compared > 300


def test_simclr_draws_are_the_cpu_paths_parameters_seed_for_seed():
    cpu = simclr_transform((64, 64))
    crop, jitter, gray, blur, flip = cpu.ops.transforms
    recorder = Recorder({"resized_crop": crop, "color_jitter": jitter.transforms[0], "grayscale": gray,
                         "hflip": flip})
    radii = []
    original_radius = blur.transforms[0].draw_radius
    blur.transforms[0].draw_radius = lambda: radii.append(original_radius()) or radii[-1]
    draws = ViewDraws(train_transform((64, 64)), simclr=simclr_transform((64, 64)))
    image = smooth(1, h=150, w=60)
    kinds = Counter()
    for seed in range(200):
        gen = torch.Generator().manual_seed(seed)
        views = draws(image, seed)["views"]
        train_transform((64, 64))(image, gen)  # the CPU path's main view comes first
        for key in ("simclr_a", "simclr_b"):
            cpu(image, gen)
            expected = [recorded_values(*call) for call in recorder.take()]
            if radii:
                expected.insert(len(expected) - (expected[-1][0] == "hflip"), ("radius_blur", [radii.pop()]))
            got = slot_values(views[key])
            # The crop box is drawn on the original (150 x 60) and sent as the same share of 64 x 64.
            top, left, height, width = got[0][1]
            got[0] = ("resized_crop", [top * 150 / 64, left * 60 / 64, height * 150 / 64, width * 60 / 64])
            assert [name for name, _ in got] == [name for name, _ in expected], seed
            for (_, values_g), (_, values_e) in zip(got, expected):
                np.testing.assert_allclose(values_g, values_e, rtol=0, atol=1e-9)
            kinds.update(name for name, _ in got)
    assert min(kinds.values()) >= 20  # every step of the view was seen applied


def draws_table(aug: ImageAugConfig, n: int, size=(224, 224)) -> tuple[list[tuple[str, ...]], torch.Tensor, torch.Tensor]:
    transform = train_transform(size, aug=aug)
    draws = ViewDraws(transform)
    drawn = [transform.draw_ops(seed) for seed in range(n)]
    views = default_collate([draws.train_view(torch.Generator().manual_seed(seed)) for seed in range(n)])
    return drawn, *split_view(views)


def within_binomial(hits: int, trials: int, p: float) -> bool:
    return abs(hits - trials * p) <= 4.5 * math.sqrt(trials * p * (1 - p)) + 1


def test_recipe_pool_draws_have_the_recipes_distributions():
    n = 3600
    drawn, codes, params = draws_table(ImageAugConfig(), n)
    h = w = 224
    # The op pair: 2 of the 6 uniformly, with replacement, in draw order.
    pairs = Counter(drawn)
    assert set(pairs) == set(itertools.product(POOL_OPS, repeat=2))
    chi2 = sum((c - n / 36) ** 2 / (n / 36) for c in pairs.values())
    assert chi2 < 66.6  # 99.9th percentile of chi-square with 35 degrees of freedom
    coins = {"grayscale": [0, 0, 0.1], "hflip": [0, 0, 0.5], "erasing": [0, 0, 0.5]}
    values = {name: [] for name in ("color_jitter", "rotation", "resized_crop", "erasing")}
    for names, slot_codes, slot_params in zip(drawn, codes, params):
        for name, code, p in zip(names, slot_codes.tolist(), slot_params):
            if name in coins:
                coins[name][0] += 1
                coins[name][1] += code != SKIP
            if code == SKIP:
                assert name in coins
                continue
            assert DEVICE_OPS[code] == name  # slot k holds the k-th drawn op
            if name in values:
                values[name].append(p)
    for name, (trials, hits, p) in coins.items():
        assert within_binomial(hits, trials, p), (name, hits, trials)
    jitter = torch.stack(values["color_jitter"])
    factors, order = jitter[:, :3], jitter[:, 4:8]
    assert factors.min() >= 0.9 and factors.max() <= 1.1 and factors.min() < 0.902 and factors.max() > 1.098
    assert abs(factors.mean() - 1.0) < 0.005 and torch.isnan(jitter[:, 3]).all()  # no hue step
    assert (order.sort(dim=1).values == torch.arange(4.0)).all()
    assert len({tuple(o) for o in order.tolist()}) == 24  # the steps' order is random
    angle = torch.stack(values["rotation"])[:, 0]
    assert angle.abs().max() <= 15.0 and abs(angle.mean()) < 0.6 and abs(angle.std() - 15 / math.sqrt(3)) < 0.4
    crop = torch.stack(values["resized_crop"])[:, :4]
    area = crop[:, 2] * crop[:, 3] / (h * w)
    ratio = crop[:, 3] / crop[:, 2]
    assert area.min() >= 0.89 and area.max() <= 1.0 and ratio.min() >= 0.74 and ratio.max() <= 1.35
    assert (crop[:, 0] >= 0).all() and (crop[:, 0] + crop[:, 2] <= h).all() and (crop[:, 1] + crop[:, 3] <= w).all()
    erase = torch.stack(values["erasing"])[:, :4]
    area = erase[:, 2] * erase[:, 3] / (h * w)
    ratio = erase[:, 2] / erase[:, 3]  # torchvision's erasing ratio is height / width
    assert area.min() >= 0.095 and area.max() <= 0.205 and ratio.min() >= 0.29 and ratio.max() <= 3.4


def test_sweep_settings_reach_the_drawn_parameters():
    _, codes, params = draws_table(ImageAugConfig(strategy="stack", ops=("resized_crop",), crop_min_scale=0.3), 400)
    area = params[:, 0, 2] * params[:, 0, 3] / 224**2
    assert area.min() < 0.35 and area.max() > 0.95
    _, codes, params = draws_table(ImageAugConfig(strategy="stack", ops=("erasing",), erasing_p=1.0,
                                                  erasing_area=(0.02, 0.10)), 400)
    assert (codes == CODE["erasing"]).float().mean() > 0.97
    area = params[:, 0, 2] * params[:, 0, 3] / 224**2
    assert area.min() >= 0.015 and area.max() <= 0.105
    _, _, params = draws_table(ImageAugConfig(strategy="stack", ops=("rotation",), rotation_degrees=30.0), 400)
    assert params[:, 0, 0].abs().max() > 28 and params[:, 0, 0].abs().max() <= 30
    _, _, params = draws_table(ImageAugConfig(strategy="stack", ops=("color_jitter_hue",), jitter_hue=0.4), 400)
    hue = params[:, 0, 3]
    assert torch.isnan(params[:, 0, :3]).all() and hue.abs().max() <= 0.4 and hue.abs().max() > 0.38
    _, _, params = draws_table(ImageAugConfig(strategy="stack", ops=("gaussian_blur",), blur_kernel=7), 200)
    assert (params[:, 0, 1] == 7).all() and params[:, 0, 0].min() >= 0.1 and params[:, 0, 0].max() <= 2.0


def test_simclr_draws_have_the_moco_v2_distributions():
    n = 1500
    draws = ViewDraws(train_transform((224, 224)), simclr=simclr_transform((224, 224)))
    views = default_collate([draws.simclr_view(torch.Generator().manual_seed(s), (224, 224)) for s in range(n)])
    codes, params = split_view(views)
    assert (codes[:, 0] == CODE["resized_crop"]).all()
    area = params[:, 0, 2] * params[:, 0, 3] / 224**2
    assert area.min() >= 0.19 and area.max() <= 1.0 and area.min() < 0.22
    for slot, name, p in ((1, "color_jitter", 0.8), (2, "grayscale", 0.2), (3, "radius_blur", 0.5), (4, "hflip", 0.5)):
        applied = codes[:, slot] == CODE[name]
        assert ((codes[:, slot] == SKIP) | applied).all()
        assert within_binomial(int(applied.sum()), n, p), name
    jitter = params[codes[:, 1] == CODE["color_jitter"], 1]
    assert jitter[:, :3].min() >= 0.6 and jitter[:, :3].max() <= 1.4 and jitter[:, 3].abs().max() <= 0.1
    sigma = params[codes[:, 3] == CODE["radius_blur"], 3, 0]
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0


# ----------------------------------------------------------------------------- (b) the images

@pytest.mark.parametrize("op", IMAGE_AUG_OPS)
@pytest.mark.parametrize("make_image", [smooth, noise], ids=["smooth", "noise"])
def test_device_op_reproduces_the_cpu_op(op, make_image):
    """For the same parameters (the same seed), each op's device version gives the CPU path's image."""
    aug = ImageAugConfig(strategy="stack", ops=(op,), grayscale_p=0.7, flip_p=0.7, erasing_p=0.7, blur_kernel=7)
    transform = train_transform((96, 80), aug=aug)
    images, seeds = [make_image(s) for s in range(12)], list(range(100, 112))
    _, out = device_views(ViewDraws(transform), images, seeds)
    expected = torch.stack([transform(image, seed) for image, seed in zip(images, seeds)])
    assert unnormalised_difference(out["image"], expected).max() <= POOL_TOLERANCE


def test_recipe_views_on_the_device_match_the_cpu_path():
    """The full preset's four views of a batch: pool views within POOL_TOLERANCE, SimCLR views within the
    measured mean difference (see SIMCLR_MEAN_TOLERANCE)."""
    size = (96, 80)
    pool, simclr = train_transform(size), simclr_transform(size)
    images, seeds = [smooth(s) for s in range(16)], list(range(16))
    batch, out = device_views(ViewDraws(train_transform(size), mvs=True, simclr=simclr_transform(size)), images, seeds)
    expected = {key: [] for key in ("image", "image_mvs", "simclr_a", "simclr_b")}
    for image, seed in zip(images, seeds):
        gen = torch.Generator().manual_seed(seed)
        for key, transform in (("image", pool), ("image_mvs", pool), ("simclr_a", simclr), ("simclr_b", simclr)):
            expected[key].append(transform(image, gen))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (16, 3, *size)
    for key, views in expected.items():
        assert out[key].dtype == torch.float32 and out[key].shape == (16, 3, *size)
        difference = unnormalised_difference(out[key], torch.stack(views))
        if key.startswith("simclr"):
            assert difference.mean() <= SIMCLR_MEAN_TOLERANCE, key
        else:
            assert difference.max() <= POOL_TOLERANCE, key


def test_batched_ops_equal_torchvision_per_image():
    x = torch.stack([TF.to_dtype(TF.to_image(smooth(s, 48, 40)), torch.float32, scale=True) for s in range(4)])
    x = x.as_subclass(torch.Tensor)
    factors = torch.tensor([0.6, 1.0, 1.3, 1.7])
    shifts = torch.tensor([-0.4, -0.05, 0.1, 0.5])
    for batched, single, values in (
        (batched_ops.adjust_brightness, TF.adjust_brightness, factors),
        (batched_ops.adjust_contrast, TF.adjust_contrast, factors),
        (batched_ops.adjust_saturation, TF.adjust_saturation, factors),
        (batched_ops.adjust_hue, TF.adjust_hue, shifts),
        (batched_ops.rotate, TF.rotate, torch.tensor([-30.0, 0.5, 12.25, 89.0], dtype=torch.float64)),
    ):
        expected = torch.stack([single(img, float(v)) for img, v in zip(x, values)])
        torch.testing.assert_close(batched(x, values), expected, atol=3e-7, rtol=0, msg=single.__name__)
    sigma = torch.tensor([0.1, 0.8, 1.5, 2.0])
    expected = torch.stack([TF.gaussian_blur(img, [5, 5], [float(s)] * 2) for img, s in zip(x, sigma)])
    torch.testing.assert_close(batched_ops.gaussian_blur(x, sigma, 5), expected, atol=3e-7, rtol=0)
    boxes = torch.tensor([[0, 0, 48, 40], [3, 5, 40, 30], [10, 1, 20, 39], [47, 39, 1, 1]], dtype=torch.float64)
    expected = torch.stack([TF.resized_crop(img, *map(int, b), [48, 40], antialias=True) for img, b in zip(x, boxes)])
    torch.testing.assert_close(batched_ops.resized_crop(x, boxes), expected, atol=2e-5, rtol=0)


def test_simclr_blur_stays_close_to_pils_radius_blur():
    """PIL's GaussianBlur(radius) is three box blurs on uint8; ours a true Gaussian of that sigma.
    Measured on this image: mean 0.002-0.004, largest 0.014 away from the border and 0.067 in a corner
    (PIL extends the border its own way)."""
    from PIL import ImageFilter

    image = smooth(3).resize((96, 96))
    x = TF.to_dtype(TF.to_image(image), torch.float32, scale=True).as_subclass(torch.Tensor)[None]
    for sigma in (0.1, 0.5, 1.0, 2.0):
        pil = TF.to_dtype(TF.to_image(image.filter(ImageFilter.GaussianBlur(sigma))), torch.float32, scale=True)
        difference = (batched_ops.radius_blur(x, torch.tensor([sigma]), 2.0)[0] - pil).abs()
        assert difference.mean() < 0.005 and difference[:, 8:-8, 8:-8].max() < 0.02, sigma
        assert difference.max() < 0.08, sigma


# ----------------------------------------------------------------------------- (c) the pieces around it

def test_device_augment_draws_nothing_and_passes_other_entries_through():
    draws = ViewDraws(train_transform((32, 32)), mvs=True, simclr=simclr_transform((32, 32)))
    batch = default_collate([{**draws(noise(s), s), "tokens": torch.tensor([s])} for s in range(6)])
    torch.manual_seed(0)
    state = torch.get_rng_state()
    out = DeviceAugment()(batch, "cpu")
    assert torch.equal(torch.get_rng_state(), state)
    assert set(out) == {"image", "image_mvs", "simclr_a", "simclr_b", "tokens"}
    assert torch.equal(out["tokens"], batch["tokens"])
    again = DeviceAugment()(batch, "cpu")
    assert all(torch.equal(out[k], again[k]) for k in out)


def test_no_augmentation_on_the_device_is_resize_and_normalise():
    transform = train_transform((40, 24), aug=ImageAugConfig(strategy="none", on_device=True))
    draws = ViewDraws(transform, mvs=True)
    images = [smooth(s) for s in range(3)]
    batch, out = device_views(draws, images, [0, 1, 2])
    assert batch["views"]["image"].shape == (3, 0, 9)
    expected = torch.stack([transform(image, 0) for image in images])
    torch.testing.assert_close(out["image"], expected, atol=1e-6, rtol=0)
    assert torch.equal(out["image"], out["image_mvs"])


def test_policies_have_no_device_version():
    with pytest.raises(ValueError, match="no device version"):
        ViewDraws(train_transform((32, 32), aug=ImageAugConfig(strategy="trivialaugment")))


def test_train_pairs_on_the_device_path_ship_uint8_and_parameters(synthetic_shards):
    index = ShardIndex.from_manifest(synthetic_shards["train"])
    pairs = pair_table(index)
    size = (64, 64)

    def tokenize(texts):
        return torch.tensor([[len(t)] for t in texts])

    cpu = TrainPairs(index, pairs, tokenize=tokenize, image_transform=train_transform(size),
                     mvs_transform=train_transform(size), simclr_transform=simclr_transform(size))
    device = TrainPairs(index, pairs, tokenize=tokenize,
                        view_draws=ViewDraws(train_transform(size), mvs=True, simclr=simclr_transform(size)))
    keys = [(p, 1000 + p) for p in range(0, 40, 5)]
    cpu_batch = default_collate([cpu[k] for k in keys])
    device_batch = default_collate([device[k] for k in keys])
    assert device_batch["image"].dtype == torch.uint8
    assert torch.equal(device_batch["tokens"], cpu_batch["tokens"])  # captions untouched by the image path
    out = DeviceAugment()(device_batch, "cpu")
    for key in ("image", "image_mvs"):
        assert unnormalised_difference(out[key], cpu_batch[key]).max() <= POOL_TOLERANCE
    for key in ("simclr_a", "simclr_b"):
        assert unnormalised_difference(out[key], cpu_batch[key]).mean() <= SIMCLR_MEAN_TOLERANCE
    with pytest.raises(ValueError, match="either image_transform"):
        TrainPairs(index, pairs, tokenize=tokenize)


# ----------------------------------------------------------------------------- (d) the worker's fast draws

DRAWS_SHA256 = {
    "full_preset_224": "f53cf9b50d35b1fe5b5ced1f3c8921c0d610f9b6d5f1711a9f37e88b15096211",
    "stack_all_ops_56x48": "794bafd5f603b9b0fec7919cfd62fe383e18999b31a8c8c1c27311e93c26245b",
}
"""Digests of the resized images and parameter tables of seeds 0-63, recorded from the first device-path
version, which drew with torchvision's own ``make_params`` under a seeded fork of the global generator."""


def _draws_digest(draws: ViewDraws, size: tuple[int, int]) -> str:
    digest = hashlib.sha256()
    for seed in range(64):
        image = Image.fromarray((np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8))
        out = draws(image, seed)
        digest.update(out["image"].contiguous().numpy().tobytes())
        for name, table in out["views"].items():
            digest.update(name.encode())
            digest.update(np.nan_to_num(table.numpy(), nan=-999.0).tobytes())
    return digest.hexdigest()


def test_the_worker_draws_are_the_ones_recorded_before_the_replay():
    full = ViewDraws(train_transform((224, 224)), mvs=True, simclr=simclr_transform((224, 224)))
    stack = ViewDraws(train_transform((56, 48), aug=ImageAugConfig(strategy="stack", ops=list(IMAGE_AUG_OPS))), mvs=True)
    assert _draws_digest(full, (128, 64)) == DRAWS_SHA256["full_preset_224"]
    assert _draws_digest(stack, (40, 30)) == DRAWS_SHA256["stack_all_ops_56x48"]


def _reference_slot(name: str, op, size: tuple[int, int]) -> list[float]:
    """The slow reference: torchvision's own coin and ``make_params`` on the global generator."""
    coins = (v2.RandomGrayscale, v2.RandomHorizontalFlip, v2.RandomVerticalFlip, v2.RandomErasing)
    if isinstance(op, coins) and not bool(torch.rand(1) < op.p):
        return _slot(None)
    params = op.make_params([torch.empty(1).expand(3, *size)])
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
    return _slot(name)


@pytest.mark.parametrize("size", [(224, 224), (24, 20)])
def test_the_replayed_samplers_equal_torchvision_s_on_the_global_generator(size):
    aug = ImageAugConfig(strategy="stack", ops=list(IMAGE_AUG_OPS), erasing_p=0.9, grayscale_p=0.5)
    transform = train_transform(size, aug=aug)
    draws = ViewDraws(transform)
    for seed in range(300):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            expected = [_reference_slot(name, transform.ops[name], size) for name in aug.ops]
        replay = torch.Generator().manual_seed(seed)
        got = [_op_slot(name, transform.ops[name], _Replay(replay), size) for name in aug.ops]
        np.testing.assert_array_equal(np.array(got), np.array(expected), err_msg=f"seed {seed}")
    assert draws.slots() == len(aug.ops)
