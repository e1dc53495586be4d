"""predict's FITS, VOTable, ECSV and HDF5 outputs, assembled from its Parquet parts one part at a time.

Each is written as the format's header, then the rows part by part, then what closes the file, so that
memory holds one part whatever the row count (docs/catalogues.md). The headers are astropy's, so that
astropy (and TOPCAT, fitsio, h5py) reads the files back with their units and descriptions:

* FITS: a first pass over the parts measures what the header must fix in advance: the width of each text
  column (FITS text has one width, in bytes: UTF-8 is written, ASCII stays ASCII) and, for an integer
  column with nulls, a TNULL value that the column never takes. Then the primary HDU, the BINTABLE
  header with the whole row count (astropy's, made from an empty table: TFORM, TZERO, TUNIT, and its
  serialized column metadata, which holds the descriptions), each part's rows as raw big-endian
  records, and the padding to a 2880-byte block. Nulls: TNULL (integers), NaN (floats), the null
  logical byte 0 (booleans), empty text.
* HDF5: the same first pass; then a compound dataset `predictions` of the whole row count with astropy's
  `__table_column_meta__` beside it (both made by astropy from a one-row template: a column with nulls
  gets its `name.mask` field), and each part written into its slice of rows.
* ECSV: astropy's YAML header (units, descriptions, types) and column names, from the first row; then
  every part's data lines, made column by column with Arrow (numbers in their shortest exact text, text
  quoted). A null is an empty field `""`, as astropy writes one (so empty text reads back as null: ECSV
  does not tell them apart).
* VOTable (TABLEDATA): astropy's document up to <TABLEDATA>, from the first row; then every part's <TR>
  rows, made column by column; then the closing tags. A null is an empty <TD/> (text has no null in
  VOTable: it reads back empty).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zoomorph.errors import ZoomorphError
from zoomorph.io.tables import META_SUFFIX, notes_of

ASTROPY_FORMATS = ("fits", "votable", "ecsv", "hdf5")
HDF5_PATH = "predictions"  # the dataset holding an HDF5 output's table
FITS_BLOCK = 2880
RAW_FITS = {"L": "i1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8"}

Tables = Iterator[pa.Table]


def write_astropy(fmt: str, tmp: Path, parts: list[Path], schema: pa.Schema, tables: Tables) -> None:
    """Write `tables` (the parts, in order, as read by the caller) to `tmp` in `fmt`."""
    {"fits": _write_fits, "hdf5": _write_hdf5, "ecsv": _write_ecsv, "votable": _write_votable}[fmt](
        tmp, parts, schema, tables)


# ---------------------------------------------------------------- columns

def _kind(kind: pa.DataType) -> str:
    if pa.types.is_integer(kind):
        return "int"
    if pa.types.is_floating(kind):
        return "float"
    if pa.types.is_boolean(kind):
        return "bool"
    return "text"  # strings, and anything else (dates, lists, ...) as its text


def _values(column: pa.ChunkedArray | pa.Array, kind: pa.DataType) -> tuple[np.ndarray, np.ndarray]:
    """(values with nulls filled, null mask) as numpy: integers in their own width, text as str."""
    nulls = column.is_null().to_numpy(zero_copy_only=False)
    which = _kind(kind)
    if which == "int":
        return pc.fill_null(column, 0).to_numpy(), nulls
    if which == "float":
        values = pc.fill_null(column, np.nan).to_numpy()
        return values.astype(np.float32) if values.dtype == np.float16 else values, nulls
    if which == "bool":
        return pc.fill_null(column, False).to_numpy(zero_copy_only=False), nulls
    text = column if pa.types.is_string(kind) or pa.types.is_large_string(kind) else _as_text(column)
    cells = pc.fill_null(text, "").to_pylist()
    return np.array(cells, dtype=str) if cells else np.zeros(0, "U1"), nulls


def _as_text(column) -> pa.Array:
    try:
        return pc.cast(column, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else str(v) for v in column.to_pylist()], type=pa.string())


def _astropy(table: pa.Table, schema: pa.Schema):
    """Rows of a part as an astropy Table, every column masked, with its unit and description: what astropy
    makes the headers from."""
    from astropy.table import MaskedColumn, Table  # astropy: only for these formats (most of a second)

    columns = []
    for field in schema:
        values, nulls = _values(table[field.name], field.type)
        columns.append(MaskedColumn(values, mask=nulls, name=field.name, **notes_of(field)))
    return Table(columns, copy=False)


# ---------------------------------------------------------------- ECSV, VOTable: a header, then text rows

def _write_ecsv(tmp: Path, parts: list[Path], schema: pa.Schema, tables: Tables) -> None:
    _write_text(tmp, schema, tables, _ecsv_around, _ecsv_cells, " ", ("", ""))


def _ecsv_around(table) -> tuple[str, str]:
    """(the YAML header and the column names, nothing) as astropy writes them for this part's columns."""
    buffer = io.StringIO()
    table.write(buffer, format="ascii.ecsv")
    lines = buffer.getvalue().splitlines(keepends=True)
    names = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    return "".join(lines[:names + 1]), ""


