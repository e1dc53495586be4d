"""How fast predict assembles, and zoomorph reads back, each astropy output format, and the memory it takes.

Parts like predict's (4096 rows: id, path, an objid with gaps, ra/dec, six probabilities, predicted, entropy,
error) are assembled into FITS, HDF5, ECSV and VOTable as predict does at its end, then read back a chunk at a
time as a catalogue; each format and size runs in a process of its own, so that its peak memory is its own.

    .venv/bin/python benchmarks/catalogue_formats.py            # 40,960 and 409,600 rows
    .venv/bin/python benchmarks/catalogue_formats.py --parts 10 50
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS = 4096
SUFFIX = {"fits": ".fits", "hdf5": ".h5", "ecsv": ".ecsv", "votable": ".vot"}


def part(k: int) -> pa.Table:
    rng, rows = np.random.default_rng(k), np.arange(k * ROWS, (k + 1) * ROWS)
    return pa.table({
        "id": pa.array(rows), "path": pa.array([f"/data/cutouts/{i}.jpg" for i in rows]),
        "objid": pa.array(2**62 + rows, mask=rows % 10 == 0),
        "ra": pa.array(rng.uniform(0, 360, ROWS)), "dec": pa.array(rng.uniform(-90, 90, ROWS)),
        **{f"p_{c}": pa.array(rng.random(ROWS).astype(np.float32)) for c in "abcdef"},
        "predicted": pa.array(["spiral"] * ROWS), "entropy": pa.array(rng.random(ROWS).astype(np.float32)),
        "error": pa.array([""] * ROWS)})


def one(fmt: str, folder: Path, parts: int) -> None:
    """In its own process: assemble `parts` parts into `fmt`, read it back; print the rates and peak memory."""
    from zoomorph.io.tables import table_frames
    from zoomorph.predict.table_writers import write_astropy

    files = sorted(folder.glob("part-*.parquet"))[:parts]
    out = folder / f"out{SUFFIX[fmt]}"
    started = time.perf_counter()
    write_astropy(fmt, out, files, pq.read_schema(files[0]), (pq.read_table(p) for p in files))
    written = time.perf_counter() - started
    started = time.perf_counter()
    rows = sum(len(frame) for frame in table_frames(str(out), ROWS))
    read = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| {fmt} | {rows:,} | {rows / written:,.0f} | {rows / read:,.0f} | {peak:,.0f} |")
    out.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=int, nargs="+", default=[10, 100], help="sizes, in parts of 4096 rows")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # fmt folder parts: the child process
    args = parser.parse_args()
    if args.one:
        one(args.one[0], Path(args.one[1]), int(args.one[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(max(args.parts)):
            pq.write_table(part(k), Path(tmp) / f"part-{k:05d}.parquet")
        print("| format | rows | assembled, rows/s | read back, rows/s | peak memory, MB |")
        print("| --- | --- | --- | --- | --- |")
        for fmt in SUFFIX:
            for parts in args.parts:
                subprocess.run([sys.executable, __file__, "--one", fmt, tmp, str(parts)], check=True)


if __name__ == "__main__":
    main()
