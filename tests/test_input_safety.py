"""Inputs that used to crash, vanish or mislead: every one is accounted for, with a reason that says why."""

import os

import numpy as np
import pandas as pd
import pytest
from predict_toys import make_run, write_images
from typer.testing import CliRunner

from conftest import jpeg_bytes, random_solutions
from zoomorph.cli import app
from zoomorph.data.dataset import PreparedData, check_classes
from zoomorph.data.labelled import Report, build_catalog, read_labels
from zoomorph.data.prepare import PrepareRefused, prepare, refused_report
from zoomorph.io import sources as sources_module
from zoomorph.io.decode import decode_batch
from zoomorph.io.inputs import frame_sources, iter_listing
from zoomorph.labels import get_preset
from zoomorph.predict import predict

runner = CliRunner()
FAST = dict(size=16, workers=1, progress=False)


def one_hot_labels(path, ids, smooth):
    """A q1-style file (Class1.1-1.3 only, no votes head possible): `smooth` of the ids smooth, the rest featured."""
    rows = [(gid, 1.0, 0.0, 0.0) if i < smooth else (gid, 0.0, 1.0, 0.0) for i, gid in enumerate(ids)]
    pd.DataFrame(rows, columns=["GalaxyID", "Class1.1", "Class1.2", "Class1.3"]).to_csv(path, index=False)
    return path


def kaggle_ids(kaggle_dir):
    return sorted(int(p.stem) for p in (kaggle_dir / "images").glob("*.jpg"))


def folder_files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# ------------------------------------------------------------ item 3: degenerate classes

def test_check_classes_names_every_class_and_its_count_per_split():
    table = pd.DataFrame({"label": ["a"] * 4 + ["b"] + [None],
                          "split": ["train", "train", "val", "val", "train", "val"]})
    with pytest.raises(ValueError, match=r"two classes .* a: 2 train, 2 val; b: 1 train, 0 val; c: 0 train, 0 val"):
        check_classes(table, ["a", "b", "c"])
    table.loc[table["label"] == "b", "split"] = "val"
    check_classes(pd.concat([table, table.iloc[[4]].assign(split="train")]), ["a", "b", "c"])  # a and b in both


def test_prepare_refuses_one_class_labels_and_leaves_no_folder(kaggle_dir, tmp_path):
    labels = one_hot_labels(tmp_path / "q1.csv", kaggle_ids(kaggle_dir), smooth=30)  # everything smooth
    with pytest.raises(PrepareRefused, match=r"smooth: 24 train, 6 val; featured: 0 train, 0 val") as err:
        prepare(kaggle_dir / "images", labels, tmp_path / "p", preset="smooth-featured", **FAST)
    assert not (tmp_path / "p").exists() and err.value.report == refused_report(tmp_path / "p")
    assert err.value.counts["class smooth"] == 30 and err.value.report.exists()

    with pytest.raises(PrepareRefused, match=r"smooth: 1 train, 0 val"):  # one galaxy: nothing to validate on
        prepare(kaggle_dir / "images", one_hot_labels(tmp_path / "q2.csv", kaggle_ids(kaggle_dir), smooth=1),
                tmp_path / "p", preset="smooth-featured", **FAST)
    with pytest.raises(PrepareRefused, match=r"smooth: 10 train, 0 val; featured: 20 train, 0 val"):
        prepare(kaggle_dir / "images", one_hot_labels(tmp_path / "q3.csv", kaggle_ids(kaggle_dir), smooth=10),
                tmp_path / "p", preset="smooth-featured", val=0.0, **FAST)
    two = prepare(kaggle_dir / "images", tmp_path / "q3.csv", tmp_path / "p", preset="smooth-featured", **FAST)
    assert two.warnings == [] and two.counts["val (labelled)"] == 6


def test_one_class_folder_is_refused_but_votes_data_is_only_warned_about(kaggle_dir, tmp_path):
    (tmp_path / "folders" / "spiral").mkdir(parents=True)
    for i in range(5):
        (tmp_path / "folders" / "spiral" / f"s{i}.jpg").write_bytes(jpeg_bytes(seed=i))
    with pytest.raises(PrepareRefused, match=r"spiral: 4 train, 1 val"):
        prepare(tmp_path / "folders", None, tmp_path / "f", **FAST)

    rules = tmp_path / "one.toml"  # a one-class preset on all 37 fractions: the votes head can still learn
    rules.write_text('[classes]\nround = ["share(Class1.1) >= 0.1"]\n')
    summary = prepare(kaggle_dir / "images", kaggle_dir / "solutions.csv", tmp_path / "v", preset=str(rules),
                      **FAST)
    assert len(summary.warnings) == 1 and "Only the votes head" in summary.warnings[0]
    assert "round: " in summary.warnings[0] and summary.data.has_votes


