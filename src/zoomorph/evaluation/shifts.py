"""The survey shifts: a galaxy's image as another survey or cutout service would deliver it.

Each transform acts on a whole batch of full-resolution frames, float (B, 3, H, W) in [0, 1] (a Kaggle
frame is 424 px, the SDSS gri composite: R = i, G = r, B = g), before the run's decoder cuts it to the
model's size (zoomorph.evaluation.robustness runs them). Blur and noise are applied there, where the
physics acts, not to the 64 px the model sees. SHIFTS is the one table of them: the suite, the report,
compare and docs/evaluation.md list the same shifts and strengths.

Strengths are given in Kaggle frame pixels (424 px across). The seeing is SDSS's, FWHM 1.4 arcsec at its
0.396 arcsec/px: 3.5 px. The GZ2 cut-outs behind the Kaggle set were rescaled per galaxy by its size,
so 3.5 px is the seeing of a frame at SDSS's own pixel scale, and small galaxies (up-sampled) carry more.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from zoomorph.data.augment import gaussian_blur, grey, pixelate, sky_sigma, translate, zoom
from zoomorph.io.decode import KAGGLE_SIZE

SEEING_FWHM_ARCSEC = 1.4  # SDSS median r-band seeing
SDSS_PIXEL_ARCSEC = 0.396
SEEING_FWHM_PX = SEEING_FWHM_ARCSEC / SDSS_PIXEL_ARCSEC  # 3.5 px of a 424 px frame
FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))
LEVELS = ("weak", "middle", "strong")

Transform = Callable[[Tensor, float, "torch.Generator | None"], Tensor]


def _frame_px(x: Tensor, kaggle_px: float) -> float:
    """A length in Kaggle frame pixels, in the pixels of frames of this side (another size: the same field)."""
    return kaggle_px * x.shape[-1] / KAGGLE_SIZE


def _zoom(x: Tensor, factor: float, generator=None) -> Tensor:
    return zoom(x, factor)


def _blur(x: Tensor, fwhm: float, generator=None) -> Tensor:
    """A PSF of `fwhm` times the seeing: the Gaussian that adds to the seeing in quadrature to make it."""
    if fwhm <= 1:
        return x
    sigma = math.sqrt(fwhm**2 - 1) * _frame_px(x, SEEING_FWHM_PX) / FWHM_PER_SIGMA
    return gaussian_blur(x, sigma).clamp_(0, 1)


def _pixels(x: Tensor, factor: float, generator=None) -> Tensor:
    return pixelate(x, _frame_px(x, factor)).clamp(0, 1)


def _noise(x: Tensor, sigmas: float, generator=None) -> Tensor:
    """Gaussian sky noise of `sigmas` times each image's own sky sigma (per band), added in quadrature."""
    if sigmas <= 0:
        return x
    gauss = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    return (x + sigmas * sky_sigma(x) * gauss).clamp_(0, 1)


def _sky(x: Tensor, sigmas: float, generator=None) -> Tensor:
    """A sky left `sigmas` sky sigmas too bright (under-subtracted, or a lighter black point)."""
    return (x + sigmas * sky_sigma(x)).clamp_(0, 1) if sigmas else x


def _gain(x: Tensor, amount: float, generator=None) -> Tensor:
    """R (i band) gain 1 + amount, B (g band) 1 - amount: redder, as other filters or calibrations make it."""
    gains = torch.tensor([1 + amount, 1.0, 1 - amount], dtype=x.dtype, device=x.device)
    return (x * gains.view(1, 3, 1, 1)).clamp_(0, 1) if amount else x


def _grey(x: Tensor, amount: float, generator=None) -> Tensor:
    return grey(x, amount) if amount else x


