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
back to the full frame. Images are measured many at a time (`measure_many`):
each step is one numpy or scipy call over a stack of same-shaped grids, as a
galaxy's grid is small (53 x 53) and one call per image per step would cost
several times the decode. No torch here: decoding workers import this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
RADIUS_STEP = 0.1  # grid pixels: the resolution of the curve of growth R90 is read from


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


# connectivity within each grid of a stack, none between grids: ndimage.label's default (4-connected) in 2D
IN_PLANE = np.zeros((3, 3, 3), bool)
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def clipped_stats(values: np.ndarray, sigma: float = CLIP_SIGMA, iters: int = CLIP_ITERS) -> tuple[float, float]:
    """(median, std) of `values` after iterative sigma clipping about the median, as
    astropy.stats.sigma_clipped_stats(values, sigma=3, maxiters=5) gives them (tests/test_fov_auto.py
    checks that they agree). Here rather than astropy's because that costs ~400 us a call (a third of an
    image's budget when the cache builds at 1,500 images/s on 2 cores) and 0.35 s of import in every
    decoding process."""
    median, std = clipped_stats_rows(np.asarray(values).reshape(1, -1), sigma, iters)
    return float(median[0]), float(std[0])


def clipped_stats_rows(values: np.ndarray, sigma: float = CLIP_SIGMA,
                       iters: int = CLIP_ITERS) -> tuple[np.ndarray, np.ndarray]:
    """clipped_stats of each row of a (B, N) array: on sorted rows with running sums, each round is a
    count of the values below and above the clipping limits."""
    v = np.sort(np.asarray(values, np.float64), axis=1)
    zero = np.zeros((len(v), 1))
    sums = np.concatenate([zero, np.cumsum(v, axis=1)], axis=1)
    squares = np.concatenate([zero, np.cumsum(v * v, axis=1)], axis=1)
    rows = np.arange(len(v))

    def stats(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = hi - lo
        mean = (sums[rows, hi] - sums[rows, lo]) / n
        return ((v[rows, lo + (n - 1) // 2] + v[rows, lo + n // 2]) / 2,
                np.sqrt(np.maximum((squares[rows, hi] - squares[rows, lo]) / n - mean * mean, 0.0)))

    lo, hi = np.zeros(len(v), np.int64), np.full(len(v), v.shape[1], np.int64)
    clipping = np.ones(len(v), bool)
    for _ in range(iters):
        median, std = stats(lo, hi)
        # values once clipped stay clipped, as in astropy
        new_lo = np.maximum(lo, (v < (median - sigma * std)[:, None]).sum(1))
        new_hi = np.minimum(hi, (v <= (median + sigma * std)[:, None]).sum(1))
        clipping &= ~(((new_lo == lo) & (new_hi == hi)) | (new_hi <= new_lo))  # converged, or nothing left
        if not clipping.any():
            break
        lo, hi = np.where(clipping, new_lo, lo), np.where(clipping, new_hi, hi)
    return stats(lo, hi)


def _blocks(im: Image.Image, f: int) -> np.ndarray:
    """Means of f x f blocks of an image, uint8 (h, w, 3); Pillow's reduce, as it is 10x faster than numpy's."""
    if f > 1:  # the box of the whole blocks only, as a block mean would: no partial block at the edge
        im = im.reduce(f, box=(0, 0, im.size[0] // f * f, im.size[1] // f * f))
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def _ring(a: np.ndarray, width: int) -> np.ndarray:
    """The pixels of the outer `width` rows and columns of each image of a stack (B, H, W, ...), each once:
    (B, N, ...)."""
    b, rest = len(a), a.shape[3:]
    return np.concatenate([a[:, :width].reshape(b, -1, *rest), a[:, -width:].reshape(b, -1, *rest),
                           a[:, width:-width, :width].reshape(b, -1, *rest),
                           a[:, width:-width, -width:].reshape(b, -1, *rest)], axis=1)


def measure(rgb: np.ndarray | Image.Image) -> Extent:
    """The central galaxy of an RGB uint8 image (H, W, 3) (or a Pillow RGB image): centre, R90 and sky, in
    its pixels (`measure_many` of one image)."""
    return measure_many([rgb])[0]


def measure_many(images: Sequence[np.ndarray | Image.Image]) -> list[Extent]:
    """measure() of each image. Each is measured on a grid of about MEASURE_SIDE pixels, then on grids
    twice as fine while its galaxy is smaller than FINE_R90 grid pixels and the image has the pixels."""
    ims = [im if isinstance(im, Image.Image) else Image.fromarray(np.ascontiguousarray(im, np.uint8))
           for im in images]
    factors = [max(1, min(im.size) // MEASURE_SIDE) for im in ims]
    extents = _measure_at(ims, factors, range(len(ims)))
    finer = list(range(len(ims)))
    while finer := [i for i in finer if factors[i] > 1 and extents[i].r90 < FINE_R90 * factors[i]  # nan: stands
                    and min(ims[i].size) // (factors[i] // 2) <= MAX_SIDE]:
        for i in finer:
            factors[i] //= 2
        again = _measure_at(ims, factors, finer)
        # a flag on the finer grid (noise, a neighbour joined) leaves the sound coarser measurement standing
        finer = [i for i in finer if not again[i].flag]
        extents.update({i: again[i] for i in finer})
    return [extents[i] for i in range(len(ims))]


def _measure_at(ims: list[Image.Image], factors: list[int], which) -> dict[int, Extent]:
    """{i: the extent of ims[i]} for i in `which`, measured on its grid of factors[i] x factors[i] box
    means; the grids of one shape and factor are measured together."""
    groups: dict[tuple, list[tuple[int, np.ndarray]]] = {}
    for i in which:
        grid = _blocks(ims[i], factors[i])
        groups.setdefault((grid.shape, factors[i]), []).append((i, grid))
    extents = {}
    for (_, f), members in groups.items():
        measured = _measure_grids(np.stack([grid for _, grid in members]), f)
        extents.update({i: extent for (i, _), extent in zip(members, measured)})
    return extents


def _measure_grids(small: np.ndarray, f: int) -> list[Extent]:
    """The extents of a stack of grids of box means (B, h, w, 3) uint8, each f x f pixels of its image."""
    b, h, w = small.shape[:3]
    centre = (w * f / 2, h * f / 2)
    if min(h, w) < 8:
        return [Extent(*centre, math.nan, None, "image too small to measure")] * b
    width = max(2, round(RING * min(h, w)))
    sky_rgb = _middle(_ring(small, width)[:, ::3], axis=1)  # a third of the ring is plenty
    grey = (small[..., 0].astype(np.float32) + small[..., 1] + small[..., 2]) / 3
    smooth = ndimage.uniform_filter(grey, (1, 3, 3), mode="nearest")
    sky, noise = clipped_stats_rows(_ring(smooth, width))
    reach = max(1, round(NEAR * min(h, w)))
    peak = smooth[:, h // 2 - reach:h // 2 + reach + 1, w // 2 - reach:w // 2 + reach + 1].max(axis=(1, 2)) - sky
    level = sky + np.maximum(THRESHOLD * np.maximum(noise, NOISE_FLOOR), PEAK_SHARE * peak)
    labels, _ = ndimage.label(smooth > level.astype(np.float32)[:, None, None], structure=IN_PLANE)
    areas = np.bincount(labels.ravel())
    areas[0] = 0
    big = areas >= MIN_AREA  # per label
    chosen = _central(labels, big, h, w)
    source = (labels == chosen[:, None, None]) & (chosen > 0)[:, None, None]
    flux = grey - sky.astype(np.float32)[:, None, None]
    weights = np.where(source, np.clip(flux, 0, None), 0)
    total = weights.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = weights.sum(axis=1) @ (np.arange(w) + 0.5) / total  # the flux-weighted centre
        cy = weights.sum(axis=2) @ (np.arange(h) + 0.5) / total
    grow = np.maximum(1, np.round(GROW * np.sqrt(areas[chosen] / math.pi))).astype(int)
    r90 = _r90(flux, _aperture(source, labels, grow), cx, cy)
    flags = np.select(
        [_edges_lit(smooth, width), ~big[labels].any(axis=(1, 2)), chosen == 0,
         source[:, 0].any(1) & source[:, -1].any(1) & source[:, :, 0].any(1) & source[:, :, -1].any(1),
         ~(total > 0) | ~(r90 > 0)],
        ["source fills the frame", "blank image", "no source at the centre", "source fills the frame",
         "blank image"], "")
    return [Extent(*centre, math.nan, tuple(int(v) for v in sky_rgb[k]), str(flags[k])) if flags[k] else
            Extent(float(cx[k]) * f, float(cy[k]) * f, float(r90[k]) * f, tuple(int(v) for v in sky_rgb[k]))
            for k in range(b)]


def _edges_lit(smooth: np.ndarray, width: int) -> np.ndarray:
    """Per grid of a stack (B, h, w): whether the middle of every side of the ring stands out above its
    corners (by THRESHOLD x the noise within a corner, and FILL_MIN): a source so large that the ring is its
    outskirts, not sky, and the sky it gives too bright to find the source by. A sky gradient, or a star by
    one side, lights some sides."""
    b, h, w = smooth.shape
    corners = np.stack([smooth[:, :width, :width], smooth[:, :width, -width:], smooth[:, -width:, :width],
                        smooth[:, -width:, -width:]], axis=1).reshape(b, 4, -1)
    medians = _middle(corners, axis=2)
    noise = np.maximum((corners - medians[..., None]).reshape(b, -1).std(axis=1), NOISE_FLOOR)
    across, down = slice(w // 3, w - w // 3), slice(h // 3, h - h // 3)
    sides = np.concatenate([smooth[:, :width, across], smooth[:, -width:, across],
                            smooth[:, down, :width].transpose(0, 2, 1),
                            smooth[:, down, -width:].transpose(0, 2, 1)], axis=2)
    parts = np.cumsum([0, w - 2 * (w // 3), w - 2 * (w // 3), h - 2 * (h // 3), h - 2 * (h // 3)])
    # each side's mean: a star by one side lifts that side only
    means = np.add.reduceat(sides.sum(axis=1), parts[:-1], axis=1) / (width * np.diff(parts))
    return means.min(axis=1) > _middle(medians, axis=1) + np.maximum(THRESHOLD * noise, FILL_MIN)


def _middle(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """The (upper) median along `axis` by one partition: np.median costs 5x as much in its checks here."""
    k = a.shape[axis] // 2
    return np.take(np.partition(a, k, axis=axis), k, axis=axis)


def _central(labels: np.ndarray, big: np.ndarray, h: int, w: int) -> np.ndarray:
    """Per grid of a stack of labels (B, h, w): the label of the source at the centre, the one holding the
    centre pixel, else the one with the pixel nearest it within NEAR; 0 for none. big: per label, whether
    it is large enough to be a source."""
    reach = max(1, round(NEAR * min(h, w)))
    y0, x0 = max(h // 2 - reach, 0), max(w // 2 - reach, 0)
    window = labels[:, y0:h // 2 + reach + 1, x0:w // 2 + reach + 1]
    dy = np.arange(window.shape[1]) + y0 + 0.5 - h / 2
    dx = np.arange(window.shape[2]) + x0 + 0.5 - w / 2
    d2 = np.where(big[window], dy[:, None] ** 2 + dx[None, :] ** 2, np.inf).reshape(len(labels), -1)
    rows, nearest = np.arange(len(labels)), d2.argmin(axis=1)  # the first in raster order among equals
    return np.where(d2[rows, nearest] <= (reach + 1) ** 2, window.reshape(len(labels), -1)[rows, nearest], 0)


def _aperture(source: np.ndarray, labels: np.ndarray, grow: np.ndarray) -> np.ndarray:
    """Each grid's source (B, h, w) grown by its `grow` pixels (a square), other sources masked out."""
    grown = np.zeros_like(source)
    for g in np.unique(grow):
        these = grow == g
        grown[these] = ndimage.maximum_filter(source[these], size=(1, 2 * g + 1, 2 * g + 1), mode="constant")
    return grown & ((labels == 0) | source)


def _r90(flux: np.ndarray, aperture: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """Per grid of a stack (B, h, w): the radius about (cx, cy) holding FRACTION of the flux in the
    aperture; nan where it holds none. The curve of growth is binned in steps of RADIUS_STEP, each pixel's
    light spread evenly over the step its centre falls in: one weighted bincount for the whole stack, where
    sorting each grid's pixels by radius cost three times the rest of the measurement."""
    b, h, w = flux.shape
    steps = math.ceil(math.hypot(h, w) / RADIUS_STEP) + 1  # a centre within the grid is nearer than its diagonal
    # float32 and squares summed by broadcasting: np.hypot over the stack costs six times as much
    dx2 = (np.arange(w, dtype=np.float32) + 0.5 - np.nan_to_num(cx).astype(np.float32)[:, None]) ** 2
    dy2 = (np.arange(h, dtype=np.float32) + 0.5 - np.nan_to_num(cy).astype(np.float32)[:, None]) ** 2
    step = (np.sqrt(dx2[:, None, :] + dy2[:, :, None]) * np.float32(1 / RADIUS_STEP)).astype(np.int32)
    np.minimum(step, steps - 1, out=step)
    step += (np.arange(b, dtype=np.int32) * steps)[:, None, None]
    profile = np.bincount(step.ravel(), (flux * aperture).ravel(), b * steps).reshape(b, steps)
    growth = np.cumsum(profile, axis=1)  # the flux within the outer edge of each step
    total = growth[:, -1]
    i = (growth >= FRACTION * total[:, None]).argmax(axis=1)  # the step the curve crosses in
    rows = np.arange(b)
    inner = np.where(i > 0, growth[rows, i - 1], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r90 = (i + (FRACTION * total - inner) / profile[rows, i]) * RADIUS_STEP
    return np.where(total > 0, r90, np.nan)
