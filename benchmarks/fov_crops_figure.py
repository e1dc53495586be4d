"""A picture of what the model sees: fixed fov 256 vs --fov auto crops of real galaxies, each zoomed 0.5x, 1x, 2x.

    python benchmarks/fov_crops_figure.py OUT.png [--images DIR] [--ids 100134 101623 ...] [--size 64] [--dpi 110]
    python benchmarks/fov_crops_figure.py docs/img/fov-crops-synthetic.jpg --synthetic --dpi 80

Each real q1 image (../shared/data/gz-kaggle-q1/images) is zoomed in memory about
its centre with sky fill (zoomorph.data.augment.zoom, as another survey's scale
would show it), then cut with zoomorph.io.decode.cut_array, the decoder's geometry:
a fixed field of view sees the galaxy shrink and grow, the auto one keeps it the
same size. Titles give the auto crop's side and R90 (in the zoomed image's pixels).
The figure is made from real data: keep it out of the repository. The one in docs/img is of
synthetic galaxies (`--synthetic`: zoomorph.data.synthetic.make_synthetic, 40 galaxies, seed 3).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from zoomorph.data.augment import zoom  # noqa: E402
from zoomorph.data.synthetic import make_synthetic  # noqa: E402
from zoomorph.io.decode import AUTO, FIXED_FOV, cut_array  # noqa: E402

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "gz-kaggle-q1" / "images"
ZOOMS = (0.5, 1.0, 2.0)


def zoomed(rgb: np.ndarray, factor: float) -> np.ndarray:
    """The image with its galaxy `factor` times as large, sky outside the original frame."""
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None]
    return zoom(x, factor)[0].permute(1, 2, 0).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--ids", nargs="*", default=None, help="GalaxyIDs (default: 5 spread over the folder)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--dpi", type=int, default=110)
    parser.add_argument("--synthetic", action="store_true", help="synthetic galaxies instead of --images")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            args.images = make_synthetic(Path(tmp), n=40, seed=3, workers=1).parent / "images"
        draw(args)


def draw(args: argparse.Namespace) -> None:
    files = sorted(args.images.glob("*.jpg"))
    if not files:
        raise SystemExit(f"no JPEGs in {args.images}: the figure needs the real q1 images")
    chosen = [args.images / f"{i}.jpg" for i in args.ids] if args.ids else files[:: max(1, len(files) // 5)][:5]
    fig, axes = plt.subplots(len(chosen), 2 * len(ZOOMS), figsize=(2 * 2 * len(ZOOMS), 2.15 * len(chosen)),
                             squeeze=False)
    for row, path in enumerate(chosen):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        for col, (fov, factor) in enumerate((fov, f) for fov in (FIXED_FOV, AUTO) for f in ZOOMS):
            cut = cut_array(zoomed(rgb, factor), args.size, fov)
            ax = axes[row, col]
            ax.imshow(cut.pixels)
            ax.set_xticks([])
            ax.set_yticks([])
            title = f"fov {fov}, zoom {factor:g}x"
            if fov == AUTO:
                title += f"\n{cut.flag}" if cut.flag else f"\nside {cut.crop:.0f}, R90 {cut.r90:.0f} px"
            ax.set_title(title, fontsize=7)
        axes[row, 0].set_ylabel(path.stem, fontsize=7)
    fig.suptitle("what the model sees: fixed 256 px of 424 (left) vs --fov auto (right)", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out} ({len(chosen)} galaxies x {len(ZOOMS)} zooms, fixed and auto)")


if __name__ == "__main__":
    main()
