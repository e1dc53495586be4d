"""The input listing, streamed chunk by chunk to disk: the same rows as the whole listing, in the same order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from predict_toys import CLASSES, make_run, toy_model, write_images

from zoomorph import runs
from zoomorph.io.decode import load
from zoomorph.io.inputs import expand_inputs, iter_listing
from zoomorph.io.sources import ImageError, Unusable
from zoomorph.predict import predict
from zoomorph.predict.guards import check_not_listed
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
    neighbours equal), also in CSV output; a code keeps its leading zeros; rows ending in a comma keep
    their path; a Parquet catalogue keeps a named pandas index, not an unnamed one."""
    monkeypatch.setattr(runs, "build_model", toy_model)
    write_images(tmp_path / "images", range(1000, 1004))
    (tmp_path / "one.csv").write_text("path,objid,code,mag\n"
                                      "images/1000.jpg,1237648720693755918,000123,1.5,\n"
                                      "images/1001.jpg,,7,,\n")
    catalogue = pd.DataFrame({"path": ["images/1002.jpg", "images/1003.jpg"], "survey_id": [41, 57],
                              "objid": pd.array([1237648720693755919, None], dtype="Int64")})
    catalogue.set_index("survey_id").to_parquet(tmp_path / "two.parquet")  # a range, in pandas' metadata
    catalogue.set_index("survey_id").iloc[::-1].to_parquet(tmp_path / "three.parquet")  # a stored column
    unnamed = pd.DataFrame({"path": ["images/1003.jpg", "images/1002.jpg"]}, index=[7, 3])  # stored, unnamed
    unnamed.to_parquet(tmp_path / "four.parquet")
    assert "__index_level_0__" in pq.read_schema(tmp_path / "four.parquet").names
    inputs = [tmp_path / f"{name}" for name in ("one.csv", "two.parquet", "three.parquet", "four.parquet")]

    out = pq.read_table(predict(make_run(tmp_path), inputs, tmp_path / "out.parquet", chunk_size=3, workers=0,
                                progress=False).out)
    as_csv = predict(make_run(tmp_path), inputs, tmp_path / "out.csv", chunk_size=3, workers=0, progress=False).out

    assert out["path"].to_pylist() == [str(tmp_path / f"images/{i}.jpg") for i in (1000, 1001, 1002, 1003, 1003,
                                                                                   1002, 1003, 1002)]
    assert out.column_names[:6] == ["id", "path", "objid", "code", "mag", "survey_id"]  # no __index_level_0__
    objids = [1237648720693755918, None, 1237648720693755919, None, None, 1237648720693755919, None, None]
    assert out.schema.field("objid").type == pa.int64() and out["objid"].to_pylist() == objids
    assert out["code"].to_pylist() == ["000123", "7"] + [None] * 6 and out["mag"].to_pylist()[:2] == [1.5, None]
    assert out["survey_id"].to_pylist() == [None, None, 41, 57, 57, 41, None, None]
    assert out["error"].to_pylist() == [""] * 8
    text = pd.read_csv(as_csv, dtype=str, keep_default_na=False)
    assert text["objid"].tolist() == ["" if i is None else str(i) for i in objids]


def test_a_csv_column_gets_one_type_for_the_whole_file(tmp_path):
    """Typed over all its chunks, not chunk by chunk; only what reads back unchanged becomes a number."""
    rows = [("1.50", " 1.5", "+5", "0x10", "NA", "12345678901234567890"),
            ("1e3", "2", "-6", "1", "3", "1"),
            ("abc", "2.5 ", "7", "2", "4", "2")]
    (tmp_path / "cat.csv").write_text("path,a,spaced,signed,hex,na,huge\n" +
                                      "".join(f"{i}.jpg," + ",".join(r) + "\n" for i, r in enumerate(rows)))
    frame = pd.concat(iter_listing([tmp_path / "cat.csv"], chunk_size=2), ignore_index=True)
    assert frame["a"].tolist() == ["1.50", "1e3", "abc"]  # text in the last chunk: text everywhere, as written
    assert frame["spaced"].tolist() == [1.5, 2.0, 2.5] and frame["signed"].tolist() == [5, -6, 7]
    assert frame["signed"].dtype == pd.ArrowDtype(pa.int64())
    assert frame["hex"].tolist() == ["0x10", "1", "2"] and frame["na"].tolist() == ["NA", "3", "4"]
    assert frame["huge"].tolist() == ["12345678901234567890", "1", "2"]


