"""predict never writes over its inputs or someone else's file, knows when it is done, says which model file is
damaged, and stops on a full disk with nothing half-written, ready to continue (issue 18, items 4, 7, 8)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from predict_toys import make_run, write_images
from typer.testing import CliRunner

from zoomorph import runs
from zoomorph.cli import app
from zoomorph.predict import export_onnx, predict, writers
from zoomorph.predict.writers import DiskFull, errors_path, parts_dir, record_path

pytestmark = pytest.mark.usefixtures("toys")
FAST = dict(backend="torch", workers=0, progress=False)


@pytest.fixture
def images(tmp_path):
    write_images(tmp_path / "images", range(1000, 1012))
    return tmp_path / "images"


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def squeezed(text: str) -> str:
    return "".join(text.split())


def cli(*args) -> tuple[int, str]:
    """Exit code and output, without white space: rich wraps long lines, even inside a path."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, squeezed(result.output)


# ---------------------------------------------------------------- item 4: what --out may replace

def test_an_out_that_is_an_input_is_refused_even_with_overwrite_and_nothing_changes(tmp_path, images):
    run = make_run(tmp_path)
    catalogue = tmp_path / "mycat.csv"
    catalogue.write_text("path,ra\nimages/1000.jpg,1.5\nimages/1001.jpg,2.5\n")
    (tmp_path / "link.csv").symlink_to(catalogue)
    listed = tmp_path / "elsewhere"
    listed.mkdir()
    (listed / "cat.csv").write_text(f"path\n{images / '1003.jpg'}\n")
    before = snapshot(tmp_path)
    refused = [
        ([catalogue], catalogue, "is the input"),  # its own catalogue
        ([catalogue], tmp_path / "link.csv", "is the input"),  # the same file through a link
        ([images / "1002.jpg"], images / "1002.jpg", "is the input"),  # an image given
        ([images], images / "1005.jpg", "inside the input folder"),  # an image a folder lists
        ([tmp_path / "images" / ".." / "images"], images / "new.png", "inside the input folder"),  # not yet there
        ([listed / "cat.csv"], images / "1003.jpg", "listed as"),  # a file a catalogue lists
    ]
    for inputs, out, message in refused:
        for overwrite in (False, True):
            expected = message if message != "listed as" or overwrite else "is not an output of zoomorph predict"
            with pytest.raises(ValueError, match=expected):  # (without overwrite that is seen first)
                predict(run, inputs, out, format="csv" if out.suffix == ".csv" else None, overwrite=overwrite,
                        **FAST)
            assert snapshot(tmp_path) == before, (out, overwrite)
    # a file inside an input folder that the folder's walk does not list is no input
    assert predict(run, [images], images / "predictions.csv", **FAST).total == 12


def test_an_existing_file_not_from_predict_is_replaced_only_with_overwrite(tmp_path, images):
    run = make_run(tmp_path)
    for name in ("notes.txt", "mine.csv", "table.parquet"):
        out = tmp_path / name
        out.write_text("someone's data\n")
        before = snapshot(tmp_path)
        with pytest.raises(ValueError, match=f"{name} exists and is not an output of zoomorph predict"):
            predict(run, [images], out, **FAST)
        assert snapshot(tmp_path) == before
        assert predict(run, [images], out, overwrite=True, **FAST).predicted == 12
    assert pq.read_table(tmp_path / "notes.txt").num_rows == 12  # replaced, as asked
    code, output = cli("predict", run, images, "--out", tmp_path / "other.txt", "--workers", 0)
    assert code == 0
    (tmp_path / "other.txt").write_text("edited")
    code, output = cli("predict", run, images, "--out", tmp_path / "other.txt", "--workers", 0)
    assert code == 2 and squeezed("other.txt exists and is not an output of zoomorph predict") in output
    assert "Traceback" not in output


