"""The image cache: decode every image once into a uint8 array on disk.

Training then reads memory-mapped uint8 tensors and never touches a JPEG.
Images are decoded as predict decodes them (zoomorph.io.decode.load_many: JPEG,
PNG, TIFF, FITS). Workers each decode a block of rows and write straight into
the memory-mapped file, so no pixels travel back through a pipe; what they
report (errors, notes, and with fov "auto" each galaxy's radius, crop and
flag) comes back with the block.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from zoomorph.io.decode import (
    AUTO,
    AUTO_CUT,
    FOV_COLUMNS,
    Fov,
    compile_auto_fov,
    default_workers,
    fov_columns,
    load_many,
)
from zoomorph.io.sources import ImageError, source_file

BLOCK = 256  # rows per task: large enough to amortise scheduling, small enough for a smooth bar


@dataclass
class CacheResult:
    errors: dict[int, str]  # row -> why it could not be decoded (row left zero)
    notes: dict[int, str]  # row -> conversion done (grayscale, PNG, other size)
    fov: pd.DataFrame  # FOV_COLUMNS, one row per source (unreadable rows: nan, nan, "")


def cache_key(sources: list[str], size: int, fov: Fov) -> str:
    """Changes when any input file, the list, or the settings change (for fov auto, how it cuts: AUTO_CUT)."""
    mode = f"{AUTO}:{json.dumps(AUTO_CUT, sort_keys=True)}" if fov == AUTO else str(fov)
    h = hashlib.sha256(f"{size}:{mode}".encode())
    for s in sources:
        try:
            st = os.stat(source_file(s))
            h.update(f"{s}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{s}:missing\n".encode())
    return h.hexdigest()[:16]


def _decode_block(args: tuple[str, list[str], int, int, Fov]) -> tuple[int, dict, dict, int, dict]:
    path, sources, start, size, fov = args
    out = open_memmap(path, mode="r+")
    errors, notes, decoded = {}, {}, []
    for offset, outcome in enumerate(load_many(sources, size, fov)):
        if isinstance(outcome, ImageError):
            errors[start + offset] = str(outcome)
            outcome = None
        elif isinstance(outcome, Exception):  # not a bad image but a fault: stop, do not skip rows silently
            raise outcome
        decoded.append(outcome)
        if outcome is not None:
            out[start + offset] = outcome.pixels
            if outcome.note:
                notes[start + offset] = outcome.note
    out.flush()
    return len(sources), errors, notes, start, fov_columns(decoded)


def build_cache(sources: list[str], path: Path, size: int, fov: Fov, workers: int | None = None,
                progress: bool = True) -> CacheResult:
    """Decode `sources` into `path` (.npy, shape (N, size, size, 3), uint8), in `workers` processes
    (zoomorph.io.decode.default_workers: None = one per core, 0 = in this process)."""
    path = Path(path)
    tmp = path.with_suffix(".partial.npy")
    open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(sources), size, size, 3)).flush()
    tasks = [(str(tmp), sources[i:i + BLOCK], i, size, fov) for i in range(0, len(sources), BLOCK)]
    workers = min(default_workers(workers), len(tasks))
    errors, notes = {}, {}
    measured = fov_columns([None] * len(sources))
    columns = (TextColumn("decoding images"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]} img/s"), TimeRemainingColumn())
    if fov == AUTO:
        compile_auto_fov()  # before the workers fork, so that they share it
    pool = mp.get_context().Pool(workers) if workers else None
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("decode", total=len(sources), rate="-")
        results = pool.imap_unordered(_decode_block, tasks) if pool else map(_decode_block, tasks)
        for done, errs, nts, start, fov_rows in results:
            errors.update(errs)
            notes.update(nts)
            for column, values in fov_rows.items():
                measured[column][start:start + done] = values
            bar.advance(task, done)
            elapsed = bar.tasks[0].elapsed or 0
            bar.update(task, rate=f"{bar.tasks[0].completed / elapsed:,.0f}" if elapsed else "-")
    if pool:
        pool.close()
        pool.join()
    os.replace(tmp, path)
    return CacheResult(errors, notes, pd.DataFrame(measured, columns=list(FOV_COLUMNS)))


def drop_rows(path: Path, rows: np.ndarray, chunk: int = 4096) -> None:
    """Remove `rows` from a cache file, copying in chunks (memory stays flat)."""
    src = np.load(path, mmap_mode="r")
    keep = np.setdiff1d(np.arange(len(src)), rows)
    tmp = Path(path).with_suffix(".compact.npy")
    dst = open_memmap(tmp, mode="w+", dtype=src.dtype, shape=(len(keep),) + src.shape[1:])
    for i in range(0, len(keep), chunk):
        dst[i:i + chunk] = src[keep[i:i + chunk]]
    dst.flush()
    del src, dst
    os.replace(tmp, path)
