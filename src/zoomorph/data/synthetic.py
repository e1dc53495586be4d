"""A synthetic Galaxy Zoo set in the Kaggle layout, for the demo and the tests.

    OUT/images/<GalaxyID>.jpg   RGB JPEG (424x424 by default), SDSS-like gri composite
    OUT/solutions.csv           GalaxyID + the 37 cumulative vote fractions
    OUT/truth.csv               what was drawn: type and physical parameters

Four types are drawn (30% elliptical, 20% lenticular, 30% spiral, 20% edge-on),
each with random size, brightness, shape and orientation. The votes are
Dirichlet draws around shares that follow the drawn truth, question by
question, so they obey the decision tree and a Hubble preset recovers the type.

Images are rendered in linear flux at half the output resolution, blurred by
the PSF, given sky noise, asinh-stretched and upsampled: a picture costs a few
milliseconds, and the sky noise comes out correlated over ~3 px like that of
the (resampled) SDSS cutouts. docs/synthetic.md has the details. Never use
this set to report accuracy: it only shows that the pipeline runs and learns.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.ndimage import gaussian_filter

from zoomorph.errors import ZoomorphError
from zoomorph.schema import ANSWER_COLUMNS, ID_COLUMN, QUESTIONS, to_cumulative

TYPES = ("elliptical", "lenticular", "spiral", "edge-on")
TYPE_CYCLE = ["elliptical"] * 3 + ["lenticular"] * 2 + ["spiral"] * 3 + ["edge-on"] * 2
BULGE_SHAPES = ("rounded", "boxy", "none")  # the answers of Q9, in order
RENDER_FACTOR = 2  # render at 1/2 scale, then upsample
PARALLEL_MIN = 200  # below this, starting processes costs more than it saves
JPEG_QUALITY = 90



def _bands(*values: float) -> np.ndarray:
    """One value per band as a (3, 1, 1) column, to multiply (side, side) images into (3, side, side)."""
    return np.array(values, np.float32)[:, None, None]


# Linear flux per band, in (i, r, g) -> (R, G, B) order as in SDSS composites.
COLOUR_OLD = _bands(1.0, 0.72, 0.42)  # bulges and ellipticals: orange/yellow
COLOUR_DISK = _bands(1.0, 0.85, 0.62)  # smooth disks: yellow-white
COLOUR_YOUNG = _bands(0.62, 0.82, 1.0)  # arms and star-forming knots: blue-white
STAR_HOT, STAR_COOL = np.array([0.8, 0.9, 1.0], np.float32), np.array([1.0, 0.62, 0.32], np.float32)
DUST_DEPTH = _bands(0.75, 0.85, 0.95)  # dust dims blue more than red
SKY_SIGMA = _bands(0.035, 0.035, 0.04)
SKY_LEVEL = _bands(0.010, 0.010, 0.002)  # real skies sit a few counts above black
POISSON_GAIN = 4e-4  # extra variance per unit of flux
STRETCH_Q, STRETCH_MAX = 8.0, 10.0  # Lupton et al. (2004) asinh stretch; STRETCH_MAX saturates


# ------------------------------------------------------------------ truth

def draw_truth(n: int, seed: int = 0) -> pd.DataFrame:
    """One row per galaxy: ID, type and the physical parameters the renderer uses.

    Lengths are fractions of the frame so that the same truth renders at any size.
    """
    rng = np.random.default_rng([seed, 0])
    kind = rng.permutation(np.resize(TYPE_CYCLE, n))  # balanced for any n, not just on average
    ell, len_, spi, edge = (kind == t for t in TYPES)

    def uniform(lo, hi):
        return rng.uniform(lo, hi, n)

    bulge_shape = np.where(edge, rng.choice(BULGE_SHAPES, n, p=[0.5, 0.25, 0.25]), "")
    return pd.DataFrame({
        ID_COLUMN: np.sort(rng.choice(900_000, n, replace=False)) + 100_000,
        "type": kind,
        "axis_ratio": np.select([ell, edge], [uniform(0.3, 1.0), uniform(0.08, 0.22)], uniform(0.5, 1.0)),
        "position_angle": uniform(0, 180),  # degrees
        "span": np.exp(uniform(np.log(0.15), np.log(0.45))) * np.select([ell, spi | edge], [0.85, 1.15], 1.0),
        "brightness": np.exp(uniform(np.log(0.35), np.log(2.0))),
        "bulge_fraction": np.select(
            [ell, len_, spi, edge & (bulge_shape != "none")],
            [np.ones(n), uniform(0.25, 0.6), uniform(0.03, 0.4), uniform(0.1, 0.4)], 0.0),
        "bulge_shape": bulge_shape,
        "bar": (len_ & (uniform(0, 1) < 0.25)) | (spi & (uniform(0, 1) < 0.3)),
        "arms": np.where(spi, rng.choice([2, 3, 4], n, p=[0.5, 0.25, 0.25]), 0),
        "pitch_deg": np.where(spi, uniform(8, 35), np.nan),
        "dust_lane": edge & (uniform(0, 1) < 0.5),
        "centre_x": 0.5 + np.clip(rng.normal(0, 0.01, n), -0.03, 0.03),
        "centre_y": 0.5 + np.clip(rng.normal(0, 0.01, n), -0.03, 0.03),
        "psf_sigma": uniform(1.2, 2.2),  # pixels of a 424 px frame
        "sky_noise": np.exp(uniform(np.log(0.7), np.log(1.6))),  # relative to SKY_SIGMA
    })


# ------------------------------------------------------------------ votes

def _soft_bins(x: np.ndarray, edges: list[float], width: float) -> np.ndarray:
    """(n,) -> (n, len(edges) + 1): membership of ascending bins with logistic edges."""
    cdf = 1 / (1 + np.exp(-(x[:, None] - np.asarray(edges)) / width))
    ones, zeros = np.ones((len(x), 1)), np.zeros((len(x), 1))
    return np.hstack([ones, cdf]) - np.hstack([cdf, zeros])


def _choose(mask: np.ndarray, yes: list[float], no: list[float]) -> np.ndarray:
    return np.where(mask[:, None], np.asarray(yes, float), np.asarray(no, float))


def _one_hot(index: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k)[index]


def expected_shares(truth: pd.DataFrame) -> dict[int, np.ndarray]:
    """Question number -> (n, answers) mean conditional shares implied by the truth.

    Every question gets shares, reached or not: the tree makes the unreached
    ones vanish in the cumulative fractions.
    """
    kind = truth["type"].to_numpy()
    ell, spi, edge = kind == "elliptical", kind == "spiral", kind == "edge-on"
    q = truth["axis_ratio"].to_numpy()
    lane = truth["dust_lane"].to_numpy(bool)
    edge_on_share = 0.05 + 0.9 / (1 + np.exp((q - 0.35) / 0.05))  # thin-looking disks read as edge-on
    shape = pd.Categorical(truth["bulge_shape"].where(edge, "rounded"), categories=BULGE_SHAPES).codes
    arms = truth["arms"].to_numpy()
    pitch = truth["pitch_deg"].fillna(20).to_numpy()
    return {
        1: _choose(ell, [0.94, 0.05, 0.01], [0.07, 0.92, 0.01]),
        2: np.column_stack([edge_on_share, 1 - edge_on_share]),
        3: _choose(truth["bar"].to_numpy(bool), [0.8, 0.2], [0.08, 0.92]),
        4: _choose(spi, [0.9, 0.1], [0.08, 0.92]),
        5: _soft_bins(truth["bulge_fraction"].to_numpy(), [0.05, 0.18, 0.4], 0.03),
        6: _choose(lane, [0.35, 0.65], [0.06, 0.94]),
        7: _soft_bins(q, [0.5, 0.8], 0.04)[:, ::-1],  # completely round first
        8: _choose(lane, [0.05, 0.05, 0.05, 0.05, 0.1, 0.0, 0.7], [0.15, 0.1, 0.15, 0.1, 0.4, 0.1, 0.0]),
        9: np.where(edge[:, None], 0.75 * _one_hot(shape, 3) + 0.25 / 3, [0.6, 0.2, 0.2]),
        10: np.where(spi[:, None], _soft_bins(pitch, [15, 25], 2.5), 1 / 3),
        # Q11: the arm count, and some "can't tell" (the 6th answer).
        11: np.where(spi[:, None], 0.75 * _one_hot(arms - 1, 6) + 0.1 * np.eye(6)[5] + 0.025,
                     [0.05, 0.1, 0.05, 0.05, 0.05, 0.7]),
    }


def vote_fractions(truth: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The 37 cumulative Kaggle fractions, indexed by GalaxyID.

    Each question's shares are a Dirichlet draw around the expected shares;
    its concentration is the number of volunteers (25..60 per galaxy, around
    the median of 44 in Galaxy Zoo 2), so the spread is what that many votes give.
    """
    rng = np.random.default_rng([seed, 1])
    voters = rng.uniform(25, 60, (len(truth), 1))
    conditional = {}
    for question, mean in expected_shares(truth).items():
        mean = 0.95 * mean + 0.05 / mean.shape[1]  # someone always disagrees: no zero shares
        draw = rng.gamma(voters * mean)
        conditional.update(zip(QUESTIONS[question - 1].columns, (draw / draw.sum(1, keepdims=True)).T))
    index = pd.Index(truth[ID_COLUMN].to_numpy(), name=ID_COLUMN)
    return to_cumulative(pd.DataFrame(conditional, index=index)[ANSWER_COLUMNS])


