"""predict(): every input becomes one row, in order; bad files become error rows; TTA, MC dropout, formats."""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from predict_toys import CLASSES, jpeg, make_run, write_images

from zoomorph import runs
from zoomorph.data.augment import dihedral
from zoomorph.inference import outputs_to_probs, to_input
from zoomorph.io.decode import load
from zoomorph.io.ids import source_id
from zoomorph.io.inputs import expand_inputs
from zoomorph.labels import assign
from zoomorph.predict import predict, writers
from zoomorph.schema import ANSWER_COLUMNS

P_COLUMNS = [f"p_{c}" for c in CLASSES]


pytestmark = pytest.mark.usefixtures("toys")


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "images", range(1000, 1040))


def expected(run, sources, transform=None) -> np.ndarray:
    """The run's model on images.load's pixels: the same preprocessing as training."""
    run = runs.Run.open(run)
    model, cfg = run.load_model(), run.config
    pixels = torch.from_numpy(np.stack([load(str(s), cfg.image_size, cfg.fov).pixels for s in sources]))
    with torch.inference_mode():
        x = to_input(pixels)
        return outputs_to_probs(model(transform(x) if transform else x), cfg.head).numpy()


def test_bad_inputs_become_error_rows_and_catalogue_columns_carry_through(tmp_path, images):
    bad = tmp_path / "bad"
    bad.mkdir()
    good = jpeg(7)
    (bad / "corrupt.jpg").write_bytes(good[:20] + bytes(range(256)) * 8)
    (bad / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.jpg").write_text("not an image at all\n")
    catalogue = tmp_path / "catalogue.csv"
    pd.DataFrame({"path": ["images/1000.jpg", "images/missing.jpg", None, "images/1001.jpg"],
                  "survey": ["sdss", "sdss", "decals", "sdss"],
                  "redshift": [0.1, 0.2, 0.3, 0.4]}).to_csv(catalogue, index=False)

    summary = predict(make_run(tmp_path), [tmp_path / "images", bad, catalogue], tmp_path / "out.parquet",
                      batch_size=8, chunk_size=16, workers=2, progress=False)

    out = pd.read_parquet(tmp_path / "out.parquet")
    assert summary.total == len(out) == 40 + 4 + 4
    assert summary.errors == 6 and summary.ok == 42
    assert list(out["path"][:40]) == [str(p) for p in images]  # input order
    failed = out[out["error"] != ""]
    assert set(failed["id"].fillna("")) == {"corrupt", "truncated", "empty", "notes", "missing", ""}
    assert failed["id"].isna().sum() == 1  # the catalogue row without a path has no id either
    assert failed[P_COLUMNS].isna().all().all() and failed["predicted"].isna().all()
    assert "0 bytes" in failed.set_index("id").loc["empty", "error"]
    no_path = failed[failed["id"].isna()]
    assert no_path["error"].item() == f"{catalogue}: row 3 (data rows counted from 1) has no path"
    assert no_path["path"].isna().all()  # not the marker that carried the message
    fine = out[out["error"] == ""]
    np.testing.assert_allclose(fine[P_COLUMNS].sum(axis=1), 1, atol=1e-5)
    assert (fine["predicted"] == np.array(CLASSES)[fine[P_COLUMNS].to_numpy().argmax(1)]).all()
    rows = out.tail(4)
    assert rows["survey"].tolist() == ["sdss", "sdss", "decals", "sdss"]
    assert rows["redshift"].tolist() == [0.1, 0.2, 0.3, 0.4]
    np.testing.assert_allclose(out[P_COLUMNS][:40], expected(make_run(tmp_path), images), atol=1e-6)


def test_csv_and_parquet_hold_the_same_rows(tmp_path, images):
    run = make_run(tmp_path)
    predict(run, [images[0].parent], tmp_path / "out.parquet", chunk_size=16, workers=0, progress=False)
    predict(run, [images[0].parent], tmp_path / "out.csv", format="csv", chunk_size=7, workers=0, progress=False)
    parquet, csv = pd.read_parquet(tmp_path / "out.parquet"), pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert list(csv.columns) == list(parquet.columns) == ["id", "path", *P_COLUMNS, "predicted", "entropy", "error"]
    assert (csv["id"] == parquet["id"]).all() and (csv["predicted"] == parquet["predicted"]).all()
    np.testing.assert_allclose(csv[P_COLUMNS], parquet[P_COLUMNS], rtol=1e-6)
    assert not (tmp_path / "out.csv.parts").exists()


def test_ids_are_galaxy_ids_when_numeric_else_stems(tmp_path, images):
    run = make_run(tmp_path)
    (tmp_path / "named").mkdir()
    (tmp_path / "named" / "NGC 4414.png").write_bytes(jpeg(1, fmt="PNG"))
    assert expand_inputs([images[0].parent])["id"].dtype == np.int64
    ids = expand_inputs([images[0].parent, tmp_path / "named"])["id"]
    assert ids.iloc[0] == "1000" and ids.iloc[-1] == "NGC 4414"
    names = ["a/b/100008.jpg", "x.zip::dir/NGC 1300.fits.gz", "dir/m.31.png", "dir/.hidden", "dir/noext"]
    assert [source_id(n) for n in names] == ["100008", "NGC 1300", "m.31", ".hidden", "noext"]
    with pytest.raises(FileNotFoundError, match="nope.jpg: no such file"):
        expand_inputs([images[0], tmp_path / "nope.jpg"])
    with pytest.raises(ValueError, match="numeric GalaxyIDs"):
        predict(make_run(tmp_path, head="votes"), [tmp_path / "named"], tmp_path / "k.csv", format="kaggle",
                progress=False)
    with pytest.raises(FileNotFoundError, match="nope.jpg: no such file"):
        predict(run, [images[0], tmp_path / "nope.jpg"], tmp_path / "m.parquet", progress=False)
    assert not list(tmp_path.glob("*.parts"))  # refused before anything was written


def test_zip_read_in_place(tmp_path, images):
    archive = tmp_path / "images_test_rev1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in images[:10]:
            zf.write(path, f"images_test_rev1/{path.name}")
    run = make_run(tmp_path)
    predict(run, [archive], tmp_path / "zip.parquet", workers=2, progress=False)
    predict(run, images[:10], tmp_path / "files.parquet", workers=0, progress=False)
    from_zip, from_files = pd.read_parquet(tmp_path / "zip.parquet"), pd.read_parquet(tmp_path / "files.parquet")
    assert from_zip["path"][0] == f"{archive}::images_test_rev1/1000.jpg"
    assert (from_zip["id"] == from_files["id"]).all()
    np.testing.assert_array_equal(from_zip[P_COLUMNS], from_files[P_COLUMNS])


def test_tta_changes_nothing_for_an_invariant_model(tmp_path, images):
    run = make_run(tmp_path, "toy-pooled")
    plain = predict(run, images, tmp_path / "plain.parquet", workers=0, progress=False).out
    tta = predict(run, images, tmp_path / "tta.parquet", tta=True, workers=0, progress=False).out
    np.testing.assert_allclose(pd.read_parquet(tta)[P_COLUMNS], pd.read_parquet(plain)[P_COLUMNS], atol=1e-6)


def test_tta_is_the_mean_of_the_eight_views(tmp_path, images):
    run = make_run(tmp_path, "toy-spatial")
    out = pd.read_parquet(predict(run, images, tmp_path / "tta.parquet", tta=True, workers=0, progress=False).out)
    views = [expected(run, images, lambda x, k=k: dihedral(x, k)) for k in range(8)]
    np.testing.assert_allclose(out[P_COLUMNS], np.mean(views, axis=0), atol=1e-6)
    assert not np.allclose(views[0], views[1], atol=1e-3)  # the views do differ for this model


def test_mc_dropout_adds_uncertainty_and_is_reproducible(tmp_path, images):
    run = make_run(tmp_path, "toy-spatial")
    first = pd.read_parquet(predict(run, images, tmp_path / "a.parquet", mc_samples=16, batch_size=8, workers=0,
                                    progress=False).out)
    # in two worker processes, each predicting its own batches: the same masks (seeded per batch)
    again = pd.read_parquet(predict(run, images, tmp_path / "b.parquet", mc_samples=16, batch_size=8, workers=2,
                                    progress=False).out)
    plain = pd.read_parquet(predict(run, images, tmp_path / "c.parquet", workers=0, progress=False).out)
    pd.testing.assert_frame_equal(first, again)
    assert (first["std"] > 0).all() and (first["mutual_info"] > 0).all()
    assert (first["mutual_info"] <= first["entropy"] + 1e-6).all()
    assert not np.allclose(first[P_COLUMNS], plain[P_COLUMNS], atol=1e-3)
    with pytest.raises(ValueError, match="no dropout"):
        predict(make_run(tmp_path, "toy-pooled"), images, tmp_path / "d.parquet", mc_samples=4, progress=False)


def test_votes_run_kaggle_submission_and_preset(tmp_path, images):
    run = make_run(tmp_path, head="votes")
    (images[0].parent / "9999.jpg").write_bytes(b"")  # unreadable: no line in a submission
    predict(run, [images[0].parent], tmp_path / "sub.csv", format="kaggle", workers=0, progress=False)
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    assert lines[0] == "GalaxyID," + ",".join(ANSWER_COLUMNS)
    assert len(lines) == 1 + 40 and lines[1].startswith("1000,")

    # A rule at the median of Class1.1 labels about half the galaxies, so the comparison means something.
    median = pd.read_csv(tmp_path / "sub.csv")["Class1.1"].median()
    rules = tmp_path / "half.toml"
    rules.write_text(f'[classes]\nround = ["Class1.1 > {median}"]\n')
    out = pd.read_parquet(predict(run, [images[0].parent], tmp_path / "v.parquet", preset=str(rules), workers=0,
                                  progress=False).out)
    fine = out[out["error"] == ""].reset_index(drop=True)
    np.testing.assert_allclose(fine[["Class1.1", "Class1.2", "Class1.3"]].sum(axis=1), 1, atol=1e-5)
    labels = assign(fine[ANSWER_COLUMNS].astype(float), str(rules)).labels
    assert fine["predicted"].fillna("-").tolist() == labels.fillna("-").tolist()
    assert 10 <= (fine["predicted"] == "round").sum() <= 30
    with pytest.raises(ValueError, match="votes head"):
        predict(make_run(tmp_path), images, tmp_path / "c.csv", format="kaggle", progress=False)


def test_interrupted_run_resumes_and_refuses_other_settings(tmp_path, images, monkeypatch):
    run, out = make_run(tmp_path), tmp_path / "out.parquet"
    reference = pd.read_parquet(predict(run, images, tmp_path / "ref.parquet", chunk_size=8, workers=0,
                                        progress=False).out)
    written = []
    real_write = writers.PartWriter._write

    def die_after_two_parts(self, chunk):
        if len(written) == 2:
            raise KeyboardInterrupt
        real_write(self, chunk)
        written.append(chunk)

    monkeypatch.setattr(writers.PartWriter, "_write", die_after_two_parts)
    with pytest.raises(KeyboardInterrupt):
        predict(run, images, out, chunk_size=8, workers=2, progress=False)
    monkeypatch.setattr(writers.PartWriter, "_write", real_write)
    assert sorted(p.name for p in (tmp_path / "out.parquet.parts").glob("part-*")) == [
        "part-00000.parquet", "part-00001.parquet"]

    with pytest.raises(ValueError, match="different prediction"):
        predict(run, images, out, chunk_size=8, tta=True, workers=0, progress=False)
    summary = predict(run, images, out, chunk_size=8, workers=0, progress=False)
    assert summary.total == 40 and not (tmp_path / "out.parquet.parts").exists()
    pd.testing.assert_frame_equal(pd.read_parquet(out), reference)
