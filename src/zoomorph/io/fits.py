"""FITS cutouts -> RGB pictures, which zoomorph.io.decode crops and resizes like a JPEG.

Band -> RGB mapping (docs/predict.md):
  * a 3-plane cube (3, H, W) holds three bands ordered blue to red, e.g. SDSS
    g, r, i: plane 2 -> red, plane 1 -> green, plane 0 -> blue, as in the gri
    composites Galaxy Zoo showed;
  * a single plane (H, W) is one band, shown as grey (the same plane in R, G, B).
The colours come from the Lupton et al. (2004) asinh stretch with its three
bands tied together, `astropy.visualization.make_lupton_rgb`. Each band's sky
(its median) is subtracted and the cube is divided by its 99.5th percentile,
so counts, nanomaggies or any other flux unit give the same picture; then
stretch = 0.05 and Q = 8: that level comes out at ~80% of white and the sky
noise as dark grey, close to the SDSS composites. Rows are flipped because
FITS stores the bottom row first. NaN pixels read as sky.
The first HDU with 2-D or 3-D image data is used (primary or extension).
"""

from __future__ import annotations

import gzip
import io

import numpy as np

from zoomorph.io.sources import ImageError

SCALE_PERCENTILE = 99.5  # this level of the sky-subtracted cube becomes 1 ...
LUPTON_STRETCH, LUPTON_Q = 0.05, 8  # ... and comes out at ~80% of white


def _image_data(data: bytes, name: str) -> np.ndarray:
    from astropy.io import fits  # imported on the first FITS file: it adds most of a second to every start

    if data[:2] == b"\x1f\x8b":  # astropy only sniffs gzip on real files, not on bytes
        data = gzip.decompress(data)
    try:
        with fits.open(io.BytesIO(data), memmap=False) as hdul:
            planes = next((h.data for h in hdul if h.is_image and h.data is not None and h.data.ndim in (2, 3)), None)
    except (OSError, ValueError, EOFError) as err:
        raise ImageError(f"{name}: not a readable FITS file ({err})") from err
    if planes is None:
        raise ImageError(f"{name}: FITS file has no 2-D or 3-D image data")
    if planes.ndim == 3 and planes.shape[0] != 3:
        raise ImageError(f"{name}: FITS cube has {planes.shape[0]} planes; expected 1 band or 3 (blue to red)")
    return np.asarray(planes, dtype=np.float32)


def to_rgb(planes: np.ndarray) -> np.ndarray:
    """(H, W) band or (3, H, W) blue-to-red bands -> (H, W, 3) uint8 by the Lupton asinh stretch."""
    from astropy.visualization import make_lupton_rgb  # as in _image_data: only once a FITS file comes

    bands = planes[::-1] if planes.ndim == 3 else np.stack([planes] * 3)  # red first, as make_lupton_rgb wants
    bands = bands - np.nanmedian(bands, axis=(1, 2), keepdims=True)
    bands = np.nan_to_num(bands, nan=0.0)  # masked pixels read as sky
    scale = float(np.percentile(bands, SCALE_PERCENTILE))
    with np.errstate(divide="ignore", invalid="ignore"):  # astropy divides 0 by 0 where a pixel is black
        rgb = make_lupton_rgb(*(bands / max(scale, 1e-12)), stretch=LUPTON_STRETCH, Q=LUPTON_Q)
    return np.ascontiguousarray(rgb[::-1])  # FITS rows run bottom to top


def fits_rgb(data: bytes, name: str) -> tuple[np.ndarray, str]:
    """A FITS file's bytes -> ((H, W, 3) uint8 picture, the note saying how its bands were mapped)."""
    planes = _image_data(data, name)
    if not np.isfinite(planes).any():
        raise ImageError(f"{name}: FITS image has no finite pixels")
    return to_rgb(planes), "FITS, 3 bands" if planes.ndim == 3 else "FITS, 1 band as grey"