@pytest.mark.parametrize("name", ["p.parquet", "p.csv"])
def test_a_finished_output_is_already_complete_and_overwrite_redoes_it(tmp_path, images, name):
    run, out = make_run(tmp_path), tmp_path / name
    first = predict(run, [images], out, chunk_size=5, **FAST)
    assert (first.predicted, first.already_complete) == (12, False) and not parts_dir(out).exists()
    before = snapshot(tmp_path)
    again = predict(run, [images], out, chunk_size=5, **FAST)
    assert (again.total, again.ok, again.errors, again.predicted, again.already_complete) == (12, 12, 0, 0, True)
    assert snapshot(tmp_path) == before  # nothing rewritten, no parts folder left behind
    code, output = cli("predict", run, images, "--out", out, "--chunk-size", 5, "--backend", "torch",
                       "--workers", 0)
    assert code == 0 and squeezed(f"{out} is already complete: 12 inputs") in output
    assert predict(run, [images], out, chunk_size=5, overwrite=True, **FAST).predicted == 12
    assert predict(run, [images / "1000.jpg"], out, **FAST).total == 1  # other inputs: predict's own file, replaced
    if name.endswith(".csv"):  # the record beside a CSV counts only for the file it describes
        assert json.loads(record_path(out).read_text())["rows"] == 1
        out.write_text(out.read_text() + "1999,edited,by,hand\n")
        with pytest.raises(ValueError, match="is not an output of zoomorph predict"):
            predict(run, [images], out, **FAST)


# ---------------------------------------------------------------- item 7: damaged model files

