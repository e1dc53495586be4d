"""Catalogues: a table with a path column, its other columns read exactly, a chunk at a time.

CSV and Parquet here; FITS binary tables, VOTable, ECSV and HDF5 through astropy (zoomorph.io.tables,
which says which formats must be read whole).

Read a chunk at a time, so a catalogue of millions is never held whole.
* The path column is the first of PATH_COLUMNS present; it is read as text
  (a path like `100` stays one), relative paths from the catalogue's folder.
* Parquet keeps its Arrow types (an int64 column with gaps stays int64); a
  named index that pandas saved becomes an ordinary column, an unnamed one
  (`__index_level_0__`) is dropped, as pandas itself would.
* CSV is read as text, so that nothing is changed on the way in (only an empty
  cell is missing). Each column then gets one type for the whole file, decided
  in a first pass: int64 if every value is an integer that fits one, float64
  if every value is a decimal number, text otherwise. A value with a leading
  zero (a code like 000123) keeps its column text; so do integers past int64
  (float64 would change their last digits). Blank lines are not rows.

A row without a path is kept: its source is an Unusable naming the catalogue and the row.
"""

from __future__ import annotations

import itertools
import os
import re
import warnings
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zoomorph.errors import ZoomorphError
from zoomorph.io.sources import Source, Unusable
from zoomorph.io.tables import NOTES, table_format, table_frames

CATALOGUE_SUFFIXES = (".csv", ".parquet", ".pq")
PATH_COLUMNS = ("path", "file", "filename", "image")  # a catalogue's path column: the first one present

INTEGER = r"^[+-]?\d+$"
DECIMAL = r"(?i)^[+-]?((\d+\.?\d*|\.\d+)(e[+-]?\d+)?|nan|inf|infinity)$"
LEADING_ZERO = r"^[+-]?0\d"
UNNAMED_INDEX = r"__index_level_\d+__"


def is_catalogue(item: str) -> bool:
    """Whether an input given is a catalogue (CSV, Parquet or an astropy format; a FITS file holding a table,
    not an image) rather than an image or a folder."""
    if not os.path.isfile(item):
        return False
    return item.lower().endswith(CATALOGUE_SUFFIXES) or table_format(item) is not None


def path_column(columns, catalogue: str) -> str:
    """The path column of a catalogue with these columns."""
    column = next((c for c in PATH_COLUMNS if c in columns), None)
    if column is None:
        raise ZoomorphError(f"{catalogue}: a catalogue needs a path column (one of {', '.join(PATH_COLUMNS)})")
    return column


def catalogue_sources(catalogue: str, column: str, cells, first_row: int = 1) -> list[Source]:
    """A catalogue's path cells as sources, relative paths read from its folder; an empty cell is an
    Unusable naming the catalogue and the row (`first_row`: the data row number of the first cell)."""
    folder = os.path.dirname(catalogue)
    sources: list[Source] = []
    for row, cell in enumerate(cells, start=first_row):
        text = cell if isinstance(cell, str) else None if pd.isna(cell) else str(cell)
        sources.append(os.path.join(folder, text) if text and text.strip()
                       else Unusable(catalogue, f"row {row} (data rows counted from 1) has no {column}"))
    return sources


def catalogue_frames(path: str, chunk_size: int) -> Iterator[tuple[pd.DataFrame, list[Source]]]:
    """A catalogue in pieces of `chunk_size` rows: (its columns but the path column, the rows' sources)."""
    try:
        yield from _frames(path, chunk_size)
    except ZoomorphError:
        raise
    except (pd.errors.ParserError, pd.errors.ParserWarning, pd.errors.EmptyDataError, pa.ArrowException,
            UnicodeDecodeError, ValueError, OSError, KeyError) as err:  # the last three: astropy's readers
        # a malformed row stops the run with the file named: dropping it would lose an input unseen
        raise ZoomorphError(f"{path}: cannot read this catalogue ({type(err).__name__}: {str(err).strip()})") from err


def unused_name(name: str, taken) -> str:
    """`name`, or with more `input_` prefixes until no column of `taken` has it."""
    while name in taken:
        name = "input_" + name
    return name


