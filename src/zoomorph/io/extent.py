"""The central galaxy's extent, measured from its pixels: what `--fov auto` crops by (zoomorph.io.decode).

For an RGB uint8 image, on a grid of about MEASURE_SIDE pixels (block means of
the image, or of a DCT-downscaled JPEG decode):

1. sky level and noise from the border ring, sigma-clipped (3 sigma about the
   median, to convergence: astropy.stats.sigma_clipped_stats' algorithm, in
   numpy, see `clipped_stats`);
2. a lightly smoothed grey image thresholded at sky + THRESHOLD x noise; the
   connected source containing the centre, or the nearest one starting within
   NEAR of it (scipy.ndimage.label). Neighbours and stars that do not touch it
   are not part of it;
3. its flux-weighted centre; then its R90, the radius about that centre
   holding 90% of the sky-subtracted flux in an aperture made of the source
   grown by half its radius (the faint wings below the threshold hold ~10% of
   an exponential disk's light), other sources masked out.

A measurement that cannot be trusted comes back with a flag ("blank image",
"no source at the centre", "source fills the frame") and the caller falls
back to the full frame. No torch here: decoding workers import this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

MEASURE_SIDE = 53  # the grid's shorter side, about: an eighth of a Kaggle frame (424 px), 4x faster than 106
# grid pixels: a galaxy measured smaller than this is measured again on a grid twice as fine (until it is
# not, or the grid is the image): the box means and smoothing widen a small galaxy, and a coarse grid made
# one a third as large (a zoom-out) twice its true R90. A typical q1 galaxy (R90 77 px) spans 9.7 of the
# 53-px grid, so a galaxy is measured with about as many grid pixels to its R90 (8 or more) at any zoom.
FINE_R90 = 8.0
MAX_SIDE = 8 * MEASURE_SIDE  # the finest grid's shorter side (a tiny galaxy on a large PNG or FITS frame)
RING = 0.06  # the border ring's width, as a fraction of the shorter side (at least 2 grid pixels)
CLIP_SIGMA, CLIP_ITERS = 3.0, 5  # astropy's defaults
THRESHOLD = 3.0  # the source: smoothed grey above sky + THRESHOLD x the smoothed ring's noise, ...
PEAK_SHARE = 0.04  # ... and above this share of the central peak (over sky): where the ring's noise is
# no guide (a frame zoomed out into flat sky fill has none), a threshold that scales with the galaxy
NOISE_FLOOR = 0.5  # counts: a sky that JPEG flattened to one value still has quantisation noise
MIN_AREA = 5  # grid pixels: smaller islands above the threshold are noise peaks
FILL_MIN = 6.0  # counts: sides brighter than corners by less are JPEG blocking or a clipped dark sky
NEAR = 0.1  # a source may start this far from the centre (fraction of the shorter side)
GROW = 0.5  # the aperture: the source grown by this fraction of its equivalent radius
FRACTION = 0.9  # R90


@dataclass(frozen=True)
class Extent:
    """The central galaxy, in the measured image's own pixels (continuous: pixel j spans [j, j + 1))."""

    x: float  # flux-weighted centre
    y: float
    r90: float  # radius holding 90% of the flux; nan when flagged
    sky: tuple[int, int, int] | None  # per-channel sky level (None: not measured); what a crop past the frame
    # is filled with
    flag: str = ""  # "" when the measurement is sound, else why not

    def scaled(self, factor: float) -> "Extent":
        """The same extent in pixels `factor` times as large (a full-size image of a downscaled decode)."""
        return Extent(self.x * factor, self.y * factor, self.r90 * factor, self.sky, self.flag)


