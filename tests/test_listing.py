"""The input listing, streamed chunk by chunk to disk: the same rows as the whole listing, in the same order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from predict_toys import CLASSES, make_run, toy_model, write_images

from zoomorph import runs
from zoomorph.predict import expand_inputs, predict
from zoomorph.predict.inputs import iter_listing
from zoomorph.predict.listing import Listing


def test_a_walk_lists_in_sorted_path_order_one_folder_at_a_time(tmp_path):
    # "b.jpg" sorts before the folder "b" inside full paths ("b." < "b/"), "b0.jpg" after it
    for name in ["b.jpg", "b/x.jpg", "b/c/y.png", "b0.jpg", "a.jpg", "B.jpg", "b/notes.txt", "c/d/e/z.fits"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    listed = list(pd.concat(iter_listing([tmp_path], chunk_size=3))["path"])
    everything = sorted(str(p) for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".txt")
    assert listed == everything and len(listed) == 7


def test_chunks_hold_exactly_chunk_size_rows_across_inputs(tmp_path):
    images = write_images(tmp_path / "images", range(100, 111))
    catalogue = tmp_path / "cat.csv"
    pd.DataFrame({"file": [f"images/{i}.jpg" for i in range(100, 105)], "mag": range(5)}).to_csv(catalogue,
                                                                                                   index=False)
    frames = list(iter_listing([images[0], catalogue, tmp_path / "images"], chunk_size=4))
    assert [len(f) for f in frames] == [4, 4, 4, 4, 1]  # 1 + 5 + 11 rows
    whole = expand_inputs([images[0], catalogue, tmp_path / "images"])
    assert whole["id"].dtype == np.int64 and whole["id"].tolist() == [100, *range(100, 105), *range(100, 111)]
    streamed = pd.concat(frames, ignore_index=True)
    assert streamed["path"].tolist() == whole["path"].tolist()
    assert streamed["mag"].tolist()[1:6] == [0, 1, 2, 3, 4] and streamed["mag"].isna().sum() == 12
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        list(iter_listing([tmp_path / "empty"], 4))


def test_catalogues_read_in_chunks_keep_every_column_in_one_schema(tmp_path, monkeypatch):
    """Two catalogues with different columns, one of them a number here and text there, in chunks smaller
    than either: the output has the union of the columns, nulls where a catalogue lacks one, and a
    catalogue's own `id` column comes through as input_id."""
    monkeypatch.setattr(runs, "build_model", toy_model)
    write_images(tmp_path / "images", range(1000, 1010))
    pd.DataFrame({"path": [f"images/{i}.jpg" for i in range(1000, 1006)], "id": list("abcdef"),
                  "field": [1, 2, 3, 4, 5, 6], "z": [0.1] * 6}).to_csv(tmp_path / "one.csv", index=False)
    pd.DataFrame({"image": [f"images/{i}.jpg" for i in range(1006, 1010)], "field": ["n1", "n2", "s1", "s2"],
                  "entropy": [9.0] * 4}).to_parquet(tmp_path / "two.parquet")

    out = pd.read_parquet(predict(make_run(tmp_path), [tmp_path / "one.csv", tmp_path / "two.parquet"],
                                  tmp_path / "out.parquet", chunk_size=4, workers=0, progress=False).out)

    assert out["id"].tolist() == list(range(1000, 1010))
    assert out.columns.tolist()[:6] == ["id", "path", "input_id", "field", "z", "input_entropy"]
    assert out["input_id"].tolist()[:6] == list("abcdef") and out["input_id"][6:].isna().all()
    assert out["field"].tolist() == ["1", "2", "3", "4", "5", "6", "n1", "n2", "s1", "s2"]
    assert out["z"][:6].tolist() == [0.1] * 6 and out["z"][6:].isna().all()
    assert out["input_entropy"][6:].tolist() == [9.0] * 4 and (out["entropy"] < np.log(len(CLASSES)) + 1e-6).all()
    assert (out["error"] == "").all()


