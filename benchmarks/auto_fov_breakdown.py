"""Where an image's time goes with --fov auto, against a fixed crop: one core, real Kaggle JPEGs.

    python benchmarks/auto_fov_breakdown.py [IMAGE_DIR] [--limit 2000] [--size 64] [--fov 256]

Prints milliseconds per image (the fastest of two passes over the same files,
read into memory first) for each step of zoomorph.io.decode: the JPEG decode at
the DCT scale each mode opens at, the measurement (zoomorph.io.extent: its grids
of box means, and all of it), and the crop with its resampling and sky levelling.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from zoomorph.io import decode, extent
from zoomorph.io.decode import AUTO, FIXED_FOV, compile_auto_fov
from zoomorph.io.sources import input_sources

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "gz-kaggle-q1" / "images"


def per_image(items: list, step) -> float:
    """Milliseconds per item of step(item), the fastest of two passes."""
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for item in items:
            step(item)
        best = min(best, time.perf_counter() - start)
    return best / len(items) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fov", type=int, default=FIXED_FOV)
    args = parser.parse_args()
    files = [(source, Path(source).read_bytes()) for source in list(input_sources(str(args.images)))[: args.limit]]
    compile_auto_fov()
    size = args.size
    opened = {fov: [decode._open_image(data, size, fov, name) for name, data in files] for fov in (args.fov, AUTO)}
    factor = max(1, min(opened[AUTO][0].im.size) // extent.MEASURE_SIDE)
    rows = [
        (f"fov {args.fov}: JPEG decode at its DCT scale",
         per_image(files, lambda f: decode._open_image(f[1], size, args.fov, f[0]))),
        (f"fov {args.fov}: crop and resize", per_image(opened[args.fov], lambda o: decode._cut(o, size, args.fov))),
        ("auto: JPEG decode at its DCT scale", per_image(files, lambda f: decode._open_image(f[1], size, AUTO, f[0]))),
        ("auto: the first grid of box means", per_image(opened[AUTO], lambda o: extent._blocks(o.im, factor))),
        ("auto: the measurement, all grids", per_image(opened[AUTO], lambda o: extent.measure(o.im))),
        ("auto: measurement, crop and resize", per_image(opened[AUTO], lambda o: decode._cut(o, size, AUTO))),
    ]
    print(f"{len(files):,} JPEGs from {args.images}, {size} px, one core: ms per image")
    for name, ms in rows:
        print(f"  {name:40} {ms:6.3f}")
    print(f"  {'total, fixed / auto':40} {rows[0][1] + rows[1][1]:6.3f} / {rows[2][1] + rows[5][1]:.3f}")


if __name__ == "__main__":
    main()
