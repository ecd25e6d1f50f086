"""Small JPEG thumbnails of indexed images, embedded in the results page as ``data:`` URIs.

Only the top-K images of each query are read, from where the index says they are (the file,
or the shard member at its byte offset); the bytes must still have the sha256 recorded when
they were embedded, otherwise the page says the image changed instead of showing another
picture under the indexed one's score.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbps.gallery.images import content_sha256
from tbps.image_decode import ImageDecodeError, decode_image

THUMBNAIL_BOX = (128, 192)
"""Largest (width, height) of a thumbnail: person crops are tall."""
JPEG_QUALITY = 85


@dataclass(frozen=True)
class Thumbnail:
    data_uri: str | None
    width: int = 0
    height: int = 0
    problem: str = ""


def _indexed_bytes(entry: dict[str, Any], shard_folder: Path | None) -> bytes:
    if entry["shard"] is None:
        with open(entry["path"], "rb") as f:
            return f.read()
    if shard_folder is None:
        raise OSError("the index does not say where its shards are")
    with open(shard_folder / entry["shard"], "rb") as f:
        f.seek(entry["offset"])
        return f.read(entry["bytes"])


def thumbnail(entry: dict[str, Any], shard_folder: Path | None, box: tuple[int, int] = THUMBNAIL_BOX) -> Thumbnail:
    """The entry's image as a small JPEG data URI, or the reason it cannot be shown."""
    try:
        data = _indexed_bytes(entry, shard_folder)
    except FileNotFoundError:
        return Thumbnail(None, problem="the file is gone since it was indexed")
    except OSError as e:
        return Thumbnail(None, problem=f"cannot read it ({e.strerror or e})")
    if content_sha256(data) != entry["sha256"]:
        return Thumbnail(None, problem="the file changed since it was indexed: re-index to see it")
    try:
        image = decode_image(data)
    except ImageDecodeError as e:
        return Thumbnail(None, problem=f"cannot decode it ({e})")
    image.thumbnail(box)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return Thumbnail(f"data:image/jpeg;base64,{encoded}", image.width, image.height)