def test_the_scan_writes_every_row_once_and_digests_what_it_wrote(tmp_path):
    write_images(tmp_path / "images", range(10))
    first = Listing.scan([tmp_path / "images"], tmp_path / "a", chunk_size=3)
    assert (first.rows, first.n_chunks, first.not_numeric) == (10, 4, None)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [f"listing-0000{k}.parquet" for k in range(4)]
    table = pa.concat_tables(first.chunk(k) for k in range(first.n_chunks))
    assert table.schema.field("id").type == pa.int64() and table["id"].to_pylist() == list(range(10))
    assert sum((first.sources(k) for k in range(4)), []) == [str(tmp_path / f"images/{i}.jpg") for i in range(10)]

    assert Listing.scan([tmp_path / "images"], tmp_path / "b", chunk_size=3).digest == first.digest
    (tmp_path / "images" / "galaxy.jpg").write_bytes(b"")
    other = Listing.scan([tmp_path / "images"], tmp_path / "c", chunk_size=3)
    assert other.digest != first.digest and other.not_numeric == "galaxy" and other.rows == 11


def test_a_catalogue_that_cannot_be_read_is_refused_by_name(tmp_path):
    pd.DataFrame({"name": ["x.jpg"]}).to_csv(tmp_path / "cat.csv", index=False)
    with pytest.raises(ValueError, match=r"cat.csv: a catalogue needs a path column \(one of path, file"):
        list(iter_listing([tmp_path / "cat.csv"], 4))
    rows = ["path,mag"] + [f"{i}.jpg,{i}" for i in range(10)] + ["10.jpg,10,surplus"]
    (tmp_path / "ragged.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"ragged.csv: cannot read this catalogue .*line 12"):
        list(iter_listing([tmp_path / "ragged.csv"], 4))  # the bad row is past the first chunks
    (tmp_path / "first.csv").write_text("path,mag\n0.jpg,0,surplus\n1.jpg,1\n")  # pandas would warn and drop it
    with pytest.raises(ValueError, match=r"first.csv: cannot read this catalogue"):
        list(iter_listing([tmp_path / "first.csv"], 4))
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "fake.parquet").write_text("path\nx.jpg\n")
    for name in ("empty.csv", "fake.parquet"):
        with pytest.raises(ValueError, match=f"{name}: cannot read this catalogue"):
            list(iter_listing([tmp_path / name], 4))


def test_catalogue_columns_come_through_exactly(tmp_path, monkeypatch):
    """What users join predictions back on: a 19-digit objid with a gap stays int64 (float64 would make
    neighbours equal), a code keeps its leading zeros, rows ending in a comma keep their path, and a
    Parquet catalogue saved with a pandas index keeps that column."""
    monkeypatch.setattr(runs, "build_model", toy_model)
    write_images(tmp_path / "images", range(1000, 1004))
    (tmp_path / "one.csv").write_text("path,objid,code,mag\n"
                                      "images/1000.jpg,1237648720693755918,000123,1.5,\n"
                                      "images/1001.jpg,,7,,\n")
    catalogue = pd.DataFrame({"path": ["images/1002.jpg", "images/1003.jpg"], "survey_id": [41, 57],
                              "objid": pd.array([1237648720693755919, None], dtype="Int64")})
    catalogue.set_index("survey_id").to_parquet(tmp_path / "two.parquet")

    out = pq.read_table(predict(make_run(tmp_path), [tmp_path / "one.csv", tmp_path / "two.parquet"],
                                tmp_path / "out.parquet", chunk_size=1, workers=0, progress=False).out)

    assert out["path"].to_pylist() == [str(tmp_path / f"images/{i}.jpg") for i in range(1000, 1004)]
    assert out.schema.field("objid").type == pa.int64()
    assert out["objid"].to_pylist() == [1237648720693755918, None, 1237648720693755919, None]
    assert out["code"].to_pylist() == ["000123", "7", None, None] and out["mag"].to_pylist()[:2] == [1.5, None]
    assert out["survey_id"].to_pylist() == [None, None, 41, 57]
    assert out["error"].to_pylist() == [""] * 4
