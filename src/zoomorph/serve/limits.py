"""The limits a request meets, and what an uploaded file's bytes are.

Every limit is configurable (`zoomorph serve --help`) and every refusal is a `Refused`: an HTTP
status, a short code and a message that says what was wrong and what is allowed, answered as JSON.
An upload is judged by its bytes alone: the name and the declared content type a client sends are
only echoed back, never trusted, and never used as a path.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import asdict, dataclass

from PIL import Image, UnidentifiedImageError

from zoomorph.errors import ZoomorphError

MB = 2**20
NAME_CHARS = 200  # of a client's file name echoed back; the rest is cut


@dataclass(frozen=True)
class Limits:
    max_upload_mb: float = 32.0  # one request's body: refused by its Content-Length, or as it streams past
    max_images: int = 64  # images in one request
    max_pixels: int = 25_000_000  # width x height of one image, read from its header before decoding (bombs)
    max_mc_samples: int = 32  # MC dropout samples one request may ask for
    max_saliency: int = 16  # images of one request that may ask for a Grad-CAM overlay
    queue: int = 128  # requests in the server at once (reading, decoding, waiting, running); more get 503
    timeout_s: float = 30.0  # to send the body (else 408), and again to answer it (else 503)

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not value > 0:
                raise ZoomorphError(f"{name}={value}: it must be more than 0")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    def as_dict(self) -> dict:
        return asdict(self)


class Refused(Exception):
    """A request answered with `status` and a JSON error {error: code, message, details}; `headers` ride
    along (Retry-After on a 503)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 details: list[dict] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        self.details = details  # per image {name, error}, when none of a request's images could be read


def too_large(limits: Limits) -> Refused:
    return Refused(413, "upload_too_large", f"the request body is larger than the limit of "
                   f"{limits.max_upload_mb:g} MB (max_upload_mb): send fewer or smaller images per request")


def busy(limits: Limits, why: str) -> Refused:
    return Refused(503, "busy", f"{why}: retry in a second", {"Retry-After": "1"})


# What a file's first bytes say it is; anything else is refused before Pillow sees it.
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"II*\x00", "TIFF"),
               (b"MM\x00*", "TIFF"), (b"SIMPLE  =", "FITS"))
FORMATS = tuple(dict.fromkeys(name for _, name in _SIGNATURES))
# What a name's suffix claims. A name without one of these is judged by its bytes alone.
_SUFFIXES = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF",
             ".fits": "FITS", ".fit": "FITS", ".fts": "FITS"}


class BadImage(Exception):
    """One image that cannot be used (its entry in the answer says why; the others are still answered)."""


def sniff(data: bytes) -> str:
    """The format that `data` starts like: JPEG, PNG, TIFF or FITS; BadImage otherwise."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    raise BadImage(f"not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} image (judged by its bytes, not its name)")


def check_name(name: str, fmt: str) -> None:
    """Refuse an image whose name claims another format than its bytes (a PNG named .jpg): a client that
    mislabels one file may have sent the wrong one, and an answer should not name a file it did not read."""
    claimed = _SUFFIXES.get(os.path.splitext(name)[1].lower())
    if claimed and claimed != fmt:
        raise BadImage(f"its name says {claimed} but its bytes are a {fmt} image: rename it (or send the file "
                       "you meant)")


def check_pixels(data: bytes, fmt: str, limits: Limits) -> None:
    """Refuse an image whose header declares more than max_pixels (a decompression bomb) before it is
    decoded. FITS is not compressed here: its pixels are bounded by the upload size."""
    if fmt == "FITS":
        return
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadImage(f"corrupt or truncated {fmt} ({err})") from None
    except Image.DecompressionBombError as err:  # above Pillow's own limit, which is far above ours
        raise BadImage(f"{err} (a decompression bomb?)") from None
    if width * height > limits.max_pixels:
        raise BadImage(f"{width} x {height} pixels is more than the limit of {limits.max_pixels:,} "
                       "(max_pixels; a decompression bomb?)")


def clean_name(name: str | None, index: int) -> str:
    """A client's file name as echoed back: printable, at most NAME_CHARS; `image-<index>` when none."""
    text = re.sub(r"[\x00-\x1f\x7f]", "", name or "").strip()
    return text[:NAME_CHARS] or f"image-{index}"
