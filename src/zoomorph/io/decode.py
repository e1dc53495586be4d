"""Decoding: one source -> a centre-cropped, resized RGB uint8 image, the same for training and prediction.

JPEGs use Pillow's DCT-scaled `draft` mode: a JPEG is decoded directly at
1/2, 1/4 or 1/8 scale when that still leaves enough pixels for the crop,
which is several times faster than a full decode followed by a resize.
FITS cutouts (zoomorph.io.fits) are stretched to RGB and then cropped the same way.

The field of view (`Fov`) is a central crop in Kaggle pixels, or "auto": the
galaxy's own extent (zoomorph.io.extent) measured on a DCT-downscaled decode,
then a square of AUTO_MULTIPLE x its R90 about its centre, cut from a decode at
the scale that square needs, sky-filled where it passes the frame edge, and its
sky moved to SKY_LEVEL (a cutout whose sky was left brighter or darker reads as
the SDSS frames the models learnt from).
Decoding workers import this module: it imports no torch.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import Callable, Literal, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from zoomorph.errors import ZoomorphError
from zoomorph.io.extent import MEASURE_SIDE, Extent, measure
from zoomorph.io.fits import fits_rgb
from zoomorph.io.jit import compiled
from zoomorph.io.sources import ImageError, Source, is_fits, read_bytes

KAGGLE_SIZE = 424  # side of every Kaggle/SDSS image; the field of view is given in its pixels
# The fixed central crop (`--fov 256`, the default until 2026-12-04). 256 = 4 x the default 64 px: JPEGs
# then decode at the DCT's 1/4 scale straight to the crop, with no resampling (30% faster than the Kaggle
# winner's 207, as accurate on real galaxies: docs/models.md).
FIXED_FOV = 256

Fov = Union[int, Literal["auto"]]  # a central crop in Kaggle pixels, or each galaxy's own (AUTO)
AUTO = "auto"
# The default field of view: each galaxy's own. On the q1 split it is as accurate in domain as FIXED_FOV and
# follows a zoom that a fixed crop cannot (0.5x: 97.8 % against 94.1-95.4; docs/other-surveys.md).
DEFAULT_FOV: Fov = AUTO
# The auto crop's side in units of the galaxy's R90: of 2.2, 2.65 and 3.31 the best validation accuracy
# on the q1 split, with every zoom and shift goal met (`python benchmarks/auto_fov_scan.py`,
# docs/other-surveys.md). 3.31 made the median crop equal FIXED_FOV (`benchmarks/auto_fov_multiple.py`):
# large galaxies then reached 64 px from crops of up to 563 px. Over the 6,507 q1 JPEGs the median R90 is
# 77.3 Kaggle px, so 2.65 cuts a median 205 px. R90 is of the stretched JPEG's light, wider than in linear flux.
AUTO_MULTIPLE = 2.65
# The auto crop's side stays within these fractions of the image's shorter side: below 1/8 (53 Kaggle px)
# a 64 px model input would be upsampled from fewer pixels than it has; above 2 the galaxy's R90 says it
# overflows the frame, and the crop would be mostly sky fill.
AUTO_SIDE = (1 / 8, 2.0)
# An auto JPEG is first decoded at the DCT scale that a crop of this fraction of its shorter side needs
# (1/2 for 64 px of 424): the radius is measured on it and nearly every crop is cut from it too.
FIRST_CROP = 1 / 3
# An auto crop's sky (its border ring's median per band, measured with the extent) is moved to this
# level: the median sky of the real q1 JPEGs (R, G, B: 4, 4, 3 counts), so an SDSS crop changes by a few
# counts, and one from a service that leaves the sky brighter (a lighter black point, under-subtracted
# sky) is brought back to it (evaluate --shifts: sky offset).
SKY_LEVEL = (4, 4, 3)
# Everything an auto crop depends on besides the image: recorded with the prepared data, in the run and
# in predict's fingerprint, so that a run is never fed crops cut another way (check_auto_cut).
# "version" counts changes to the measurement itself (zoomorph.io.extent): 2 = refined grids, sky level;
# 3 = R90 read from a binned curve of growth (within 1.1% of version 2 over 1,000 q1 JPEGs); compiled
# (numba) since, the same measurement: over the 6,507 q1 JPEGs R90 within 6e-5, the same flags and skies;
# its ring sorted by counting since, every crop of them the same bit for bit.
AUTO_CUT = {"version": 3, "multiple": AUTO_MULTIPLE, "measure_side": MEASURE_SIDE, "sky_level": list(SKY_LEVEL)}
FOV_COLUMNS = ("fov_radius", "fov_crop", "fov_flag")  # what an auto field of view says per image


def parse_fov(value: object, where: str = "fov") -> Fov:
    """An int of Kaggle pixels (or its text) or "auto"; a ZoomorphError naming `where` for anything else."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.isdigit():
        text = int(text)
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool) and text > 0:
        return int(text)
    raise ZoomorphError(f"{where}={value!r}: give the crop's side in Kaggle (424 px) pixels, a whole number "
                        f"from 1 (424 = the whole image), or 'auto' (each galaxy's own extent)")


