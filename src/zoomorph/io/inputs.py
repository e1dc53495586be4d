"""The inputs a user gives, expanded into one ordered listing, chunk by chunk.

An input is an image file, a FITS cutout, a directory (searched recursively),
a zip archive (read in place, e.g. the Kaggle test zip) or a catalogue
(CSV, Parquet, FITS table, VOTable, ECSV, HDF5) with a path column, whose other columns are carried along. The
listing has one row per source, in the order the inputs were given, and comes
in chunks, so that listing a catalogue of millions never holds it whole: a
directory is walked one folder at a time, a catalogue read a chunk at a time.

A listing frame has the columns
    id      the file's id (zoomorph.io.ids.source_id); None for an Unusable row
    path    the source; for an Unusable row, the item it names
    error   None, or why the row cannot be read at all (Unusable.reason)
    ...     the catalogue columns (one named `id` or `error` gets an `input_` prefix)
frame_sources turns a frame back into sources.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pandas as pd

from zoomorph.errors import ZoomorphError
from zoomorph.io.catalogues import catalogue_frames, is_catalogue, unused_name
from zoomorph.io.ids import first_non_numeric, source_id
from zoomorph.io.sources import Source, Unusable, input_sources
from zoomorph.io.tables import NOTES

OWN_COLUMNS = ("id", "path", "error")


def _frame(sources: list[Source], columns: pd.DataFrame | None = None,
           notes: dict[str, dict] | None = None) -> pd.DataFrame:
    bad = [isinstance(s, Unusable) for s in sources]
    frame = pd.DataFrame({
        "id": [None if b else source_id(s) for s, b in zip(sources, bad)],
        "path": [s.item if b else s for s, b in zip(sources, bad)],
        "error": [s.reason if b else None for s, b in zip(sources, bad)]})
    if columns is None:
        return frame
    taken = set(columns.columns) | set(OWN_COLUMNS)
    renamed = {c: unused_name(f"input_{c}", taken) for c in OWN_COLUMNS}
    if notes is not None:  # the first catalogue to describe a column describes it
        for name, note in columns.attrs.get(NOTES, {}).items():
            notes.setdefault(renamed.get(name, name), note)
    columns = columns.rename(columns=renamed)
    return pd.concat([frame, columns.reset_index(drop=True)], axis=1)


def frame_sources(frame: pd.DataFrame | dict[str, list]) -> list[Source]:
    """The sources of a listing frame's rows (or of its path and error columns), an Unusable where the
    row has an error."""
    return [Unusable(path, error) if isinstance(error, str) else path
            for path, error in zip(frame["path"], frame["error"])]


def _pieces(inputs: list[str | Path], chunk_size: int, notes: dict | None) -> Iterator[pd.DataFrame]:
    """The listing in pieces of at most `chunk_size` rows: runs of image inputs, catalogue frames."""
    files: list[Source] = []
    for item in map(os.fspath, inputs):
        if is_catalogue(item):
            if files:
                yield _frame(files)
                files = []
            for columns, sources in catalogue_frames(item, chunk_size):
                yield _frame(sources, columns, notes)
            continue
        for source in input_sources(item):
            files.append(source)
            if len(files) == chunk_size:
                yield _frame(files)
                files = []
    if files:
        yield _frame(files)


def iter_listing(inputs: list[str | Path], chunk_size: int,
                 notes: dict[str, dict] | None = None) -> Iterator[pd.DataFrame]:
    """The listing in frames of exactly `chunk_size` rows (the last one fewer). Raises if there are no
    images at all. `notes`, when given, collects the units and descriptions of catalogue columns as they
    are read: {listing column: {"unit": .., "description": ..}} (zoomorph.io.tables)."""
    pending: list[pd.DataFrame] = []
    held = chunks = 0
    for piece in _pieces(inputs, chunk_size, notes):
        pending.append(piece)
        held += len(piece)
        while held >= chunk_size:
            joined = pd.concat(pending, ignore_index=True)
            yield joined.iloc[:chunk_size].reset_index(drop=True)
            pending, held, chunks = [joined.iloc[chunk_size:]], held - chunk_size, chunks + 1
    if held:
        yield pd.concat(pending, ignore_index=True)
    elif not chunks:
        raise ZoomorphError(f"no images found in {', '.join(map(str, inputs))}")


def expand_inputs(inputs: list[str | Path]) -> pd.DataFrame:
    """The whole listing in one frame, for small input sets (predict streams it instead), as predict's
    output has it: `id` is the GalaxyID when every file name is numeric (int64), else the file's id
    (str); an Unusable row has neither id nor path, and its `error` names the item and the reason."""
    listing = pd.concat(iter_listing(inputs, chunk_size=65536), ignore_index=True)
    sources = frame_sources(listing)
    listing["error"] = [str(s) if isinstance(s, Unusable) else None for s in sources]
    listing["path"] = [None if isinstance(s, Unusable) else s for s in sources]
    if first_non_numeric(listing["id"]) is None:
        listing["id"] = listing["id"].astype("int64" if listing["id"].notna().all() else "Int64")
    return listing
