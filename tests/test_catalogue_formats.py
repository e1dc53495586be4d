"""Catalogues in FITS, VOTable, ECSV and HDF5, into predict and out of it: the same columns and values both ways
(64-bit ids exact, unicode text, masked values), units and descriptions kept, HEALPix pixels from RA/Dec, and a
killed run resumed in each output format."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from astropy.io import fits
from astropy.table import Column, MaskedColumn, Table
from predict_toys import kill_after_first_part, make_run, write_images

from zoomorph.errors import MissingExtra, ZoomorphError
from zoomorph.io.catalogues import is_catalogue
from zoomorph.io.tables import NOTES, table_format, table_frames
from zoomorph.predict import predict
from zoomorph.predict.engine import output_format
from zoomorph.predict.table_writers import _tnull

pytestmark = pytest.mark.usefixtures("toys")

OPTIONS = dict(workers=0, backend="torch", progress=False)
# suffix -> what astropy's Table.read needs to read it back
OUTPUTS = {".fits": {}, ".vot": {"format": "votable"}, ".ecsv": {}, ".h5": {"path": "predictions"}}
BIG = 2**63 - 1  # objids near the top of int64: a float64 would change their last digits


def galaxies(folder: Path, n: int) -> Table:
    """n catalogue rows of images in `folder`: one image unreadable, one row without a path, masked values."""
    write_images(folder / "img", range(700000, 700000 + n))
    (folder / "img" / f"{700000 + n - 1}.jpg").write_bytes(b"not a jpeg")
    odd = np.arange(n) % 7 == 3
    table = Table()
    table["objid"] = MaskedColumn(np.array([BIG - i for i in range(n)], np.int64), mask=odd, description="SDSS objid")
    table["ra"] = MaskedColumn(np.linspace(0.5, 359.5, n), mask=np.arange(n) == 1, unit="deg",
                               description="right ascension (J2000)")
    table["dec"] = Column(np.linspace(-89, 89, n), unit="deg", description="declination (J2000)")
    table["mag_r"] = MaskedColumn(np.linspace(14, 19, n).astype(np.float32), mask=np.arange(n) == 2, unit="mag")
    table["name"] = MaskedColumn([f"galáxia №{i}, \"quoted\" <&>" if i % 3 else f"two\nlines {i}" for i in range(n)],
                                 mask=np.arange(n) == 4)
    table["flag"] = MaskedColumn(np.arange(n) % 2 == 0, mask=np.arange(n) == 5)
    table["nchild"] = Column(np.arange(n, dtype=np.int16) - 3)
    table["path"] = MaskedColumn([f"img/{700000 + i}.jpg" for i in range(n)], mask=np.arange(n) == 6)
    return table


def write_catalogue(table: Table, path: Path) -> Path:
    """As each format can hold it: FITS text is bytes (UTF-8 here) and astropy cannot write a null logical."""
    if path.suffix == ".fits":
        table = table.copy()
        table["name"] = MaskedColumn(np.char.encode(np.asarray(table["name"].filled("")), "utf-8"),
                                     mask=table["name"].mask)
        table["flag"] = Column(table["flag"].filled(False))
    kwargs = {".vot": {"format": "votable"}, ".h5": {"path": "catalogue", "serialize_meta": True}}
    table.write(path, **kwargs.get(path.suffix, {}))
    return path


def read_back(path: Path, chunk_size: int = 5) -> pd.DataFrame:
    """An output as zoomorph reads a catalogue (chunks of 5 rows: each format's chunked reading is tested too)."""
    frames = list(table_frames(str(path), chunk_size))
    frame = pd.concat(frames, ignore_index=True)
    frame.attrs[NOTES] = frames[0].attrs[NOTES]
    return frame


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """Nulls as the formats can say them: a null text is empty text (VOTable and FITS have no null text, ECSV
    writes both as an empty field), a null float NaN."""
    out = {}
    for name in frame.columns:
        values = pa.array(frame[name])
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            values = values.cast(pa.string()).fill_null("")
        elif pa.types.is_floating(values.type):
            values = values.fill_null(np.nan)
        out[name] = pd.Series(values, dtype=pd.ArrowDtype(values.type))
    return pd.DataFrame(out)


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path)


