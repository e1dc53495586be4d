"""Where images come from and how one is decoded.

Sources: a directory of `<GalaxyID>.jpg` (recursive), the Kaggle zip read in
place, a catalogue CSV/Parquet with a path column, or a folder per class.
Each image is addressed by a *source* string: a file path, or
`archive.zip::member` for a file inside a zip, or an `unusable` source that
stands for an input that cannot be read (a folder that cannot be listed, a
catalogue row without a path): it carries the reason, which decoding raises,
so that prepare and predict account for it like any unreadable image.

Decoding uses Pillow's DCT-scaled `draft` mode: a JPEG is decoded directly
at 1/2, 1/4 or 1/8 scale when that still leaves enough pixels for the crop,
which is several times faster than a full decode followed by a resize.
"""

from __future__ import annotations

import io
import math
import os
import re
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

KAGGLE_SIZE = 424  # side of every Kaggle/SDSS image; the field of view is given in its pixels
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}
ZIP_SEP = "::"
UNUSABLE = "\0"  # starts an unusable source, and separates its item from its reason: no file name holds it
PATH_COLUMNS = ("path", "file", "filename", "image")  # a catalogue's path column: the first one present


class ImageError(ValueError):
    """An image that cannot be used; the message says why."""


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray  # (size, size, 3) uint8
    note: str = ""  # non-fatal conversion done (grayscale, CMYK, PNG, other size)


# ---------------------------------------------------------------- sources

def galaxy_id_from_name(name: str) -> int | None:
    """`100008.jpg` -> 100008; None when the stem is not an integer ID."""
    stem = Path(name).stem
    return int(stem) if re.fullmatch(r"\d+", stem) else None


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def unusable(item: str, reason: str) -> str:
    """A source standing for an input that cannot be used; decoding it raises ImageError("item: reason")."""
    return f"{UNUSABLE}{item}{UNUSABLE}{reason}"


def unusable_parts(source: str) -> tuple[str, str] | None:
    """(item, reason) of an unusable source; None for any other source."""
    return tuple(source[1:].split(UNUSABLE, 1)) if source.startswith(UNUSABLE) else None


