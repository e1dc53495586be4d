"""What to classify: the inputs expanded into one ordered listing, and how a batch of it is decoded.

An input is an image file, a FITS cutout, a directory (searched recursively),
a zip archive (read in place, e.g. the Kaggle test zip) or a catalogue
CSV/Parquet with a path column: its other columns are carried through to the
output, and relative paths are read from the catalogue's folder. The listing
has one row per image source, in the order the inputs were given.

This module imports no torch: decoding workers start from it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd

from zoomorph.data.images import IMAGE_SUFFIXES, ZIP_SEP, ImageError, list_images, load
from zoomorph.predict.fits import is_fits, load_fits

CATALOGUE_SUFFIXES = (".csv", ".parquet", ".pq")
PATH_COLUMNS = ("path", "file", "filename", "image")  # the first one present is the path column


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


def _is_listed(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES or is_fits(path.name)


def _is_catalogue(item: str) -> bool:
    return item.lower().endswith(CATALOGUE_SUFFIXES) and os.path.isfile(item)


def _catalogue(path: Path) -> pd.DataFrame:
    table = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    column = next((c for c in PATH_COLUMNS if c in table.columns), None)
    if column is None:
        raise ValueError(f"{path}: a catalogue needs a path column (one of {', '.join(PATH_COLUMNS)})")
    given = table.pop(column)
    # A row without a path stays, with an empty source: it becomes an error row.
    sources = [str(path.parent / p) if isinstance(p, str) and p.strip() else "" for p in given]
    return table.assign(path=sources)


def _sources(item: str) -> list[str]:
    """The image sources of one input: one stat call, no pathlib, for a file (the common case by far)."""
    try:
        mode = os.stat(item).st_mode
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{item}: no such file or directory") from err
    if stat.S_ISDIR(mode):
        return sorted(str(p) for p in Path(item).rglob("*") if _is_listed(p) and p.is_file())
    if item.lower().endswith(".zip"):
        return list_images(Path(item))
    return [item]  # whatever its name: decoding says whether it is an image


def expand_inputs(inputs: list[str | Path]) -> pd.DataFrame:
    """One row per image source, in input order: id, path, then any catalogue columns.

    `id` is the GalaxyID when every file name is numeric (int64), else the file stem (str).
    """
    frames, files = [], []  # consecutive image inputs make one frame: a list of 100,000 files stays quick
    for item in map(os.fspath, inputs):
        if _is_catalogue(item):
            frames += [pd.DataFrame({"path": files}), _catalogue(Path(item))]
            files = []
        else:
            files += _sources(item)
    listing = pd.concat([*frames, pd.DataFrame({"path": files})], ignore_index=True)
    if listing.empty:
        raise ValueError(f"no images found in {', '.join(map(str, inputs))}")
    ids = listing["path"].map(source_id)
    numeric = ids.str.fullmatch(r"\d+").all()
    listing.insert(0, "id", ids.astype("int64") if numeric else ids.astype(str))
    return listing[["id", "path"] + [c for c in listing.columns if c not in ("id", "path")]]


def read_image(source: str, size: int, fov: int) -> np.ndarray:
    if not source:
        raise ImageError("catalogue row has no path")
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