@pytest.mark.parametrize("given", [".fits", ".vot", ".ecsv", ".h5"])
def test_a_catalogue_comes_out_the_same_in_every_format(given, tmp_path, run):
    table = galaxies(tmp_path, 12)
    catalogue = write_catalogue(table, tmp_path / f"catalogue{given}")
    assert is_catalogue(str(catalogue))
    reference = pd.read_parquet(predict(run, [catalogue], tmp_path / "ref.parquet", chunk_size=5, **OPTIONS).out,
                                dtype_backend="pyarrow")

    # the catalogue's columns, exactly: int64 ids past 2**53, float32 and int16 kept, masks as nulls
    assert reference["objid"].dtype == pd.ArrowDtype(pa.int64())
    assert reference["objid"].tolist()[:3] == [BIG, BIG - 1, BIG - 2] and reference["objid"].isna().sum() == 2
    assert reference["mag_r"].dtype == pd.ArrowDtype(pa.float32()) and reference["mag_r"].isna().tolist()[2]
    assert reference["nchild"].dtype == pd.ArrowDtype(pa.int16()) and reference["nchild"].tolist()[0] == -3
    assert reference["ra"].isna().tolist()[1] and reference["ra"].iloc[0] == 0.5
    names = reference["name"].tolist()
    assert names[1] == 'galáxia №1, "quoted" <&>' and names[3] == "two\nlines 3"
    assert names[4] is pd.NA or (given in (".fits", ".vot") and names[4] == "")  # no null text there
    assert reference["flag"].tolist()[:2] == [True, False]
    if given != ".fits":  # astropy writes no null logical into FITS (our own FITS output has them: below)
        assert reference["flag"].isna().tolist()[5]
    errors = reference["error"].tolist()
    assert "row 7 (data rows counted from 1) has no path" in errors[6] and reference["path"].isna().tolist()[6]
    assert errors[11] and errors[0] == ""  # the unreadable image, and a readable one

    for suffix, read in OUTPUTS.items():
        out = tmp_path / f"predictions{suffix}"
        predict(run, [catalogue], out, chunk_size=5, **OPTIONS)
        back = read_back(out)
        pd.testing.assert_frame_equal(comparable(back), comparable(reference), check_dtype=True)
        if given != ".fits" and suffix != ".vot":
            assert back["flag"].isna().tolist()[5], suffix  # a masked boolean survives
        # the units and descriptions, as astropy itself reads them
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            astro = Table.read(out, **read)
        assert str(astro["ra"].unit) == "deg" and astro["ra"].description == "right ascension (J2000)", suffix
        assert str(astro["mag_r"].unit) == "mag" and astro["objid"].description == "SDSS objid", suffix
        assert astro["p_spiral"].description == "probability of class spiral", suffix
        assert "nats" in astro["entropy"].description and astro["error"].description, suffix


def test_a_second_run_into_the_same_output_is_already_complete(tmp_path, run):
    catalogue = write_catalogue(galaxies(tmp_path, 8), tmp_path / "catalogue.ecsv")
    first = predict(run, [catalogue], tmp_path / "out.fits", **OPTIONS)
    again = predict(run, [catalogue], tmp_path / "out.fits", **OPTIONS)
    assert not first.already_complete and again.already_complete and again.total == 8


def test_healpix_pixels_from_ra_and_dec(tmp_path, run):
    from astropy import units as u
    from astropy_healpix import HEALPix

    table = galaxies(tmp_path, 12)
    table["ra"] = MaskedColumn(np.radians(table["ra"].data), mask=table["ra"].mask, unit="rad")  # read as degrees
    catalogue = write_catalogue(table, tmp_path / "catalogue.ecsv")
    out = predict(run, [catalogue], tmp_path / "out.fits", healpix=6, chunk_size=5, **OPTIONS).out
    back = read_back(out)
    grid = HEALPix(nside=64, order="nested")
    expected = grid.lonlat_to_healpix(np.degrees(table["ra"].filled(0).data) * u.deg, table["dec"].data * u.deg)
    pixels = back["healpix"]
    assert pixels.dtype == pd.ArrowDtype(pa.int64()) and pixels.isna().tolist() == [i == 1 for i in range(12)]
    assert pixels.drop(index=1).tolist() == np.delete(expected, 1).tolist()
    assert "nested, order 6" in back.attrs[NOTES]["healpix"]["description"]

    plain = tmp_path / "plain.ecsv"
    write_catalogue(table[["objid", "path"]], plain)
    with pytest.raises(ZoomorphError, match="needs RA and Dec columns.*ra/dec"):
        predict(run, [plain], tmp_path / "plain.parquet", healpix=6, **OPTIONS)
    with pytest.raises(ZoomorphError, match="order 30"):
        predict(run, [catalogue], tmp_path / "x.parquet", healpix=30, **OPTIONS)


