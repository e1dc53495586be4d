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
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zoomorph.data.images import ZIP_SEP, ImageError, is_image_name, list_images, load, walk_files
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


def _is_listed(name: str) -> bool:
    return is_image_name(name) or is_fits(name)


def _is_catalogue(item: str) -> bool:
    return item.lower().endswith(CATALOGUE_SUFFIXES) and os.path.isfile(item)


def _sources(item: str) -> Iterator[str]:
    """The image sources of one input: one stat call, no pathlib, for a file (the common case by far)."""
    try:
        mode = os.stat(item).st_mode
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{item}: no such file or directory") from err
    if stat.S_ISDIR(mode):
        yield from walk_files(item, _is_listed)  # one folder in memory at a time
    elif item.lower().endswith(".zip"):
        yield from list_images(Path(item), _is_listed)  # a zip's names are in its central directory, read whole anyway
    else:
        yield item  # whatever its name: decoding says whether it is an image


def _catalogue(path: str, chunk_size: int) -> Iterator[pd.DataFrame]:
    """A catalogue in frames of `chunk_size` rows: its path column as `path`, relative to its folder."""
    try:
        with warnings.catch_warnings():
            # pandas only warns when a row has more fields than the header, and drops them
            warnings.simplefilter("error", pd.errors.ParserWarning)
            yield from _catalogue_frames(path, chunk_size)
    except (pd.errors.ParserError, pd.errors.ParserWarning, pd.errors.EmptyDataError, pa.ArrowException,
            UnicodeDecodeError) as err:
        # a malformed row stops the run with the file named: dropping it would lose an input unseen
        raise ValueError(f"{path}: cannot read this catalogue ({type(err).__name__}: {str(err).strip()})") from err


def _typed(text: pd.Series) -> pd.Series:
    """A CSV column read as text -> int64, else float64, else text, as Arrow types (nullable, exact:
    a 19-digit objid stays itself). Text with a leading zero (a code like 000123) stays text."""
    values = pa.array(text, type=pa.string(), from_pandas=True)
    if not pc.any(pc.match_substring_regex(values, r"^[+-]?0\d")).as_py():
        for kind in (pa.int64(), pa.float64()):
            try:
                values = values.cast(kind)
                break
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
    return pd.Series(values, dtype=pd.ArrowDtype(values.type), index=text.index, name=text.name)


def _catalogue_frames(path: str, chunk_size: int) -> Iterator[pd.DataFrame]:
    if path.lower().endswith(".csv"):
        # All text first (no value changed on the way in), then typed column by column (_typed);
        # index_col=False: pandas would otherwise take the first column for an index when rows end with a comma.
        frames = (frame.apply(_typed) for frame in
                  pd.read_csv(path, chunksize=chunk_size, dtype=str, index_col=False))
        columns = pd.read_csv(path, nrows=0, index_col=False).columns
    else:
        parquet = pq.ParquetFile(path)
        frames = _parquet_frames(parquet, chunk_size)
        columns = parquet.schema_arrow.names
    column = next((c for c in PATH_COLUMNS if c in columns), None)
    if column is None:
        raise ValueError(f"{path}: a catalogue needs a path column (one of {', '.join(PATH_COLUMNS)})")
    folder = os.path.dirname(path)
    renamed = unused_name("input_id", columns)  # `id` is the listing's own column
    for table in frames:
        given = table.pop(column)
        table = table.rename(columns={"id": renamed})
        # A row without a path stays, with an empty source: it becomes an error row.
        yield table.assign(path=[os.path.join(folder, p) if isinstance(p, str) and p.strip() else ""
                                 for p in given])


def _parquet_frames(parquet: pq.ParquetFile, chunk_size: int) -> Iterator[pd.DataFrame]:
    """Arrow types kept (an int64 with nulls stays int64), and a named index that pandas saved is an
    ordinary column: stored as a column, or as a range (start, step) in the file's pandas metadata."""
    indexes = (parquet.schema_arrow.pandas_metadata or {}).get("index_columns", [])
    ranges = [i for i in indexes if isinstance(i, dict) and i.get("kind") == "range" and i.get("name")]
    offset = 0
    for batch in parquet.iter_batches(batch_size=chunk_size):
        frame = batch.to_pandas(types_mapper=pd.ArrowDtype, ignore_metadata=True)
        rows = np.arange(offset, offset + len(frame))
        for index in ranges:
            values = pa.array(index["start"] + index["step"] * rows)
            frame.insert(0, index["name"], pd.Series(values, dtype=pd.ArrowDtype(values.type)))
        offset += len(frame)
        yield frame


def unused_name(name: str, taken) -> str:
    """`name`, or with more `input_` prefixes until no column of `taken` has it."""
    while name in taken:
        name = "input_" + name
    return name


def _pieces(inputs: list[str | Path], chunk_size: int) -> Iterator[pd.DataFrame]:
    """The listing in pieces of at most `chunk_size` rows: runs of image inputs, catalogue frames."""
    files: list[str] = []
    for item in map(os.fspath, inputs):
        if _is_catalogue(item):
            if files:
                yield pd.DataFrame({"path": files})
                files = []
            yield from _catalogue(item, chunk_size)
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
    frame.insert(0, "id", ids.where(ids != "", None))  # a catalogue row without a path has no id
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

    `id` is the GalaxyID when every file name is numeric (int64), else the file stem (str).
    """
    listing = pd.concat(iter_listing(inputs, chunk_size=65536), ignore_index=True)
    if first_non_numeric(listing["id"]) is None:
        listing["id"] = listing["id"].astype("int64" if listing["id"].notna().all() else "Int64")
    return listing


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
