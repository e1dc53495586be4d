"""The central galaxy's extent, measured from its pixels: what `--fov auto` crops by (zoomorph.io.decode).

For an RGB uint8 image, on a grid of about MEASURE_SIDE pixels (block means of
the image, or of a DCT-downscaled JPEG decode):

1. sky level and noise from the border ring, sigma-clipped (3 sigma about the
   median, to convergence: astropy.stats.sigma_clipped_stats' algorithm, see
   `clipped_stats`);
2. a lightly smoothed grey image thresholded at sky + THRESHOLD x noise; the
   4-connected source containing the centre, or the nearest one starting
   within NEAR of it. Neighbours and stars that do not touch it are not part of it;
3. its flux-weighted centre; then its R90, the radius about that centre
   holding 90% of the sky-subtracted flux in an aperture made of the source
   grown by half its radius (the faint wings below the threshold hold ~10% of
   an exponential disk's light), other sources masked out.

A measurement that cannot be trusted comes back with a flag ("blank image",
"no source at the centre", "source fills the frame") and the caller falls
back to the full frame. The steps of one grid are compiled (numba) into one
pass of loops: a grid is small (53 x 53), and as numpy or scipy calls, even
over a stack of 256 grids, they cost as much as the JPEG decode (docs/other-surveys.md).
No torch here: decoding workers import this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from zoomorph.io.jit import compiled

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
# what the compiled measurement says of a grid, by its code (0: sound)
FLAGS = ("", "source fills the frame", "blank image", "no source at the centre")
SOUND, FILLS, BLANK, NO_SOURCE = range(4)


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
    decoding process."""
    median, std = _clipped_stats(np.sort(np.asarray(values, np.float64).ravel()), sigma, iters)
    return float(median), float(std)