def _ecsv_cells(column, kind: pa.DataType) -> pa.Array:
    """As astropy writes ECSV: numbers exact (Arrow's shortest round-trip text), text quoted, a null empty."""
    which = _kind(kind)
    if which == "text":
        text = pc.replace_substring(_as_text(column) if not pa.types.is_string(kind) else column, '"', '""')
        cells = pc.binary_join_element_wise('"', text, '"', "")
    elif which == "bool":
        cells = pc.if_else(column, "True", "False")
    else:
        cells = pc.cast(column, pa.string())
    return pc.fill_null(cells, '""')


def _write_votable(tmp: Path, parts: list[Path], schema: pa.Schema, tables: Tables) -> None:
    _write_text(tmp, schema, tables, _votable_around, _votable_cells, "", ("<TR>", "</TR>"))


def _votable_around(table) -> tuple[str, str]:
    """(the document up to <TABLEDATA>, from </TABLEDATA> on) as astropy writes them for this part's columns."""
    from astropy.io.votable import from_table  # only for VOTable output

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # W03: an ID made from a name that is not one ("2mass j" -> "_2mass_j")
        document = from_table(table)
    for field in document.iter_fields_and_params():
        if field.datatype in ("char", "unicodeChar"):
            field.arraysize = "*"  # one declaration for every part, whatever its longest text
        elif field.datatype == "bit":
            field.datatype = "boolean"  # T and F (astropy declares a masked boolean as bits)
    buffer = io.BytesIO()
    document.to_xml(buffer, tabledata_format="tabledata")
    head, rest = buffer.getvalue().decode("utf-8").split("<TABLEDATA>", 1)
    return head + "<TABLEDATA>\n", "</TABLEDATA>" + rest.split("</TABLEDATA>", 1)[1]


def _votable_cells(column, kind: pa.DataType) -> pa.Array:
    """<TD> cells: text escaped for XML, floats with the VOTable spellings of NaN and infinities, a null <TD/>."""
    which = _kind(kind)
    if which == "text":
        cells = _as_text(column) if not pa.types.is_string(kind) else column
        for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):
            cells = pc.replace_substring(cells, char, entity)
    elif which == "bool":
        cells = pc.if_else(column, "T", "F")
    else:
        cells = pc.cast(column, pa.string())
        if which == "float":
            for number, spelling in (("nan", "NaN"), ("inf", "+Inf"), ("-inf", "-Inf")):
                cells = pc.if_else(pc.equal(cells, number), spelling, cells)
    return pc.fill_null(pc.binary_join_element_wise("<TD>", cells, "</TD>", ""), "<TD/>")


def _write_text(tmp: Path, schema: pa.Schema, tables: Tables, around: Callable, cells: Callable, separator: str,
                row: tuple[str, str]) -> None:
    """`around`'s header (astropy's, from the first row: the columns are the same in every part), then each
    part's rows, built column-wise by `cells` and joined by `separator` within `row`, then `around`'s end."""
    tail = ""
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        for k, table in enumerate(tables):
            if k == 0:
                head, tail = around(_astropy(table.slice(0, 1), schema))
                out.write(head)
            columns = [cells(table[f.name].combine_chunks(), f.type) for f in schema]
            lines = pc.binary_join_element_wise(row[0], pc.binary_join_element_wise(*columns, separator), row[1], "")
            out.write("\n".join(lines.to_pylist()) + "\n")
        out.write(tail)


# ---------------------------------------------------------------- FITS, HDF5: fixed layouts, a first pass

def _measure(parts: list[Path], schema: pa.Schema) -> dict[str, dict]:
    """Per column, over every part: rows, nulls, and the longest text (UTF-8 bytes) or the integer range."""
    stats = {f.name: {"nulls": 0, "width": 1, "min": None, "max": None} for f in schema}
    for part in parts:
        table = pq.read_table(part)  # one part in memory, as when it is written
        for field in schema:
            column, seen = table[field.name], stats[field.name]
            seen["nulls"] += column.null_count
            if _kind(field.type) == "text":
                lengths = pc.binary_length(pc.cast(_as_text(column), pa.binary()))
                seen["width"] = max(seen["width"], pc.max(lengths).as_py() or 0)
            elif _kind(field.type) == "int" and column.null_count < len(column):
                low, high = pc.min_max(column).values()
                seen["min"] = low.as_py() if seen["min"] is None else min(seen["min"], low.as_py())
                seen["max"] = high.as_py() if seen["max"] is None else max(seen["max"], high.as_py())
    return stats


def _encoded(values: np.ndarray, width: int) -> np.ndarray:
    return np.array([v.encode("utf-8") for v in values.tolist()], dtype=f"S{width}")


