"""Image ops on a batch (N, 3, H, W) of [0, 1] float images, each image with its own parameters.

The device path of the training augmentation (docs/method.md#augmentation-on-the-device) runs these
on the training device. Each one computes what the torchvision v2 kernel of the same name computes
for one float image with that image's parameters (same formulas, same interpolation and padding),
so the device path and the CPU path agree up to float rounding; tests/test_device_aug.py measures
it. Pure functions of tensors: parameters come as tensors of length N (float64 for coordinates and
angles, like torchvision's Python floats).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LUMA = (0.2989, 0.587, 0.114)
"""torchvision's rgb_to_grayscale weights."""


def _per_image(values: Tensor, like: Tensor) -> Tensor:
    """(N,) parameters as (N, 1, 1, 1) in the images' dtype and device, for broadcasting."""
    return values.to(device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)


def luma(x: Tensor) -> Tensor:
    """(N, 1, H, W) grayscale of (N, 3, H, W)."""
    r, g, b = x.unbind(dim=-3)
    return r.mul(LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(-3)


def _blend(x: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    # 1 - ratio in float64 first, as torchvision computes it from a Python float.
    rest = _per_image(1.0 - ratio.to(torch.float64), x)
    return (x * _per_image(ratio, x)).add_(other * rest).clamp_(0.0, 1.0)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return (x * _per_image(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, luma(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, luma(x), factor)


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r, g, b = x.unbind(dim=-3)
    minc, maxc = torch.aminmax(x, dim=-3)
    same = maxc == minc  # gray pixels: hue and saturation 0, and no division by zero
    spread = maxc - minc
    s = spread / torch.where(same, torch.ones_like(maxc), maxc)
    divisor = torch.where(same, torch.ones_like(spread), spread)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    red_max = maxc == r
    green_max = (maxc == g) & ~red_max
    blue_max = ~red_max & ~green_max
    h = (bc - gc) * red_max + (rc + 2.0 - bc) * green_max + (gc + 4.0 - rc) * blue_max
    return (h * (1.0 / 6.0) + 1.0).fmod(1.0), s, maxc


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    h6 = h * 6
    sector = torch.floor(h6)
    f = h6 - sector
    sector = sector.to(torch.int64).remainder(6)
    s_f, one_minus_s = s * f, 1.0 - s
    p = (one_minus_s * v).clamp(0.0, 1.0)
    q = ((1.0 - s_f) * v).clamp(0.0, 1.0)
    t = ((s_f + one_minus_s) * v).clamp(0.0, 1.0)
    vpqt = (v, p, q, t)
    in_sector = [sector == k for k in range(5)]
    channels = []
    # Which of (v, p, q, t) each channel takes in hue sectors 0..5 (selected, not gathered: no index tensor).
    for takes in ((0, 2, 1, 1, 3, 0), (3, 0, 0, 2, 1, 1), (1, 1, 3, 0, 0, 2)):
        channel = vpqt[takes[5]]
        for k in range(5):
            channel = torch.where(in_sector[k], vpqt[takes[k]], channel)
        channels.append(channel)
    return torch.stack(channels, dim=-3)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    h, s, v = _rgb_to_hsv(x)
    h = (h + _per_image(shift, x).squeeze(1)).remainder(1.0)
    return _hsv_to_rgb(h, s, v)


COLOR_STEPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
"""torchvision ColorJitter's four steps, indexed as its ``fn_idx`` permutation indexes them."""


def grayscale(x: Tensor) -> Tensor:
    return luma(x).expand_as(x).contiguous()


def hflip(x: Tensor) -> Tensor:
    return x.flip(-1)


def vflip(x: Tensor) -> Tensor:
    return x.flip(-2)


def erase(x: Tensor, boxes: Tensor) -> Tensor:
    """Zero the rectangle (top, left, height, width) of each image (RandomErasing's value 0)."""
    top, left, height, width = (v.to(x.device).view(-1, 1, 1, 1) for v in boxes.unbind(1))
    rows = torch.arange(x.shape[-2], device=x.device).view(1, 1, -1, 1)
    cols = torch.arange(x.shape[-1], device=x.device).view(1, 1, 1, -1)
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    return x.masked_fill(inside, 0.0)


def _source_coords(start: Tensor, length: Tensor, size_out: int) -> Tensor:
    """Source pixel-centre coordinates of ``size_out`` outputs spread over [start, start + length) (bilinear,
    half-pixel centres, as F.interpolate(align_corners=False)), kept inside the crop like a resize of the crop."""
    steps = torch.arange(size_out, dtype=torch.float64, device=start.device) + 0.5
    coords = start[:, None] + steps[None, :] * (length / size_out)[:, None] - 0.5
    return torch.minimum(torch.maximum(coords, start[:, None]), (start + length - 1.0)[:, None])


def resized_crop(x: Tensor, boxes: Tensor) -> Tensor:
    """Crop (top, left, height, width) of each image and resize it bilinearly back to (H, W).

    The box may be fractional. A crop is never larger than the image here, so the resize only ever
    enlarges, where torchvision's antialiased bilinear resize equals plain bilinear interpolation.
    """
    n, _, h, w = x.shape
    boxes = boxes.to(device=x.device, dtype=torch.float64)
    top, left, height, width = boxes.unbind(1)
    ys = _source_coords(top, height, h)
    xs = _source_coords(left, width, w)
    # grid_sample (align_corners=False) reads pixel p at normalised (2p + 1) / size - 1.
    gy = ((2 * ys + 1) / h - 1).to(x.dtype)
    gx = ((2 * xs + 1) / w - 1).to(x.dtype)
    grid = torch.stack((gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each image counter-clockwise about its centre, nearest neighbour, 0 outside (torchvision's rotate)."""
    n, _, h, w = x.shape
    rad = torch.deg2rad(degrees.to(torch.float64))
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    # torchvision's inverse affine matrix for rotate(angle): [cos, -sin, 0; sin, cos, 0], built in float64
    # and used in the images' dtype.
    theta = torch.stack((torch.stack((cos, -sin, zero), 1), torch.stack((sin, cos, zero), 1)), 1).to(x.dtype)
    theta = theta.to(x.device)
    base = torch.empty(h, w, 3, dtype=x.dtype, device=x.device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=x.device))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=x.device).unsqueeze(-1))
    base[..., 2].fill_(1)
    scale = torch.tensor([0.5 * w, 0.5 * h], dtype=x.dtype, device=x.device)
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(theta.transpose(1, 2) / scale)
    return F.grid_sample(x, grid.view(n, h, w, 2), mode="nearest", padding_mode="zeros", align_corners=False)


def _gaussian_kernels(sigma: Tensor, size: int, dtype: torch.dtype, device) -> Tensor:
    """(N, size) normalised 1-D Gaussians, one per sigma (torchvision's kernel for the same size and sigma)."""
    lim = (size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=size, dtype=dtype, device=device)
    return torch.softmax(-(x[None, :] / sigma.to(device=device, dtype=dtype)[:, None]).pow(2), dim=1)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int, padding_mode: str = "reflect") -> Tensor:
    """Separable Gaussian blur, each image with its own sigma; torchvision's GaussianBlur with reflect padding."""
    n, c, h, w = x.shape
    kernels = _gaussian_kernels(sigma, kernel_size, x.dtype, x.device).repeat_interleave(c, dim=0)
    half = kernel_size // 2
    flat = x.reshape(1, n * c, h, w)
    flat = F.pad(flat, (half, half, half, half), mode=padding_mode)
    flat = F.conv2d(flat, kernels.view(n * c, 1, 1, kernel_size), groups=n * c)
    flat = F.conv2d(flat, kernels.view(n * c, 1, kernel_size, 1), groups=n * c)
    return flat.view(n, c, h, w)


def radius_blur(x: Tensor, sigma: Tensor, max_sigma: float) -> Tensor:
    """Gaussian blur by standard deviation alone (what PIL's GaussianBlur(radius) approximates with box
    blurs): a kernel of 2*ceil(3*max_sigma)+1 taps and edge pixels repeated beyond the border."""
    return gaussian_blur(x, sigma, 2 * math.ceil(3 * max_sigma) + 1, padding_mode="replicate")


def normalise(x: Tensor, mean, std) -> Tensor:
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub(mean_t).div_(std_t)