def _frames(path: str, chunk_size: int) -> Iterator[tuple[pd.DataFrame, list[Source]]]:
    if path.lower().endswith(".csv"):
        kinds = _csv_kinds(path, chunk_size)
        column = path_column(kinds, path)
        kinds[column] = pa.string()
        frames = (_typed(frame, kinds) for frame in _csv_chunks(path, chunk_size))
    elif not path.lower().endswith((".parquet", ".pq")):
        tables = table_frames(path, chunk_size)
        first = next(tables, None)
        if first is None:  # no rows
            return
        column = path_column(first.columns, path)  # a table's columns are the same in every chunk
        frames = itertools.chain([first], tables)
    else:
        parquet = pq.ParquetFile(path)
        column = path_column(parquet.schema_arrow.names, path)
        frames = _parquet_frames(parquet, chunk_size)
    row = 0
    for table in frames:
        table.attrs.setdefault(NOTES, {}).pop(column, None)
        given = table.pop(column)
        yield table, catalogue_sources(path, column, given, first_row=row + 1)
        row += len(table)


def _csv_chunks(path: str, chunk_size: int) -> Iterator[pd.DataFrame]:
    """The CSV's cells as text, chunk by chunk; an empty cell is the only missing value.

    index_col=False: else pandas takes the first column for an index when rows end with a comma.
    A row with more fields than the header is an error (pandas only warns, and drops the surplus).
    """
    with pd.read_csv(path, chunksize=chunk_size, dtype=str, index_col=False, keep_default_na=False,
                     na_values=[""]) as reader:
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("error", pd.errors.ParserWarning)
                frame = next(reader, None)
            if frame is None:
                return
            yield frame


def _numbers(values: pa.Array) -> pa.Array:
    """Text as Arrow's casts read numbers: no spaces around, no leading +."""
    return pc.replace_substring_regex(pc.utf8_trim_whitespace(values), r"^\+", "")


def _csv_kinds(path: str, chunk_size: int) -> dict[str, pa.DataType]:
    """One type per column for the whole file (the first pass)."""
    kinds: dict[str, set[pa.DataType]] = {}
    for frame in _csv_chunks(path, chunk_size):
        for name in frame.columns:
            possible = kinds.setdefault(name, {pa.int64(), pa.float64()})
            values = pc.drop_null(pa.array(frame[name], type=pa.string(), from_pandas=True))
            trimmed = pc.utf8_trim_whitespace(values)
            if pc.any(pc.match_substring_regex(trimmed, LEADING_ZERO)).as_py():
                possible.clear()
            if not pc.all(pc.match_substring_regex(trimmed, INTEGER)).as_py():
                possible.discard(pa.int64())
            elif pa.int64() in possible:
                try:
                    _numbers(values).cast(pa.int64())
                except pa.ArrowInvalid:  # past int64: as float64 its digits would change
                    possible.clear()
            if not pc.all(pc.match_substring_regex(trimmed, DECIMAL)).as_py():
                possible.discard(pa.float64())
    return {name: pa.int64() if pa.int64() in possible else pa.float64() if possible else pa.string()
            for name, possible in kinds.items()}


def _typed(frame: pd.DataFrame, kinds: dict[str, pa.DataType]) -> pd.DataFrame:
    columns = {}
    for name, kind in kinds.items():
        values = pa.array(frame[name], type=pa.string(), from_pandas=True)
        if kind != pa.string():
            values = _numbers(values).cast(kind)
        columns[name] = pd.Series(values, dtype=pd.ArrowDtype(values.type), index=frame.index)
    return pd.DataFrame(columns)


def _parquet_frames(parquet: pq.ParquetFile, chunk_size: int) -> Iterator[pd.DataFrame]:
    """Arrow types kept, and a named index that pandas saved made a column: stored as a column, or
    as a range (start, step) in the file's pandas metadata."""
    indexes = (parquet.schema_arrow.pandas_metadata or {}).get("index_columns", [])
    ranges = [i for i in indexes if isinstance(i, dict) and i.get("kind") == "range" and i.get("name")]
    offset = 0
    for batch in parquet.iter_batches(batch_size=chunk_size):
        frame = batch.to_pandas(types_mapper=pd.ArrowDtype, ignore_metadata=True)
        frame = frame.drop(columns=[c for c in frame.columns if re.fullmatch(UNNAMED_INDEX, str(c))])
        rows = np.arange(offset, offset + len(frame))
        for index in ranges:
            values = pa.array(index["start"] + index["step"] * rows)
            frame.insert(0, index["name"], pd.Series(values, dtype=pd.ArrowDtype(values.type)))
        offset += len(frame)
        yield frame
