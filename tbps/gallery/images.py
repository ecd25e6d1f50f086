"""Which images an index covers: a folder (recursive), a glob pattern, or a shard manifest.

A folder is walked recursively in sorted order; files ending in .jpg, .jpeg, .png or .webp
(any case) are images. Everything else is a counted, listed skip, never silently dropped:

- ``not_an_image_file``: another extension (a .txt, a .mov, a sidecar file);
- ``hidden``: a file or folder whose name starts with ``.`` (thumbnail caches, ``.git``);
  a hidden folder is one skip and is not walked;
- ``linked_folder``: a symbolic link to a folder is not followed (no loops, no duplicates);
- ``outside_image_folder``: a symbolic link to a file outside the folder given. This is the
  confinement rule of the raw datasets (:mod:`tbps.ingest.image_files`) applied to the folder
  the user names: links are followed, but what they lead to must be a regular file inside
  that folder (the folder itself may be a link). For a glob pattern the folder is the part
  before the first wildcard;
- ``file_name_not_utf8``: a name that is not valid UTF-8 cannot be stored or shown;
- ``missing_image`` / ``unreadable_image``: a broken link, a file that cannot be read;
- ``undecodable_image`` (found later, while indexing): bytes that are not a decodable image
  (a corrupt JPEG, a text file renamed .jpg).

A glob pattern (``'photos/**/*.jpg'``, quoted so the shell does not expand it; ``**`` matches
any depth) selects files the same way; folders it matches are passed over. A shard manifest
(``manifest.json`` of ``tbps shards``) is checked against its shards first (size and sha256)
and read in manifest order; its images are the shards' image members, with their person ids
and captions.

Stored paths: an image file is recorded by its absolute path as found under the folder given
(symbolic links not resolved: the path the user knows); a shard image by its dataset path
(``imgs/...``, relative to the raw dataset folder) with the shard and byte offset it is read from.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from tbps.errors import UserInputError
from tbps.fileio import sha256_file
from tbps.ingest.image_files import OUTSIDE_RAW_ROOT, RefusedImagePath, raw_image_file
from tbps.shards.reader import verified_shard_paths
from tbps.shards.samples import read_samples

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

NOT_AN_IMAGE_FILE = "not_an_image_file"
HIDDEN = "hidden"
LINKED_FOLDER = "linked_folder"
OUTSIDE_IMAGE_FOLDER = "outside_image_folder"
NAME_NOT_UTF8 = "file_name_not_utf8"
MISSING = "missing_image"
UNREADABLE = "unreadable_image"
UNDECODABLE = "undecodable_image"

FOLDER, GLOB, MANIFEST = "folder", "glob", "manifest"
_GLOB_MAGIC = frozenset("*?[")
_SOURCE_FIX = ("give a folder of images, a quoted glob pattern such as 'photos/**/*.jpg', or the manifest.json "
               "of `tbps shards`")


@dataclass(frozen=True)
class ImageItem:
    """One image to index: where it is shown from and where its bytes are read."""

    path: str
    """Absolute file path, or the dataset path of a shard image."""
    bytes: int
    mtime_ns: int
    """Modification time of the file (0 for shard images: they are identified by content)."""
    read_from: str
    """The file holding the bytes: the link-resolved image file, or the shard."""
    offset: int | None = None
    """Byte offset of the image member in the shard (None: the whole file)."""
    shard: str | None = None
    """Shard file name, relative to the manifest's folder."""
    person_id: int | None = None
    captions: tuple[str, ...] = ()
    key: str | None = None
    """The sample key in the shard (for messages naming a damaged sample)."""


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str
    detail: str


@dataclass
class Scan:
    kind: str
    """folder, glob or manifest."""
    source: str
    """The folder, pattern or manifest, absolute."""
    items: list[ImageItem] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    manifest_sha256: str | None = None


def read_item_bytes(item: ImageItem) -> bytes:
    """The image's bytes (raises OSError when they cannot be read in full)."""
    with open(item.read_from, "rb") as f:
        if item.offset is None:
            return f.read()
        f.seek(item.offset)
        data = f.read(item.bytes)
    if len(data) != item.bytes:
        raise OSError(f"{item.read_from}: ends before the {item.bytes} bytes of {item.path} at offset {item.offset}")
    return data


