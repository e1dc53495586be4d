"""FITS cutouts: band -> RGB mapping, row order, prediction on .fits/.fits.gz files, and preparing them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from predict_toys import CLASSES, make_run, toy_model

from conftest import random_solutions
from zoomorph import runs
from zoomorph.data.prepare import prepare
from zoomorph.io.decode import load
from zoomorph.io.fits import to_rgb
from zoomorph.predict import predict


def galaxy(side: int = 48, seed: int = 0) -> np.ndarray:
    """A blob on sky noise, in flux units far from 0-255 (counts of ~1e4)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    return 1e4 * np.exp(-((xx - side / 2) ** 2 + (yy - side / 2) ** 2) / 40) + rng.normal(300, 20, (side, side))


def test_blue_to_red_planes_map_to_b_g_r():
    flux = galaxy()
    sky = np.full_like(flux, 300)
    red_only = to_rgb(np.stack([sky, sky, flux]))  # planes g, r, i: only i (the reddest) is bright
    centre = red_only[20:28, 20:28].astype(int)
    assert (centre[..., 0] > 100).all() and (centre[..., 0] > 3 * centre[..., 2] + 10).all()
    grey = to_rgb(flux)
    assert grey.dtype == np.uint8 and grey.shape == (48, 48, 3)
    np.testing.assert_array_equal(grey[..., 0], grey[..., 1])
    np.testing.assert_array_equal(grey[..., 1], grey[..., 2])
    assert grey[24, 24, 0] > 200 > 60 > grey[2, 2, 0]  # asinh stretch: bright core, dark sky


def test_rows_flipped_so_the_first_fits_row_is_the_bottom():
    plane = np.zeros((32, 32))
    plane[:4] = 1.0  # FITS row 0 is the bottom of the picture
    rgb = to_rgb(plane + np.random.default_rng(0).normal(0, 1e-3, plane.shape))
    assert rgb[-4:].mean() > 100 > 10 > rgb[:4].mean()


def test_nan_pixels_and_bad_cubes(tmp_path):
    plane = galaxy()
    plane[:5, :5] = np.nan
    fits.PrimaryHDU(plane).writeto(tmp_path / "masked.fits")
    assert load(str(tmp_path / "masked.fits"), 16, 424).pixels.shape == (16, 16, 3)
    fits.PrimaryHDU(np.stack([galaxy()] * 5)).writeto(tmp_path / "five.fits")
    with pytest.raises(ValueError, match="5 planes"):
        load(str(tmp_path / "five.fits"), 16, 424)


def test_predict_on_fits_cutouts(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "build_model", toy_model)
    cutouts = tmp_path / "cutouts"
    cutouts.mkdir()
    fits.PrimaryHDU(np.stack([galaxy(seed=s) for s in range(3)]).astype(np.float32)).writeto(cutouts / "587722.fits")
    hdus = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(galaxy(seed=4))])  # image in an extension
    hdus.writeto(cutouts / "587723.fits.gz")
    (cutouts / "587724.fits").write_bytes(b"SIMPLE  = nonsense")

    out = pd.read_parquet(predict(make_run(tmp_path), [cutouts], tmp_path / "out.parquet", workers=0,
                                  progress=False).out)
    assert out["id"].tolist() == [587722, 587723, 587724]
    assert out["error"][:2].tolist() == ["", ""] and "FITS" in out["error"][2]
    np.testing.assert_allclose(out[[f"p_{c}" for c in CLASSES]][:2].sum(axis=1), 1, atol=1e-5)


def test_prepare_caches_fits_cutouts_as_predict_decodes_them(tmp_path):
    cutouts = tmp_path / "cutouts"
    cutouts.mkdir()
    ids = list(range(587700, 587712))
    for i, gid in enumerate(ids):
        cube = np.stack([galaxy(seed=3 * i + b) for b in range(3)]).astype(np.float32)
        fits.PrimaryHDU(cube if i % 2 else cube[1]).writeto(cutouts / f"{gid}.fits{'.gz' if i % 3 == 0 else ''}")
    random_solutions(ids).to_csv(tmp_path / "solutions.csv")

    summary = prepare(cutouts, tmp_path / "solutions.csv", tmp_path / "p", size=16, fov=424, workers=0,
                      progress=False)
    data = summary.data
    assert summary.counts["images found"] == summary.counts["cached images"] == 12
    assert data.table["id"].tolist() == [str(g) for g in ids]
    for row, source in enumerate(data.table["source"]):
        np.testing.assert_array_equal(data.images[row], load(source, 16, 424).pixels)
    converted = pd.read_csv(tmp_path / "p" / "skipped.csv").query("action == 'converted'")["reason"]
    assert sorted(set(converted)) == ["FITS, 1 band as grey", "FITS, 3 bands"]
