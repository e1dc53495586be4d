"""--fov auto: each galaxy's extent measured from its pixels (io/extent.py) and the crop cut by it (io/decode.py),
through prepare and predict. Synthetic galaxies only: exponential disks of known R90 on a noisy sky."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from astropy.stats import sigma_clipped_stats
from PIL import Image
from predict_toys import CLASSES, toy_model
from scipy import ndimage
from typer.testing import CliRunner

from zoomorph import runs
from zoomorph.cli import app
from zoomorph.data.prepare import prepare
from zoomorph.data.synthetic import make_synthetic
from zoomorph.errors import ZoomorphError
from zoomorph.inference import to_input
from zoomorph.io.decode import (
    AUTO,
    AUTO_CUT,
    AUTO_MULTIPLE,
    FOV_COLUMNS,
    SKY_LEVEL,
    cut_array,
    decode,
    load,
    load_many,
    parse_fov,
)
from zoomorph.io.extent import _fill, _smooth3, _sorted_counts, clipped_stats, measure
from zoomorph.predict import predict
from zoomorph.runs import RunConfig

X90 = 3.8897  # an exponential disk holds 90% of its light within 3.8897 scale lengths
SKY = (30, 22, 14)


def disk(h: float = 10.0, side: int = 424, peak: float = 200.0, centre: tuple[float, float] | None = None,
         noise: float = 3.0, seed: int = 0, star: tuple[float, float] | None = None) -> np.ndarray:
    """An exponential disk of scale length `h` px (R90 = 3.89 h) on a sky of SKY with Gaussian noise,
    optionally with a bright star (x, y), as RGB uint8."""
    yy, xx = np.mgrid[:side, :side] + 0.5
    cx, cy = centre or (side / 2, side / 2)
    light = peak * np.exp(-np.hypot(xx - cx, yy - cy) / h)
    if star:
        light += 250 * np.exp(-((xx - star[0]) ** 2 + (yy - star[1]) ** 2) / (2 * 2.5**2))
    rng = np.random.default_rng(seed)
    rgb = light[..., None] * np.array([1.0, 0.85, 0.7]) + np.array(SKY) + rng.normal(0, noise, (side, side, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def as_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ------------------------------------------------------------------ the measurement


@pytest.mark.parametrize("zoom", [0.5, 1.0, 2.0])
def test_r90_of_a_disk_is_recovered_within_10_percent_at_every_zoom(zoom):
    for seed in range(3):
        extent = measure(disk(10.0 * zoom, seed=seed))
        assert extent.flag == ""
        assert extent.r90 == pytest.approx(X90 * 10.0 * zoom, rel=0.10)
        assert (extent.x, extent.y) == (pytest.approx(212, abs=1.5), pytest.approx(212, abs=1.5))


def test_the_auto_crop_of_a_zoomed_galaxy_is_the_crop_of_the_original():
    original = cut_array(disk(10.0), 32, AUTO).pixels.astype(float)
    for zoom in (0.5, 2.0):
        zoomed = disk(10.0 * zoom, seed=1)
        auto = cut_array(zoomed, 32, AUTO).pixels.astype(float)
        fixed = cut_array(zoomed, 32, 256).pixels.astype(float)
        assert np.abs(auto - original).max() < 10  # the same picture, up to noise
        assert np.abs(fixed - cut_array(disk(10.0), 32, 256).pixels).max() > 30  # a fixed fov sees the zoom


def test_a_jpeg_decode_measures_as_the_in_memory_image_does():
    rgb = disk(12.0, centre=(190, 230))
    from_file, in_memory = decode(as_jpeg(rgb), 32, AUTO), cut_array(rgb, 32, AUTO)
    assert from_file.r90 == pytest.approx(in_memory.r90, rel=0.03)
    assert from_file.crop == pytest.approx(AUTO_MULTIPLE * from_file.r90)
    assert np.abs(from_file.pixels.astype(float) - in_memory.pixels).mean() < 3


def test_an_off_centre_galaxy_is_cut_about_its_own_centre():
    shifted = cut_array(disk(10.0, centre=(232, 197)), 32, AUTO)
    centred = cut_array(disk(10.0), 32, AUTO)
    assert np.abs(shifted.pixels.astype(float) - centred.pixels).mean() < 4


def test_a_star_that_does_not_touch_the_galaxy_leaves_its_radius_alone():
    alone, with_star = measure(disk(10.0)), measure(disk(10.0, star=(212 + 110, 212 - 60)))
    assert with_star.r90 == pytest.approx(alone.r90, rel=0.02)
    assert (with_star.x, with_star.y) == (pytest.approx(alone.x, abs=0.5), pytest.approx(alone.y, abs=0.5))


def test_sigma_clipping_agrees_with_astropy():
    rng = np.random.default_rng(3)
    for n_outliers in (0, 40, 300):
        values = np.concatenate([rng.normal(5, 2, 1500), rng.exponential(40, n_outliers)]).astype(np.float32)
        _, median, std = sigma_clipped_stats(values, sigma=3, maxiters=5)
        assert clipped_stats(values) == (pytest.approx(float(median), abs=1e-4), pytest.approx(float(std), rel=1e-4))


def test_a_small_galaxy_is_measured_again_on_a_finer_grid():
    # R90 11.7 px: under 2 pixels of the 53-px grid, where box means and smoothing would widen it
    extent = measure(disk(3.0, seed=1))
    assert extent.flag == "" and extent.r90 == pytest.approx(X90 * 3.0, rel=0.10)


# (x, y, R90, sky, flag) as version 3 of the measurement gave them when it was numpy and scipy calls, before
# it was compiled: AUTO_CUT's version says which crops a run learnt from, so a change here must change it
VERSION_3 = [
    (dict(h=10.0), (212.007, 211.917, 37.147, (30, 21, 14), "")),
    (dict(h=3.0, seed=1), (211.939, 212.026, 11.094, (30, 22, 13), "")),  # measured again on finer grids
    (dict(h=10.0, star=(322, 152)), (212.007, 211.917, 37.147, (30, 21, 14), "")),
    (dict(h=12.0, centre=(190, 230), seed=3), (190.052, 229.972, 43.523, (29, 22, 14), "")),
    (dict(h=6.0, side=212, seed=2), (106.028, 105.968, 21.997, (30, 22, 14), "")),
    (dict(h=8.0, centre=(70, 80)), (212.0, 212.0, math.nan, (30, 21, 14), "no source at the centre")),
    (dict(h=300.0, peak=150), (212.0, 212.0, math.nan, (100, 82, 63), "source fills the frame")),
]


@pytest.mark.parametrize("galaxy, expected", VERSION_3)
def test_the_measurement_is_still_version_3(galaxy, expected):
    extent = measure(disk(**galaxy))
    x, y, r90, sky, flag = expected
    assert (extent.sky, extent.flag) == (sky, flag) and AUTO_CUT["version"] == 3
    assert (extent.x, extent.y) == (pytest.approx(x, abs=2e-3), pytest.approx(y, abs=2e-3))
    assert extent.r90 == pytest.approx(r90, abs=2e-3, nan_ok=True)


def test_the_compiled_smoothing_is_scipy_s_uniform_filter_bit_for_bit():
    # the source's threshold is applied to it: a pixel on the other side of it would change the source
    rng = np.random.default_rng(4)
    for shape in [(53, 53), (106, 80), (8, 9), (1, 5)]:
        grey = (rng.integers(0, 256, shape) / 3).astype(np.float32)
        assert np.array_equal(_smooth3(grey), ndimage.uniform_filter(grey, 3, mode="nearest"))


def test_the_ring_s_counting_sort_is_numpy_s_sort():
    # smoothed means of counts (many equal, many a few ulps apart within one bin), the ends of the range,
    # and values outside it (clamped into the end bins, yet still in order)
    rng = np.random.default_rng(6)
    grey = ndimage.uniform_filter((rng.integers(0, 30, (53, 53)) / 3).astype(np.float32), 3).ravel()
    values = [grey.astype(np.float64), rng.uniform(0, 255, 2400), np.array([255.0, 0.0, 255.0, 1 / 27, 0.037]),
              np.array([300.0, -2.0, 256.5, 3.0, -0.5]), np.array([7.0]), np.array([])]
    for v in values:
        assert np.array_equal(_sorted_counts(v), np.sort(v))


def test_the_compiled_flood_fill_finds_the_regions_scipy_finds():
    rng = np.random.default_rng(5)
    for density in (0.3, 0.5, 0.6):
        mask = ndimage.uniform_filter(rng.random((53, 60)), 3) < density
        labels, queue, areas = np.zeros(mask.shape, np.int32), np.empty(mask.size, np.int64), [0]
        for y, x in zip(*np.nonzero(mask)):  # every region, filled from its first pixel in raster order
            if labels[y, x] == 0:
                areas.append(_fill(mask, labels, int(y), int(x), len(areas), queue))
        expected, n = ndimage.label(mask)  # 4-connected, as ours
        assert len(areas) == n + 1 and not labels[~mask].any()
        # the same partition: each of ours is exactly one of scipy's, of the same area
        pairs = set(zip(labels[mask].tolist(), expected[mask].tolist()))
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}) == n
        assert areas[1:] == np.bincount(labels.ravel())[1:].tolist()
        assert sorted(areas[1:]) == sorted(np.bincount(expected.ravel())[1:].tolist())


def test_one_bad_file_among_many_is_reported_in_its_place_and_the_others_decode(tmp_path):
    files = []
    for i, content in enumerate([as_jpeg(disk(10.0)), b"not an image", as_jpeg(disk(7.0, seed=1)), b""]):
        files.append(str(tmp_path / f"g{i}.jpg"))
        (tmp_path / f"g{i}.jpg").write_bytes(content)
    outcomes = load_many(files, 32, AUTO)
    assert [type(o).__name__ for o in outcomes] == ["Decoded", "ImageError", "Decoded", "ImageError"]
    assert "g1.jpg" in str(outcomes[1]) and "empty" in str(outcomes[3])
    for i in (0, 2):
        alone = load(files[i], 32, AUTO)
        assert np.array_equal(outcomes[i].pixels, alone.pixels) and outcomes[i].r90 == pytest.approx(alone.r90)


# ------------------------------------------------------------------ fall-backs and the crop


@pytest.mark.parametrize("image, flag", [
    (np.full((424, 424, 3), 40, np.uint8), "blank image"),
    (np.clip(np.random.default_rng(0).normal(40, 3, (424, 424, 3)), 0, 255).astype(np.uint8), "blank image"),
    (disk(8.0, centre=(70, 80)), "no source at the centre"),
    (disk(300.0, peak=150), "source fills the frame"),
])
def test_a_doubtful_measurement_falls_back_to_the_full_frame_and_says_so(image, flag):
    cut = cut_array(image, 32, AUTO)
    assert cut.flag == f"{flag}: full frame" and math.isnan(cut.r90) and cut.crop == 424
    assert np.abs(cut.pixels.astype(float) - cut_array(image, 32, 424).pixels).mean() < 1.5
    from_file = decode(as_jpeg(image), 32, AUTO)  # the file gives the same outcome
    assert from_file.flag == cut.flag and from_file.crop == 424


def test_a_crop_past_the_frame_edge_is_filled_with_sky_not_reflected():
    cut = cut_array(disk(30.0, centre=(312, 212)), 64, AUTO)  # a ~290 px crop about x = 312 passes x = 424
    assert cut.flag == "" and 312 + cut.crop / 2 > 440
    beyond = int(64 * (312 + cut.crop / 2 - 424) / cut.crop) - 1  # output columns past the frame's right edge
    past, inside = cut.pixels[:, -beyond:].reshape(-1, 3), cut.pixels[:, :beyond].reshape(-1, 3)
    assert np.abs(past.mean(0) - SKY_LEVEL).max() < 1.5  # the sky's colour, moved to SKY_LEVEL as all the crop
    assert past.std(0).max() < 0.5 < inside.std(0).min()  # one flat colour: reflected sky would carry its noise


@pytest.mark.parametrize("offset", [-6, 25])
def test_the_auto_crop_moves_the_sky_to_one_level(offset):
    galaxy = disk(12.0)
    lifted = np.clip(galaxy.astype(int) + offset, 0, 255).astype(np.uint8)  # a sky left brighter / darker
    plain, shifted = cut_array(galaxy, 64, AUTO), cut_array(lifted, 64, AUTO)
    ring = np.concatenate([plain.pixels[:3].reshape(-1, 3), plain.pixels[-3:].reshape(-1, 3)])
    assert np.abs(np.median(ring, axis=0) - SKY_LEVEL).max() <= 1
    assert shifted.crop == pytest.approx(plain.crop, rel=0.03)
    assert np.abs(shifted.pixels.astype(int) - plain.pixels).mean() < 1.0  # the offset is gone
    fixed_change = cut_array(lifted, 64, 424).pixels.mean() - cut_array(galaxy, 64, 424).pixels.mean()
    assert fixed_change == pytest.approx(offset, abs=3)  # a fixed crop keeps the offset: it is auto's doing


def test_the_crop_side_stays_within_its_range():
    tiny = cut_array(disk(1.5, peak=250), 32, AUTO)  # R90 6 px -> 18 px, clamped to 424 / 8
    assert tiny.flag == "" and tiny.crop == pytest.approx(53.0)


@pytest.mark.parametrize("value, expected", [("auto", AUTO), ("AUTO", AUTO), (256, 256), ("207", 207)])
def test_parse_fov_takes_kaggle_pixels_or_auto(value, expected):
    assert parse_fov(value) == expected


@pytest.mark.parametrize("value", ["-3", "big", 0, -3, True, 2.5, "", None])
def test_parse_fov_refuses_anything_else_clearly(value):
    with pytest.raises(ZoomorphError, match=r"fov=.*'auto'"):
        parse_fov(value)


def test_the_cli_refuses_a_bad_fov_in_one_line(kaggle_dir, tmp_path):
    result = CliRunner().invoke(app, ["prepare", str(kaggle_dir / "images"), "--labels",
                                      str(kaggle_dir / "solutions.csv"), "--out", str(tmp_path / "p"), "--fov", "big"])
    assert result.exit_code == 2 and "fov='big'" in result.output and not (tmp_path / "p").exists()


# ------------------------------------------------------------------ prepare and predict


@pytest.fixture
def synthetic_auto(tmp_path):
    """A synthetic set with one blank image, prepared with fov auto at 32 px."""
    solutions = make_synthetic(tmp_path / "s", 24, seed=3, workers=1)
    blank = sorted((tmp_path / "s" / "images").glob("*.jpg"))[5]
    blank.write_bytes(as_jpeg(np.full((424, 424, 3), 30, np.uint8)))
    summary = prepare(tmp_path / "s" / "images", solutions, tmp_path / "p", size=32, fov="auto", val=0.5,
                      workers=0, progress=False)
    return summary, blank


def test_prepare_auto_records_the_mode_and_each_image_s_field(synthetic_auto, tmp_path):
    summary, blank = synthetic_auto
    settings = json.loads((tmp_path / "p" / "prepared.json").read_text())
    assert settings["fov"] == "auto" and settings["fov_auto"] == AUTO_CUT and summary.data.fov == AUTO
    table = pd.read_parquet(tmp_path / "p" / "catalog.parquet")
    assert set(FOV_COLUMNS) <= set(table.columns)
    row = table[table["source"] == str(blank)].iloc[0]
    assert row["fov_flag"] == "blank image: full frame" and row["fov_crop"] == 424 and np.isnan(row["fov_radius"])
    assert summary.counts["fov auto: full frame (fall-backs)"] >= 1 and summary.counts["fov auto: blank image"] == 1
    measured = table[table["fov_flag"] == ""]
    side = np.clip(AUTO_MULTIPLE * measured["fov_radius"].to_numpy(), 424 / 8, 2 * 424)
    assert len(measured) >= 20 and measured["fov_crop"].to_numpy() == pytest.approx(side, rel=1e-5)
    first = measured.index[0]  # the cache holds what the decoder cuts
    decoded = load(table.loc[first, "source"], 32, AUTO)
    assert np.array_equal(summary.data.images[first], decoded.pixels)
    assert table.loc[first, "fov_crop"] == pytest.approx(decoded.crop)


def test_prepare_auto_reuses_its_cache_with_the_columns_and_a_fixed_fov_does_not(synthetic_auto, tmp_path):
    summary, _ = synthetic_auto
    images, solutions = tmp_path / "s" / "images", tmp_path / "s" / "solutions.csv"
    again = prepare(images, solutions, tmp_path / "p", size=32, fov="auto", val=0.5, workers=0, progress=False)
    assert again.reused_cache
    assert again.data.table[list(FOV_COLUMNS)].equals(summary.data.table[list(FOV_COLUMNS)])
    assert again.counts["fov auto: blank image"] == 1
    fixed = prepare(images, solutions, tmp_path / "p", size=32, fov=256, val=0.5, workers=0, progress=False)
    assert not fixed.reused_cache and "fov_flag" not in fixed.data.table.columns


def test_runconfig_keeps_fov_auto(tmp_path):
    cfg = RunConfig(model="toy-pooled", head="classes", classes=CLASSES, image_size=16, fov=AUTO)
    cfg.save(tmp_path / "run")
    loaded = RunConfig.load(tmp_path / "run")
    assert loaded.fov == AUTO and not loaded.differences(cfg)
    fixed = RunConfig("toy-pooled", "classes", CLASSES, 16, 256)
    assert loaded.differences(fixed) == ["fov 'auto' in the run, 256 now"]


@pytest.mark.usefixtures("toys")
@pytest.mark.parametrize("fov", [AUTO, 256])
def test_predict_cuts_as_the_run_was_trained_and_writes_the_fov_columns_for_auto(tmp_path, fov):
    run = tmp_path / "run"
    cfg = RunConfig(model="toy-pooled", head="classes", classes=CLASSES, image_size=16, fov=fov,
                    extra={"fov_auto": AUTO_CUT} if fov == AUTO else {})
    cfg.save(run)
    runs.Run(run, cfg).save_weights(toy_model(cfg))
    folder = tmp_path / "images"
    folder.mkdir()
    for i, zoom in enumerate([0.5, 1.0, 2.0]):
        Image.fromarray(disk(10.0 * zoom, seed=i)).save(folder / f"{i}.png")
    (folder / "3.jpg").write_bytes(b"broken")
    out = predict(run, [folder], tmp_path / "out.parquet", backend="torch", workers=0, progress=False).out
    table = pd.read_parquet(out).sort_values("id").reset_index(drop=True)
    model = runs.Run.open(run).load_model()
    for i in range(3):
        pixels = load(str(folder / f"{i}.png"), 16, fov).pixels
        with torch.no_grad():
            with_torch = model(to_input(torch.from_numpy(pixels[None].copy()))).softmax(1).numpy()[0]
        assert table.loc[i, [f"p_{c}" for c in CLASSES]].to_numpy(float) == pytest.approx(with_torch, abs=1e-5)
    if fov == AUTO:
        crops = table["fov_crop"].to_numpy()[:3]
        assert crops == pytest.approx([load(str(folder / f"{i}.png"), 16, AUTO).crop for i in range(3)])
        assert crops[2] / crops[0] == pytest.approx(4, rel=0.15)  # zoom 2 vs 0.5
        assert (table["fov_flag"][:3] == "").all() and np.isnan(table.loc[3, "fov_radius"])
        assert table.loc[3, "error"]
    else:
        assert not set(FOV_COLUMNS) & set(table.columns)



@pytest.mark.usefixtures("toys")
@pytest.mark.parametrize("recorded, said", [
    (None, "other pixels than this version cuts"),
    ({**AUTO_CUT, "multiple": 3.31}, f"crops of 3.31 × R90 where this version cuts {AUTO_MULTIPLE} × R90"),
    ({**AUTO_CUT, "version": 2}, "other pixels than this version cuts")])
def test_an_auto_run_cut_another_way_is_refused_by_name(tmp_path, recorded, said):
    run = tmp_path / "run"  # trained before this version's auto crop, or with another multiple
    cfg = RunConfig(model="toy-pooled", head="classes", classes=CLASSES, image_size=16, fov=AUTO,
                    extra={"fov_auto": recorded} if recorded else {})
    cfg.save(run)
    runs.Run(run, cfg).save_weights(toy_model(cfg))
    Image.fromarray(disk(10.0)).save(tmp_path / "g.png")
    with pytest.raises(ZoomorphError, match=r"run was made with fov auto cut as .*Prepare the data again") as error:
        predict(run, [tmp_path / "g.png"], tmp_path / "out.parquet", workers=0, progress=False)
    assert said in str(error.value)  # the multiple of a run made before 2026-12-04 (3.31), in so many words
    assert not (tmp_path / "out.parquet").exists() and not (run / "model.onnx").exists()  # refused first


def test_with_nowhere_to_cache_the_code_is_compiled_in_the_process_and_said_once(monkeypatch):
    import numba.core.config
    from numba.core import caching

    from zoomorph.io import jit

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # its name before numba 0.61
    monkeypatch.setattr(impl, "_locator_classes", [])  # no writable location of any kind
    monkeypatch.setattr(numba.core.config, "CACHE_LOCATOR_CLASSES", "", raising=False)  # numba 0.68's other list
    monkeypatch.setattr(jit, "_warned", False)

    def twice(x):
        return 2 * x

    with pytest.warns(RuntimeWarning, match="NUMBA_CACHE_DIR") as said:
        first, second = jit.compiled(twice), jit.compiled(lambda x: x + 1)
    assert len(said) == 1 and (first(21), second(1)) == (42, 2)
    assert first.stats.cache_path is None and first.targetoptions["nogil"]  # compiled, uncached, still nogil