def walk_files(root: str, keep: Callable[[str], bool] = is_image_name) -> Iterator[str]:
    """The files under `root` whose names `keep` accepts, recursively, in the order of their sorted path
    strings, with one folder's entries in memory at a time (a subfolder sorts as "name/", as it does
    inside a path).

    No entry is left out unseen, and none stops the walk: a link to a file is listed whether or not it
    leads anywhere (decoding says why not: broken, a loop); a folder that cannot be listed, a link to a
    folder (not followed, as in pathlib's rglob, so links cannot loop) and a special file (FIFO,
    device) with a listed name come as unusable sources saying so."""
    try:
        with os.scandir(root) as entries:
            keyed = sorted((e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in entries)
    except OSError as err:
        yield unusable(root, f"cannot list this folder ({err.strerror or err})")
        return
    for key, entry in keyed:
        if key.endswith("/"):
            yield from walk_files(entry.path, keep)
        elif entry.is_symlink() and _leads_to_folder(entry):
            yield unusable(entry.path, "a link to a folder, not followed (give the folder itself)")
        elif keep(entry.name):
            regular = entry.is_symlink() or entry.is_file(follow_symlinks=False)
            yield entry.path if regular else unusable(entry.path, "not a regular file")


def _leads_to_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a loop of links
        return False


def path_column(columns, catalogue: str) -> str:
    """The path column of a catalogue with these columns."""
    column = next((c for c in PATH_COLUMNS if c in columns), None)
    if column is None:
        raise ValueError(f"{catalogue}: a catalogue needs a path column (one of {', '.join(PATH_COLUMNS)})")
    return column


def catalogue_sources(catalogue: str, column: str, cells, first_row: int = 1) -> list[str]:
    """A catalogue's path cells as sources, relative paths read from its folder; an empty cell is an
    unusable source naming the catalogue and the row (`first_row`: the data row number of the first cell)."""
    folder = os.path.dirname(catalogue)
    return [os.path.join(folder, p) if isinstance(p, str) and p.strip()
            else unusable(catalogue, f"row {row} (data rows counted from 1) has no {column}")
            for row, p in enumerate(cells, start=first_row)]


def list_directory(root: Path) -> list[str]:
    """Every image file under `root` (recursive), sorted for reproducibility."""
    return list(walk_files(str(root)))


def list_zip(archive: Path, keep: Callable[[str], bool] = is_image_name) -> list[str]:
    """The members whose names `keep` accepts, sorted; not macOS's metadata (`__MACOSX/`, `._name`)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile as err:
        raise ValueError(f"{archive}: not a readable zip archive ({err})") from err
    return [f"{archive}{ZIP_SEP}{n}" for n in sorted(names) if keep(n) and not _macos_metadata(n)]


def _macos_metadata(name: str) -> bool:
    return name.startswith("__MACOSX/") or name.rsplit("/", 1)[-1].startswith("._")


def list_images(path: Path, keep: Callable[[str], bool] = is_image_name) -> list[str]:
    """Image sources (the files whose names `keep` accepts) in a directory or a zip archive."""
    path = Path(path)
    if path.is_dir():
        return list(walk_files(str(path), keep))
    if path.suffix.lower() == ".zip":
        return list_zip(path, keep)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return [str(path)]
    raise FileNotFoundError(f"{path}: not a directory, zip archive or image file")


@lru_cache(maxsize=8)
def _open_zip(archive: str) -> zipfile.ZipFile:
    # One handle per archive per process: opening the central directory of a
    # 60k-member zip for every image would dominate the decode time.
    return zipfile.ZipFile(archive)


def read_bytes(source: str) -> bytes:
    """The raw bytes of a source (file path or `archive.zip::member`)."""
    if source.startswith(UNUSABLE):
        raise ImageError(": ".join(unusable_parts(source)))
    if ZIP_SEP in source:
        archive, member = source.split(ZIP_SEP, 1)
        try:
            return _open_zip(archive).read(member)
        except KeyError as err:
            raise ImageError(f"{source}: no such member in the archive") from err
    try:
        with open(source, "rb") as file:  # not pathlib: this runs once per image
            return file.read()
    except FileNotFoundError as err:
        raise ImageError(f"{source}: {'broken link' if os.path.islink(source) else 'file not found'}") from err
    except OSError as err:
        raise ImageError(f"{source}: cannot read ({err})") from err


# ---------------------------------------------------------------- decoding

def fov_crop(side: int, fov: int) -> float:
    """Side of the central crop, in an image's own pixels, for a field of view in Kaggle pixels."""
    return side * min(fov, KAGGLE_SIZE) / KAGGLE_SIZE


def crop_resize(im: Image.Image, size: int, crop: float) -> np.ndarray:
    """The central `crop` x `crop` pixels of an RGB image, resized to (size, size, 3) uint8.

    Shared by every format (JPEG and friends in `decode`, FITS in zoomorph.predict.fits)
    so that they all see the same geometry.
    """
    cx, cy, half = im.size[0] / 2, im.size[1] / 2, crop / 2
    box = (cx - half, cy - half, cx + half, cy + half)
    return np.asarray(im.resize((size, size), Image.BILINEAR, box=box, reducing_gap=None), dtype=np.uint8)


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """8-bit modes as Pillow converts them; 16-bit grey scaled to 0-255 (Pillow would clip it at 255,
    nearly white); 32-bit integer and float pixels refused, as they have no range to scale from."""
    if im.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)).convert("RGB")
    if im.mode in ("I", "F"):
        raise ImageError(f"{name}: {'32-bit integer' if im.mode == 'I' else 'floating-point'} pixels have no "
                         "0-255 range to scale from; give 8- or 16-bit images (or FITS, which is stretched)")
    return im.convert("RGB")


def decode(data: bytes, size: int, fov: int = KAGGLE_SIZE, name: str = "image") -> Decoded:
    """Decode, centre-crop the field of view and resize to `size` x `size` RGB uint8.

    `fov` is the side of the central crop in Kaggle pixels (424 = whole image;
    the Kaggle winner used 207). Images of another size are cropped to the same
    *fraction* of their shorter side, and that is reported as a note.
    Raises ImageError naming `name` for anything that is not a usable image.
    """
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data))
        fmt = im.format
        width, height = im.size
        crop = fov_crop(min(width, height), fov)
        if fmt == "JPEG":
            # Ask for the smallest DCT scale that still leaves >= `size` pixels in the crop.
            scale = max(size / crop, 1 / 8)
            im.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        im.load()
    except UnidentifiedImageError as err:
        raise ImageError(f"{name}: not an image file Pillow can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{name}: corrupt or truncated image ({err})") from err

    notes = []
    if fmt != "JPEG":
        notes.append(f"{fmt} content")
    if im.mode != "RGB":
        notes.append(f"converted from {im.mode}")
        im = _to_rgb(im, name)
    if (width, height) != (KAGGLE_SIZE, KAGGLE_SIZE):
        notes.append(f"size {width}x{height}, not {KAGGLE_SIZE}x{KAGGLE_SIZE}")

    # The draft may have shrunk the image: redo the crop in its own pixels.
    return Decoded(crop_resize(im, size, crop * im.size[0] / width), "; ".join(notes))


def load(source: str, size: int, fov: int = KAGGLE_SIZE) -> Decoded:
    """Read and decode one source."""
    return decode(read_bytes(source), size, fov, name=source)