def clipped_stats(values: np.ndarray, sigma: float = CLIP_SIGMA, iters: int = CLIP_ITERS) -> tuple[float, float]:
    """(median, std) of `values` after iterative sigma clipping about the median, as
    astropy.stats.sigma_clipped_stats(values, sigma=3, maxiters=5) gives them (tests/test_fov_auto.py
    checks that they agree). Here rather than astropy's because that costs ~400 us a call (a third of an
    image's budget when the cache builds at 1,500 images/s on 2 cores) and 0.35 s of import in every
    decoding process; on sorted values with running sums each round is two binary searches."""
    v = np.sort(np.asarray(values, np.float64).ravel())
    sums, squares = np.concatenate([[0], np.cumsum(v)]), np.concatenate([[0], np.cumsum(v * v)])
    lo, hi = 0, len(v)
    for _ in range(iters):
        n = hi - lo
        median = (v[lo + (n - 1) // 2] + v[lo + n // 2]) / 2
        mean = (sums[hi] - sums[lo]) / n
        std = math.sqrt(max((squares[hi] - squares[lo]) / n - mean * mean, 0.0))
        # values once clipped stay clipped, as in astropy
        new_lo = max(lo, int(np.searchsorted(v, median - sigma * std, "left")))
        new_hi = min(hi, int(np.searchsorted(v, median + sigma * std, "right")))
        if (new_lo, new_hi) == (lo, hi) or new_hi <= new_lo:
            break
        lo, hi = new_lo, new_hi
    n = hi - lo
    mean = (sums[hi] - sums[lo]) / n
    return float((v[lo + (n - 1) // 2] + v[lo + n // 2]) / 2), \
        float(math.sqrt(max((squares[hi] - squares[lo]) / n - mean * mean, 0.0)))


def _grid(im: Image.Image, side: int) -> tuple[np.ndarray, int]:
    """Box means of an image down to about `side` on its shorter side (uint8 (h, w, 3)), and the factor;
    Pillow's reduce, as it is 10x faster than numpy's."""
    f = max(1, min(im.size) // side)
    return _blocks(im, f), f


def _blocks(im: Image.Image, f: int) -> np.ndarray:
    """Means of f x f blocks of an image, uint8 (h, w, 3)."""
    if f > 1:  # the box of the whole blocks only, as a block mean would: no partial block at the edge
        im = im.reduce(f, box=(0, 0, im.size[0] // f * f, im.size[1] // f * f))
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def _ring(a: np.ndarray, width: int) -> np.ndarray:
    """The pixels of the outer `width` rows and columns, each once."""
    return np.concatenate([a[:width].reshape(-1, *a.shape[2:]), a[-width:].reshape(-1, *a.shape[2:]),
                           a[width:-width, :width].reshape(-1, *a.shape[2:]),
                           a[width:-width, -width:].reshape(-1, *a.shape[2:])])


def measure(rgb: np.ndarray | Image.Image) -> Extent:
    """The central galaxy of an RGB uint8 image (H, W, 3) (or a Pillow RGB image): centre, R90 and sky, in
    its pixels. Measured on a grid of about MEASURE_SIDE pixels, then on grids twice as fine while the
    galaxy is smaller than FINE_R90 grid pixels and the image has the pixels."""
    im = rgb if isinstance(rgb, Image.Image) else Image.fromarray(np.ascontiguousarray(rgb, np.uint8))
    small, f = _grid(im, MEASURE_SIDE)
    extent = _measure_grid(small, f)
    while f > 1 and extent.r90 < FINE_R90 * f and min(im.size) // (f // 2) <= MAX_SIDE:  # nan: it stands
        f //= 2
        finer = _measure_grid(_blocks(im, f), f)
        if finer.flag:  # noise or a neighbour on the finer grid: the sound coarser measurement stands
            break
        extent = finer
    return extent


def _measure_grid(small: np.ndarray, f: int) -> Extent:
    """measure() on a grid of box means `small`, each f x f pixels of the image."""
    h, w = small.shape[:2]
    centre = (w * f / 2, h * f / 2)
    if min(h, w) < 8:
        return Extent(*centre, math.nan, None, "image too small to measure")
    width = max(2, round(RING * min(h, w)))
    sky_rgb = tuple(int(v) for v in _middle(_ring(small, width)[::3], axis=0))  # a third is plenty
    grey = (small[..., 0].astype(np.float32) + small[..., 1] + small[..., 2]) / 3
    smooth = ndimage.uniform_filter(grey, 3, mode="nearest")
    sky, noise = clipped_stats(_ring(smooth, width))
    if _edges_lit(smooth, width):
        return Extent(*centre, math.nan, sky_rgb, "source fills the frame")
    reach = max(1, round(NEAR * min(h, w)))
    peak = smooth[h // 2 - reach:h // 2 + reach + 1, w // 2 - reach:w // 2 + reach + 1].max() - sky
    above = smooth > sky + max(THRESHOLD * max(noise, NOISE_FLOOR), PEAK_SHARE * peak)
    labels, n = ndimage.label(above)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    areas[0] = 0
    if not (areas >= MIN_AREA).any():
        return Extent(*centre, math.nan, sky_rgb, "blank image")
    chosen = _central(labels, areas, h, w)
    if not chosen:
        return Extent(*centre, math.nan, sky_rgb, "no source at the centre")
    source = labels == chosen
    ys, xs = np.nonzero(source)
    (top, bottom), (left, right) = (ys.min(), ys.max()), (xs.min(), xs.max())
    if top == 0 and left == 0 and bottom == h - 1 and right == w - 1:
        return Extent(*centre, math.nan, sky_rgb, "source fills the frame")
    weights = np.clip(grey[ys, xs] - sky, 0, None)
    total = float(weights.sum())
    if not total > 0:
        return Extent(*centre, math.nan, sky_rgb, "blank image")
    cx, cy = float(weights @ (xs + 0.5)) / total, float(weights @ (ys + 0.5)) / total
    # the rest works on the window around the source that its aperture can reach
    grow = max(1, round(GROW * math.sqrt(areas[chosen] / math.pi)))
    y0, x0 = max(top - grow, 0), max(left - grow, 0)
    window = (slice(y0, bottom + 1 + grow), slice(x0, right + 1 + grow))
    r90 = _r90(grey[window] - sky, source[window], labels[window], cx - x0, cy - y0, grow)
    if not r90 > 0:
        return Extent(*centre, math.nan, sky_rgb, "blank image")
    return Extent(cx * f, cy * f, r90 * f, sky_rgb)


def _edges_lit(smooth: np.ndarray, width: int) -> bool:
    """Whether the middle of every side of the ring stands out above its corners (by THRESHOLD x the noise
    within a corner, and FILL_MIN): a source so large that the ring is its outskirts, not sky, and the sky
    it gives too bright to find the source by. A sky gradient, or a star by one side, lights some sides."""
    h, w = smooth.shape
    corners = np.stack([smooth[:width, :width], smooth[:width, -width:], smooth[-width:, :width],
                        smooth[-width:, -width:]]).reshape(4, -1)
    medians = _middle(corners, axis=1)
    noise = max(float((corners - medians[:, None]).std()), NOISE_FLOOR)
    sides = np.concatenate([smooth[:width, w // 3:w - w // 3], smooth[-width:, w // 3:w - w // 3],
                            smooth[h // 3:h - h // 3, :width].T, smooth[h // 3:h - h // 3, -width:].T], axis=1)
    parts = np.cumsum([0, w - 2 * (w // 3), w - 2 * (w // 3), h - 2 * (h // 3), h - 2 * (h // 3)])
    # each side's mean (one reduce for all four): a star by one side lifts that side only
    means = np.add.reduceat(sides.sum(0), parts[:-1]) / (width * np.diff(parts))
    return means.min() > _middle(medians) + max(THRESHOLD * noise, FILL_MIN)


def _middle(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """The (upper) median along `axis` by one partition: np.median costs 5x as much in its checks here."""
    k = a.shape[axis] // 2
    return np.take(np.partition(a, k, axis=axis), k, axis=axis)


def _central(labels: np.ndarray, areas: np.ndarray, h: int, w: int) -> int:
    """The label of the source at the centre: the one holding the centre pixel, else the one with the
    pixel nearest it within NEAR; 0 for none."""
    reach = max(1, round(NEAR * min(h, w)))
    y0, x0 = h // 2 - reach, w // 2 - reach
    window = labels[max(y0, 0):h // 2 + reach + 1, max(x0, 0):w // 2 + reach + 1]
    ys, xs = np.nonzero((window > 0) & (areas[window] >= MIN_AREA))
    if not len(ys):
        return 0
    d2 = (ys + max(y0, 0) + 0.5 - h / 2) ** 2 + (xs + max(x0, 0) + 0.5 - w / 2) ** 2
    nearest = int(np.argmin(d2))
    return int(window[ys[nearest], xs[nearest]]) if d2[nearest] <= (reach + 1) ** 2 else 0


def _r90(flux: np.ndarray, source: np.ndarray, labels: np.ndarray, cx: float, cy: float, grow: int) -> float:
    """The radius about (cx, cy) holding FRACTION of the flux in the source grown by `grow` pixels, other
    sources masked out."""
    grown = ndimage.uniform_filter(source.astype(np.float32), 2 * grow + 1, mode="constant") > 1e-6
    aperture = grown & ((labels == 0) | source)
    ys, xs = np.nonzero(aperture)
    r = np.hypot(xs + 0.5 - cx, ys + 0.5 - cy)
    order = np.argsort(r)
    r, values = r[order], flux[ys, xs][order]
    total = values.sum()
    if not total > 0:
        return math.nan
    # each pixel's light counts half at its own radius: the curve of growth then runs through pixel centres
    grown_flux = np.cumsum(values) - values / 2
    i = int(np.argmax(grown_flux >= FRACTION * total))
    if i == 0:
        return float(r[0])
    lo, hi = grown_flux[i - 1], grown_flux[i]
    return float(r[i - 1] + (r[i] - r[i - 1]) * (FRACTION * total - lo) / max(hi - lo, 1e-9))