# ------------------------------------------------------------------ rendering

def _sersic4(r2: np.ndarray, r_eff: float) -> np.ndarray:
    """de Vaucouleurs (Sersic n=4) profile from the squared radius: (r/re)^(1/4) by three square roots."""
    return np.exp(-7.669 * np.sqrt(np.sqrt(np.sqrt(r2 / r_eff**2))))


def _unit(image: np.ndarray) -> np.ndarray:
    return image / image.sum()


def _galaxy_light(galaxy: dict, side: int, rng: np.random.Generator) -> np.ndarray:
    """Linear flux per band, (3, side, side), before the PSF, in pixels of the rendering grid."""
    y, x = np.ogrid[:side, :side]
    dx = (x + 0.5 - galaxy["centre_x"] * side).astype(np.float32)
    dy = (y + 0.5 - galaxy["centre_y"] * side).astype(np.float32)
    # Scalars stay Python floats (math, not np): a NumPy float64 would promote the float32 arrays.
    angle = math.radians(galaxy["position_angle"])
    u = dx * math.cos(angle) + dy * math.sin(angle)  # along the major axis
    v = dy * math.cos(angle) - dx * math.sin(angle)
    q, kind = galaxy["axis_ratio"], galaxy["type"]
    radius = galaxy["span"] * side / 2
    flux = galaxy["brightness"] * 2.0 * radius**2 * math.sqrt(q)  # puts the visible edge near `radius`
    light = np.zeros((3, side, side), np.float32)

    if galaxy["bulge_fraction"] > 0:
        bulge_q = q if kind == "elliptical" else max(q, rng.uniform(0.6, 0.9))
        r_eff = radius / (2.5 if kind == "elliptical" else 8.0)
        soft = 0.25  # px^2: keeps the cusp of the n=4 profile finite on the grid
        if galaxy["bulge_shape"] == "boxy":
            r2 = np.sqrt(u**4 + (v / bulge_q) ** 4) + soft  # superellipse isophotes
        else:
            r2 = u**2 + (v / bulge_q) ** 2 + soft
        light += _unit(_sersic4(r2, r_eff)) * (flux * galaxy["bulge_fraction"] * COLOUR_OLD)

    disk_flux = flux * (1 - galaxy["bulge_fraction"])
    if disk_flux > 0:
        scale = radius / 4  # exponential scale length
        w = v / q  # the disk plane, deprojected
        r = np.sqrt(u**2 + w**2) + 0.1
        disk = _unit(np.exp(-r / scale))
        arm_start = scale * rng.uniform(0.4, 0.9)
        if galaxy["bar"]:
            bar_angle, arm_start = rng.uniform(0, math.pi), scale * rng.uniform(1.0, 1.8)
            ub = u * math.cos(bar_angle) + w * math.sin(bar_angle)
            vb = w * math.cos(bar_angle) - u * math.sin(bar_angle)
            bar = np.exp(-((ub / arm_start) ** 2) ** 2 - (vb / (0.3 * arm_start)) ** 2)
            disk = 0.8 * disk + 0.2 * _unit(bar)
        young = 0.0
        if galaxy["arms"]:
            young = rng.uniform(0.25, 0.6)
            arms = _log_spiral(u, w, r, galaxy["arms"], galaxy["pitch_deg"], arm_start, scale, rng)
            light += arms * (disk_flux * young * COLOUR_YOUNG)
        old_disk = COLOUR_OLD if kind == "lenticular" else COLOUR_DISK  # S0s are as red as ellipticals
        light += disk * (disk_flux * (1 - young) * old_disk)

    if galaxy["dust_lane"]:
        # A disk a few degrees from edge-on shows its lane just off the midplane.
        width = 0.25 * q * radius
        lane = np.exp(-(((v - width) / width) ** 2) - (u / radius) ** 2)
        light *= 1 - lane * (DUST_DEPTH * rng.uniform(0.7, 1.0))
    return light


