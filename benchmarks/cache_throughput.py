"""Image-cache building rate vs the one-core decode limit, on real Kaggle JPEGs, fixed and auto fov side by side.

    python benchmarks/cache_throughput.py [IMAGE_DIR] [--size 64] [--fov 256]

Prints, for the fixed --fov and for fov "auto" (each galaxy's extent measured,
zoomorph.io.extent): one-core decode+crop+resize rate (the physical limit per
core), and the full `build_cache` rate with all cores (memory-mapped writes
included), and the machine's load average before and after. The auto measurement is compiled (or loaded
from numba's cache) before it is timed, and what that took is printed: it is paid once per process.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from zoomorph.data.cache import BLOCK, build_cache
from zoomorph.io.decode import AUTO, FIXED_FOV, compile_auto_fov, load_many
from zoomorph.io.sources import input_sources

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "gz-kaggle-q1" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fov", type=int, default=FIXED_FOV)
    parser.add_argument("--limit", type=int, default=6000)
    args = parser.parse_args()
    sources = list(input_sources(str(args.images)))[: args.limit]
    for s in sources[:200]:  # warm the page cache so both runs read from memory
        Path(s).read_bytes()
    for s in sources:
        Path(s).read_bytes()

    print(f"images: {len(sources):,} from {args.images}  size {args.size}px  cores {os.cpu_count()}  "
          f"load average {os.getloadavg()[0]:.2f} (1 min)")
    n_single = min(len(sources), 2000)
    start = time.perf_counter()
    compile_auto_fov()
    print(f"fov auto: the measurement compiled or loaded from numba's cache in {time.perf_counter() - start:.1f} s "
          "(once per process; decoding workers fork after it)")
    for fov in (args.fov, AUTO):
        start = time.perf_counter()
        for i in range(0, n_single, BLOCK):  # a block at a time, as each build_cache worker decodes
            load_many(sources[i:min(i + BLOCK, n_single)], args.size, fov)
        single = n_single / (time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = build_cache(sources, Path(tmp) / "c.npy", args.size, fov, progress=False)
            full = len(sources) / (time.perf_counter() - start)
        label = f"fov {fov}" + ("" if fov == AUTO else " px")
        print(f"{label:12} one-core decode+crop+resize : {single:8,.0f} images/s")
        print(f"{label:12} build_cache, all cores      : {full:8,.0f} images/s  ({full / single:.2f}x one core, "
              f"{len(result.errors)} errors, {int((result.fov['fov_flag'] != '').sum())} fov fall-backs)")
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
