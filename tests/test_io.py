"""zoomorph.io: ids and their join key, unusable sources as data, zip sources, the workers rule."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pandas as pd
import pytest

from conftest import jpeg_bytes
from zoomorph.io.decode import decode_batch, default_workers, load
from zoomorph.io.ids import join_key, join_keys, source_id
from zoomorph.io.inputs import expand_inputs
from zoomorph.io.sources import ZIP_SEP, ImageError, Unusable, list_zip, read_bytes, source_file, walk_files


def test_a_files_id_is_its_name_as_written_and_integers_join_however_written():
    assert [source_id(s) for s in ("d/0123.jpg", f"a.zip{ZIP_SEP}x/0123.fits.gz", "NGC 1300.png")] == [
        "0123", "0123", "NGC 1300"]
    same = ["0123", "123", "+123", "123.0", " 123 ", 123, 123.0, np.int64(123), np.float64(123.0)]
    assert {join_key(v) for v in same} == {"123"}
    assert [join_key(v) for v in ("NGC 1300", " g7 ", "1.5", 1.5, "", None, np.nan, pd.NA)] == [
        "NGC 1300", "g7", "1.5", "1.5", None, None, None, None]
    assert join_key(1237648720693755918) == join_key("1237648720693755918") == "1237648720693755918"  # no float
    keys = join_keys(pd.Series(["0042", None, "x"], index=[5, 6, 7]))
    assert keys.tolist() == ["42", None, "x"] and keys.index.tolist() == [5, 6, 7]


def test_workers_zero_is_no_pool_none_is_one_per_core():
    assert default_workers(None) == (os.cpu_count() or 1)
    assert default_workers(0) == 0 and default_workers(3) == 3
    with pytest.raises(ValueError, match="workers=-1"):
        default_workers(-1)


def test_an_unusable_source_is_data_and_reading_it_says_why(tmp_path, monkeypatch):
    (tmp_path / "locked").mkdir()
    scandir = os.scandir

    def refusing(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes())
    listed = list(walk_files(str(tmp_path)))
    locked = Unusable(str(tmp_path / "locked"), "cannot list this folder (Permission denied)")
    assert listed == [str(tmp_path / "a.jpg"), locked]
    with pytest.raises(ImageError, match="locked: cannot list this folder"):
        read_bytes(locked)
    assert decode_batch((0, listed, 16, 424))[2] == ["", str(locked)]
    with pytest.raises(ImageError, match="locked: cannot list"):
        load(locked, 16)


def test_expand_inputs_gives_an_unusable_row_its_error_and_no_path(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "cat.csv").write_text("path,mag\na.jpg,1\n,2\n")
    listing = expand_inputs([tmp_path / "cat.csv"])
    assert listing.columns.tolist() == ["id", "path", "error", "mag"]
    assert listing["path"][0] == str(tmp_path / "a.jpg") and listing["path"].isna().tolist() == [False, True]
    assert listing["error"][1] == f"{tmp_path / 'cat.csv'}: row 2 (data rows counted from 1) has no path"
    assert listing["error"].isna().tolist() == [True, False] and listing["id"].isna().tolist() == [False, True]
    (tmp_path / "own.csv").write_text("path,id,error\na.jpg,x,y\n")  # the listing's own names get a prefix
    assert expand_inputs([tmp_path / "own.csv"]).columns.tolist() == ["id", "path", "error", "input_id",
                                                                     "input_error"]


def test_zip_members_are_named_with_the_one_separator(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("d/1.jpg", jpeg_bytes())
        zf.writestr("d/2.fits", b"")
        zf.writestr("__MACOSX/d/._1.jpg", b"")
        zf.writestr("d/notes.txt", b"")
    members = list_zip(str(archive))
    assert members == [f"{archive}{ZIP_SEP}d/1.jpg", f"{archive}{ZIP_SEP}d/2.fits"]
    assert source_file(members[0]) == str(archive) and read_bytes(members[0]) == jpeg_bytes()
    assert load(members[0], 16).pixels.shape == (16, 16, 3)
