"""Decoding: one source -> a centre-cropped, resized RGB uint8 image, the same for training and prediction.

JPEGs use Pillow's DCT-scaled `draft` mode: a JPEG is decoded directly at
1/2, 1/4 or 1/8 scale when that still leaves enough pixels for the crop,
which is several times faster than a full decode followed by a resize.
FITS cutouts (zoomorph.io.fits) are stretched to RGB and then cropped the same way.
Decoding workers import this module: it imports no torch.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from zoomorph.errors import ZoomorphError
from zoomorph.io.fits import fits_rgb
from zoomorph.io.sources import ImageError, Source, is_fits, read_bytes

KAGGLE_SIZE = 424  # side of every Kaggle/SDSS image; the field of view is given in its pixels
# The central crop by default. 256 = 4 x the default 64 px: JPEGs then decode at the DCT's 1/4 scale
# straight to the crop, with no resampling (30% faster than the Kaggle winner's 207, as accurate on
# real galaxies: docs/models.md).
DEFAULT_FOV = 256


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray  # (size, size, 3) uint8
    note: str = ""  # non-fatal conversion done (grayscale, CMYK, PNG, other size, FITS)


def default_workers(workers: int | None) -> int:
    """Decoding processes: None -> one per core; 0 -> none (everything in this process); n -> n."""
    if workers is not None and workers < 0:
        raise ZoomorphError(f"workers={workers}: give 0 (decode in this process) or more, or None (one per core)")
    return (os.cpu_count() or 1) if workers is None else workers


def fov_crop(side: int, fov: int) -> float:
    """Side of the central crop, in an image's own pixels, for a field of view in Kaggle pixels."""
    return side * min(fov, KAGGLE_SIZE) / KAGGLE_SIZE


def crop_resize(im: Image.Image, size: int, crop: float) -> np.ndarray:
    """The central `crop` x `crop` pixels of an RGB image, resized to (size, size, 3) uint8: every format
    goes through it, so that all see the same geometry."""
    cx, cy, half = im.size[0] / 2, im.size[1] / 2, crop / 2
    box = (cx - half, cy - half, cx + half, cy + half)
    return np.asarray(im.resize((size, size), Image.BILINEAR, box=box, reducing_gap=None), dtype=np.uint8)


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """8-bit modes as Pillow converts them; 16-bit grey scaled to 0-255 (Pillow would clip it at 255,
    nearly white); 32-bit integer and float pixels refused, as they have no range to scale from."""
    if im.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)).convert("RGB")
    if im.mode in ("I", "F"):
        raise ImageError(f"{name}: {'32-bit integer' if im.mode == 'I' else 'floating-point'} pixels have no "
                         "0-255 range to scale from; give 8- or 16-bit images (or FITS, which is stretched)")
    return im.convert("RGB")


def decode(data: bytes, size: int, fov: int = KAGGLE_SIZE, name: str = "image") -> Decoded:
    """Decode an image file's bytes (JPEG, PNG, TIFF, ...), centre-crop the field of view and resize to
    `size` x `size` RGB uint8.

    `fov` is the side of the central crop in Kaggle pixels (424 = whole image;
    the Kaggle winner used 207). Images of another size are cropped to the same
    *fraction* of their shorter side, and that is reported as a note.
    Raises ImageError naming `name` for anything that is not a usable image.
    """
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data))
        fmt = im.format
        width, height = im.size
        crop = fov_crop(min(width, height), fov)
        if fmt == "JPEG":
            # Ask for the smallest DCT scale that still leaves >= `size` pixels in the crop.
            scale = max(size / crop, 1 / 8)
            im.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        im.load()
    except UnidentifiedImageError as err:
        raise ImageError(f"{name}: not an image file Pillow can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{name}: corrupt or truncated image ({err})") from err

    notes = []
    if fmt != "JPEG":
        notes.append(f"{fmt} content")
    if im.mode != "RGB":
        notes.append(f"converted from {im.mode}")
        im = _to_rgb(im, name)
    if (width, height) != (KAGGLE_SIZE, KAGGLE_SIZE):
        notes.append(f"size {width}x{height}, not {KAGGLE_SIZE}x{KAGGLE_SIZE}")

    # The draft may have shrunk the image: redo the crop in its own pixels.
    return Decoded(crop_resize(im, size, crop * im.size[0] / width), "; ".join(notes))


def decode_fits(data: bytes, size: int, fov: int = KAGGLE_SIZE, name: str = "image.fits") -> Decoded:
    """A FITS cutout's bytes -> its bands as RGB (zoomorph.io.fits), cropped and resized like a JPEG."""
    rgb, note = fits_rgb(data, name)
    im = Image.fromarray(rgb)
    return Decoded(crop_resize(im, size, fov_crop(min(im.size), fov)), note)


def cut_array(rgb: np.ndarray, size: int, fov: int = KAGGLE_SIZE) -> Decoded:
    """An in-memory full-resolution RGB image (H, W, 3) uint8 -> the crop `decode` would cut from its file:
    the survey-shift suite transforms images in memory and must see the same geometry."""
    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    return Decoded(crop_resize(im, size, fov_crop(min(im.size), fov)))


def load(source: Source, size: int, fov: int = KAGGLE_SIZE) -> Decoded:
    """Read and decode one source: FITS by its name, anything else by Pillow. Raises ImageError saying why
    a source cannot be used (an Unusable: its reason)."""
    data = read_bytes(source)
    return (decode_fits if is_fits(source) else decode)(data, size, fov, name=source)


def decode_batch(task: tuple[int, list[Source], int, int]) -> tuple[int, np.ndarray, list[str]]:
    """(start, sources, size, fov) -> (start, pixels of the readable images (n_ok, S, S, 3), error per source).

    An error is "" for a readable image, else the reason; one bad file never stops the batch.
    """
    start, sources, size, fov = task
    pixels, errors = [], []
    for source in sources:
        try:
            pixels.append(load(source, size, fov).pixels)
            errors.append("")
        except Exception as err:  # noqa: BLE001 (any failure, e.g. a decompression bomb, is that row's error)
            errors.append(str(err) if isinstance(err, ImageError) else f"{source}: {type(err).__name__}: {err}")
    stacked = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
    return start, stacked, errors
