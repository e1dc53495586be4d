"""Batched augmentation: whole-batch tensor ops on (B, C, H, W) images, on any device.

Float images are expected in [0, 1]; uint8 images (0-255) work too. Random
transforms take an optional torch.Generator, so a seeded one reproduces them.
Geometric transforms need square images (the Galaxy Zoo cut-outs are).
The survey transforms (blur, pixelate, sky sigma) also serve the survey-shift
suite (zoomorph.evaluation.shifts), on full-resolution frames.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoomorph.errors import ZoomorphError

SEED_TRANSFORMS = (0, 1, 3, 4, 6)  # the seed project's: identity, rotate 90, rotate 270, left-right, up-down flip
KAGGLE_ZOOM_RANGE = (1 / 1.3, 1.3)  # Dieleman et al. 2015
SCALE_ZOOM_RANGE = (0.5, 1.5)  # wide enough for other surveys' angular scales


def _require_square(x: Tensor) -> None:
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"geometric augmentation needs square images, got {tuple(x.shape[-2:])}")


def _float_op(op: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Let a float-only op take uint8 images too (converted to [0, 1] and back)."""

    @functools.wraps(op)
    def wrapper(x: Tensor, *args, **kwargs) -> Tensor:
        if x.dtype != torch.uint8:
            return op(x, *args, **kwargs)
        out = op(x.float() / 255, *args, **kwargs)
        return (out * 255).round_().clamp_(0, 255).to(torch.uint8)

    return wrapper


def _draw_on(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Random numbers are drawn where the generator lives (a CPU one may serve GPU images), then moved."""
    return generator.device if generator is not None else device


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    draws = torch.rand(n, generator=generator, device=_draw_on(generator, device))
    return (draws * (high - low) + low).to(device)


def _randint(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.randint(high, (n,), generator=generator, device=_draw_on(generator, device)).to(device)


# --- the 8 symmetries of the square ----------------------------------------------------------------

def dihedral(x: Tensor, k: int) -> Tensor:
    """The k-th symmetry of the square, k in 0..7: k % 4 quarter turns (as torch.rot90),
    after a left-right flip when k >= 4. dihedral(x, 6) is the up-down flip."""
    if not 0 <= k < 8:
        raise ValueError(f"dihedral index must be in 0..7, got {k}")
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def inverse_dihedral(k: int) -> int:
    """The index that undoes dihedral(., k)."""
    return (4 - k) % 4 if k < 4 else k  # a flip followed by turns is a reflection: its own inverse


def dihedral_per_image(x: Tensor, ks: Tensor) -> Tensor:
    """Image i transformed by dihedral(., ks[i]): one pass per distinct k, not per image."""
    _require_square(x)
    out = torch.empty_like(x)
    for k in ks.unique().tolist():
        chosen = ks == k
        out[chosen] = dihedral(x[chosen], k)
    return out


def seed_augment(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The seed project's augmentation: per image, one of identity, rotate 90, rotate 270,
    left-right flip, up-down flip, uniformly."""
    choice = _randint(len(SEED_TRANSFORMS), x.shape[0], generator, x.device)
    return dihedral_per_image(x, torch.tensor(SEED_TRANSFORMS, device=x.device)[choice])


# --- affine resampling with a sky fill -------------------------------------------------------------

def sky_level(x: Tensor) -> Tensor:
    """Per image and channel, the median of the 1-pixel border ring: (B, C, 1, 1).

    What fills pixels that a zoom-out or shift brings in from beyond the frame:
    reflecting the image instead would duplicate the galaxy.
    """
    ring = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)
    return ring.median(dim=-1).values[..., None, None]