def _write_fits(tmp: Path, parts: list[Path], schema: pa.Schema, tables: Tables) -> None:
    from astropy.io import fits  # only for FITS output

    stats = _measure(parts, schema)
    rows = sum(pq.read_metadata(p).num_rows for p in parts)
    template = _astropy(pa.table({f.name: pa.array([], f.type) for f in schema}), schema)
    for field in schema:
        if _kind(field.type) == "text":
            template[field.name] = template[field.name].astype(f"S{stats[field.name]['width']}")
        elif pa.types.is_int8(field.type):
            template[field.name] = template[field.name].astype(np.int16)  # astropy writes int8 as a logical
    buffer = io.BytesIO()
    template.write(buffer, format="fits")
    buffer.seek(0)
    with fits.open(buffer) as hdus:
        header = hdus[1].header.copy()
    header["NAXIS2"] = rows
    for key in [k for k in header if k.startswith("TNULL")]:  # astropy's guesses (999999): set below
        del header[key]
    layout = []
    for i, field in enumerate(schema, start=1):
        form, zero = header[f"TFORM{i}"].strip(), header.get(f"TZERO{i}", 0)
        raw = f"S{form[:-1]}" if form.endswith("A") else RAW_FITS[form]
        null = None
        if _kind(field.type) == "int" and stats[field.name]["nulls"]:
            null = _tnull(field.name, np.dtype(raw), stats[field.name], zero)
            header.insert(f"TFORM{i}", (f"TNULL{i}", null), after=True)
        layout.append((field, raw, zero, null))
    dtype = np.dtype([(f"c{i}", raw) for i, (_, raw, _, _) in enumerate(layout)])
    with open(tmp, "wb") as out:
        out.write(fits.PrimaryHDU().header.tostring().encode("ascii"))
        out.write(header.tostring().encode("ascii"))
        for table in tables:
            records = np.zeros(len(table), dtype)
            for i, (field, raw, zero, null) in enumerate(layout):
                records[f"c{i}"] = _fits_values(table[field.name], field.type, raw, zero, null)
            out.write(records.tobytes())
        out.write(b"\0" * (-rows * dtype.itemsize % FITS_BLOCK))


def _tnull(name: str, raw: np.dtype, seen: dict, zero: int) -> int:
    """A stored value no row of the column takes, to mark its nulls: the stored type's lowest, else its highest."""
    info = np.iinfo(raw)
    low = None if seen["min"] is None else seen["min"] - zero
    high = None if seen["max"] is None else seen["max"] - zero
    if low is None or low > info.min:
        return int(info.min)
    if high < info.max:
        return int(info.max)
    raise ZoomorphError(f"column {name} takes every value from {seen['min']} to {seen['max']}: FITS has no value "
                        "left to mark its missing ones; write Parquet, VOTable, ECSV or HDF5 instead")


def _fits_values(column, kind: pa.DataType, raw: str, zero: int, null: int | None) -> np.ndarray:
    values, nulls = _values(column, kind)
    if _kind(kind) == "text":
        return _encoded(values, np.dtype(raw).itemsize)
    if _kind(kind) == "bool":
        return np.where(nulls, 0, np.where(values, ord("T"), ord("F"))).astype("i1")
    if zero:  # unsigned integers, stored shifted by TZERO
        values = (values - np.uint64(zero)).view(np.int64) if values.dtype == np.uint64 else \
            values.astype(np.int64) - zero
    values = values.astype(raw)
    if null is not None:
        values[nulls] = null
    return values


def _write_hdf5(tmp: Path, parts: list[Path], schema: pa.Schema, tables: Tables) -> None:
    import h5py  # only for HDF5 output
    from astropy.table import MaskedColumn, Table

    stats = _measure(parts, schema)
    rows = sum(pq.read_metadata(p).num_rows for p in parts)
    template = Table()
    for field in schema:  # one row: the widest text, and a null in each column that has nulls
        values, _ = _values(pa.array([None], field.type), field.type)
        if _kind(field.type) == "text":
            values = np.array(["x" * stats[field.name]["width"]])
        template[field.name] = MaskedColumn(values, mask=[stats[field.name]["nulls"] > 0], **notes_of(field))
    with h5py.File(io.BytesIO(), "w") as made:
        template.write(made, path=HDF5_PATH, serialize_meta=True)
        dataset, meta_name = made[HDF5_PATH], HDF5_PATH + META_SUFFIX
        dtype, attrs, meta = dataset.dtype, dict(dataset.attrs), made[meta_name][()]
    with h5py.File(tmp, "w") as out:
        target = out.create_dataset(HDF5_PATH, shape=(rows,), dtype=dtype)
        target.attrs.update(attrs)
        out.create_dataset(meta_name, data=meta)
        start = 0
        for table in tables:
            records = np.zeros(len(table), dtype)
            for field in schema:
                values, nulls = _values(table[field.name], field.type)
                kind = dtype[field.name]
                records[field.name] = _encoded(values, kind.itemsize) if kind.kind == "S" else values
                if f"{field.name}.mask" in dtype.names:
                    records[f"{field.name}.mask"] = nulls
            target[start:start + len(table)] = records
            start += len(table)
