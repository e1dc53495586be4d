"""The catalogue of positions: read whole, its columns found by name, its ids made into safe file names,
and written back beside the cutouts with a path column that `zoomorph predict` reads.

A CSV is read as text and written back as text, so its cells come out as they
went in (ids like 000123 or 1237648720693755918 stay exact); Parquet keeps its
types, and the astropy formats (FITS binary tables, VOTable, ECSV, HDF5, read by
zoomorph.io.tables: 64-bit ids exact, a vector column as JSON text) are written as Parquet.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from zoomorph.errors import InputNotFound, ZoomorphError
from zoomorph.files import replace_atomically
from zoomorph.io.tables import POSITION_COLUMNS, table_format, table_frames

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
ASTROPY_NAMES = "FITS table, VOTable, ECSV, HDF5"
CHUNK = 65_536  # rows per piece read from an astropy table (all are held: a catalogue of positions is small)
ID_COLUMNS = ("objid", "id", "galaxyid", "galaxy_id", "dr8objid", "dr7objid", "specobjid", "source_id",
              "object_id", "name")
UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")  # anything else (/, \, :, spaces, ...) would be a path or a nuisance
MAX_NAME = 100


def read_table(path: Path) -> tuple[pd.DataFrame, str]:
    """The whole catalogue, and the format its copy beside the cutouts is written in ("csv" or "parquet")."""
    name = str(path).lower()
    if not Path(path).is_file():
        raise InputNotFound(f"{path}: no such catalogue")
    try:
        if name.endswith(CSV_SUFFIXES):
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], index_col=False), "csv"
        if name.endswith(PARQUET_SUFFIXES):
            return pd.read_parquet(path), "parquet"
        if table_format(str(path)) is not None:
            pieces = list(table_frames(str(path), CHUNK))
            return (pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame()), "parquet"
    except (ValueError, OSError, KeyError, pd.errors.ParserError) as err:
        raise ZoomorphError(f"{path}: cannot read this catalogue ({type(err).__name__}: {err})") from err
    raise ZoomorphError(f"{path}: a catalogue of positions is CSV, Parquet or a {ASTROPY_NAMES} "
                        f"(a FITS image is a cutout, not a catalogue)")


def position_columns(columns) -> tuple[str, str]:
    """The (RA, Dec) columns: the first pair of POSITION_COLUMNS present, in any case."""
    by_lower = {str(c).lower(): c for c in columns}
    for ra, dec in POSITION_COLUMNS:
        if ra in by_lower and dec in by_lower:
            return by_lower[ra], by_lower[dec]
    pairs = ", ".join(f"{ra}/{dec}" for ra, dec in POSITION_COLUMNS)
    raise ZoomorphError(f"no RA/Dec columns: the catalogue needs one of {pairs} (any case), in degrees")


def id_column(columns, given: str | None) -> str | None:
    """The column the file names come from: `given`, else the first of ID_COLUMNS present (any case);
    None: there is none, and rows are named by their number."""
    if given is not None:
        if given not in columns:
            raise ZoomorphError(f"--id-column {given!r}: no such column (columns: {', '.join(map(str, columns))})")
        return given
    by_lower = {str(c).lower(): c for c in columns}
    return next((by_lower[c] for c in ID_COLUMNS if c in by_lower), None)


def numbers(values: pd.Series) -> np.ndarray:
    """A column as float64, NaN where a cell is not a number."""
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=np.float64)


def id_text(value) -> str:
    """An id cell as text: 1237648720693755918, not 1.2376487206937559e+18."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def file_names(ids: list[str], suffix: str) -> list[str]:
    """One safe, distinct file name per row: the id with anything but letters, digits and . _ + -
    replaced, never starting with a dot (no hidden files, no ..); an empty id is row<N>; a name taken by
    an earlier row (ignoring case, as some disks do) gets _row<N>. N: the data row, counted from 1."""
    names, taken = [], set()
    for row, text in enumerate(ids, start=1):
        stem = UNSAFE.sub("_", text).lstrip(".")[:MAX_NAME] or f"row{row}"
        while stem.lower() in taken:
            stem = f"{stem}_row{row}"
        taken.add(stem.lower())
        names.append(stem + suffix)
    return names


def write_table(frame: pd.DataFrame, folder: Path, kind: str) -> Path:
    """The catalogue beside the cutouts, written whole or not at all: folder/catalogue.csv or .parquet."""
    target = Path(folder) / f"catalogue.{kind}"
    if kind == "csv":
        replace_atomically(target, lambda tmp: frame.to_csv(tmp, index=False))
    else:
        replace_atomically(target, lambda tmp: frame.to_parquet(tmp, index=False))
    return target


def same_file(a: Path, b: Path) -> bool:
    return Path(b).exists() and os.path.samefile(a, b)