def _jpeg(x: Tensor, quality: float, generator=None) -> Tensor:
    """Re-compressed as a JPEG of `quality` (100: left as it is). Pillow per image: a codec has no batch op."""
    if quality >= 100:
        return x
    pixels = (x * 255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for rgb in pixels:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=int(quality))
        out.append(np.asarray(Image.open(buffer).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255


def _off_centre(x: Tensor, distance: float, generator=None) -> Tensor:
    """Each galaxy moved `distance` of the frame's side from the centre, in a random direction per image."""
    if not distance:
        return x
    angle = torch.rand(x.shape[0], generator=generator, dtype=torch.float64) * 2 * math.pi
    offset = distance * torch.stack([angle.cos(), angle.sin()], dim=1)
    return translate(x, offset.to(torch.float32))


@dataclass(frozen=True)
class Shift:
    name: str  # the key in metrics.json
    title: str
    strengths: tuple[float, ...]  # weak, middle, strong
    template: str  # how a strength reads: template.format(strength)
    identity: float  # the strength that leaves an image as it is
    mimics: str
    transform: Transform

    def __call__(self, x: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
        """Float (B, 3, H, W) frames in [0, 1] at `strength` (x is left as it is); random shifts draw from
        `generator` (a CPU one)."""
        return self.transform(x, strength, generator)

    def label(self, strength: float) -> str:
        return self.template.format(strength)


SHIFTS = (
    Shift("zoom_out", "zoom out", (0.75, 0.5, 0.33), "{:g}x size", 1.0,
          "a more distant galaxy, or a cutout service with a wider field or larger pixels (sky fills the frame)",
          _zoom),
    Shift("zoom_in", "zoom in", (1.25, 1.5, 2.0), "{:g}x size", 1.0,
          "a nearer galaxy, or a tighter cutout (e.g. scaled to a catalogue radius smaller than GZ2's)", _zoom),
    Shift("blur", "PSF blur", (1.5, 2.0, 3.0), "FWHM {:g}x seeing", 1.0,
          "worse seeing (FWHM 2.1-4.2 arcsec against SDSS's 1.4): a poorer site or night, or a galaxy so far "
          "away that the PSF covers more of it", _blur),
    Shift("pixels", "lower resolution", (2.0, 4.0, 8.0), "{:g}x pixel size", 1.0,
          "a survey with larger pixels (0.8-3.2 arcsec against 0.396), or an image sent small and enlarged",
          _pixels),
    Shift("noise", "lower S/N", (1.0, 2.0, 4.0), "+{:g}σ sky noise", 0.0,
          "a shallower survey or shorter exposure: S/N 1.4, 2.2 and 4.1 times lower in the sky-limited regime",
          _noise),
    Shift("sky", "sky offset", (2.0, 5.0, 10.0), "+{:g}σ sky", 0.0,
          "imperfect sky subtraction, or a cutout service whose stretch sets a lighter black point", _sky),
    Shift("gain", "colour gain", (0.05, 0.1, 0.2), "R +{0:.0%}, B -{0:.0%}", 0.0,
          "other filters or a calibration off by up to 20 % per band (e.g. DECaLS grz against SDSS gri)", _gain),
    Shift("grey", "grey", (0.25, 0.5, 1.0), "{:.0%} grey", 0.0,
          "single-band imaging (Euclid VIS, one HST filter) or a desaturated composite", _grey),
    Shift("jpeg", "JPEG re-save", (50.0, 25.0, 10.0), "quality {:g}", 100.0,
          "a cutout service or web page re-compressing the image at low quality (blocks, lost colour)", _jpeg),
    Shift("off_centre", "off-centre", (0.05, 0.1, 0.2), "{:.0%} of the side", 0.0,
          "a catalogue position off the galaxy's centre (deblending, another survey's astrometry)", _off_centre),
)
SHIFT_NAMES = {s.name: s for s in SHIFTS}


def level(shift: Shift, strength: float) -> str:
    """"weak", "middle" or "strong": the strength's place in the shift's table."""
    return LEVELS[shift.strengths.index(strength)]
