"""predict() refuses bad settings before it writes anything, and reads odd inputs without losing any."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from PIL import Image
from predict_toys import jpeg, make_run, write_images

from zoomorph.io.decode import decode
from zoomorph.predict import engine, predict
from zoomorph.predict.writers import MANIFEST, errors_path, parts_dir

pytestmark = pytest.mark.usefixtures("toys")


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "images", range(1000, 1012))


def test_bad_settings_are_refused_up_front_and_leave_nothing(tmp_path, images, monkeypatch):
    run, votes = make_run(tmp_path), make_run(tmp_path, head="votes")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_folder").mkdir()
    refused = [
        (run, tmp_path / "p.csv", dict(format="parquet"), "ends in .csv but the format is parquet"),
        (run, tmp_path / "p.parquet", dict(format="csv"), "ends in .parquet but the format is csv"),
        (run, tmp_path / "a_folder", {}, "is a directory"),
        (run, tmp_path / "a_file" / "p.parquet", {}, "a_file is a file, not a folder"),
        (run, tmp_path / "p.parquet", dict(chunk_size=0), "chunk_size=0: it must be 1 or more"),
        (run, tmp_path / "p.parquet", dict(batch_size=-5), "batch_size=-5"),
        (run, tmp_path / "p.parquet", dict(workers=-1), "workers=-1"),
        (votes, tmp_path / "p.parquet", dict(preset="bogus"), "unknown preset 'bogus'"),
    ]
    for run_dir, out, options, message in refused:
        with pytest.raises(ValueError, match=message):
            predict(run_dir, images, out, progress=False, **options)
    monkeypatch.setattr(engine.importlib.util, "find_spec", lambda name: None)  # as if Ray were not installed
    with pytest.raises(ImportError, match=r"pip install zoomorph\[ray\]"):
        predict(run, images, tmp_path / "p.parquet", engine="ray", progress=False)
    assert not list(tmp_path.glob("*.parts")) and not (tmp_path / "p.parquet").exists()


def test_format_follows_the_suffix_and_a_parts_folder_without_parts_is_started_afresh(tmp_path, images):
    run, out = make_run(tmp_path), tmp_path / "p.csv"
    parts_dir(out).mkdir()
    (parts_dir(out) / MANIFEST).write_text('{"fingerprint": "of a call that failed before its first part"}')
    summary = predict(run, images, out, workers=0, progress=False)
    assert summary.total == 12 and pd.read_csv(out)["id"].tolist() == list(range(1000, 1012))
    assert not parts_dir(out).exists()


def test_a_second_call_into_the_same_out_is_refused_while_one_runs(tmp_path, images):
    out = tmp_path / "p.parquet"
    parts_dir(out).mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(parts_dir(out) / engine.LOCK_FILE)],
                              stdout=subprocess.PIPE, text=True)  # another call, in another process
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match="another predict is writing"):
            predict(make_run(tmp_path), images, out, workers=0, progress=False)
        assert list(parts_dir(out).iterdir()) == [parts_dir(out) / engine.LOCK_FILE]  # its files left alone
    finally:
        holder.kill()  # SIGKILL: the lock goes with the process
        holder.wait()
    assert predict(make_run(tmp_path), images, out, workers=0, progress=False).total == 12


HOLD_LOCK = """
import fcntl, sys, time
lock = open(sys.argv[1], "w")
fcntl.lockf(lock, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


def test_kaggle_submission_lists_what_it_left_out(tmp_path, images):
    """An unreadable image and a catalogue row without a path are error rows, not a refused run; the
    submission cannot hold them, so they go to OUT.errors.csv; a later clean run removes that list."""
    run, out = make_run(tmp_path, head="votes"), tmp_path / "sub.csv"
    (tmp_path / "2000.jpg").write_bytes(b"")
    (tmp_path / "cat.csv").write_text("path,ra\nimages/1000.jpg,10.5\n,10.6\nimages/1001.jpg,10.7\n")
    archive = tmp_path / "test.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(images[2], "test/1002.jpg")
        zf.writestr("__MACOSX/test/._1002.jpg", b"\x00\x05\x16\x07 macOS resource fork")

    summary = predict(run, [tmp_path / "cat.csv", archive, tmp_path / "2000.jpg"], out, format="kaggle",
                      workers=0, progress=False)

    assert (summary.total, summary.ok, summary.errors) == (5, 3, 2)
    assert [line.split(",")[0] for line in out.read_text().splitlines()] == ["GalaxyID", "1000", "1001", "1002"]
    left_out = pd.read_csv(errors_path(out), keep_default_na=False, dtype=str)
    assert left_out["id"].tolist() == ["", "2000"] and left_out["path"].tolist() == ["", str(tmp_path / "2000.jpg")]
    assert left_out["error"][0] == f"{tmp_path / 'cat.csv'}: row 2 (data rows counted from 1) has no path"
    assert "0 bytes" in left_out["error"][1]
    predict(run, images[:3], out, format="kaggle", workers=0, progress=False)
    assert not errors_path(out).exists()


def test_ids_too_large_for_int64_stay_text(tmp_path, images):
    big = tmp_path / "99999999999999999999.jpg"
    big.write_bytes(jpeg(1))
    out = pd.read_parquet(predict(make_run(tmp_path), [images[0], big], tmp_path / "p.parquet", workers=0,
                                  progress=False).out)
    assert out["id"].tolist() == ["1000", "99999999999999999999"] and (out["error"] == "").all()


def test_zips_list_fits_members_and_a_broken_zip_is_named(tmp_path, images):
    archive = tmp_path / "cutouts.zip"
    buffer = io.BytesIO()
    fits.PrimaryHDU(np.random.default_rng(0).normal(100, 10, (32, 32)).astype(np.float32)).writeto(buffer)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("top/300001.fits", buffer.getvalue())
        zf.write(images[0], "top/1000.jpg")
    out = pd.read_parquet(predict(make_run(tmp_path), [archive], tmp_path / "p.parquet", workers=0,
                                  progress=False).out)
    assert out["id"].tolist() == [1000, 300001] and (out["error"] == "").all()
    (tmp_path / "broken.zip").write_text("not a zip")
    with pytest.raises(ValueError, match="broken.zip: not a readable zip archive"):
        predict(make_run(tmp_path), [tmp_path / "broken.zip"], tmp_path / "q.parquet", progress=False)


def test_16_bit_images_are_scaled_and_float_images_refused():
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    png = io.BytesIO()
    Image.fromarray(ramp).save(png, "PNG")
    pixels = decode(png.getvalue(), 64).pixels  # fov 424: the whole image, no resampling
    np.testing.assert_array_equal(pixels[..., 0], ramp >> 8)  # Pillow alone clips at 255: nearly white
    tiff = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).random((64, 64), dtype=np.float32)).save(tiff, "TIFF")
    with pytest.raises(ValueError, match="f.tif: floating-point pixels have no 0-255 range"):
        decode(tiff.getvalue(), 16, name="f.tif")
