"""Whether a cutout's bytes are a whole picture: what is kept on disk, and what a rerun does not fetch again.

A JPEG must decode in full and end with its end-of-image marker (a body cut
just before it still decodes); a FITS file must be whole 2,880-byte blocks
whose image data is all there (astropy only warns about a short file).
"""

from __future__ import annotations

import gzip
import io
import warnings
import zlib

from PIL import Image

JPEG_END = b"\xff\xd9"
FITS_BLOCK = 2880


def jpeg_problem(data: bytes) -> str | None:
    """None for a complete JPEG, else what is wrong with it."""
    if not data:
        return "empty body"
    if data[:2] != b"\xff\xd8":
        return f"not a JPEG (starts {data[:16]!r})"
    if not data.endswith(JPEG_END):
        return f"truncated JPEG ({len(data):,} bytes, no end marker)"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except (OSError, ValueError, SyntaxError) as err:
        return f"undecodable JPEG ({err})"
    return None


def fits_problem(data: bytes) -> str | None:
    """None for a complete FITS file with image data (gzipped or not), else what is wrong with it."""
    from astropy.io import fits  # imported on the first FITS cutout: it adds most of a second to a start

    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as err:
            return f"truncated gzip ({err})"
    if not data.startswith(b"SIMPLE  ="):
        return f"not a FITS file (starts {data[:16]!r})"
    if len(data) % FITS_BLOCK:
        return f"truncated FITS ({len(data):,} bytes, not whole {FITS_BLOCK}-byte blocks)"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*truncated")  # astropy's warning for missing data
            with fits.open(io.BytesIO(data), memmap=False) as hdul:
                if not any(h.is_image and h.data is not None for h in hdul):
                    return "FITS file without image data"
    except Warning as err:  # the data the header announces is not all there
        return f"truncated FITS ({err})"
    except (OSError, ValueError, TypeError, EOFError) as err:
        return f"unreadable FITS ({err})"
    return None


PROBLEMS = {"jpeg": jpeg_problem, "fits": fits_problem}