def describe_fov(fov: Fov, size: int) -> str:
    """What a network sees of an image, in words (the model card, a packed run, an ONNX graph's metadata)."""
    if fov == AUTO:
        return (f"each galaxy's own extent (fov auto): a square of {AUTO_MULTIPLE} × its R90 about its "
                f"flux-weighted centre (zoomorph.io.extent), sky-filled past the frame edge, its sky moved to "
                f"{list(SKY_LEVEL)}, bilinear resize to {size} × {size} px")
    return (f"the central {fov} × {fov} px of a {KAGGLE_SIZE} px Kaggle/SDSS frame ({100 * fov / KAGGLE_SIZE:.0f} % "
            f"of its side, or that share of another frame's shorter side), bilinear resize to {size} × {size} px")


def check_auto_cut(recorded: dict | None, where: str) -> None:
    """A ZoomorphError naming `where` (prepared data or a run with fov auto) when the auto crop it was made
    with (`recorded`, its AUTO_CUT) is not the one this version cuts."""
    if recorded != AUTO_CUT:
        # the multiple is the change a user meets (3.31 x R90 until 2026-12-04): say it in their words
        multiple = (recorded or {}).get("multiple")
        what = (f"crops of {multiple} × R90 where this version cuts {AUTO_MULTIPLE} × R90"
                if multiple not in (None, AUTO_MULTIPLE) else f"other pixels than this version cuts ({AUTO_CUT})")
        raise ZoomorphError(f"{where} was made with fov auto cut as {recorded or 'an earlier version did'}: "
                            f"{what}. Prepare the data again (and train again), or use the zoomorph version it "
                            f"was made with")


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray  # (size, size, 3) uint8
    note: str = ""  # non-fatal conversion done (grayscale, CMYK, PNG, other size, FITS)
    r90: float = math.nan  # fov auto: the galaxy's R90, in the source image's pixels (nan: not measured)
    crop: float = math.nan  # the side of the square cut, in the source image's pixels
    flag: str = ""  # fov auto: why the measurement fell back to the full frame ("" when it did not)


def default_workers(workers: int | None) -> int:
    """Decoding processes: None -> one per core; 0 -> none (everything in this process); n -> n."""
    if workers is not None and workers < 0:
        raise ZoomorphError(f"workers={workers}: give 0 (decode in this process) or more, or None (one per core)")
    return (os.cpu_count() or 1) if workers is None else workers


def fov_crop(side: int, fov: int) -> float:
    """Side of the central crop, in an image's own pixels, for a field of view in Kaggle pixels."""
    return side * min(fov, KAGGLE_SIZE) / KAGGLE_SIZE