def measure(image: np.ndarray | Image.Image) -> Extent:
    """The central galaxy of an RGB uint8 image (H, W, 3) (or a Pillow RGB image): centre, R90 and sky, in
    its pixels. Measured on a grid of about MEASURE_SIDE pixels, then on grids twice as fine while its
    galaxy is smaller than FINE_R90 grid pixels and the image has the pixels (a flag on a finer grid, noise
    or a neighbour joined, leaves the sound coarser measurement standing)."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image, np.uint8))
    f = max(1, min(im.size) // MEASURE_SIDE)
    extent = _measure_grid(_blocks(im, f), f)
    while f > 1 and extent.r90 < FINE_R90 * f and min(im.size) // (f // 2) <= MAX_SIDE:  # nan: it stands
        f //= 2
        finer = _measure_grid(_blocks(im, f), f)
        if finer.flag:
            break
        extent = finer
    return extent


def _blocks(im: Image.Image, f: int) -> np.ndarray:
    """Means of f x f blocks of an image, uint8 (h, w, 3); Pillow's reduce, as it is 10x faster than numpy's."""
    if f > 1:  # the box of the whole blocks only, as a block mean would: no partial block at the edge
        im = im.reduce(f, box=(0, 0, im.size[0] // f * f, im.size[1] // f * f))
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def _measure_grid(grid: np.ndarray, f: int) -> Extent:
    """The extent of an image from its grid of box means (h, w, 3) uint8, each f x f of its pixels."""
    h, w = grid.shape[:2]
    centre = (w * f / 2, h * f / 2)
    if min(h, w) < 8:
        return Extent(*centre, math.nan, None, "image too small to measure")
    width, reach = max(2, round(RING * min(h, w))), max(1, round(NEAR * min(h, w)))
    cx, cy, r90, r, g, b, flag = _measure(grid, width, reach)
    if flag != SOUND:
        return Extent(*centre, math.nan, (r, g, b), FLAGS[flag])
    return Extent(cx * f, cy * f, r90 * f, (r, g, b))


# ------------------------------------------------------------------ the compiled steps


@compiled
def _measure(grid, width, reach):
    """(cx, cy, r90 in grid pixels, sky R, G, B, flag code) of a grid (h, w, 3) uint8, its ring `width`
    pixels wide, its source starting within `reach` of the centre: the steps of the module docstring."""
    h, w = grid.shape[0], grid.shape[1]
    # 1. the sky and its noise, from the ring; the sky per band: the (upper) median of every third ring pixel
    ys, xs = _ring(h, w, width)
    counts = np.zeros((3, 256), np.int64)
    for k in range(0, len(ys), 3):
        for c in range(3):
            counts[c, grid[ys[k], xs[k], c]] += 1
    r, g, b = _upper_median(counts[0]), _upper_median(counts[1]), _upper_median(counts[2])
    grey = np.empty((h, w), np.float32)
    for y in range(h):
        for x in range(w):  # float32 as numpy would add the bands: (R + G) + B, then / 3
            red, green, blue = np.float32(grid[y, x, 0]), np.float32(grid[y, x, 1]), np.float32(grid[y, x, 2])
            grey[y, x] = (red + green + blue) / np.float32(3)
    smooth = _smooth3(grey)
    if _edges_lit(smooth, width):
        return math.nan, math.nan, math.nan, r, g, b, FILLS
    ring = np.empty(len(ys))
    for k in range(len(ys)):
        ring[k] = smooth[ys[k], xs[k]]
    sky, noise = _clipped_stats(_sorted_counts(ring), CLIP_SIGMA, CLIP_ITERS)

    # 2. the source: of the regions above the threshold that reach the window about the centre, the one of
    # MIN_AREA or more with the pixel nearest the centre (the first in raster order among equals)
    peak = -np.inf
    y0, y1 = max(h // 2 - reach, 0), min(h // 2 + reach + 1, h)
    x0, x1 = max(w // 2 - reach, 0), min(w // 2 + reach + 1, w)
    for y in range(y0, y1):
        for x in range(x0, x1):
            peak = max(peak, smooth[y, x])
    level = np.float32(sky + max(THRESHOLD * max(noise, NOISE_FLOOR), PEAK_SHARE * (peak - sky)))
    mask = smooth > level
    labels = np.zeros((h, w), np.int32)  # only the regions reaching the window are labelled
    queue = np.empty(h * w, np.int64)
    areas = [0]
    best, chosen = np.inf, 0
    for y in range(y0, y1):
        for x in range(x0, x1):
            if mask[y, x] and labels[y, x] == 0:
                areas.append(_fill(mask, labels, y, x, len(areas), queue))
            d2 = (y + 0.5 - h / 2) ** 2 + (x + 0.5 - w / 2) ** 2
            if areas[labels[y, x]] >= MIN_AREA and d2 < best:
                best, chosen = d2, labels[y, x]
    if best > (reach + 1) ** 2:
        # blank: no region anywhere of MIN_AREA (they are noise peaks); else none at the centre
        flag = NO_SOURCE if _any_region(mask, labels, queue, max(areas)) else BLANK
        return math.nan, math.nan, math.nan, r, g, b, flag

    # 3. its flux-weighted centre, and R90 in the grown aperture (other sources masked out)
    total, sum_x, sum_y = 0.0, 0.0, 0.0
    top, bottom, left, right = h, -1, w, -1
    sky32 = np.float32(sky)
    for y in range(h):
        for x in range(w):
            if labels[y, x] == chosen:
                top, bottom, left, right = min(top, y), max(bottom, y), min(left, x), max(right, x)
                flux = grey[y, x] - sky32
                if flux > 0:
                    total += flux
                    sum_x += flux * (x + 0.5)
                    sum_y += flux * (y + 0.5)
    if top == 0 and left == 0 and bottom == h - 1 and right == w - 1:  # it touches all four edges
        return math.nan, math.nan, math.nan, r, g, b, FILLS
    if not total > 0:
        return math.nan, math.nan, math.nan, r, g, b, BLANK
    cx, cy = sum_x / total, sum_y / total
    grow = max(1, int(np.rint(GROW * math.sqrt(areas[chosen] / math.pi))))
    box = (max(top - grow, 0), min(bottom + grow + 1, h), max(left - grow, 0), min(right + grow + 1, w))
    r90 = _r90(grey, sky32, _aperture(mask, labels, chosen, grow, box), box, cx, cy)
    if not r90 > 0:
        return math.nan, math.nan, math.nan, r, g, b, BLANK
    return cx, cy, r90, r, g, b, SOUND


@compiled
def _upper_median(counts):
    """The (upper) median of values given as counts per value: the one at index n // 2 of them sorted."""
    seen, middle = 0, counts.sum() // 2
    for value in range(len(counts)):
        seen += counts[value]
        if seen > middle:
            return value
    return len(counts) - 1


