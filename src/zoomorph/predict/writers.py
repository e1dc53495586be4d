"""The output, written in parts as prediction goes, so that a killed run resumes where it stopped.

    OUT.parts/manifest.json      fingerprint of the input listing and the settings
    OUT.parts/listing-*.parquet  the input listing, chunk by chunk (listing.py)
    OUT.parts/part-00000.parquet rows [0, C) of the output, C = chunk size
    OUT.parts/part-00001.parquet rows [C, 2C) ...

Every file appears by `os.replace` of a finished temporary file, so a part that
exists is complete whenever the process dies (SIGKILL included). A rerun with
the same listing and settings skips the parts already there; with different
ones it refuses rather than mix stale rows in. When every part is there they
are concatenated, one at a time (memory stays flat), into OUT (temporary file
+ rename) and the parts folder is removed: as Parquet, CSV or a Kaggle submission here, as FITS,
VOTable, ECSV or HDF5 by table_writers.py (which says how each is assembled).

A finished OUT records what it is (the fingerprint, the format, the counts), so
that the same call again knows it is done and no one else's file is taken for
one of predict's: a Parquet OUT in its file metadata (key "zoomorph.predict"),
any other in OUT.predict.json beside it, with OUT's size and modification time,
so that a file edited or replaced since no longer counts as predict's.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from zoomorph.errors import DiskFull, ZoomorphError
from zoomorph.files import replace_atomically
from zoomorph.predict.healpix import Healpix
from zoomorph.predict.listing import Listing
from zoomorph.predict.table_writers import ASTROPY_FORMATS, write_astropy
from zoomorph.schema import ANSWER_COLUMNS, ID_COLUMN

FORMATS = ("parquet", "csv", "kaggle", *ASTROPY_FORMATS)
MANIFEST = "manifest.json"
RECORD_KEY = b"zoomorph.predict"  # a Parquet OUT's record, in its file metadata


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def record_path(out: Path) -> Path:
    """Where a CSV OUT's record is kept: a CSV has no room for it (a comment line would trip its readers)."""
    return out.with_name(out.name + ".predict.json")


def finished(out: Path) -> dict | None:
    """What predict recorded when it assembled `out` (fingerprint, format, rows, ok, errors), or None when
    `out` is not a finished output of predict."""
    try:
        meta = pq.read_metadata(out).metadata or {}
        return json.loads(meta[RECORD_KEY]) if RECORD_KEY in meta else None
    except (ValueError, OSError):  # not Parquet (ArrowInvalid), not there, or not its record
        pass
    try:
        record, stat = json.loads(record_path(out).read_text()), out.stat()
    except (OSError, ValueError):
        return None
    return record if [record.get("size"), record.get("mtime_ns")] == [stat.st_size, stat.st_mtime_ns] else None


class PartWriter:
    """Collects result rows by chunk and writes each chunk as a part once all its rows arrived."""

    def __init__(self, out: Path, listing: Listing, result_schema: pa.Schema, fingerprint: str,
                 healpix: Healpix | None = None):
        self.out, self.listing, self.result_schema, self.healpix = Path(out), listing, result_schema, healpix
        pixel_field = [healpix.field] if healpix else []  # --healpix: after the listing's columns, from its RA and Dec
        self.schema = pa.schema([*listing.schema, *pixel_field, *result_schema])  # one schema for every part
        self.dir, self.fingerprint = parts_dir(self.out), fingerprint
        self._buffers: dict[int, list[tuple[np.ndarray, pd.DataFrame]]] = {}
        self._check_manifest({"fingerprint": fingerprint, "rows": listing.rows, "chunk_size": listing.chunk_size})

    def _check_manifest(self, manifest: dict) -> None:
        path = self.dir / MANIFEST
        if path.exists() and any(self.dir.glob("part-*.parquet")):  # without parts there is nothing to mix
            if json.loads(path.read_text()) != manifest:
                raise ZoomorphError(
                    f"{self.dir} holds parts of a different prediction (the inputs, the run or the settings "
                    f"changed since it started). Rerun the original command to finish it, or delete "
                    f"{self.dir} to start over.")
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(manifest)))

    def part_path(self, chunk: int) -> Path:
        return self.dir / f"part-{chunk:05d}.parquet"

    def pending(self) -> list[int]:
        """Chunks not yet on disk, in order."""
        return [k for k in range(self.listing.n_chunks) if not self.part_path(k).exists()]

    def add(self, rows: np.ndarray, results: pd.DataFrame) -> None:
        """Result rows for listing rows `rows` (any order, any chunks); full chunks are written at once."""
        chunk_of = rows // self.listing.chunk_size
        for chunk in np.unique(chunk_of):
            mine = chunk_of == chunk
            buffer = self._buffers.setdefault(int(chunk), [])
            buffer.append((rows[mine], results[mine]))
            start, stop = self.listing.chunk_rows(int(chunk))
            if sum(len(r) for r, _ in buffer) == stop - start:
                self._write(int(chunk))

    def _write(self, chunk: int) -> None:
        pieces = self._buffers.pop(chunk)
        rows = np.concatenate([r for r, _ in pieces])
        order = np.argsort(rows, kind="stable")
        start, stop = self.listing.chunk_rows(chunk)
        if not np.array_equal(rows[order], np.arange(start, stop)):
            raise RuntimeError(f"chunk {chunk}: got rows other than each of {start}..{stop - 1} once")
        results = pd.concat([f for _, f in pieces], ignore_index=True).iloc[order].reset_index(drop=True)
        results = pa.Table.from_pandas(results, schema=self.result_schema, preserve_index=False)
        listed = self.listing.chunk(chunk)
        pixels = [self.healpix.of(listed)] if self.healpix else []
        table = pa.Table.from_arrays([*listed.columns, *pixels, *results.columns], schema=self.schema)
        replace_atomically(self.part_path(chunk), lambda tmp: pq.write_table(table, tmp))

    def finish(self, fmt: str) -> tuple[int, int]:
        """Concatenate the parts into OUT in format `fmt`, remove the parts; (readable, unreadable) counts."""
        missing = self.pending()
        if missing:
            raise RuntimeError(f"cannot assemble {self.out}: parts {missing[:5]}... are missing")
        parts = [self.part_path(k) for k in range(self.listing.n_chunks)]
        counts = _assemble(parts, self.out, fmt, self.schema, {"fingerprint": self.fingerprint, "format": fmt})
        shutil.rmtree(self.dir)
        return counts

    def written(self) -> tuple[int, int]:
        """(parts, rows) on disk."""
        done = [k for k in range(self.listing.n_chunks) if self.part_path(k).exists()]
        return len(done), sum(stop - start for start, stop in map(self.listing.chunk_rows, done))