def crop_resize(im: Image.Image, size: int, crop: float, centre: tuple[float, float] | None = None,
                fill: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """The `crop` x `crop` pixels about `centre` (default: the image's) of an RGB image, resized to
    (size, size, 3) uint8: every format goes through it, so that all see the same geometry. Where the
    square passes the frame edge it is filled with `fill` (the sky), never reflected."""
    cx, cy = centre or (im.size[0] / 2, im.size[1] / 2)
    half = crop / 2
    box = [cx - half, cy - half, cx + half, cy + half]
    over = max(-box[0], -box[1], box[2] - im.size[0], box[3] - im.size[1])
    if over > 1e-6:  # pad with sky (2 px more: the filter's reach), and shift the box with it
        pad = math.ceil(over) + 2
        canvas = Image.new("RGB", (im.size[0] + 2 * pad, im.size[1] + 2 * pad), fill)
        canvas.paste(im, (pad, pad))
        im, box = canvas, [b + pad for b in box]
    return np.asarray(im.resize((size, size), Image.BILINEAR, box=tuple(box), reducing_gap=None), dtype=np.uint8)


def compile_auto_fov() -> None:
    """Compile fov auto's code (numba: the measurement and level_sky) now, the first time after an install
    15-25 s, then ~0.5 s from numba's cache: a process about to fork its decoding workers does it once for all."""
    grid = np.asarray(Image.new("RGB", (MEASURE_SIDE, MEASURE_SIDE)))  # read-only, as Pillow's pixels reach them
    measure(grid)
    level_sky(grid, SKY_LEVEL)


def level_sky(pixels: np.ndarray, sky: tuple[int, int, int]) -> np.ndarray:
    """An RGB uint8 crop (S, S, 3) with its sky moved from `sky` to SKY_LEVEL, per band, clipped to 0-255."""
    return _shifted(pixels, np.asarray(SKY_LEVEL, np.int64) - np.asarray(sky, np.int64))


@compiled
def _shifted(pixels, shift):  # compiled: as numpy calls it cost a fifth of a crop
    out = np.empty(pixels.shape, np.uint8)
    for y in range(pixels.shape[0]):
        for x in range(pixels.shape[1]):
            for c in range(3):
                out[y, x, c] = min(max(pixels[y, x, c] + shift[c], 0), 255)
    return out


def auto_box(extent: Extent, width: int, height: int) -> tuple[float, float, float, str]:
    """(centre x, centre y, side, flag) of the auto crop of a width x height image whose extent that is:
    AUTO_MULTIPLE x R90 within AUTO_SIDE, or the full frame (the central square) when it is flagged."""
    short = min(width, height)
    if extent.flag:
        return width / 2, height / 2, float(short), f"{extent.flag}: full frame"
    side = min(max(AUTO_MULTIPLE * extent.r90, AUTO_SIDE[0] * short), AUTO_SIDE[1] * short)
    return extent.x, extent.y, side, ""


@dataclass
class _Opened:
    """A source decoded at its first scale (a JPEG's DCT draft), not yet cut."""

    im: Image.Image  # RGB
    width: int  # the source's full size
    height: int
    note: str = ""
    finer: Callable[[float], Image.Image] | None = None  # the source decoded again at a larger scale (a JPEG)


def _cut(o: _Opened, size: int, fov: Fov) -> Decoded:
    """The crop of an opened source: the central fov, or the auto one by the extent measured on `o.im`
    (decoded again at the scale the crop needs when `o.im` is too coarse for it), its sky moved to
    SKY_LEVEL."""
    im, scale = o.im, o.im.size[0] / o.width  # what a DCT draft shrank it by
    if fov != AUTO:
        crop = fov_crop(min(o.width, o.height), fov)
        return Decoded(crop_resize(im, size, crop * scale), o.note, crop=crop)
    extent = measure(im).scaled(1 / scale)
    x, y, side, flag = auto_box(extent, o.width, o.height)
    if o.finer is not None and side * scale < size and scale < 1:
        im = o.finer(size / side)
        scale = im.size[0] / o.width
    reduce = 2 ** int(math.log2(max(side * scale / size, 1)))
    if reduce >= 2:  # whole-block box means first, as a coarser DCT draft gives: resampling 2x+ costs 4x as much
        box = (0, 0, im.size[0] // reduce * reduce, im.size[1] // reduce * reduce)
        im, scale = im.reduce(reduce, box=box), scale / reduce
    pixels = crop_resize(im, size, side * scale, (x * scale, y * scale), extent.sky or (0, 0, 0))
    if flag:  # a fall-back's ring may be no sky (a galaxy filling the frame): its crop is left as it is
        return Decoded(pixels, o.note, math.nan, side, flag)
    return Decoded(level_sky(pixels, extent.sky), o.note, extent.r90, side)


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """8-bit modes as Pillow converts them; 16-bit grey scaled to 0-255 (Pillow would clip it at 255,
    nearly white); 32-bit integer and float pixels refused, as they have no range to scale from."""
    if im.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)).convert("RGB")
    if im.mode in ("I", "F"):
        raise ImageError(f"{name}: {'32-bit integer' if im.mode == 'I' else 'floating-point'} pixels have no "
                         "0-255 range to scale from; give 8- or 16-bit images (or FITS, which is stretched)")
    return im.convert("RGB")


