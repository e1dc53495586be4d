"""zoomorph.data.labelled: reading label files and images as published, and every bad input the issue names."""

import numpy as np
import pandas as pd
import pytest

from conftest import REAL_DATA, jpeg_bytes, needs_real_data, random_solutions
from zoomorph.data.labelled import LabelFileError, Report, build_catalog, find_images, read_labels
from zoomorph.data.prepare import prepare
from zoomorph.io.decode import SKY_LEVEL
from zoomorph.labels import get_preset
from zoomorph.schema import ANSWER_COLUMNS


def test_q1_style_file_float_ids_unnamed_index(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(",GalaxyID,Class1.1,Class1.2,Class1.3\r\n0,100090.0,1.0,0.0,0.0\r\n1,100134.0,0.0,1.0,0.0\r\n")
    df = read_labels(path)
    assert df.index.tolist() == ["100090", "100134"] and list(df.columns) == ["Class1.1", "Class1.2", "Class1.3"]


def test_wrong_header_is_refused_with_what_was_found(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("objname,p_el,p_cs\nA,0.1,0.9\n")
    with pytest.raises(LabelFileError, match="wrong header.*objname"):
        read_labels(path)


def test_bad_rows_are_skipped_and_named(tmp_path):
    df = random_solutions([1, 2, 3, 4, 5, 6])
    df.iloc[1, 0] = np.nan                       # NaN fraction
    df.iloc[2, 5] = -0.1                         # negative
    df.iloc[4, df.columns.get_loc("Class7.1")] += 0.5  # breaks the tree
    path = tmp_path / "s.csv"
    text = df.to_csv()
    text += text.splitlines()[1] + "\n"          # duplicate of GalaxyID 1
    path.write_text(text + "1.5," + ",".join(["0.1"] * 37) + "\n")  # non-integral id
    report = Report()
    out = read_labels(path, report)
    assert out.index.tolist() == ["1", "4", "6"]
    reasons = report.frame()
    assert len(reasons) == 5
    assert any("row 3" in i and "GalaxyID 2" in i for i in reasons["item"])
    assert set(reasons["reason"].str.split(":").str[0]) == {
        "missing or non-numeric fraction", "negative fraction", "duplicate GalaxyID (first row kept)",
        "breaks the decision tree", "unusable GalaxyID '1.5'"}


def test_join_accounts_for_every_image_and_row(kaggle_dir):
    (kaggle_dir / "images" / "999999.jpg").write_bytes(jpeg_bytes())       # image without label row
    sol = pd.read_csv(kaggle_dir / "solutions.csv")
    extra = sol.iloc[:1].copy()
    extra["GalaxyID"] = 555555                                             # label row without image
    pd.concat([sol, extra]).to_csv(kaggle_dir / "solutions.csv", index=False)
    cat = build_catalog(kaggle_dir / "images", kaggle_dir / "solutions.csv", get_preset("hubble"))
    assert cat.counts["images found"] == 31 and cat.counts["label rows"] == 31
    assert cat.counts["images without label row"] == 1 and cat.counts["label rows without image"] == 1
    assert len(cat.table) == 30
    items = set(cat.report.frame()["item"])
    assert "555555" in items and any(i.endswith("999999.jpg") for i in items)
    assert set(cat.table.columns) >= {"id", "source", "label", *ANSWER_COLUMNS}


def test_folder_per_class_layout(tmp_path):
    for cls in ("elliptical", "spiral"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            (tmp_path / cls / f"{cls}{i}.jpg").write_bytes(jpeg_bytes(seed=i))
    cat = build_catalog(tmp_path, None, None)
    assert cat.classes == ["elliptical", "spiral"]
    assert sorted(cat.table["label"].value_counts().tolist()) == [3, 3]


def test_catalogue_with_path_column_and_missing_file(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes())
    pd.DataFrame({"path": ["a.jpg", "gone.jpg"], "GalaxyID": [7, 8], "ra": [1.0, 2.0]}).to_csv(
        tmp_path / "cat.csv", index=False)
    report = Report()
    table = find_images(tmp_path / "cat.csv", report)
    assert table["id"].tolist() == ["7"] and table["ra"].tolist() == [1.0]
    assert report.rows[0]["reason"] == "catalogue path does not exist" and "gone.jpg" in report.rows[0]["item"]


def test_zip_is_read_in_place(kaggle_dir, tmp_path):
    import zipfile
    archive = tmp_path / "images_training_rev1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted((kaggle_dir / "images").glob("*.jpg")):
            zf.write(p, f"images_training_rev1/{p.name}")
    from_zip = prepare(archive, kaggle_dir / "solutions.csv", tmp_path / "z", progress=False, workers=1).data
    from_dir = prepare(kaggle_dir / "images", kaggle_dir / "solutions.csv", tmp_path / "d", progress=False,
                       workers=1).data
    assert from_zip.table["id"].tolist() == from_dir.table["id"].tolist()
    np.testing.assert_array_equal(np.asarray(from_zip.images), np.asarray(from_dir.images))


def test_bad_images_are_reported_never_crash(kaggle_dir):
    images = kaggle_dir / "images"
    good = jpeg_bytes()
    cases = {
        "100000": good[: len(good) // 2],                          # truncated JPEG
        "100001": b"",                                             # zero-byte
        "100002": b"GalaxyID,Class1.1\nthis is text\n",            # not an image, .jpg name
        "100003": good[:200] + bytes(range(256)) * 20,             # corrupt JPEG body
        "100004": jpeg_bytes(mode="L"),                            # grayscale: converted
        "100005": jpeg_bytes(mode="CMYK"),                         # CMYK: converted
        "100006": jpeg_bytes(fmt="PNG"),                           # PNG content: converted
        "100007": jpeg_bytes(size=(300, 200)),                     # other size: converted
    }
    for gid, data in cases.items():
        (images / f"{gid}.jpg").write_bytes(data)
    summary = prepare(images, kaggle_dir / "solutions.csv", kaggle_dir / "prep", progress=False, workers=2)
    skipped = pd.read_csv(kaggle_dir / "prep" / "skipped.csv")
    decode = skipped[skipped["stage"] == "decode"].set_index("item")
    by_id = {item.split("/")[-1][:6]: row for item, row in decode.iterrows()}
    for gid in ("100000", "100001", "100002", "100003"):
        assert by_id[gid]["action"] == "skipped", gid
    assert "0 bytes" in by_id["100001"]["reason"] and "not an image" in by_id["100002"]["reason"]
    assert "truncated" in by_id["100000"]["reason"]
    for gid, word in [("100004", "from L"), ("100005", "from CMYK"), ("100006", "PNG"), ("100007", "300x200")]:
        assert by_id[gid]["action"] == "converted" and word in by_id[gid]["reason"], gid
    data = summary.data
    assert len(data.table) == 26 == len(data.images) and summary.counts["unreadable images"] == 4
    assert not data.table["id"].isin(["100000", "100001", "100002", "100003"]).any()
    grey = data.images[data.table.index[data.table["id"] == "100004"][0]]
    # grey stays grey, but for the auto crop's sky level, a count apart per band (SKY_LEVEL)
    band_gap = np.abs(np.diff(np.array(SKY_LEVEL, int))).max()
    assert (grey[..., 0] == grey[..., 1]).all() and (np.abs(grey[..., 1].astype(int) - grey[..., 2]) <= band_gap).all()


@needs_real_data
def test_q1_accounting_on_real_data(tmp_path):
    cat = build_catalog(REAL_DATA / "gz-kaggle-q1" / "images", REAL_DATA / "gz-kaggle-q1" / "labels_q1.csv",
                        get_preset("smooth-featured"))
    assert cat.counts["labelled images"] == 3238
    assert cat.counts["images without label row"] == 3269 and cat.counts["label rows without image"] == 21037
    assert cat.counts["class smooth"] == 679 and cat.counts["class featured"] == 2559
    assert len(cat.report.rows) == 3269 + 21037


def test_a_file_keeps_its_id_as_written_and_joins_labels_however_their_ids_are_written(tmp_path):
    """0123.jpg has id "0123" and matches a label row 123 or 123.0; with 123.jpg beside it, it is one galaxy."""
    (tmp_path / "images").mkdir()
    for name in ("0123.jpg", "0042.jpg", "galaxy.jpg"):
        (tmp_path / "images" / name).write_bytes(jpeg_bytes())
    for written in ("123", "123.0"):
        labels = random_solutions([0, 42]).reset_index(drop=True)
        labels.insert(0, "GalaxyID", [written, "42"])
        labels.to_csv(tmp_path / "labels.csv", index=False)
        cat = build_catalog(tmp_path / "images", tmp_path / "labels.csv", get_preset("hubble"))
        assert sorted(cat.table["id"]) == ["0042", "0123"]
        assert cat.counts["images without label row"] == 1 and cat.counts["label rows without image"] == 0
    (tmp_path / "images" / "123.jpg").write_bytes(jpeg_bytes())
    cat = build_catalog(tmp_path / "images", tmp_path / "labels.csv", get_preset("hubble"))
    dups = cat.report.frame().query("reason == 'duplicate GalaxyID (first file kept)'")["item"].tolist()
    assert dups == [str(tmp_path / "images" / "123.jpg")] and sorted(cat.table["id"]) == ["0042", "0123"]
