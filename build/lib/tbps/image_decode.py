"""The one way image bytes become RGB pixels: shard writing, training, evaluation, search and plots.

Decoded as a correct viewer shows the picture:

- EXIF orientation is applied (a phone photo stored sideways with "rotate 90" in its EXIF
  comes out upright); an unreadable EXIF block is ignored, as viewers do;
- 16-bit greyscale (PNG ``I;16``, and ``I`` as older Pillow opens it) is scaled from
  0..65535 to 0..255 (Pillow's ``convert`` clips it to 255: a white image); 16-bit RGB
  PNGs are already reduced to 8 bits by Pillow;
- transparency (RGBA, LA, palette or colour-key transparency) is composited on white,
  the background a viewer shows, instead of exposing whatever colour transparent pixels
  happen to hold;
- palette, greyscale, 1-bit, CMYK and YCbCr images convert with Pillow's conversions (CMYK
  without colour management: an embedded ICC profile is not applied); 32-bit float images
  as Pillow converts them (values read as 0..255).

An ordinary RGB JPEG or PNG without an orientation tag decodes exactly as
``Image.open(...).convert("RGB")`` does, so shards of such images are unchanged.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")
WHITE = (255, 255, 255)


class ImageDecodeError(ValueError):
    """The bytes are not an image this program can decode (message: what went wrong)."""


def decode_image(data: bytes) -> Image.Image:
    """Image file bytes -> an upright 8-bit RGB image; :class:`ImageDecodeError` if undecodable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a header-only open accepts truncated files; load() decodes everything
            return to_rgb(upright(img))
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image in a format Pillow can read") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise ImageDecodeError(f"{type(e).__name__}: {e}") from None


def upright(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (unchanged without one, or if the EXIF is broken)."""
    try:
        orientation = img.getexif().get(ImageOps.ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block: show the pixels as stored, like viewers do
        return img
    if orientation in (None, 1):
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - same as above
        return img


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed: swapped for the EXIF orientations that turn by 90 degrees."""
    try:
        orientation = img.getexif().get(ImageOps.ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001
        orientation = 1
    width, height = img.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (see the module docstring for each case)."""
    if img.mode in _SIXTEEN_BIT:
        values = np.asarray(img, dtype=np.float64).clip(0, 65535)
        grey = np.rint(values * (255.0 / 65535.0)).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