def _open(data: bytes, name: str, scale: Callable[[int, int], float]) -> tuple[Image.Image, str | None, int, int]:
    """(the image loaded, a JPEG at the smallest DCT scale >= scale(width, height); its format; its full
    width and height)."""
    try:
        im = Image.open(io.BytesIO(data))
        fmt = im.format
        width, height = im.size
        if fmt == "JPEG":
            wanted = max(scale(width, height), 1 / 8)
            im.draft("RGB", (math.ceil(width * wanted), math.ceil(height * wanted)))
        im.load()
    except UnidentifiedImageError as err:
        raise ImageError(f"{name}: not an image file Pillow can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{name}: corrupt or truncated image ({err})") from err
    return im, fmt, width, height


def _first_scale(size: int, fov: Fov) -> Callable[[int, int], float]:
    """The scale to decode at first: for a fixed fov, the smallest that leaves >= `size` pixels in the
    crop; for auto, enough to measure on and to cut a crop of FIRST_CROP of the frame from."""
    if fov == AUTO:
        return lambda w, h: max(size / (FIRST_CROP * min(w, h)), MEASURE_SIDE / min(w, h))
    return lambda w, h: size / fov_crop(min(w, h), fov)


def _open_image(data: bytes, size: int, fov: Fov, name: str) -> _Opened:
    """An image file's bytes (JPEG, PNG, TIFF, ...), decoded at the first scale its crop needs."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    im, fmt, width, height = _open(data, name, _first_scale(size, fov))
    notes = []
    if fmt != "JPEG":
        notes.append(f"{fmt} content")
    if im.mode != "RGB":
        notes.append(f"converted from {im.mode}")
        im = _to_rgb(im, name)
    if (width, height) != (KAGGLE_SIZE, KAGGLE_SIZE):
        notes.append(f"size {width}x{height}, not {KAGGLE_SIZE}x{KAGGLE_SIZE}")

    def finer(scale: float) -> Image.Image:  # only a JPEG draft can be too coarse
        again = _open(data, name, lambda w, h: scale)[0]
        return again if again.mode == "RGB" else _to_rgb(again, name)

    return _Opened(im, width, height, "; ".join(notes), finer if fmt == "JPEG" else None)


def _open_fits(data: bytes, name: str) -> _Opened:
    """A FITS cutout's bytes -> its bands as RGB (zoomorph.io.fits)."""
    rgb, note = fits_rgb(data, name)
    im = Image.fromarray(rgb)
    return _Opened(im, *im.size, note)