def test_integers_that_a_float_column_would_change_stay_text(tmp_path):
    write_images(tmp_path / "images", range(1000, 1002))
    (tmp_path / "ints.csv").write_text("path,objid\nimages/1000.jpg,1237648720693755918\n")
    (tmp_path / "floats.csv").write_text("path,objid\nimages/1001.jpg,0.5\n")
    (tmp_path / "small.csv").write_text("path,objid\nimages/1001.jpg,3\n")
    mixed = Listing.scan([tmp_path / "ints.csv", tmp_path / "floats.csv"], tmp_path / "a", chunk_size=1)
    assert mixed.schema.field("objid").type == pa.string()
    assert [mixed.chunk(k)["objid"][0].as_py() for k in (0, 1)] == ["1237648720693755918", "0.5"]
    exact = Listing.scan([tmp_path / "small.csv", tmp_path / "floats.csv"], tmp_path / "b", chunk_size=1)
    assert exact.schema.field("objid").type == pa.float64()


def test_a_row_without_a_path_is_named_by_catalogue_and_row_across_chunks(tmp_path):
    """Its error names the catalogue and the row, however the file was chunked; its id and path are null."""
    (tmp_path / "cat.csv").write_text("file,ra\na.jpg,1\n,2\nb.jpg,3\n  ,4\n")
    pq.write_table(pa.table({"path": ["c.jpg", None], "ra": [5, 6]}), tmp_path / "cat.parquet")
    listing = Listing.scan([tmp_path / "cat.csv", tmp_path / "cat.parquet"], tmp_path / "parts", chunk_size=3)
    sources = listing.sources(0) + listing.sources(1)
    missing = [read_error(s) for s in sources if isinstance(s, Unusable)]
    assert missing == [f"{tmp_path / 'cat.csv'}: row 2 (data rows counted from 1) has no file",
                       f"{tmp_path / 'cat.csv'}: row 4 (data rows counted from 1) has no file",
                       f"{tmp_path / 'cat.parquet'}: row 2 (data rows counted from 1) has no path"]
    chunks = pa.concat_tables([listing.chunk(0), listing.chunk(1)])
    assert chunks["path"].null_count == chunks["id"].null_count == 3
    assert chunks["ra"].to_pylist() == [1, 2, 3, 4, 5, 6]
    whole = expand_inputs([tmp_path / "cat.csv", tmp_path / "cat.parquet"])
    assert whole["path"].isna().tolist() == whole["id"].isna().tolist() == [False, True, False, True, False, True]


def read_error(source: Unusable) -> str:
    with pytest.raises(ImageError) as err:
        load(source, 64, 256)
    return str(err.value)


def test_an_unusable_row_travels_as_data_beside_its_path(tmp_path):
    """The listing keeps an Unusable row's item and reason in columns of their own; the output's columns
    leave the error to decoding, and the --out guard passes over such rows."""
    write_images(tmp_path / "images", range(1000, 1002))
    out = tmp_path / "images" / "1001.jpg"
    (tmp_path / "cat.csv").write_text(f"path,ra\nimages/1000.jpg,1\n,2\n{out},3\n")
    listing = Listing.scan([tmp_path / "cat.csv"], tmp_path / "parts", chunk_size=8)
    stored = pq.read_table(tmp_path / "parts" / "listing-00000.parquet")
    assert stored.column_names == ["id", "path", "error", "ra"]
    assert stored["error"].to_pylist() == [None, "row 2 (data rows counted from 1) has no path", None]
    assert listing.sources(0)[1] == Unusable(str(tmp_path / "cat.csv"), "row 2 (data rows counted from 1) has no path")
    assert listing.schema.names == ["id", "path", "ra"] and listing.chunk(0)["path"].null_count == 1
    with pytest.raises(ValueError, match="is an input: it is listed as"):
        check_not_listed(out, listing)
