"""What to classify: the inputs expanded into one ordered listing, chunk by chunk, and how a batch of it is decoded.

An input is an image file, a FITS cutout, a directory (searched recursively),
a zip archive (read in place, e.g. the Kaggle test zip) or a catalogue
CSV/Parquet with a path column: its other columns are carried through to the
output, and relative paths are read from the catalogue's folder. The listing
has one row per image source, in the order the inputs were given. It comes in
chunks, so that listing a catalogue of millions never holds it whole: a
directory is walked one folder at a time, a catalogue read a chunk at a time.

This module imports no torch: decoding workers start from it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from zoomorph.data.images import UNUSABLE, ZIP_SEP, ImageError, is_image_name, list_images, load, walk_files
from zoomorph.predict.catalogues import catalogue_frames, is_catalogue
from zoomorph.predict.fits import is_fits, load_fits


def _stem(name: str) -> str:
    """The name without its last suffix, as pathlib's `stem` (".hidden" keeps its dot)."""
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name


def source_id(source: str) -> str:
    """`.../100008.jpg` -> "100008"; `archive.zip::dir/x.fits.gz` -> "x".

    String operations, not pathlib: a listing of a million sources takes seconds less.
    """
    name = source.split(ZIP_SEP)[-1].rsplit("/", 1)[-1]
    stem = _stem(name)
    return _stem(stem) if name.lower().endswith(".gz") else stem


def _is_listed(name: str) -> bool:
    return is_image_name(name) or is_fits(name)


def _sources(item: str) -> Iterator[str]:
    """The image sources of one input: one stat call, no pathlib, for a file (the common case by far)."""
    try:
        mode = os.stat(item).st_mode
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{item}: no such file or directory") from err
    except OSError:  # e.g. a link to itself: its row's error says so
        yield item
        return
    if stat.S_ISDIR(mode):
        yield from walk_files(item, _is_listed)  # one folder in memory at a time
    elif item.lower().endswith(".zip"):
        yield from list_images(Path(item), _is_listed)  # a zip's names are in its central directory, read whole anyway
    else:
        yield item  # whatever its name: decoding says whether it is an image


def _pieces(inputs: list[str | Path], chunk_size: int) -> Iterator[pd.DataFrame]:
    """The listing in pieces of at most `chunk_size` rows: runs of image inputs, catalogue frames."""
    files: list[str] = []
    for item in map(os.fspath, inputs):
        if is_catalogue(item):
            if files:
                yield pd.DataFrame({"path": files})
                files = []
            yield from catalogue_frames(item, chunk_size)
            continue
        for source in _sources(item):
            files.append(source)
            if len(files) == chunk_size:
                yield pd.DataFrame({"path": files})
                files = []
    if files:
        yield pd.DataFrame({"path": files})


def iter_listing(inputs: list[str | Path], chunk_size: int) -> Iterator[pd.DataFrame]:
    """The listing in frames of exactly `chunk_size` rows (the last one fewer): id (the file stem, str),
    path, then any catalogue columns. Raises if there are no images at all."""
    pending: list[pd.DataFrame] = []
    held = chunks = 0
    for piece in _pieces(inputs, chunk_size):
        pending.append(piece)
        held += len(piece)
        while held >= chunk_size:
            joined = pd.concat(pending, ignore_index=True)
            yield _with_ids(joined.iloc[:chunk_size])
            pending, held, chunks = [joined.iloc[chunk_size:]], held - chunk_size, chunks + 1
    if held:
        yield _with_ids(pd.concat(pending, ignore_index=True))
    elif not chunks:
        raise ValueError(f"no images found in {', '.join(map(str, inputs))}")


def _with_ids(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.reset_index(drop=True)
    ids = frame["path"].map(source_id).astype(str)
    frame.insert(0, "id", ids.where(~frame["path"].str.startswith(UNUSABLE), None))  # an unusable row has none
    return frame[["id", "path"] + [c for c in frame.columns if c not in ("id", "path")]]


INT64_MAX = str(2**63 - 1)


def first_non_numeric(ids: pd.Series) -> str | None:
    """The first id that is not a number an int64 holds; None when all are GalaxyIDs (missing ids aside)."""
    ids = ids.dropna()
    digits = ids.str.fullmatch(r"\d{1,19}")
    fits = (ids.str.len() < len(INT64_MAX)) | (ids <= INT64_MAX)  # as text: same length, same order
    other = ids[~(digits & fits)]
    return other.iloc[0] if len(other) else None


def expand_inputs(inputs: list[str | Path]) -> pd.DataFrame:
    """The whole listing in one frame, for small input sets (predict() streams it instead).

    `id` is the GalaxyID when every file name is numeric (int64), else the file stem (str); an unusable
    row (a catalogue row without a path, a folder that cannot be listed) has neither id nor path, as in
    predict's output.
    """
    listing = pd.concat(iter_listing(inputs, chunk_size=65536), ignore_index=True)
    listing["path"] = listing["path"].mask(listing["path"].str.startswith(UNUSABLE))
    if first_non_numeric(listing["id"]) is None:
        listing["id"] = listing["id"].astype("int64" if listing["id"].notna().all() else "Int64")
    return listing


def read_image(source: str, size: int, fov: int) -> np.ndarray:
    return (load_fits if is_fits(source) else load)(source, size, fov).pixels


def decode_batch(task: tuple[int, list[str], int, int]) -> tuple[int, np.ndarray, list[str]]:
    """(start, sources, size, fov) -> (start, pixels of the readable images (n_ok, S, S, 3), error per source).

    An error is "" for a readable image, else the reason; one bad file never stops the batch.
    """
    start, sources, size, fov = task
    pixels, errors = [], []
    for source in sources:
        try:
            pixels.append(read_image(source, size, fov))
            errors.append("")
        except Exception as err:  # noqa: BLE001 (any failure, e.g. a decompression bomb, is that row's error)
            errors.append(str(err) if isinstance(err, ImageError) else f"{source}: {type(err).__name__}: {err}")
    stacked = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
    return start, stacked, errors