def discard_parts(out: Path, fingerprint: str) -> None:
    """Remove OUT.parts when it holds nothing to resume: no part, or parts of this very prediction, already
    in OUT (a run stopped between writing OUT and removing its parts)."""
    manifest = parts_dir(out) / MANIFEST
    if not any(parts_dir(out).glob("part-*.parquet")) or (
            manifest.exists() and json.loads(manifest.read_text()).get("fingerprint") == fingerprint):
        shutil.rmtree(parts_dir(out), ignore_errors=True)


def is_disk_full(err: OSError) -> bool:
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full(out: Path, writer: PartWriter | None) -> DiskFull:
    """The error to raise when the disk filled up, saying what is kept and that rerunning continues."""
    again = "Free some space and rerun the same command"
    if writer is None:
        return DiskFull(f"no space left on the disk while listing the inputs into {parts_dir(out)}: nothing "
                        f"was predicted yet. {again}.")
    parts, rows = writer.written()
    n, total = writer.listing.n_chunks, writer.listing.rows
    if parts < n:
        return DiskFull(f"no space left on the disk while writing {writer.dir}: {parts} of {n} parts "
                        f"({rows:,} of {total:,} rows) are written there. {again}: it continues from there.")
    size = sum(writer.part_path(k).stat().st_size for k in range(n)) / 1e6
    return DiskFull(f"no space left on the disk while assembling {out}: all {n} parts ({total:,} rows, "
                    f"{size:,.1f} MB) are written in {writer.dir}, and {out} needs about as much again (more "
                    f"as CSV). {again}: it only assembles {out}.")


def errors_path(out: Path) -> Path:
    """Where a Kaggle submission's unreadable inputs are listed: the submission itself has no room for them."""
    return out.with_name(out.stem + ".errors.csv")


def _assemble(parts: list[Path], out: Path, fmt: str, schema: pa.Schema, record: dict) -> tuple[int, int]:
    rows = errors = 0
    failures = errors_path(out)
    left_out = failures.with_name(failures.name + ".tmp")

    def tables():
        nonlocal rows, errors
        for part in parts:
            table = pq.read_table(part)
            failed = np.asarray(table["error"].to_numpy(zero_copy_only=False) != "")
            rows, errors = rows + len(failed), errors + int(failed.sum())
            yield table, failed

    def counted() -> dict:
        return record | {"rows": rows, "ok": rows - errors, "errors": errors}

    def write(tmp: Path) -> None:
        if fmt == "parquet":
            with pq.ParquetWriter(tmp, schema) as parquet:
                for table, _ in tables():
                    parquet.write_table(table)
                parquet.add_key_value_metadata({RECORD_KEY: json.dumps(counted())})
            return
        if fmt in ASTROPY_FORMATS:
            write_astropy(fmt, tmp, parts, schema, (table for table, _ in tables()))
            return
        for i, (table, failed) in enumerate(tables()):
            frame = table.to_pandas(types_mapper=_integers)  # an id column with gaps stays integers in text
            if fmt == "kaggle":  # only readable images, under the challenge's exact header; the others apart
                frame.loc[failed, ["id", "path", "error"]].to_csv(left_out, mode="a" if i else "w", header=i == 0,
                                                                  index=False)
                frame = frame.loc[~failed, ["id", *ANSWER_COLUMNS]].rename(columns={"id": ID_COLUMN})
            frame.to_csv(tmp, mode="a" if i else "w", header=i == 0, index=False)

    try:
        replace_atomically(out, write)
        if fmt != "parquet":  # the record goes beside the file, with what identifies this very file
            stat = out.stat()
            identity = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            replace_atomically(record_path(out), lambda tmp: tmp.write_text(json.dumps(counted() | identity)))
    except BaseException:
        left_out.unlink(missing_ok=True)
        raise
    if fmt == "kaggle":  # the list goes with the submission; one from an earlier run would name the wrong files
        if errors:
            os.replace(left_out, failures)
        else:
            left_out.unlink()
            failures.unlink(missing_ok=True)
    return rows - errors, errors


def _integers(kind: pa.DataType) -> pd.ArrowDtype | None:
    """Integer columns as nullable pandas ones: numpy would make an int64 column with a gap float64."""
    return pd.ArrowDtype(kind) if pa.types.is_integer(kind) else None
