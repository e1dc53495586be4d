"""The R90 of real galaxies as `--fov auto` measures it, and the crops that AUTO_MULTIPLE x R90 cuts.

    python benchmarks/auto_fov_multiple.py [IMAGE_DIR] [--workers N]

Measures every galaxy's R90 the way `--fov auto` does (zoomorph.io.decode.decode, so on the
DCT-downscaled decode) over the real q1 images (../shared/data/gz-kaggle-q1/images, 6,507
JPEGs, labelled or not), and prints the median and quantiles, the fall-backs, the multiple
that would make the median auto crop equal the fixed field of view (FIXED_FOV = 256 Kaggle px;
the first auto crop's rule, 3.31), and the crops that the code's multiple cuts. The multiple
itself is chosen by validation accuracy: benchmarks/auto_fov_scan.py.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
from collections import Counter
from pathlib import Path

import numpy as np

from zoomorph.io.decode import AUTO, AUTO_MULTIPLE, FIRST_CROP, FIXED_FOV, KAGGLE_SIZE, load
from zoomorph.io.sources import input_sources

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "gz-kaggle-q1" / "images"


def _measure(source: str) -> tuple[float, float, str]:
    decoded = load(source, 64, AUTO)
    return decoded.r90, decoded.crop, decoded.flag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    if not args.images.exists():
        raise SystemExit(f"{args.images} not found: the measurement needs the real q1 images")
    sources = list(input_sources(str(args.images)))
    with mp.get_context().Pool(args.workers) as pool:
        results = pool.map(_measure, sources, chunksize=64)
    r90 = np.array([r for r, _, _ in results], float)
    flags = Counter(flag for _, _, flag in results if flag)
    ok = r90[np.isfinite(r90)]
    q = np.percentile(ok, [5, 25, 50, 75, 95])
    multiple = FIXED_FOV / q[2]
    print(f"{len(sources):,} images from {args.images}; R90 measured on {len(ok):,}, "
          f"{sum(flags.values())} fell back to the full frame" + "".join(f"; {n} {f}" for f, n in flags.items()))
    print("R90, Kaggle px: " + ", ".join(f"{p}% {v:.1f}" for p, v in zip((5, 25, 50, 75, 95), q)))
    print(f"the multiple whose median crop is FIXED_FOV = {FIXED_FOV} / {q[2]:.1f} = {multiple:.2f}; in the code: "
          f"AUTO_MULTIPLE = {AUTO_MULTIPLE}, chosen by benchmarks/auto_fov_scan.py")
    crops = np.array([c for _, c, _ in results], float)
    print("auto crop side with AUTO_MULTIPLE, Kaggle px: "
          + ", ".join(f"{p}% {v:.0f}" for p, v in zip((5, 25, 50, 75, 95), np.percentile(crops, [5, 25, 50, 75, 95])))
          + f"; {np.mean(crops < FIRST_CROP * KAGGLE_SIZE):.1%} need a second, finer decode (crop < "
          f"{FIRST_CROP * KAGGLE_SIZE:.0f} px)")


if __name__ == "__main__":
    main()
