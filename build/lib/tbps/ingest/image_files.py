"""Where a raw image may be read from: the confinement rule for image paths and symbolic links.

An annotation file names each image relative to the raw folder's ``imgs/`` (never absolute,
never with a ``..`` component: :func:`tbps.ingest.formats.normalise_image_path`). Symbolic
links are followed, and the file a path finally resolves to must be

- a regular file (not a folder, device, FIFO or socket), and
- inside the resolved raw folder or inside the resolved ``imgs/`` folder.

So a raw folder that is itself a link, and an ``imgs/`` folder that links to another disk,
are read as usual; a link inside ``imgs/`` that leads anywhere else (``../../secret.jpg``,
``/etc/...``, another user's folder) is refused as ``outside_raw_root``: ``tbps prepare``
counts it as a rejected image, and the shard writer rejects it too (the link may have
changed after ``prepare``). Images spread over several disks: link the whole ``imgs/``
folder, or bind-mount / copy the parts into it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tbps.ingest.formats import IMAGES_DIR

MISSING = "missing_image"
UNREADABLE = "unreadable_image"
OUTSIDE_RAW_ROOT = "outside_raw_root"


class RefusedImagePath(Exception):
    """An image path that may not be read; ``reason`` is one of the codes above."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def allowed_roots(raw: str | os.PathLike) -> tuple[Path, ...]:
    raw = Path(raw)
    return (raw.resolve(), (raw / IMAGES_DIR).resolve())


def raw_image_file(raw: str | os.PathLike, image_path: str, roots: tuple[Path, ...] | None = None) -> Path:
    """The file ``raw/image_path`` resolves to, if it may be read; else :class:`RefusedImagePath`.

    ``roots`` (from :func:`allowed_roots`) saves resolving the raw folder for every image.
    """
    roots = roots if roots is not None else allowed_roots(raw)
    try:
        resolved = (Path(raw) / image_path).resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise RefusedImagePath(MISSING, "file not found") from None
    except (OSError, RuntimeError) as e:  # a link loop is a RuntimeError before Python 3.13
        raise RefusedImagePath(UNREADABLE, f"cannot access the file ({e})") from None
    if not any(resolved.is_relative_to(root) for root in roots):
        raise RefusedImagePath(
            OUTSIDE_RAW_ROOT,
            f"is a symbolic link to {resolved}, outside the raw folder {roots[0]} and its {IMAGES_DIR}/ "
            f"folder {roots[1]} (links may only point inside them; link the whole {IMAGES_DIR}/ folder instead)",
        )
    try:
        mode = resolved.stat().st_mode
    except OSError as e:
        raise RefusedImagePath(UNREADABLE, f"cannot access the file ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise RefusedImagePath(MISSING, f"exists but is not a regular file ({resolved})")
    return resolved