def content_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _printable(path: str) -> str | None:
    """``path`` if it is valid UTF-8 (lone surrogates come from undecodable bytes), else None."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return path


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


class _Confined:
    """Turns a path found under ``root`` into an :class:`ImageItem` or a :class:`Skipped`."""

    def __init__(self, root: Path):
        self.root = root
        resolved = root.resolve()
        self.roots = (resolved, resolved)

    def item(self, path: Path) -> ImageItem | Skipped:
        shown = _printable(str(path))
        if shown is None:
            return Skipped(ascii(str(path)), NAME_NOT_UTF8, "the file name is not valid UTF-8. Fix: rename the file")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            return Skipped(shown, NOT_AN_IMAGE_FILE, f"not one of {', '.join(IMAGE_SUFFIXES)}")
        try:
            resolved = raw_image_file(self.root, os.path.relpath(path, self.root), self.roots)
        except RefusedImagePath as e:
            if e.reason == OUTSIDE_RAW_ROOT:
                target = Path(os.path.realpath(path))
                return Skipped(shown, OUTSIDE_IMAGE_FOLDER,
                               f"a symbolic link to {target}, outside the folder {self.roots[0]}. Fix: index the "
                               "folder holding the target, or copy the file in")
            return Skipped(shown, e.reason, e.detail)
        try:
            st = resolved.stat()
        except OSError as e:
            return Skipped(shown, UNREADABLE, f"cannot access the file ({e.strerror or e})")
        return ImageItem(path=shown, bytes=st.st_size, mtime_ns=st.st_mtime_ns, read_from=str(resolved))


def _walk_folder(root: Path, exclude: Path | None) -> Scan:
    scan = Scan(FOLDER, str(root))
    confined = _Confined(root)
    excluded = exclude.resolve() if exclude is not None else None

    def on_error(error: OSError) -> None:
        scan.skipped.append(Skipped(str(error.filename), UNREADABLE, f"cannot list the folder ({error.strerror})"))

    for folder, dirs, files in os.walk(root, onerror=on_error):
        here = Path(folder)
        kept = []
        for name in sorted(dirs):
            sub = here / name
            if excluded is not None and sub.resolve() == excluded:
                continue  # the index being written, inside the photo folder
            if _is_hidden(name):
                scan.skipped.append(Skipped(str(sub), HIDDEN, "a hidden folder (not walked)"))
            elif sub.is_symlink():
                scan.skipped.append(Skipped(str(sub), LINKED_FOLDER,
                                            "a symbolic link to a folder is not followed. Fix: index the "
                                            "folder it leads to separately, or move the files in"))
            else:
                kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            path = here / name
            if _is_hidden(name):
                scan.skipped.append(Skipped(_printable(str(path)) or ascii(str(path)), HIDDEN, "a hidden file"))
                continue
            _add(scan, confined.item(path))
    return scan


def _add(scan: Scan, found: ImageItem | Skipped) -> None:
    (scan.skipped if isinstance(found, Skipped) else scan.items).append(found)


def _glob_root(pattern: str) -> Path:
    """The folder before the first wildcard (the confinement root of a pattern)."""
    parts = []
    for part in Path(pattern).parts:
        if _GLOB_MAGIC & set(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _glob(pattern: str) -> Scan:
    absolute = os.path.abspath(pattern)
    root = _glob_root(absolute)
    scan = Scan(GLOB, absolute)
    confined = _Confined(root)
    for match in sorted(glob.glob(absolute, recursive=True)):
        path = Path(match)
        if path.is_dir():
            continue
        _add(scan, confined.item(path))
    return scan


def _manifest(manifest: Path) -> Scan:
    scan = Scan(MANIFEST, str(manifest), manifest_sha256=sha256_file(manifest))
    for shard in verified_shard_paths(manifest):
        name = Path(shard).name
        for sample in read_samples(shard, with_images=False):
            meta = sample.meta
            scan.items.append(ImageItem(
                path=meta["image_path"], bytes=sample.image_size, mtime_ns=0, read_from=shard,
                offset=sample.image_offset, shard=name, person_id=int(meta["person_id"]),
                captions=tuple(meta["captions"]), key=sample.key))
    return scan


def scan_images(images: str, *, exclude: str | os.PathLike | None = None) -> Scan:
    """The images of a folder, glob pattern or shard manifest (see the module docstring).

    ``exclude``: a folder not to walk (the index itself, when it lies inside the photo folder).
    """
    path = Path(os.path.expanduser(images))
    exclude_path = Path(exclude) if exclude is not None else None
    if path.is_dir():
        scan = _walk_folder(Path(os.path.abspath(path)), exclude_path)
    elif path.is_file():
        if path.suffix.lower() != ".json":
            raise UserInputError(f"--images {images}: a single file, not a folder, pattern or manifest. "
                                 f"Fix: {_SOURCE_FIX}")
        scan = _manifest(Path(os.path.abspath(path)))
    elif _GLOB_MAGIC & set(str(path)):
        scan = _glob(str(path))
    else:
        kind = "not a folder" if path.exists() else "not found"
        raise UserInputError(f"--images {images}: {kind}. Fix: {_SOURCE_FIX}")
    if not scan.items:
        found = f" ({len(scan.skipped)} files skipped: {skip_summary(scan.skipped)})" if scan.skipped else ""
        raise UserInputError(f"--images {images}: no images found{found}. Fix: {_SOURCE_FIX}; image files end in "
                             f"{', '.join(IMAGE_SUFFIXES)}")
    return scan


def skip_summary(skipped: list[Skipped]) -> str:
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s.reason] = counts.get(s.reason, 0) + 1
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))

