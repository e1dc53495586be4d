"""Ids: the id of a file, and the one form in which ids are compared.

The id of a file is its name without the image suffix, exactly as written: `0123.jpg` -> "0123",
`archive.zip::dir/x.fits.gz` -> "x" (source_id). prepare keeps it as text; predict writes the id
column as int64 when every id is a number an int64 holds (first_non_numeric), else as this text.

Images are joined with a labels file by `join_key`, applied to both sides: a file's id, a
catalogue's GalaxyID column and a labels file's GalaxyID column. An integer, however it was written
("0123", "123", "+123", "123.0", 123, 123.0), becomes its digits without leading zeros ("123"); any
other id its text without surrounding spaces. So `0123.jpg` matches a labels row 123 or 123.0, and
keeps "0123" as its id.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from zoomorph.io.sources import source_name

INT64_MAX = str(2**63 - 1)
_INTEGER = re.compile(r"([+-]?\d+)(?:\.0*)?")  # "123.0": how a float column writes an integer


def _stem(name: str) -> str:
    """The name without its last suffix, as pathlib's `stem` (".hidden" keeps its dot)."""
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name


def source_id(source: str) -> str:
    """The id of a file: `.../100008.jpg` -> "100008", `a.zip::dir/x.fits.gz` -> "x", `0123.jpg` -> "0123".

    String operations, not pathlib: a listing of a million sources takes seconds less.
    """
    name = source_name(source)
    stem = _stem(name)
    return _stem(stem) if name.lower().endswith(".gz") else stem


def join_key(value) -> str | None:
    """The form in which an id is matched with another (the module docstring); None when it is missing."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else str(value)
    text = str(value).strip()
    integer = _INTEGER.fullmatch(text)
    return str(int(integer[1])) if integer else text or None


def join_keys(ids: pd.Series) -> pd.Series:
    """join_key of every id, as text (object) with None for a missing one; same index."""
    return pd.Series([join_key(v) for v in ids], index=ids.index, dtype=object)


def first_non_numeric(ids: pd.Series) -> str | None:
    """The first id that is not a number an int64 holds; None when all are GalaxyIDs (missing ids aside)."""
    ids = ids.dropna()
    digits = ids.str.fullmatch(r"\d{1,19}")
    fits = (ids.str.len() < len(INT64_MAX)) | (ids <= INT64_MAX)  # as text: same length, same order
    other = ids[~(digits & fits)]
    return other.iloc[0] if len(other) else None