# ------------------------------------------------------------ item 5: links, loops, unreadable folders

@pytest.fixture
def awkward_folder(tmp_path, monkeypatch):
    """Ten good images, a link to itself, a broken link, a folder that cannot be listed, a link to a folder
    (up the tree: a loop if followed) and a FIFO named like an image."""
    folder = tmp_path / "d"
    write_images(folder, range(100000, 100010))
    os.symlink("100010.jpg", folder / "100010.jpg")
    os.symlink("gone.jpg", folder / "100011.jpg")
    (folder / "locked").mkdir()
    (folder / "locked" / "100012.jpg").write_bytes(b"")
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "up")
    os.mkfifo(folder / "sub" / "100013.jpg")
    scandir = os.scandir

    def refusing(path):  # as for a folder without read permission (chmod does not stop root)
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(sources_module.os, "scandir", refusing)
    return folder


EXPECTED_REASONS = {"100010.jpg": "Too many levels of symbolic links", "100011.jpg": "broken link",
                    "locked": "cannot list this folder (Permission denied)", "up": "a link to a folder, not followed",
                    "100013.jpg": "not a regular file"}


def test_predict_gives_every_entry_of_a_folder_a_row(awkward_folder, tmp_path, toys):
    summary = predict(make_run(tmp_path), [awkward_folder], tmp_path / "out.csv", backend="torch", workers=0,
                      progress=False)
    out = pd.read_csv(summary.out, dtype=str, keep_default_na=False)
    assert len(out) == 10 + len(EXPECTED_REASONS)
    assert (out["error"][:10] == "").all() and out["id"][:10].tolist() == [str(i) for i in range(100000, 100010)]
    errors = out[out["error"] != ""]["error"].tolist()
    for name, reason in EXPECTED_REASONS.items():
        assert sum(f"{name}: " in e and reason in e for e in errors) == 1, (name, errors)


def test_prepare_lists_every_entry_of_a_folder_in_skipped_csv(awkward_folder, tmp_path):
    random_solutions(range(100000, 100014)).to_csv(tmp_path / "solutions.csv")
    summary = prepare(awkward_folder, tmp_path / "solutions.csv", tmp_path / "p", **FAST)
    skipped = pd.read_csv(tmp_path / "p" / "skipped.csv")
    lines = (skipped["item"] + " | " + skipped["reason"]).tolist()
    for name, reason in EXPECTED_REASONS.items():
        assert sum(name in line and reason in line for line in lines) == 1, (name, lines)
    assert summary.counts["images found"] == 10 + len(EXPECTED_REASONS) and summary.counts["cached images"] == 10


# ------------------------------------------------------------ item 6: a catalogue row without a path

def test_prepare_reports_a_catalogue_row_without_a_path_as_predict_does(kaggle_dir):
    catalogue = kaggle_dir / "cat.csv"
    paths = [f"images/{gid}.jpg" for gid in kaggle_ids(kaggle_dir)]
    paths[2] = None
    pd.DataFrame({"path": paths}).to_csv(catalogue, index=False)
    summary = prepare(catalogue, kaggle_dir / "solutions.csv", kaggle_dir / "p", **FAST)
    skipped = pd.read_csv(kaggle_dir / "p" / "skipped.csv")
    row = skipped[skipped["stage"] == "images"]
    assert row["item"].tolist() == [str(catalogue)]
    assert row["reason"].tolist() == ["row 3 (data rows counted from 1) has no path"]
    assert summary.counts["images found"] == 30 and summary.counts["cached images"] == 29
    predicted = frame_sources(next(iter_listing([catalogue], 64)))[2]  # what predict decodes for that row
    assert decode_batch((0, [predicted], 16, 256))[2] == [f"{row['item'].item()}: {row['reason'].item()}"]


# ------------------------------------------------------------ item 9: a refusal shows its accounting, harms nothing

def test_a_refused_prepare_prints_the_accounting_and_writes_the_report_beside(kaggle_dir, tmp_path):
    text_ids = random_solutions([f"g{i}" for i in range(30)])
    text_ids.to_csv(tmp_path / "text.csv")
    result = runner.invoke(app, ["prepare", str(kaggle_dir / "images"), "--labels", str(tmp_path / "text.csv"),
                                 "--out", str(tmp_path / "p"), "--size", "16", "--workers", "1"])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "no image in" in output and "has a usable label row" in output
    assert "images found │ 30" in output and "label rows without image │ 30" in output
    report = tmp_path / "p.skipped.csv"
    assert f"skipped-items report: {report}" in output and not (tmp_path / "p").exists()
    assert len(pd.read_csv(report)) == 60  # 30 images without a label row, 30 label rows without an image