def test_the_command_line_fits_in_fits_out(tmp_path, run):
    """The README's path: a FITS catalogue in, a FITS table with classes and HEALPix pixels out."""
    from typer.testing import CliRunner

    from zoomorph.cli import app

    catalogue = write_catalogue(galaxies(tmp_path, 6), tmp_path / "catalogue.fits")
    out = tmp_path / "classes.fits"
    result = CliRunner().invoke(app, ["predict", str(run), str(catalogue), "--out", str(out), "--healpix", "8",
                                      "--backend", "torch", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "6 inputs" in result.output
    with fits.open(out) as hdus:
        header, names = hdus[1].header, hdus[1].columns.names
    assert header["NAXIS2"] == 6 and header[f"TUNIT{names.index('ra') + 1}"] == "deg"
    assert names[:4] == ["id", "path", "objid", "ra"]  # the catalogue's columns after id and path, then ours
    assert names[-7:] == ["healpix", "p_elliptical", "p_spiral", "p_other", "predicted", "entropy", "error"]


def test_healpix_names_its_extra_when_missing(tmp_path, run, monkeypatch):
    catalogue = write_catalogue(galaxies(tmp_path, 4), tmp_path / "catalogue.ecsv")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "astropy_healpix"
                        else find_spec(name, *a))
    with pytest.raises(MissingExtra, match=r"pip install 'zoomorph\[healpix\]'"):
        predict(run, [catalogue], tmp_path / "out.parquet", healpix=4, **OPTIONS)


def test_the_output_format_follows_the_suffix(tmp_path):
    assert [output_format(Path(f"x{s}"), None) for s in (".fits", ".vot", ".ecsv", ".h5", ".hdf5", ".csv", ".pq")] \
        == ["fits", "votable", "ecsv", "hdf5", "hdf5", "csv", "parquet"]
    assert output_format(Path("x.out"), "fits") == "fits" and output_format(Path("x.csv"), "kaggle") == "kaggle"
    with pytest.raises(ZoomorphError, match="ends in .fits but the format is csv"):
        output_format(Path("x.fits"), "csv")
    for compressed in ("x.fits.gz", "x.ecsv.bz2", "x.csv.xz"):
        with pytest.raises(ZoomorphError, match="writes no compressed file"):
            output_format(Path(compressed), None)


def test_a_fits_cutout_is_not_a_catalogue(tmp_path):
    cutout = tmp_path / "cutout.fits"
    fits.PrimaryHDU(np.zeros((3, 8, 8), np.float32)).writeto(cutout)
    in_extension = tmp_path / "in_extension.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((8, 8)))]).writeto(in_extension)
    table = tmp_path / "table.fits"
    Table({"path": ["a.jpg"]}).write(table)
    assert [table_format(str(p)) for p in (cutout, in_extension, table)] == [None, None, "fits"]
    assert not is_catalogue(str(cutout)) and is_catalogue(str(table))


def test_a_tnull_is_a_value_the_column_never_takes():
    assert _tnull("c", np.dtype(">i8"), {"min": -5, "max": 7}, 0) == -2**63
    assert _tnull("c", np.dtype(">i2"), {"min": -2**15, "max": 7}, 0) == 2**15 - 1
    assert _tnull("c", np.dtype(">i8"), {"min": None, "max": None}, 0) == -2**63  # every value null
    with pytest.raises(ZoomorphError, match="no value left"):
        _tnull("c", np.dtype("u1"), {"min": 0, "max": 255}, 0)


# ---------------------------------------------------------------- kill -9, then rerun, in each output format

N_RESUMED = 600
RESUME = dict(chunk_size=50, batch_size=25, **OPTIONS)
SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from predict_toys import toy_model
from zoomorph import runs
from zoomorph.predict import predict
from zoomorph.predict.results import ResultRows
runs.build_model = toy_model
of_batch = ResultRows.of_batch
ResultRows.of_batch = lambda self, *a, **k: (time.sleep(0.05), of_batch(self, *a, **k))[1]  # the kill lands mid-run
predict({run!r}, [{catalogue!r}], {out!r}, **{options!r})
"""


@pytest.fixture(scope="module")
def resumable(tmp_path_factory):
    """A catalogue of N_RESUMED images and a run, shared by the kill tests."""
    root = tmp_path_factory.mktemp("resume")
    return write_catalogue(galaxies(root, N_RESUMED), root / "catalogue.fits"), make_run(root)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", list(OUTPUTS))
def test_sigkill_then_rerun_gives_every_input_once(suffix, resumable, tmp_path):
    catalogue, run = resumable
    out, parts = tmp_path / f"predictions{suffix}", tmp_path / f"predictions{suffix}.parts"
    script = tmp_path / "victim.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), run=str(run), catalogue=str(catalogue),
                                    out=str(out), options=RESUME))
    done_before = kill_after_first_part([str(script)], parts)
    assert not out.exists() and 1 <= done_before < N_RESUMED // 50  # killed mid-run

    summary = predict(run, [catalogue], out, **RESUME)
    assert summary.total == N_RESUMED and summary.predicted <= N_RESUMED - 50 * done_before
    assert not parts.exists() and json.loads(out.with_name(out.name + ".predict.json").read_text())["rows"] == N_RESUMED
    resumed = read_back(out, 1000)
    reference = read_back(predict(run, [catalogue], tmp_path / f"reference{suffix}", **RESUME).out, 1000)
    assert len(resumed) == N_RESUMED and resumed["path"].dropna().is_unique
    pd.testing.assert_frame_equal(resumed, reference)
