"""Catalogues in astropy's formats: FITS binary tables, VOTable, ECSV, HDF5, a chunk at a time where the format allows.

Each chunk is an astropy Table (so units, descriptions, masks, TNULL and the rest are read as astropy
reads them) turned into pandas columns of Arrow types: integers stay exact (a 64-bit objid included,
with gaps as nulls, not floats), floats keep their width, masked values are nulls, text is UTF-8.

* FITS (`.fits`, `.fit`, `.fts`; a table, not a cutout: the first HDU with data is a table):
  memory-mapped; each chunk converts only its own rows. A `.fits.gz` is decompressed whole.
  A null logical (byte 0) is a null, not astropy's False.
* HDF5 (`.hdf5`, `.h5`): the first compound dataset (as astropy writes one, with its
  `__table_column_meta__` when serialize_meta was on); each chunk is a slice of the dataset.
* ECSV (`.ecsv`): the YAML header once, then the data lines a chunk at a time, each chunk read by astropy
  under that header.
* VOTable (`.vot`, `.votable`): read whole, as astropy parses the XML document in one go, so
  memory holds the whole table; converted a chunk at a time.

Time columns become ISO text (UTC as stored, `isot`); a multi-dimensional (vector) column becomes text,
one JSON list per row; other mixins (SkyCoord, ...) their plain columns.
Each frame's attrs[NOTES] holds the units and descriptions of its columns: {name: {"unit": ..,
"description": ..}}, only where a column has one.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import warnings
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

# RA and Dec in degrees, as catalogues spell them (any case): `cutouts` and `--healpix` look for these
POSITION_COLUMNS = (("ra", "dec"), ("ra_deg", "dec_deg"), ("raj2000", "dej2000"), ("ra_j2000", "dec_j2000"))
NOTES = "zoomorph.notes"  # the DataFrame.attrs key of a frame's units and descriptions
# and FITS, judged by its first HDU with data (is_fits_table)
SUFFIXES = {".ecsv": "ecsv", ".vot": "votable", ".votable": "votable", ".hdf5": "hdf5", ".h5": "hdf5"}
FITS_NAMES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
META_SUFFIX = ".__table_column_meta__"  # where astropy keeps an HDF5 table's column metadata


def table_format(path: str) -> str | None:
    """The astropy format of a catalogue file (by suffix; FITS only when it holds a table), else None."""
    lower = path.lower()
    if lower.endswith(FITS_NAMES):
        return "fits" if is_fits_table(path) else None
    return SUFFIXES.get(os.path.splitext(lower)[1])


def is_fits_table(path: str) -> bool:
    """Whether a FITS file is a catalogue: its first HDU with data is a table (a cutout's is an image)."""
    if _primary_naxis(path):  # a cutout in the primary HDU, the common case: no need for astropy
        return False
    from astropy.io import fits  # imported on the first FITS input: it adds most of a second to every start

    try:
        with fits.open(path, lazy_load_hdus=True, memmap=True) as hdus:
            for hdu in hdus:
                if isinstance(hdu, fits.CompImageHDU):  # an image stored in a table
                    return False
                if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
                    return True
                if hdu.header.get("NAXIS", 0) > 0:
                    return False
    except (OSError, ValueError):  # not readable as FITS: decoding says why, as for any cutout
        return False
    return False


def _primary_naxis(path: str) -> int:
    """NAXIS of the primary header, read from its first 2880 bytes (0 when not found there)."""
    try:
        with (gzip.open if path.lower().endswith(".gz") else open)(path, "rb") as file:
            block = file.read(2880)
    except OSError:
        return 0
    for start in range(0, len(block) - 79, 80):
        if block[start:start + 8] == b"NAXIS   " and block[start + 8:start + 10] == b"= ":
            value = block[start + 10:start + 80].split(b"/")[0].strip()
            return int(value) if value.isdigit() else 0
    return 0


def table_frames(path: str, chunk_size: int) -> Iterator[pd.DataFrame]:
    """An astropy-format catalogue as frames of `chunk_size` rows (every column, the path's too)."""
    fmt = table_format(path)
    reader = {"fits": _fits_chunks, "hdf5": _hdf5_chunks, "ecsv": _ecsv_chunks, "votable": _votable_chunks}[fmt]
    chunks = reader(path, chunk_size)
    while True:
        with warnings.catch_warnings():  # around the reading only: not around the caller's code between yields
            warnings.simplefilter("ignore")  # astropy's unit and format warnings, once per chunk: the data is kept
            chunk = next(chunks, None)
            frame = None if chunk is None else as_frame(chunk)
        if frame is None:
            return
        yield frame


def as_frame(table) -> pd.DataFrame:
    """An astropy Table as pandas columns of Arrow types, with attrs[NOTES]."""
    from astropy.table.serialize import represent_mixins_as_columns  # astropy: only once a table comes
    from astropy.time import Time

    table = table.copy(copy_data=False)
    for name in table.colnames:
        if isinstance(table[name], Time):
            table[name] = table[name].isot
    table = represent_mixins_as_columns(table)
    columns, notes = {}, {}
    for name in table.colnames:
        column = table[name]
        values = _arrow(np.ma.getdata(column), np.ma.getmaskarray(column) if _masked(column) else None)
        columns[name] = pd.Series(values, dtype=pd.ArrowDtype(values.type))
        note = {"unit": str(column.unit or "") or None, "description": column.description or None}
        if any(note.values()):
            notes[name] = {k: v for k, v in note.items() if v}
    frame = pd.DataFrame(columns)
    frame.attrs[NOTES] = notes
    return frame


def _masked(column) -> bool:
    return hasattr(column, "mask") and bool(np.any(column.mask))


def _arrow(data: np.ndarray, mask: np.ndarray | None) -> pa.Array:
    if data.ndim > 1:  # a vector column: one JSON list per row
        return pa.array([None if m else json.dumps(v) for v, m in zip(data.tolist(), _row_mask(mask, data))],
                        type=pa.string())
    if data.dtype.kind == "S":
        data = np.char.decode(data, "utf-8", errors="replace")
    if data.dtype.kind in "biufmM":
        native = data.dtype.newbyteorder("=")
        data = data.astype(np.float32 if native == np.float16 else native, copy=False)
    if data.dtype.kind == "O":  # variable-length text (or arrays) in a VOTable or FITS heap
        cells = [None if m else v.decode("utf-8", "replace") if isinstance(v, bytes) else
                 v if isinstance(v, str) else json.dumps(np.asarray(v).tolist())
                 for v, m in zip(data, _row_mask(mask, data))]
        return pa.array(cells, type=pa.string())
    if data.dtype.kind == "c":
        return pa.array([None if m else str(v) for v, m in zip(data, _row_mask(mask, data))], type=pa.string())
    return pa.array(data, mask=mask)


def _row_mask(mask: np.ndarray | None, data: np.ndarray) -> np.ndarray:
    """Whether each row is masked (none are, without a mask)."""
    return mask if mask is not None else np.zeros(len(data), bool)


def _fits_chunks(path: str, chunk_size: int):
    from astropy.io import fits
    from astropy.table import MaskedColumn, Table

    with fits.open(path, memmap=True) as hdus:
        hdu = next(h for h in hdus if isinstance(h, (fits.BinTableHDU, fits.TableHDU)))
        logical = [c.name for c in hdu.columns if c.format.endswith("L")]
        for start in range(0, hdu.header["NAXIS2"], chunk_size):
            rows = hdu.data[start:start + chunk_size]  # only these rows are read from the map
            table = Table.read(type(hdu)(data=rows, header=hdu.header))
            raw = rows.view(np.ndarray)  # the bytes as stored: a null logical is 0 ('T', 'F' otherwise)
            for name in logical:
                if raw[name].ndim == 1:
                    table[name] = MaskedColumn(raw[name] == ord("T"), mask=raw[name] == 0,
                                               description=table[name].description)
            yield table


def _hdf5_chunks(path: str, chunk_size: int):
    import h5py  # only for HDF5 catalogues
    from astropy.table import Table

    with h5py.File(path, "r") as file:
        name = _first_table(file)
        dataset = file[name]
        meta = file[name + META_SUFFIX][()] if name + META_SUFFIX in file else None
        for start in range(0, len(dataset), chunk_size):
            # astropy reads a whole dataset; a copy of these rows, in memory, is one it can read
            with h5py.File(io.BytesIO(), "w") as piece:
                piece.create_dataset("table", data=dataset[start:start + chunk_size])
                piece["table"].attrs.update(dataset.attrs)
                if meta is not None:
                    piece.create_dataset("table" + META_SUFFIX, data=meta)
                yield Table.read(piece, path="table")


def _first_table(file) -> str:
    found: list[str] = []
    file.visititems(lambda name, item: found.append(name) if (
        getattr(item, "dtype", None) is not None and item.dtype.names and not name.endswith(META_SUFFIX)) else None)
    if not found:
        raise ValueError(f"{file.filename}: no table (compound dataset) in this HDF5 file")
    return found[0]


def _ecsv_chunks(path: str, chunk_size: int):
    with open(path, encoding="utf-8", newline="") as file:
        header: list[str] = []
        line = file.readline()
        while line.startswith("#") or (line.strip() == "" and line):
            header.append(line)
            line = file.readline()
        header.append(line)  # the column names
        rows: list[str] = []
        for line in _records(file):
            rows.append(line)
            if len(rows) == chunk_size:
                yield _ecsv_table(header + rows)
                rows = []
        if rows:
            yield _ecsv_table(header + rows)


def _ecsv_table(lines: list[str]):
    from astropy.table import Table

    # a file object, not the text: astropy asks urllib whether a text is a URL, which caches the last 128
    return Table.read(io.BytesIO("".join(lines).encode("utf-8")), format="ascii.ecsv", encoding="utf-8")


def _records(file) -> Iterator[str]:
    """The data rows of a CSV, one record each: a quoted value may hold a line break (an odd count of `"`)."""
    pending = ""
    for line in file:
        pending += line
        if pending.count('"') % 2 == 0:
            if pending.strip():
                yield pending if pending.endswith("\n") else pending + "\n"
            pending = ""
    if pending.strip():
        yield pending + "\n"


def _votable_chunks(path: str, chunk_size: int):
    from astropy.table import Table

    table = Table.read(path, format="votable", use_names_over_ids=True)  # the names, as TOPCAT shows them
    for start in range(0, len(table), chunk_size):
        yield table[start:start + chunk_size]


def with_notes(schema: pa.Schema, notes: dict[str, dict]) -> pa.Schema:
    """`schema` with each named column's unit and description as field metadata (b"unit", b"description"),
    as predict's parts and output carry them."""
    for i, field in enumerate(schema):
        note = notes.get(field.name)
        if note:
            schema = schema.set(i, field.with_metadata({k.encode(): str(v).encode() for k, v in note.items() if v}))
    return schema


def notes_of(field: pa.Field) -> dict[str, str]:
    """A field's unit and description (those it has), from its metadata."""
    meta = field.metadata or {}
    return {k: meta[k.encode()].decode() for k in ("unit", "description") if k.encode() in meta}