def test_a_refused_re_prepare_leaves_the_prepared_folder_as_it_was(tmp_path):
    folders = tmp_path / "folders"
    for cls in ("elliptical", "spiral"):
        (folders / cls).mkdir(parents=True)
        for i in range(5):
            (folders / cls / f"{cls}{i}.jpg").write_bytes(jpeg_bytes(seed=i))
    out = tmp_path / "p"
    prepare(folders, None, out, **FAST)
    before = folder_files(out)
    for i in range(5):  # every spiral unreadable: refused only after the decoding
        (folders / "spiral" / f"spiral{i}.jpg").write_bytes(b"")
    with pytest.raises(PrepareRefused, match="spiral: 0 train, 0 val"):
        prepare(folders, None, out, **FAST)
    assert folder_files(out) == before and len(PreparedData.load(out).table) == 10
    assert "0 bytes" in pd.read_csv(refused_report(out))["reason"].str.cat()
    for i in range(5):
        (folders / "spiral" / f"spiral{i}.jpg").write_bytes(jpeg_bytes(seed=i))
    prepare(folders, None, out, **FAST)
    assert not refused_report(out).exists()  # a later success removes the report of the refusal


# ------------------------------------------------------------ item 10: why an image has no label

def test_skipped_csv_says_a_label_row_was_rejected_and_that_duplicates_differed(kaggle_dir):
    solutions = pd.read_csv(kaggle_dir / "solutions.csv")
    solutions.loc[0, "Class1.1"] = np.nan       # 100000
    solutions.loc[1, "Class2.1"] = -0.2         # 100001
    solutions.loc[2, "Class6.1"] = 1.5          # 100002
    other = solutions.iloc[[3]].assign(**{"Class1.1": 0.0})  # 100003 again, with other values
    same = solutions.iloc[[4]]                               # 100004 again, the same row
    fixed = solutions.iloc[[0]].assign(**{"Class1.1": 1 - solutions.loc[0, ["Class1.2", "Class1.3"]].sum()})
    pd.concat([solutions, other, same, fixed]).to_csv(kaggle_dir / "solutions.csv", index=False)

    catalog = build_catalog(kaggle_dir / "images", kaggle_dir / "solutions.csv", get_preset("hubble"))
    report = catalog.report.frame()
    join = report[report["stage"] == "join"]
    join = join.set_index(join["item"].str.extract(r"(\d+)\.jpg$")[0])["reason"]
    assert join["100001"].startswith("label row rejected: negative fraction (") and "row 3" in join["100001"]
    assert join["100002"].startswith("label row rejected: fraction above 1 (")
    assert "100000" not in join.index  # its first row was rejected, a later one kept
    assert catalog.counts["images whose label row was rejected"] == 2
    assert catalog.counts["images without label row"] == 0
    dups = report[report["reason"].str.startswith("duplicate")].set_index("item")["reason"]
    assert dups.filter(like="GalaxyID 100003").item() == ("duplicate GalaxyID with other values than row 5 "
                                                          "(first row kept)")
    assert dups.filter(like="GalaxyID 100004").item() == "duplicate GalaxyID (first row kept)"
    assert len(dups) == 2


# ------------------------------------------------------------ item 11: empty and semicolon label files

def test_a_label_file_with_only_a_header_is_warned_about_and_refused(kaggle_dir, tmp_path):
    header = tmp_path / "header.csv"
    header.write_text(",".join(["GalaxyID", *pd.read_csv(kaggle_dir / "solutions.csv").columns[1:]]) + "\n")
    result = runner.invoke(app, ["labels", str(header)])
    assert result.exit_code == 0 and "warning" in result.output and "no data rows" in " ".join(result.output.split())
    with pytest.raises(PrepareRefused, match="header.csv: no data rows, only a header"):
        prepare(kaggle_dir / "images", header, tmp_path / "p", **FAST)


@pytest.mark.parametrize("sep, decimal", [(";", "."), (";", ","), ("\t", ".")])
def test_semicolon_and_tab_separated_label_files_are_read(kaggle_dir, tmp_path, sep, decimal):
    comma = read_labels(kaggle_dir / "solutions.csv")
    other = tmp_path / "other.csv"
    pd.read_csv(kaggle_dir / "solutions.csv").to_csv(other, sep=sep, decimal=decimal, index=False)
    report = Report()
    pd.testing.assert_frame_equal(read_labels(other, report), comma)
    assert report.rows == []
    result = runner.invoke(app, ["labels", str(other), "--preset", "hubble"])
    assert result.exit_code == 0 and "30 galaxies" in result.output