def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(os.urandom(len(data)) if how == "random" else data[:len(data) // 2])


@pytest.mark.parametrize("how", ["random", "truncated"])
def test_a_damaged_model_pt_is_one_clear_error_everywhere(tmp_path, images, how):
    run = make_run(tmp_path)
    _damage(runs.Run.open(run).weights_file, how)
    with pytest.raises(runs.RunFileError, match=r"model.pt is damaged .*retrain the run"):
        runs.Run.open(run).load_model()
    for backend in ("torch", "auto"):
        with pytest.raises(runs.RunFileError, match="model.pt is damaged"):
            predict(run, [images], tmp_path / "p.parquet", backend=backend, workers=0, progress=False)
    for command in (["predict", run, images, "--out", tmp_path / "p.parquet", "--workers", 0],
                    ["evaluate", run], ["export", run], ["export", run, "--int8"]):
        code, output = cli(*command)
        assert code == 2 and squeezed(f"{run / 'model.pt'} is damaged") in output, command
        assert "Traceback" not in output and output.count("error:") == 1
    assert not parts_dir(tmp_path / "p.parquet").exists()


def test_weights_that_do_not_fit_config_json_are_refused(tmp_path, images):
    """A global-pool model loads at any image size: the size it was trained at is recorded with its weights
    (older runs: in summary.json) and compared; other classes fail load_state_dict, named as such."""
    run = make_run(tmp_path)  # toy-pooled at 16 px: per-pixel features, then a mean
    export_onnx(run)
    files = runs.Run.open(run)
    config = json.loads(files.config_file.read_text())
    files.config_file.write_text(json.dumps(config | {"image_size": 24}))
    for backend in ("torch", "onnx"):  # the graph made at 16 px is not taken for the 24 px config either
        with pytest.raises(runs.RunFileError, match="says image_size 24, but .*model.pt was trained at 16 px"):
            predict(run, [images], tmp_path / "p.parquet", backend=backend, workers=0, progress=False)
    state = torch.load(files.weights_file, weights_only=True)
    del state._metadata[runs.RECORD]  # as an older run wrote it
    torch.save(state, files.weights_file)
    files.summary_file.write_text(json.dumps({"image_size": 16}))
    with pytest.raises(runs.RunFileError, match="trained at 16 px"):
        runs.Run.open(run).load_model()
    files.config_file.write_text(json.dumps(config | {"classes": ["a", "b"]}))
    with pytest.raises(runs.RunFileError, match=r"does not fit .*2 outputs, 16 px\): size mismatch"):
        runs.Run.open(run).load_model()


def test_a_damaged_onnx_graph_beside_its_sidecar_is_exported_again(tmp_path, images):
    run = make_run(tmp_path)
    graph = export_onnx(run)
    graph.write_bytes(b"not a protobuf at all" * 50)
    out = predict(run, [images], tmp_path / "onnx.parquet", backend="onnx", workers=0, progress=False).out
    assert json.loads(runs.sidecar(graph).read_text())["graph_sha256"] == hashlib.sha256(graph.read_bytes()).hexdigest()
    torch_out = predict(run, [images], tmp_path / "torch.parquet", **FAST).out
    values = [c for c in pd.read_parquet(out).columns if c.startswith("p_")]
    pd.testing.assert_frame_equal(pd.read_parquet(out)[values], pd.read_parquet(torch_out)[values], atol=1e-4)


# ---------------------------------------------------------------- item 8: a full disk

def _full_disk(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_while_writing_parts_says_how_far_and_a_rerun_continues(tmp_path, images, monkeypatch, code):
    run, out = make_run(tmp_path), tmp_path / "p.parquet"
    write_table = pq.write_table

    def third_part_fills_the_disk(table, where, *args, **kwargs):
        if Path(where).name == "part-00002.parquet.tmp":
            Path(where).write_bytes(b"PAR1 half a part")
            raise _full_disk(code)
        return write_table(table, where, *args, **kwargs)

    monkeypatch.setattr(writers.pq, "write_table", third_part_fills_the_disk)
    with pytest.raises(DiskFull, match=r"2 of 4 parts \(6 of 12 rows\) .* rerun the same command: it continues"):
        predict(run, [images], out, chunk_size=3, **FAST)
    assert not list(tmp_path.rglob("*.tmp")) and not out.exists()
    status, output = cli("predict", run, images, "--out", out, "--chunk-size", 3, "--backend", "torch",
                         "--workers", 0)
    assert status == 2 and squeezed("no space left on the disk") in output and "Traceback" not in output
    monkeypatch.setattr(writers.pq, "write_table", write_table)  # space freed
    assert predict(run, [images], out, chunk_size=3, **FAST).predicted == 6
    reference = predict(run, [images], tmp_path / "reference.parquet", chunk_size=3, **FAST).out
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(reference))


@pytest.mark.parametrize("name, head", [("p.parquet", "classes"), ("p.csv", "classes"), ("sub.csv", "votes")])
def test_a_full_disk_while_assembling_leaves_no_tmp_and_a_rerun_assembles(tmp_path, images, monkeypatch, name,
                                                                          head):
    """Also a Kaggle submission's list of what it left out, written alongside."""
    run, out = make_run(tmp_path, head=head), tmp_path / name
    options = FAST | dict(chunk_size=5, format="kaggle" if head == "votes" else None)
    (images / "1999.jpg").write_bytes(b"not an image")  # one row for the list
    owner, method = (pq.ParquetWriter, "write_table") if name.endswith(".parquet") else (pd.DataFrame, "to_csv")
    real, calls = getattr(owner, method), []

    def second_chunk_fills_the_disk(self, *args, **kwargs):
        if Path(self.where if owner is pq.ParquetWriter else args[0]).name == f"{name}.tmp":
            calls.append(1)
            if len(calls) == 2:  # the first chunk is in OUT.tmp already
                raise _full_disk(errno.ENOSPC)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(owner, method, second_chunk_fills_the_disk)
    with pytest.raises(DiskFull, match=rf"while assembling {out}: all 3 parts \(13 rows.*it only assembles"):
        predict(run, [images], out, **options)
    assert len(calls) == 2 and not list(tmp_path.rglob("*.tmp"))
    assert not out.exists() and len(list(parts_dir(out).glob("part-*.parquet"))) == 3
    monkeypatch.setattr(owner, method, real)  # space freed
    assert predict(run, [images], out, **options).predicted == 0  # every part was kept
    reference = predict(run, [images], tmp_path / f"reference{out.suffix}", **options).out
    read = pd.read_parquet if name.endswith(".parquet") else pd.read_csv
    pd.testing.assert_frame_equal(read(out), read(reference))
    assert name.endswith(".parquet") or out.read_bytes() == reference.read_bytes()
    if head == "votes":
        assert len(pd.read_csv(errors_path(out))) == len(pd.read_csv(errors_path(reference))) == 1
