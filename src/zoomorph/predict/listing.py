"""The input listing on disk, so that predict's memory does not grow with the input count.

    OUT.parts/listing-00000.parquet   id, path, error and catalogue columns of rows [0, C), C = chunk size
    OUT.parts/listing-00001.parquet   rows [C, 2C) ...

`Listing.scan` expands the inputs chunk by chunk (zoomorph.io.inputs.iter_listing)
into these files, digesting them as it goes; prediction then reads back one
chunk's sources, and the writer one chunk's columns, at a time. Every call
rescans and rewrites the files before reading any of them, so a file torn by a
kill is never read, and a resumed run predicts exactly the listing it
fingerprinted. The `error` column (an Unusable row's reason) stays here: the
output's own `error` says it, as decoding such a source raises it.

This is predict's own (its OUT.parts, its output schema), so it lives in predict/, not zoomorph.io.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zoomorph.io.catalogues import unused_name
from zoomorph.io.ids import first_non_numeric
from zoomorph.io.inputs import OWN_COLUMNS, frame_sources, iter_listing
from zoomorph.io.sources import Source
from zoomorph.io.tables import with_notes

OWN_NOTES = {"id": {"description": "the image's id: its file name without the suffix"},
             "path": {"description": "the image: a file, or archive.zip::member"}}


@dataclass(frozen=True)
class Listing:
    folder: Path
    chunk_size: int
    rows: int
    schema: pa.Schema  # the output's listing columns, one for every chunk: id is int64 when every id is numeric;
    # units and descriptions as field metadata (io.tables.with_notes)
    digest: str  # sha256 over every chunk's column names and values, in order
    not_numeric: str | None  # the first id that is not a number; None when they are GalaxyIDs

    @classmethod
    def scan(cls, inputs: list, folder: Path, chunk_size: int, reserved: frozenset[str] = frozenset(),
             check: Callable[[Listing], None] | None = None) -> Listing:
        """Expand `inputs` into `folder`; catalogue columns named like one in `reserved` get an input_ prefix.

        `check` may refuse the listing (predict's kaggle format: numeric ids). Whoever made `folder`
        removes it if the scan fails (engine._claimed).
        """
        folder.mkdir(parents=True, exist_ok=True)
        listing = cls._scan(inputs, folder, chunk_size, reserved)
        if check:
            check(listing)
        return listing

    @classmethod
    def _scan(cls, inputs: list, folder: Path, chunk_size: int, reserved: frozenset[str]) -> Listing:
        digest, schemas, rows, not_numeric = hashlib.sha256(), [], 0, None
        notes, renamed = dict(OWN_NOTES), {}
        for k, frame in enumerate(iter_listing(inputs, chunk_size, notes)):
            renames = {c: unused_name(f"input_{c}", frame.columns)
                       for c in frame.columns[len(OWN_COLUMNS):] if c in reserved}
            renamed.update(renames)
            frame = frame.rename(columns=renames)
            digest.update(json.dumps(list(map(str, frame.columns))).encode())
            digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
            if not_numeric is None:
                not_numeric = first_non_numeric(frame["id"])
            table = _to_arrow(frame)
            pq.write_table(table, _chunk_path(folder, k))
            schemas.append(table.schema)
            rows += len(frame)
        schema = _exact(_unify(schemas), schemas, folder)
        schema = schema.remove(schema.get_field_index("error"))  # the output has its own error column
        if not_numeric is None:
            schema = schema.set(0, pa.field("id", pa.int64()))
        schema = with_notes(schema, {renamed.get(name, name): note for name, note in notes.items()})
        return cls(folder, chunk_size, rows, schema, digest.hexdigest(), not_numeric)

    @property
    def n_chunks(self) -> int:
        return -(-self.rows // self.chunk_size)

    def chunk_rows(self, k: int) -> tuple[int, int]:
        return k * self.chunk_size, min((k + 1) * self.chunk_size, self.rows)

    def sources(self, k: int) -> list[Source]:
        """Chunk k's sources, in order: a path, or an Unusable for a row with an error."""
        return frame_sources(pq.read_table(_chunk_path(self.folder, k), columns=["path", "error"]).to_pydict())

    def chunk(self, k: int) -> pa.Table:
        """Chunk k's listing columns in the common schema (a column its inputs lack is null, and so is
        the path of an Unusable row)."""
        table = pq.read_table(_chunk_path(self.folder, k))
        path = table["path"]
        table = table.set_column(table.column_names.index("path"), "path",
                                 pc.if_else(pc.is_null(table["error"]), path, None))
        columns = [table[f.name] if f.name in table.column_names else pa.nulls(len(table), f.type)
                   for f in self.schema]
        return pa.Table.from_arrays(columns, names=self.schema.names).cast(self.schema)


def _chunk_path(folder: Path, k: int) -> Path:
    return folder / f"listing-{k:05d}.parquet"


def _to_arrow(frame: pd.DataFrame) -> pa.Table:
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # numbers and text in one column, e.g. from two catalogues
        mixed = [c for c in frame.columns if frame[c].dtype == object]
        text = frame.assign(**{c: frame[c].where(frame[c].isna(), frame[c].astype(str)) for c in mixed})
        table = pa.Table.from_pandas(text, preserve_index=False)
    return table.replace_schema_metadata()


def _exact(schema: pa.Schema, schemas: list[pa.Schema], folder: Path) -> pa.Schema:
    """`schema`, with text for a column whose integers would change as floats (past 2**53, e.g. an
    objid in one catalogue where another has a float): the chunks are read back to check."""
    for i, field in enumerate(schema):
        if pa.types.is_floating(field.type) and any(
                field.name in s.names and pa.types.is_integer(s.field(field.name).type) for s in schemas):
            try:
                for k, chunk_schema in enumerate(schemas):
                    if field.name in chunk_schema.names:
                        pq.read_table(_chunk_path(folder, k), columns=[field.name]).column(0).cast(field.type)
            except pa.ArrowInvalid:
                schema = schema.set(i, pa.field(field.name, pa.string()))
    return schema


def _unify(schemas: list[pa.Schema]) -> pa.Schema:
    """The chunks' schemas as one, in order of first appearance; types widen (int -> float, null -> any)
    and a column whose chunks disagree otherwise (numbers here, text there) becomes text."""
    types: dict[str, list[pa.DataType]] = {}
    for schema in schemas:
        for field in schema:
            types.setdefault(field.name, []).append(field.type)
    fields = []
    for name, kinds in types.items():
        try:
            fields.append(pa.unify_schemas([pa.schema([(name, t)]) for t in kinds],
                                           promote_options="permissive").field(0))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            fields.append(pa.field(name, pa.string()))
    return pa.schema(fields)