def _log_spiral(u, w, r, arms: int, pitch_deg: float, start: float, scale: float,
                rng: np.random.Generator) -> np.ndarray:
    """Unit-flux logarithmic arms from radius `start` outwards, with star-forming knots along them."""
    winding = np.log(r / start) / math.tan(math.radians(pitch_deg))
    phase = arms * (np.arctan2(w, u) - winding) - rng.uniform(0, 2 * math.pi)
    pattern = ((1 + np.cos(phase)) / 2) ** 2
    smooth = _unit(pattern * np.exp(-r / (1.3 * scale)) * (1 - np.exp(-((r / start) ** 2))))
    n_knots = rng.integers(10, 40)
    p = smooth.ravel().astype(float)
    knots = np.zeros(smooth.size, np.float32)
    np.add.at(knots, rng.choice(smooth.size, n_knots, p=p / p.sum()), rng.exponential(1.0, n_knots))
    return 0.85 * smooth + 0.15 * _unit(knots.reshape(smooth.shape))


def _field_stars(side: int, rng: np.random.Generator) -> np.ndarray:
    """Point sources, (3, side, side), hot to cool, spanning six magnitudes; the PSF makes them stars."""
    n = rng.poisson(5)
    tint = rng.uniform(0, 1, (n, 1)) ** 2
    brightness = np.exp(rng.uniform(math.log(0.3), math.log(200), (n, 1)))
    flux = brightness * ((1 - tint) * STAR_HOT + tint * STAR_COOL)
    stars = np.zeros((side * side, 3), np.float32)
    np.add.at(stars, rng.integers(0, side * side, n), flux)
    return stars.T.reshape(3, side, side)


