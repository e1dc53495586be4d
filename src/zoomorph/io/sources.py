"""Sources: where one image's bytes come from, and the sources of one input a user gives.

A source is a file path, `archive.zip::member` for a file inside a zip (ZIP_SEP), or an `Unusable`:
an entry found that cannot be read at all (a folder that cannot be listed, a link to a folder, a FIFO,
a catalogue row without a path). An Unusable carries what it is and why as data; reading it raises
ImageError with that reason, so that prepare and predict account for it like any unreadable image.
"""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Union

from zoomorph.errors import InputNotFound, ZoomorphError

ZIP_SEP = "::"  # archive.zip::member
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")


class ImageError(ZoomorphError):
    """An image that cannot be used; the message says why."""


@dataclass(frozen=True)
class Unusable:
    """An input entry that cannot be read: `item` names it (a folder, a link, a catalogue), `reason` says why."""

    item: str
    reason: str

    def __str__(self) -> str:
        return f"{self.item}: {self.reason}"


Source = Union[str, Unusable]


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def is_fits(name: str) -> bool:
    return name.lower().endswith(FITS_SUFFIXES)


def is_listed(name: str) -> bool:
    """Whether a folder's walk or a zip's listing takes this file: an image or a FITS name."""
    return is_image_name(name) or is_fits(name)


def source_name(source: str) -> str:
    """The file name of a source: the member's for `archive.zip::dir/x.jpg` ("x.jpg")."""
    return source.rsplit(ZIP_SEP, 1)[-1].rsplit("/", 1)[-1]


def source_file(source: str) -> str:
    """The file on disk that holds a source: the archive for a zip member."""
    return source.split(ZIP_SEP, 1)[0]


def input_sources(item: str) -> Iterator[Source]:
    """The sources of one input given (not a catalogue: zoomorph.io.catalogues): a folder's walk, a zip's
    members, or the file itself whatever its name (decoding says whether it is an image).
    One stat call, no pathlib: a file is by far the common case."""
    try:
        mode = os.stat(item).st_mode
    except FileNotFoundError as err:
        raise InputNotFound(f"{item}: no such file or directory") from err
    except OSError:  # e.g. a link to itself: decoding says so
        yield item
        return
    if stat.S_ISDIR(mode):
        yield from walk_files(item)
    elif item.lower().endswith(".zip"):
        yield from list_zip(item)  # a zip's names are in its central directory, read whole anyway
    else:
        yield item


def walk_files(root: str) -> Iterator[Source]:
    """The image and FITS files under `root`, recursively, in the order of their sorted path strings, with
    one folder's entries in memory at a time (a subfolder sorts as "name/", as it does inside a path).

    No entry is left out unseen, and none stops the walk: a link to a file is listed whether or not it
    leads anywhere (decoding says why not: broken, a loop); a folder that cannot be listed, a link to a
    folder (not followed, as in pathlib's rglob, so links cannot loop) and a special file (FIFO, device)
    with a listed name come as Unusable."""
    try:
        with os.scandir(root) as entries:
            keyed = sorted((e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in entries)
    except OSError as err:
        yield Unusable(root, f"cannot list this folder ({err.strerror or err})")
        return
    for key, entry in keyed:
        if key.endswith("/"):
            yield from walk_files(entry.path)
        elif entry.is_symlink() and _leads_to_folder(entry):
            yield Unusable(entry.path, "a link to a folder, not followed (give the folder itself)")
        elif is_listed(entry.name):
            regular = entry.is_symlink() or entry.is_file(follow_symlinks=False)
            yield entry.path if regular else Unusable(entry.path, "not a regular file")


def _leads_to_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a loop of links
        return False


def list_zip(archive: str) -> list[str]:
    """The image and FITS members of a zip, sorted; not macOS's metadata (`__MACOSX/`, `._name`)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile as err:
        raise ZoomorphError(f"{archive}: not a readable zip archive ({err})") from err
    return [f"{archive}{ZIP_SEP}{n}" for n in sorted(names) if is_listed(n) and not _macos_metadata(n)]


def _macos_metadata(name: str) -> bool:
    return name.startswith("__MACOSX/") or name.rsplit("/", 1)[-1].startswith("._")


@lru_cache(maxsize=8)
def _open_zip(archive: str) -> zipfile.ZipFile:
    # One handle per archive per process: opening the central directory of a
    # 60k-member zip for every image would dominate the decode time.
    return zipfile.ZipFile(archive)


def read_bytes(source: Source) -> bytes:
    """The raw bytes of a source; ImageError saying why for one that cannot be read."""
    if isinstance(source, Unusable):
        raise ImageError(str(source))
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
