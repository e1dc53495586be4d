"""The survey-shift suite: each transform does what it says, and `evaluate --shifts` scores every one."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from tiny_runs import make_run, prepared_folder
from typer.testing import CliRunner

from zoomorph.cli import app
from zoomorph.data.augment import sky_level, sky_sigma
from zoomorph.evaluation.compare import compare_runs, write_compare_html
from zoomorph.evaluation.evaluate import (
    SHIFT_HEADER,
    drift_text,
    evaluate_run,
    format_shifts_table,
    prediction_drift,
    shift_rows,
)
from zoomorph.evaluation.report import write_report
from zoomorph.evaluation.robustness import read_frame
from zoomorph.evaluation.shifts import LEVELS, SEEING_FWHM_PX, SHIFT_NAMES, SHIFTS
from zoomorph.io.decode import cut_array
from zoomorph.runs import Run

SIDE = 424  # a Kaggle frame: strengths are in its pixels


def frame(n=1, radius=40.0, sky=0.2, noise=0.02, centre=None, seed=0):
    """Gaussian blobs (sigma `radius` / 2) on a noisy sky, float (n, 3, SIDE, SIDE); colours differ per band."""
    g = torch.Generator().manual_seed(seed)
    cy, cx = centre or ((SIDE - 1) / 2, (SIDE - 1) / 2)
    yy, xx = torch.meshgrid(torch.arange(SIDE) - cy, torch.arange(SIDE) - cx, indexing="ij")
    blob = torch.exp(-(yy**2 + xx**2) / (2 * (radius / 2) ** 2))
    bands = torch.tensor([0.6, 0.45, 0.3]).view(3, 1, 1)
    return (sky + bands * blob + noise * torch.randn(n, 3, SIDE, SIDE, generator=g)).clamp(0, 1)


def disc(radius, sky=0.1, level=0.9):
    centre = (SIDE - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(SIDE) - centre, torch.arange(SIDE) - centre, indexing="ij")
    return (sky + (level - sky) * ((yy**2 + xx**2) <= radius**2).float()).expand(1, 3, SIDE, SIDE).clone()


def band_power(x, low, high=1.0):
    """The (mean-free) power at spatial frequencies from `low` to `high` cycles per pixel."""
    power = torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs() ** 2
    f = torch.fft.fftfreq(x.shape[-1])
    radius = (f[:, None] ** 2 + f[None, :] ** 2).sqrt()
    return float(power[..., (radius > low) & (radius <= high)].sum())


def high_power(x, cutoff):
    """Share of the (mean-free) power at spatial frequencies above `cutoff` cycles per pixel."""
    return band_power(x, cutoff) / band_power(x, 0)


def centroid(x):
    w = (x[0, 0] - sky_level(x)[0, 0]).clamp_min(0)
    yy, xx = torch.meshgrid(torch.arange(SIDE).float(), torch.arange(SIDE).float(), indexing="ij")
    return torch.stack([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])


def test_the_table_lists_three_growing_strengths_per_shift_each_with_what_it_mimics():
    assert len(SHIFT_NAMES) == len(SHIFTS) >= 10
    for shift in SHIFTS:
        assert len(shift.strengths) == len(LEVELS) and shift.mimics and shift.title
        distance = [abs(s - shift.identity) for s in shift.strengths]
        assert 0 < distance[0] < distance[1] < distance[2]
        assert len({shift.label(s) for s in shift.strengths}) == 3


@pytest.mark.parametrize("shift", SHIFTS, ids=lambda s: s.name)
def test_identity_strength_returns_the_image(shift):
    x = frame(n=2)
    assert torch.allclose(shift(x, shift.identity, torch.Generator().manual_seed(0)), x, atol=1e-5)


@pytest.mark.parametrize("shift", SHIFTS, ids=lambda s: s.name)
def test_every_shift_changes_the_image_and_leaves_its_input_alone(shift):
    x = frame(n=2)
    before = x.clone()
    out = shift(x, shift.strengths[1], torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x, atol=1e-3)
    assert torch.equal(x, before)


def test_blur_lowers_high_frequency_power_more_at_higher_strength():
    x = frame(noise=0.0, radius=12)
    blur = SHIFT_NAMES["blur"]
    powers = [high_power(x, 0.05)] + [high_power(blur(x, s), 0.05) for s in blur.strengths]
    assert powers == sorted(powers, reverse=True) and powers[-1] < 0.5 * powers[0]


def test_blur_makes_the_asked_fwhm_from_the_seeing():
    # a point source already at the seeing (a Gaussian of FWHM 3.5 px) ends with FWHM strength x seeing
    sigma = SEEING_FWHM_PX / (2 * math.sqrt(2 * math.log(2)))
    c = (SIDE - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(SIDE) - c, torch.arange(SIDE) - c, indexing="ij")
    star = (0.8 * torch.exp(-(yy**2 + xx**2) / (2 * sigma**2))).expand(1, 3, SIDE, SIDE)
    for strength in SHIFT_NAMES["blur"].strengths:
        out = SHIFT_NAMES["blur"](star, strength)[0, 0]
        # a Gaussian's second moment is sigma^2 per axis
        w = out / out.sum()
        measured = float((w * xx**2).sum().sqrt())
        assert measured == pytest.approx(strength * sigma, rel=0.03)


@pytest.mark.parametrize("name", ["zoom_out", "zoom_in"])
def test_zoom_scales_a_blobs_radius_by_the_factor(name):
    x = disc(60)
    for factor in SHIFT_NAMES[name].strengths:
        out = SHIFT_NAMES[name](x, factor)
        radius = ((out[0, 0] > 0.5).sum().item() / math.pi) ** 0.5
        assert radius == pytest.approx(60 * factor, rel=0.05)


def test_noise_raises_the_border_ring_std_by_the_asked_amount():
    x = frame(n=4, sky=0.4, noise=0.02)
    sigma = sky_sigma(x)
    assert torch.allclose(sigma, torch.tensor(0.02), rtol=0.1)
    noise = SHIFT_NAMES["noise"]
    for k in noise.strengths:
        after = sky_sigma(noise(x, k, torch.Generator().manual_seed(1)))
        assert torch.allclose(after, sigma * math.sqrt(1 + k**2), rtol=0.1)  # independent noise adds in quadrature


def test_sky_offset_raises_the_sky_by_the_asked_sigmas():
    x = frame(n=2, sky=0.3, noise=0.01)
    for k in SHIFT_NAMES["sky"].strengths:
        shifted = SHIFT_NAMES["sky"](x, k)
        assert torch.allclose(sky_level(shifted) - sky_level(x), k * sky_sigma(x), atol=2e-3)


def test_lower_resolution_removes_power_above_the_new_nyquist():
    x = frame(noise=0.1)
    for factor in SHIFT_NAMES["pixels"].strengths:
        nyquist = 0.5 / factor
        out = SHIFT_NAMES["pixels"](x, factor)
        assert band_power(out, nyquist) < 0.05 * band_power(x, nyquist)
        assert band_power(out, 0, nyquist / 4) > 0.5 * band_power(x, 0, nyquist / 4)  # coarser detail survives


def test_grey_makes_the_bands_equal_and_keeps_their_mean():
    x = frame()
    grey = SHIFT_NAMES["grey"]
    out = grey(x, 1.0)
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    assert torch.allclose(out.mean(1), x.mean(1), atol=1e-6)
    half = grey(x, 0.5)
    assert torch.allclose(half[:, 0] - half[:, 2], (x[:, 0] - x[:, 2]) / 2, atol=1e-6)


def test_gain_changes_the_band_means_by_the_factor():
    x = frame(sky=0.1) * 0.7  # dim enough that no pixel clips at 1
    for g in SHIFT_NAMES["gain"].strengths:
        ratio = SHIFT_NAMES["gain"](x, g).mean(dim=(0, 2, 3)) / x.mean(dim=(0, 2, 3))
        assert torch.allclose(ratio, torch.tensor([1 + g, 1.0, 1 - g]), atol=1e-4)


def test_jpeg_lower_quality_lowers_fidelity():
    x = frame(noise=0.05)
    errors = [float((SHIFT_NAMES["jpeg"](x, q) - x).pow(2).mean()) for q in SHIFT_NAMES["jpeg"].strengths]
    assert 0 < errors[0] < errors[1] < errors[2]


def test_off_centre_moves_the_blobs_centroid_by_the_asked_shift():
    x = frame(noise=0.0, radius=30).expand(6, 3, SIDE, SIDE).clone()
    shift = SHIFT_NAMES["off_centre"]
    for distance in shift.strengths:
        out = shift(x, distance, torch.Generator().manual_seed(2))
        moves = torch.stack([centroid(out[i:i + 1]) - centroid(x[:1]) for i in range(len(out))])
        assert torch.allclose(moves.norm(dim=1), torch.tensor(distance * SIDE), rtol=0.03)
        assert len({tuple(m.round().tolist()) for m in moves}) == len(out)  # a direction of its own per galaxy


def test_random_shifts_are_reproducible_with_a_seeded_generator():
    x = frame(n=2)
    for name in ("noise", "off_centre"):
        shift = SHIFT_NAMES[name]
        first, again = (shift(x, shift.strengths[1], torch.Generator().manual_seed(3)) for _ in range(2))
        other = shift(x, shift.strengths[1], torch.Generator().manual_seed(4))
        assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_folder(tmp_path_factory.mktemp("data"))


def test_full_resolution_frames_cut_as_the_cache_was(data):
    row = data.indices("val")[0]
    rgb = read_frame(data.table["source"].iloc[row])
    assert rgb.shape == (424, 424, 3) and rgb.dtype == np.uint8
    as_cut = cut_array(rgb, data.image_size, data.fov).pixels.astype(float)
    # the cache decoded the JPEG at a DCT scale, the suite decodes in full: the same picture within a few levels
    assert np.abs(as_cut - data.images[row]).mean() < 3


def test_evaluate_with_shifts_scores_every_shift_and_strength(data, tmp_path):
    run = make_run(tmp_path / "run", data)
    metrics = evaluate_run(run, bootstrap=50, shifts=True)
    assert json.loads(Run.open(run).metrics_file.read_text())["shifts"] == metrics["shifts"]
    suite = metrics["shifts"]
    assert suite["n"] == metrics["n"] and suite["seconds_per_1000"] > 0
    assert [(r["shift"], r["strength"]) for r in suite["results"]] == [
        (s.name, v) for s in SHIFTS for v in s.strengths]
    for scores in [suite["reference"], *suite["results"]]:
        for name in ("accuracy", "balanced_accuracy"):
            ci = scores["ci"][name]
            assert ci["low"] <= scores[name] == ci["estimate"] <= ci["high"]
    # the untransformed full-resolution path classifies (nearly) as the cached images do
    assert suite["reference"]["accuracy"] == pytest.approx(metrics["variants"]["plain"]["accuracy"], abs=0.15)
    assert len({r["accuracy"] for r in suite["results"]}) > 1  # the shifts do change the answers

    for scores in [suite["reference"], *suite["results"]]:  # the matrix of the very answers scored
        confusion = np.asarray(scores["confusion"])
        assert confusion.sum() == suite["n"] and np.trace(confusion) / suite["n"] == pytest.approx(scores["accuracy"])
        assert confusion.sum(axis=1).tolist() == np.asarray(suite["reference"]["confusion"]).sum(axis=1).tolist()

    header, rows = shift_rows(metrics)
    assert header == SHIFT_HEADER[:-1]  # a classes run has no Kaggle RMSE
    assert len(rows) == 1 + len(suite["results"]) and all(len(r) == len(header) for r in rows)
    drifts = [r[header.index("predictions drift to")] for r in rows[1:]]
    for text, scores in zip(drifts, suite["results"]):
        name, points = prediction_drift(scores, suite["reference"], metrics["classes"])
        assert text == (f"{name} {points:+.1f}" if round(points, 1) > 0 else "none")
    assert any(d != "none" for d in drifts)  # some shift moves the answers one way
    console = Console(width=200, record=True)
    console.print(format_shifts_table(metrics))
    text = console.export_text()
    for shift in SHIFTS:
        assert shift.title in text and all(shift.label(s) in text for s in shift.strengths)
    # a plain evaluate of the same weights keeps the suite; once the weights change it is gone
    again = evaluate_run(run, bootstrap=50)
    assert again["shifts"] == suite and suite["weights_sha256"] == Run.open(run).weights_digest
    weights = Run.open(run).weights_file
    state = torch.load(weights)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, weights)
    assert shift_rows(evaluate_run(run, bootstrap=50))[1] == []  # retrained: no table
    assert "shifts" not in json.loads(Run.open(run).metrics_file.read_text())


def test_the_drift_is_the_class_a_shift_pushes_answers_to():
    classes = ["smooth", "featured", "artefact"]
    reference = {"n": 100, "confusion": [[40, 10, 0], [5, 45, 0], [0, 0, 0]]}  # predicted: 45, 55, 0
    blurred = {"n": 100, "confusion": [[48, 2, 0], [20, 28, 2], [0, 0, 0]]}  # featured galaxies read as smooth
    name, points = prediction_drift(blurred, reference, classes)
    assert name == "smooth" and points == pytest.approx(68 - 45)
    assert prediction_drift(reference, reference, classes)[1] == 0
    assert prediction_drift({"n": 100, "accuracy": 0.5}, reference, classes) is None  # a suite kept from before
    metrics = {"classes": classes, "shifts": {"reference": {**reference, "accuracy": 0.85},
                                              "results": [{"title": "blur", "label": "2x", "level": "middle",
                                                           "accuracy": 0.76, "n": 100}]}}
    assert "predictions drift to" not in shift_rows(metrics)[0]  # nothing to show: no column


def test_report_and_compare_show_the_shifts(data, tmp_path):
    shifted, plain = make_run(tmp_path / "shifted", data), make_run(tmp_path / "plain", data, seed=1)
    evaluate_run(shifted, bootstrap=50, shifts=True)
    evaluate_run(plain, bootstrap=50)
    page = write_report(shifted).read_text()
    section = page[page.index('<section id="shifts">'):]
    section = section[:section.index("</section>")]
    for shift in SHIFTS:
        assert shift.title in section and all(shift.label(s) in section for s in shift.strengths)
    assert "what each shift mimics" in section.lower() and "predictions drift to" in section
    assert "--shifts" in write_report(plain).read_text()  # not evaluated: says how

    table = compare_runs([shifted, plain])
    middle = {r["shift"]: r["accuracy"] for r in Run.open(shifted).metrics()["shifts"]["results"]
              if r["level"] == "middle"}
    shifted_row, plain_row = table.set_index("run").loc["shifted"], table.set_index("run").loc["plain"]
    assert {s.name: shifted_row[f"shift_{s.name}"] for s in SHIFTS} == middle
    assert plain_row[[f"shift_{s.name}" for s in SHIFTS]].isna().all()
    page = write_compare_html([shifted, plain], tmp_path / "compare.html").read_text()
    section = page[page.index('<section id="shifts">'):]
    assert all(shift.label(s) in section for shift in SHIFTS for s in shift.strengths)
    suite, classes = Run.open(shifted).metrics()["shifts"], Run.open(shifted).metrics()["classes"]
    drifts = {drift_text(r, suite["reference"], classes) for r in suite["results"]} - {"none"}
    assert drifts and all(f", {d}</td>" in section for d in drifts)  # which way, beside how much


def test_a_votes_run_is_scored_by_rmse_under_every_shift(data, tmp_path):
    run = make_run(tmp_path / "votes", data, head="votes")
    metrics = evaluate_run(run, bootstrap=50, shifts=True)
    suite = metrics["shifts"]
    assert suite["reference"]["rmse"] == pytest.approx(metrics["variants"]["plain"]["rmse"], abs=0.05)
    assert all(0 < r["rmse"] < 1 for r in suite["results"])
    header, _ = shift_rows(metrics)
    assert "Kaggle RMSE" in header
    Console(width=80, record=True).print(format_shifts_table(metrics))


def test_evaluate_command_prints_the_shift_table(data, tmp_path):
    run = make_run(tmp_path / "run", data)
    result = CliRunner().invoke(app, ["evaluate", str(run), "--shifts"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "survey shifts" in result.output and "JPEG re-save" in result.output and "quality 10" in result.output
    assert "shifts" in Run.open(run).metrics()
    plain = CliRunner().invoke(app, ["evaluate", str(run)], terminal_width=200)
    assert plain.exit_code == 0 and "JPEG re-save" not in plain.output
    assert f"kept from the evaluate --shifts of {Run.open(run).metrics()['shifts']['at']}" in plain.output


def test_a_source_that_is_gone_is_named(data, tmp_path):
    with pytest.raises(ValueError, match="full resolution.*gone.jpg"):
        read_frame(str(tmp_path / "gone.jpg"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.jpg"):
        read_frame(str(bad))


def test_read_frame_keeps_the_central_square_of_another_size(tmp_path):
    rgb = np.zeros((300, 200, 3), np.uint8)
    rgb[50:250] = 200  # the central 200 x 200 square
    path = tmp_path / "wide.png"
    Image.fromarray(rgb).save(path)
    out = read_frame(str(path))
    assert out.shape == (200, 200, 3) and (out == 200).all()