def _warp(x: Tensor, theta: Tensor) -> Tensor:
    """Resample through affine maps theta (B, 2, 3), output -> input in normalised coordinates."""
    sky = sky_level(x)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    # Sampling x - sky with zero padding and adding sky back fills the outside with sky,
    # blending smoothly across the frame's edge.
    return F.grid_sample(x - sky, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + sky


@_float_op
def zoom(x: Tensor, factor: float) -> Tensor:
    """Deterministic zoom about the centre: factor 0.5 makes the galaxy half as large
    (the frame filled with sky), 1.5 makes it 1.5 times larger (the edges cropped)."""
    if factor <= 0:
        raise ZoomorphError(f"zoom factor must be positive, got {factor}")
    theta = torch.tensor([[1 / factor, 0.0, 0.0], [0.0, 1 / factor, 0.0]], device=x.device)
    return _warp(x, theta.expand(x.shape[0], 2, 3))


@_float_op
def translate(x: Tensor, offset: Tensor) -> Tensor:
    """Move image i by offset[i] = (dx, dy), in fractions of the side (+x: right, +y: down); sky fills."""
    _require_square(x)
    n = x.shape[0]
    eye = torch.eye(2, device=x.device, dtype=offset.dtype).expand(n, 2, 2)
    # output -> input: sampling at (u - 2d) shows the input moved by d (the normalised side is 2)
    return _warp(x, torch.cat([eye, -2 * offset.to(x.device)[..., None]], dim=2))


@_float_op
def kaggle_augment(x: Tensor, generator: torch.Generator | None = None, *, rotation: float = 180.0,
                   shift: float = 4 / 64, zoom_range: tuple[float, float] = KAGGLE_ZOOM_RANGE,
                   flip: bool = True, colour: float = 0.05) -> Tensor:
    """The Kaggle winner's augmentation, one affine resampling per batch.

    Per image: rotation uniform in +-`rotation` degrees, shift uniform in +-`shift`
    of the side (in x and y), zoom log-uniform in `zoom_range` (>1 enlarges),
    a left-right flip with probability 1/2 when `flip`, then each channel's
    brightness scaled by exp(N(0, colour)) (a small colour perturbation).
    """
    _require_square(x)
    n, channels, device = x.shape[0], x.shape[1], x.device
    angle = torch.deg2rad(_uniform(n, -rotation, rotation, generator, device))
    scale = torch.exp(_uniform(n, math.log(zoom_range[0]), math.log(zoom_range[1]), generator, device))
    mirror = 1 - 2 * (_uniform(n, 0, 1, generator, device) < 0.5).float() if flip else torch.ones(n, device=device)
    offset = _uniform(2 * n, -2 * shift, 2 * shift, generator, device).view(2, n)  # normalised side = 2
    cos, sin = angle.cos() / scale, angle.sin() / scale
    # output -> input: rotate and scale after an optional mirror in x, then shift
    theta = torch.stack([cos * mirror, -sin, offset[0], sin * mirror, cos, offset[1]], dim=1).view(n, 2, 3)
    out = _warp(x, theta)
    if colour > 0:
        noise = torch.randn(n, channels, generator=generator, device=_draw_on(generator, device)).to(device)
        gains = torch.exp(colour * noise)
        out = (out * gains[..., None, None].to(out.dtype)).clamp_(0, 1)
    return out


def scale_augment(x: Tensor, generator: torch.Generator | None = None, **options) -> Tensor:
    """kaggle_augment with zoom 0.5-1.5: for robustness to other surveys' angular scales."""
    return kaggle_augment(x, generator, **{"zoom_range": SCALE_ZOOM_RANGE, **options})


# --- survey shifts: PSF, pixel size, depth, sky, colour ----------------------------------------------

def sky_sigma(x: Tensor, width: int | None = None) -> Tensor:
    """Per image and channel, the sky noise of the border ring (`width` px, default side/32): (B, C, 1, 1).

    The std of the ring pixels within 3 robust sigmas (1.4826 MAD) of their median, so neighbours
    and stars crossing the border do not count; 0 for a flat sky."""
    width = width or max(1, x.shape[-1] // 32)
    ring = torch.cat([x[..., :width, :].flatten(-2), x[..., -width:, :].flatten(-2),
                      x[..., width:-width, :width].flatten(-2), x[..., width:-width, -width:].flatten(-2)], dim=-1)
    ring = ring.float()
    median = ring.median(dim=-1, keepdim=True).values
    mad = (ring - median).abs().median(dim=-1, keepdim=True).values * 1.4826
    # a quantised sky can have MAD 0 with some noise: keep at least one grey level either side
    keep = (ring - median).abs() <= 3 * mad.clamp_min(1 / 255)
    count = keep.sum(-1, keepdim=True).clamp_min(2)
    mean = (ring * keep).sum(-1, keepdim=True) / count
    var = (((ring - mean) * keep) ** 2).sum(-1, keepdim=True) / (count - 1)
    return var.sqrt()[..., None].to(x.dtype if x.is_floating_point() else torch.float32)


def gaussian_blur(x: Tensor, sigma: Tensor | float) -> Tensor:
    """Each image convolved with a Gaussian of sigma[i] pixels (0: unchanged), separably, edges replicated.

    One grouped convolution for the whole batch: every image and channel gets its own kernel."""
    n, c, h, w = x.shape
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(n).clamp_min(1e-3)
    radius = max(1, math.ceil(3 * float(sigma.max())))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0).to(x.dtype)  # (n*c, taps)
    flat = F.pad(x.reshape(1, n * c, h, w), (radius,) * 4, mode="replicate")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)  # along x
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)  # along y
    return flat.reshape(n, c, h, w)