def decode(data: bytes, size: int, fov: Fov = KAGGLE_SIZE, name: str = "image") -> Decoded:
    """Decode an image file's bytes (JPEG, PNG, TIFF, ...), crop the field of view and resize to
    `size` x `size` RGB uint8.

    `fov` is the side of the central crop in Kaggle pixels (424 = whole image;
    the Kaggle winner used 207). Images of another size are cropped to the same
    *fraction* of their shorter side, and that is reported as a note. "auto":
    the galaxy's own extent (module docstring).
    Raises ImageError naming `name` for anything that is not a usable image.
    """
    return _cut(_open_image(data, size, fov, name), size, fov)


def decode_fits(data: bytes, size: int, fov: Fov = KAGGLE_SIZE, name: str = "image.fits") -> Decoded:
    """A FITS cutout's bytes -> its bands as RGB (zoomorph.io.fits), cropped and resized like a JPEG."""
    return _cut(_open_fits(data, name), size, fov)


def cut_arrays(images: list[np.ndarray], size: int, fov: Fov = KAGGLE_SIZE) -> list[Decoded]:
    """In-memory full-resolution RGB images (H, W, 3) uint8 -> the crops `decode` would cut from their
    files (auto: measured on their box means, as a JPEG on its DCT-downscaled decode): the survey-shift
    suite transforms images in memory and must see the same geometry."""
    fov = parse_fov(fov)
    return [_cut(_Opened(im, *im.size), size, fov) for im in
            (Image.fromarray(np.ascontiguousarray(a, np.uint8)) for a in images)]


def cut_array(rgb: np.ndarray, size: int, fov: Fov = KAGGLE_SIZE) -> Decoded:
    """cut_arrays of one image."""
    return cut_arrays([rgb], size, fov)[0]


def load(source: Source, size: int, fov: Fov = KAGGLE_SIZE) -> Decoded:
    """Read and decode one source: FITS by its name, anything else by Pillow. Raises ImageError saying why
    a source cannot be used (an Unusable: its reason)."""
    data = read_bytes(source)
    return _cut(_open_fits(data, source) if is_fits(source) else _open_image(data, size, fov, source), size, fov)


def load_many(sources: list[Source], size: int, fov: Fov = KAGGLE_SIZE) -> list[Decoded | Exception]:
    """load() of each source, in its place: its Decoded, or the exception that says why it cannot be used
    (an ImageError, or anything else a damaged file raised)."""
    outcomes: list[Decoded | Exception] = []
    for source in sources:
        try:
            outcomes.append(load(source, size, fov))
        except Exception as err:  # noqa: BLE001 (any failure, e.g. a decompression bomb, is that source's)
            outcomes.append(err)
    return outcomes


def fov_columns(decoded: list[Decoded | None]) -> dict[str, np.ndarray]:
    """FOV_COLUMNS of decoded images, one row each (None: unreadable -> nan, nan, "")."""
    return {"fov_radius": np.array([d.r90 if d else math.nan for d in decoded], np.float32),
            "fov_crop": np.array([d.crop if d else math.nan for d in decoded], np.float32),
            "fov_flag": np.array([d.flag if d else "" for d in decoded], dtype=object)}


def decode_batch(task: tuple[int, list[Source], int, Fov]) -> tuple[int, np.ndarray, list[str], dict]:
    """(start, sources, size, fov) -> (start, pixels of the readable images (n_ok, S, S, 3), error per source,
    fov_columns per source).

    An error is "" for a readable image, else the reason; one bad file never stops the batch.
    """
    start, sources, size, fov = task
    decoded, errors = [], []
    for source, outcome in zip(sources, load_many(sources, size, fov)):
        ok = isinstance(outcome, Decoded)
        decoded.append(outcome if ok else None)
        errors.append("" if ok else str(outcome) if isinstance(outcome, ImageError) else
                      f"{source}: {type(outcome).__name__}: {outcome}")
    pixels = [d.pixels for d in decoded if d]
    stacked = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
    return start, stacked, errors, fov_columns(decoded)