def render(galaxy: dict, size: int = 424, seed: int = 0) -> np.ndarray:
    """One galaxy (a row of `draw_truth`) on a noisy sky with field stars: (size, size, 3) uint8."""
    rng = np.random.default_rng([seed, int(galaxy[ID_COLUMN]), 2])
    side = -(-size // RENDER_FACTOR)
    light = _galaxy_light(galaxy, side, rng) + _field_stars(side, rng)
    # The noise goes in before the blur: resampling the SDSS cutouts correlated
    # the real sky noise over ~2 px, and the PSF blur imitates that for free.
    noise = rng.standard_normal(light.shape, dtype=np.float32)
    variance = (galaxy["sky_noise"] * SKY_SIGMA) ** 2 + POISSON_GAIN * np.maximum(light, 0)
    light += SKY_LEVEL + noise * np.sqrt(variance)
    psf = galaxy["psf_sigma"] * size / 424 / RENDER_FACTOR
    light = gaussian_filter(light, (0, psf, psf), truncate=3.0)
    small = Image.fromarray(_stretch(light).transpose(1, 2, 0))
    return np.asarray(small.resize((size, size), Image.Resampling.BILINEAR))


def _stretch(light: np.ndarray) -> np.ndarray:
    """Lupton asinh stretch on the mean band, (3, H, W) -> uint8: faint disks and bright cores both show."""
    mean = np.maximum((light[0] + light[1] + light[2]) / 3, 1e-6)
    rgb = np.maximum(light, 0) * (np.arcsinh(STRETCH_Q * mean) / (STRETCH_Q * mean))
    rgb *= 255 / (math.asinh(STRETCH_Q * STRETCH_MAX) / STRETCH_Q)
    rgb /= np.maximum(np.maximum(np.maximum(rgb[0], rgb[1]), rgb[2]) / 255, 1)  # saturate with the hue kept
    return rgb.astype(np.uint8)


def _write_image(job: tuple[dict, int, int, Path]) -> None:
    galaxy, size, seed, path = job
    Image.fromarray(render(galaxy, size, seed)).save(path, "JPEG", quality=JPEG_QUALITY)


# ------------------------------------------------------------------ the set

def make_synthetic(out_dir: Path, n: int, seed: int = 0, size: int = 424, workers: int | None = None) -> Path:
    """Write `n` synthetic galaxies in the Kaggle layout under `out_dir`; returns solutions.csv.

    The same seed gives the same files byte for byte, whatever `workers` is.
    Writing the same set again overwrites it; images of another set in
    `out_dir/images` are refused, as they would have no label row.
    """
    if n < 1:
        raise ZoomorphError(f"n must be at least 1, got {n}")
    out_dir = Path(out_dir)
    images = out_dir / "images"
    truth = draw_truth(n, seed)
    paths = [images / f"{gid}.jpg" for gid in truth[ID_COLUMN]]
    strangers = set(images.glob("*.jpg")) - set(paths) if images.is_dir() else set()
    if strangers:
        raise FileExistsError(
            f"{images} holds {len(strangers)} images of another set; choose an empty folder")
    images.mkdir(parents=True, exist_ok=True)
    jobs = [(galaxy, size, seed, path) for galaxy, path in zip(truth.to_dict("records"), paths)]
    workers = workers or os.cpu_count() or 1
    if workers > 1 and n >= PARALLEL_MIN:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_image, jobs, chunksize=16))
    else:
        for job in jobs:
            _write_image(job)
    truth.to_csv(out_dir / "truth.csv", index=False)
    solutions = out_dir / "solutions.csv"
    vote_fractions(truth, seed).to_csv(solutions, float_format="%.6f")
    return solutions