def pixelate(x: Tensor, factor: float) -> Tensor:
    """Pixels `factor` times larger: averaged down to side/factor (antialiased) and interpolated back up,
    as a survey with coarser pixels would deliver the image once resized to this frame."""
    if factor <= 1:
        return x
    side = x.shape[-1]
    small = F.interpolate(x, size=max(1, round(side / factor)), mode="bilinear", antialias=True,
                          align_corners=False)
    return F.interpolate(small, size=(x.shape[-2], side), mode="bilinear", align_corners=False)


def grey(x: Tensor, amount: float | Tensor = 1.0) -> Tensor:
    """Colour taken away: each band moved `amount` of the way to the mean of the bands (1: grey)."""
    amount = torch.as_tensor(amount, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    return torch.lerp(x, x.mean(dim=1, keepdim=True).expand_as(x), amount)


SURVEY_ZOOM_RANGE = (1 / 3, 2.0)  # the survey-shift suite's zoom-out and zoom-in extremes
SURVEY_RESOLUTIONS = (1.0, 1.0, 1.5, 2.0, 3.0)  # pixel-size factors drawn from (1 twice: half the images keep theirs)


@_float_op
def survey_augment(x: Tensor, generator: torch.Generator | None = None, *, rotation: float = 180.0,
                   flip: bool = True, zoom_range=SURVEY_ZOOM_RANGE, shift: float = 0.2, colour: float = 0.1,
                   blur: float = 1.2, blur_share: float = 0.5,
                   resolutions: tuple[float, ...] = SURVEY_RESOLUTIONS, noise: float = 4.0, sky: float = 5.0,
                   grey_share: float = 0.1) -> Tensor:
    """Images as other surveys and cutout services deliver them, for training (the "survey" recipe).

    kaggle_augment's rotation and flip with a wider zoom (log-uniform in `zoom_range`), shift (uniform
    in +-`shift` of the side per axis: off-centre galaxies) and per-band gains exp(N(0, `colour`))
    (+-20 % at 2 sigma), then per image: with probability `blur_share` a Gaussian PSF of sigma uniform
    in 0-`blur` px; larger pixels, a factor drawn from `resolutions`; sky noise of sigma uniform in
    0-`noise` times the image's own sky sigma (`sky_sigma`, at least one grey level); a sky offset
    uniform in 0-`sky` sky sigmas; grey with probability `grey_share`.

    Strengths are in the pixels of the images given: the cache's 64 px of the central 256 Kaggle px,
    4 Kaggle px per pixel, so blur 1.2 px is a Gaussian of 4.8 Kaggle px (FWHM ~3.2x the 3.5 px SDSS
    seeing in quadrature), pixel factor 3 is 12 Kaggle px, covering the suite's strongest shifts.
    """
    n, device = x.shape[0], x.device
    sigma = sky_sigma(x).clamp_min(1 / 255)  # before the zoom: a zoomed-out frame's border is flat fill
    out = kaggle_augment(x, generator, rotation=rotation, shift=shift, zoom_range=zoom_range, flip=flip,
                         colour=colour)
    blurred = _uniform(n, 0, 1, generator, device) < blur_share
    out = gaussian_blur(out, _uniform(n, 0, blur, generator, device) * blurred)
    factors = torch.tensor(resolutions, device=device)[_randint(len(resolutions), n, generator, device)]
    for factor in factors.unique().tolist():  # one pass per distinct factor, not per image
        chosen = factors == factor
        out[chosen] = pixelate(out[chosen], factor)
    gauss = torch.randn(out.shape, generator=generator, device=_draw_on(generator, device)).to(device)
    out = out + sigma * (_uniform(n, 0, noise, generator, device).view(n, 1, 1, 1) * gauss
                         + _uniform(n, 0, sky, generator, device).view(n, 1, 1, 1))
    out = grey(out, (_uniform(n, 0, 1, generator, device) < grey_share).to(out.dtype))
    return out.clamp_(0, 1)


SURVEY_LITE_RESOLUTIONS = (1.0, 1.0, 1.0, 1.5, 2.0)


def survey_lite_augment(x: Tensor, generator: torch.Generator | None = None, **options) -> Tensor:
    """`scale`'s geometry (zoom 0.5-1.5, shift 4/64) with light doses of the survey shifts (the
    "survey-lite" recipe): `survey`'s wide zoom and 20 % shifts cost in domain, and a run with `--fov
    auto` needs little of them, as its crop follows the galaxy. Blur up to 0.8 px (FWHM up to ~2.3x the
    seeing at 4 Kaggle px a pixel, the suite's middle strength) for half the images, pixels up to 2x,
    sky noise up to 2 sigma, a sky offset up to 2 sigma, per-band gains exp(N(0, 0.07)), grey for one in five."""
    return survey_augment(x, generator, **{
        "zoom_range": SCALE_ZOOM_RANGE, "shift": 4 / 64, "colour": 0.07, "blur": 0.8, "blur_share": 0.5,
        "resolutions": SURVEY_LITE_RESOLUTIONS, "noise": 2.0, "sky": 2.0, "grey_share": 0.2, **options})


# --- by name ---------------------------------------------------------------------------------------

AUGMENTS: dict[str, Callable[..., Tensor] | None] = {
    "none": None, "seed": seed_augment, "kaggle": kaggle_augment, "scale": scale_augment,
    "survey": survey_augment, "survey-lite": survey_lite_augment,
}


class Augment(nn.Module):
    """A named augmentation as a module: `Augment("kaggle", zoom_range=(0.8, 1.2))(images)`."""

    def __init__(self, name: str, generator: torch.Generator | None = None, **options):
        super().__init__()
        if name not in AUGMENTS:
            raise ZoomorphError(f"unknown augmentation {name!r}; known: {', '.join(AUGMENTS)}")
        if AUGMENTS[name] is None and options:
            raise ZoomorphError(f"augmentation {name!r} takes no options, got {sorted(options)}")
        self.name, self.generator, self.options = name, generator, options

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """`generator` (e.g. seeded per training step) overrides the one given at construction."""
        transform = AUGMENTS[self.name]
        return x if transform is None else transform(x, generator or self.generator, **self.options)

    def extra_repr(self) -> str:
        return ", ".join([repr(self.name)] + [f"{k}={v!r}" for k, v in self.options.items()])


def build_augment(name: str | None, **options) -> Augment:
    """"none" (or None), "seed", "kaggle", "scale", "survey" or "survey-lite" (AUGMENTS); options go to the
    transform (and `generator`)."""
    return Augment(name or "none", **options)