@compiled
def _ring(h, w, width):
    """(rows, columns) of the outer `width` rows and columns of an h x w grid, each pixel once: the top
    rows, the bottom rows, then the left and the right columns between them."""
    n = 2 * width * w + 2 * width * (h - 2 * width)
    ys, xs = np.empty(n, np.int64), np.empty(n, np.int64)
    k = 0
    for rows in ((0, width), (h - width, h)):
        for y in range(rows[0], rows[1]):
            for x in range(w):
                ys[k], xs[k] = y, x
                k += 1
    for cols in ((0, width), (w - width, w)):
        for y in range(width, h - width):
            for x in range(cols[0], cols[1]):
                ys[k], xs[k] = y, x
                k += 1
    return ys, xs


@compiled
def _clipped_stats(v, sigma, iters):
    """(median, std) of the sorted values `v` clipped about the median (clipped_stats): each round is a
    count of the values below and above the limits, and the sums of what is left from running sums."""
    sums, squares = np.zeros(len(v) + 1), np.zeros(len(v) + 1)
    for k in range(len(v)):
        sums[k + 1] = sums[k] + v[k]
        squares[k + 1] = squares[k] + v[k] * v[k]
    lo, hi = 0, len(v)
    for _ in range(iters):
        median, std = _stats(v, sums, squares, lo, hi)
        # values once clipped stay clipped, as in astropy
        new_lo = max(lo, np.searchsorted(v, median - sigma * std, side="left"))
        new_hi = min(hi, np.searchsorted(v, median + sigma * std, side="right"))
        if (new_lo == lo and new_hi == hi) or new_hi <= new_lo:  # converged, or nothing left
            break
        lo, hi = new_lo, new_hi
    return _stats(v, sums, squares, lo, hi)


@compiled
def _sorted_counts(v):
    """np.sort(v) of values within 0-255 (means of counts), 4x faster for the ring of a grid (600 values,
    2,400 on a finer one: a quicksort cost a third of the measurement): placed by a counting sort on
    floor(27 v), which never puts a larger value before a smaller one, then an insertion sort puts the
    few that share a bin in order."""
    bins = 27 * 256
    counts = np.zeros(bins + 1, np.int64)
    keys = np.empty(len(v), np.int64)
    for k in range(len(v)):
        keys[k] = min(max(int(v[k] * 27.0), 0), bins - 1)  # clamped: still in order for any value
        counts[keys[k] + 1] += 1
    for b in range(bins):
        counts[b + 1] += counts[b]
    out = np.empty(len(v))
    for k in range(len(v)):
        out[counts[keys[k]]] = v[k]
        counts[keys[k]] += 1
    for k in range(1, len(out)):
        value, j = out[k], k - 1
        while j >= 0 and out[j] > value:
            out[j + 1] = out[j]
            j -= 1
        out[j + 1] = value
    return out


@compiled
def _stats(v, sums, squares, lo, hi):
    n = hi - lo
    mean = (sums[hi] - sums[lo]) / n
    return ((v[lo + (n - 1) // 2] + v[lo + n // 2]) / 2,
            math.sqrt(max((squares[hi] - squares[lo]) / n - mean * mean, 0.0)))


@compiled
def _smooth3(a):
    """3 x 3 box means of a float32 grid, edges extended: scipy.ndimage.uniform_filter(a, 3, mode="nearest"),
    bit for bit (a running sum in float64 down the columns, then along the rows, each stored as float32)."""
    return _mean3_rows(_mean3_rows(a.T).T)


@compiled
def _mean3_rows(a):
    """Means of 3 along each row of a float32 array (h, w), its ends extended, as scipy's uniform_filter1d."""
    h, w = a.shape
    out = np.empty((h, w), np.float32)
    for y in range(h):
        total = np.float64(a[y, 0]) + a[y, 0] + a[y, min(1, w - 1)]
        out[y, 0] = total / 3
        for x in range(1, w):
            total += np.float64(a[y, min(x + 1, w - 1)]) - a[y, max(x - 2, 0)]
            out[y, x] = total / 3
    return out


@compiled
def _edges_lit(smooth, width):
    """Whether the middle of every side of the ring stands out above its corners (by THRESHOLD x the noise
    within a corner, and FILL_MIN): a source so large that the ring is its outskirts, not sky, and the sky
    it gives too bright to find the source by. A sky gradient, or a star by one side, lights some sides."""
    h, w = smooth.shape
    n = width * width
    medians = np.empty(4, np.float32)
    deviations = np.empty(4 * n, np.float64)
    for c in range(4):
        y0, x0 = (0 if c < 2 else h - width), (0 if c % 2 == 0 else w - width)
        corner = smooth[y0:y0 + width, x0:x0 + width].copy().ravel()
        medians[c] = np.sort(corner)[n // 2]
        deviations[c * n:(c + 1) * n] = corner - medians[c]
    noise = max(np.std(deviations), NOISE_FLOOR)
    across, down = (w // 3, w - w // 3), (h // 3, h - h // 3)
    sides = (smooth[:width, across[0]:across[1]], smooth[h - width:, across[0]:across[1]],
             smooth[down[0]:down[1], :width], smooth[down[0]:down[1], w - width:])
    lowest = np.inf
    for side in sides:  # each side's mean: a star by one side lifts that side only
        lowest = min(lowest, np.float64(side.sum()) / side.size)
    return lowest > np.sort(medians)[2] + max(THRESHOLD * noise, FILL_MIN)


@compiled
def _fill(mask, labels, y, x, label, queue):
    """Give the 4-connected region of `mask` holding (y, x) the number `label` in `labels`; its area."""
    h, w = mask.shape
    labels[y, x] = label
    queue[0], head, tail = y * w + x, 0, 1
    while head < tail:
        py, px = divmod(queue[head], w)
        head += 1
        for ny, nx in ((py - 1, px), (py + 1, px), (py, px - 1), (py, px + 1)):
            if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and labels[ny, nx] == 0:
                labels[ny, nx] = label
                queue[tail] = ny * w + nx
                tail += 1
    return tail


@compiled
def _any_region(mask, labels, queue, largest):
    """Whether `mask` has a 4-connected region of MIN_AREA or more: of those labelled already (the largest
    of them has `largest` pixels), or of the rest, which it labels."""
    if largest >= MIN_AREA:
        return True
    h, w = mask.shape
    label = labels.max()
    for y in range(h):
        for x in range(w):
            if mask[y, x] and labels[y, x] == 0:
                label += 1
                if _fill(mask, labels, y, x, label, queue) >= MIN_AREA:
                    return True
    return False


@compiled
def _aperture(mask, labels, chosen, grow, box):
    """Within `box` (top, bottom, left, right; the source grown by `grow` fits in it): the source `chosen`
    grown by `grow` pixels (a square), other sources (the rest of `mask`) masked out."""
    top, bottom, left, right = box
    across = np.zeros((bottom - top, right - left), np.bool_)  # grown along the rows, then down the columns
    for y in range(top, bottom):
        for x in range(left, right):
            if labels[y, x] == chosen:
                across[y - top, max(x - grow, left) - left:min(x + grow + 1, right) - left] = True
    grown = np.zeros_like(across)
    for y in range(bottom - top):
        for x in range(right - left):
            if across[y, x]:
                grown[max(y - grow, 0):y + grow + 1, x] = True
    for y in range(top, bottom):
        for x in range(left, right):
            if mask[y, x] and labels[y, x] != chosen:
                grown[y - top, x - left] = False
    return grown


@compiled
def _r90(grey, sky, aperture, box, cx, cy):
    """The radius about (cx, cy) holding FRACTION of the sky-subtracted flux in the aperture (within `box`
    of the grid); nan where it holds none. The curve of growth is binned in steps of RADIUS_STEP, each
    pixel's light spread evenly over the step its centre falls in."""
    h, w = grey.shape
    top, _, left, _ = box
    steps = math.ceil(math.hypot(h, w) / RADIUS_STEP) + 1  # a centre within the grid is nearer than its diagonal
    profile = np.zeros(steps)
    cx32, cy32, per_step = np.float32(cx), np.float32(cy), np.float32(1 / RADIUS_STEP)
    for j in range(aperture.shape[0]):
        dy2 = (np.float32(top + j) + np.float32(0.5) - cy32) ** 2
        for i in range(aperture.shape[1]):
            if aperture[j, i]:
                step = int(np.sqrt((np.float32(left + i) + np.float32(0.5) - cx32) ** 2 + dy2) * per_step)
                profile[min(step, steps - 1)] += grey[top + j, left + i] - sky
    total = 0.0
    for i in range(steps):  # summed in order, as the curve of growth below is
        total += profile[i]
    if not total > 0:
        return math.nan
    inner = 0.0
    for i in range(steps):  # the step the curve of growth crosses FRACTION in
        if inner + profile[i] >= FRACTION * total:
            return (i + (FRACTION * total - inner) / profile[i]) * RADIUS_STEP
        inner += profile[i]
    return math.nan
