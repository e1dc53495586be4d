"""A model in one file: `zoomorph pack`, then predict, evaluate, serve, export and info on the packed file;
a packed file changed after packing is refused; the model card holds the run's own figures."""

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_runs import SIZE, TINY_MODEL, make_run, prepared_folder
from typer.testing import CliRunner

from zoomorph import api
from zoomorph.card import model_card
from zoomorph.cli import app
from zoomorph.evaluation.robustness import zoom_check_caption
from zoomorph.io.decode import AUTO, AUTO_CUT, AUTO_MULTIPLE, FIXED_FOV
from zoomorph.packed import PackedFileError, checked_members, open_packed, outputs_dir
from zoomorph.runs import Run
from zoomorph.serve.limits import Limits
from zoomorph.serve.model import Options, ServedModel

runner = CliRunner()
ZOOM = {"0.5": {"accuracy": 0.25, "balanced_accuracy": 0.3}, "1": {"accuracy": 0.5, "balanced_accuracy": 0.45}}


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """Packed files open into a cache of this module's own."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("cache")
        patch.setenv("ZOOMORPH_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_folder(tmp_path_factory.mktemp("data"), n=24)


@pytest.fixture(scope="module")
def case(data, tmp_path_factory):
    """An evaluated run (TTA and survey shifts), exported, and its packed file."""
    root = tmp_path_factory.mktemp("case")
    summary = {"model": TINY_MODEL, "head": "classes", "parameters": 435, "image_size": SIZE, "epochs": 3,
               "zoom": ZOOM, "train_class_counts": {c: 8 for c in data.classes}}
    run = make_run(root / "run", data, summary=summary)
    api.evaluate(run, tta=True, shifts=True)
    packed = api.pack(run, root / "tiny.zoomorph")
    images = sorted((data.root.parent / "synthetic" / "images").glob("*.jpg"))[:12]
    return run, packed, images


def predicted(run, images, out, **kw) -> pd.DataFrame:
    return pd.read_parquet(api.predict(run, images, out, workers=0, progress=False, **kw).out)


def test_the_packed_file_holds_the_run_and_predicts_exactly_as_the_run_folder(case, tmp_path, monkeypatch):
    run, packed, images = case
    names = set(zipfile.ZipFile(packed).namelist())
    assert {"manifest.json", "config.json", "model.safetensors", "preprocessing.json", "summary.json",
            "metrics.json", "history.csv", "model.onnx", "model.onnx.json", "MODEL_CARD.md"} == names
    assert "shifts" in json.loads(zipfile.ZipFile(packed).read("metrics.json"))
    preprocessing = json.loads(zipfile.ZipFile(packed).read("preprocessing.json"))
    assert preprocessing["image_size"] == SIZE and preprocessing["fov"] == Run.open(run).config.fov
    assert preprocessing["classes"] == Run.open(run).config.classes and "255" in preprocessing["normalisation"]
    fov = Run.open(run).config.fov  # the crop in the same words in the card and both metadata files
    assert preprocessing["crop"].startswith(f"the central {fov} × {fov} px") and f"resize to {SIZE} × {SIZE}" in \
        preprocessing["crop"]
    assert preprocessing["crop"] in zipfile.ZipFile(packed).read("MODEL_CARD.md").decode()
    graph = json.loads(zipfile.ZipFile(packed).read("model.onnx.json"))
    assert graph["input"]["preprocessing"] == preprocessing["crop"]

    pd.testing.assert_frame_equal(predicted(packed, images, tmp_path / "p.parquet"),
                                  predicted(run, images, tmp_path / "r.parquet"))  # both the ONNX graph
    folder_torch = predicted(run, images, tmp_path / "rt.parquet", backend="torch")

    def no_pickles(*args, **kwargs):
        raise AssertionError("torch.load called on a packed run")

    monkeypatch.setattr(torch, "load", no_pickles)  # the packed path reads safetensors only
    pd.testing.assert_frame_equal(predicted(packed, images, tmp_path / "pt.parquet", backend="torch"), folder_torch)
    assert api.pack(packed, tmp_path / "again.zoomorph").read_bytes() != b""  # repacking needs no pickle either
    monkeypatch.undo()
    assert api.pack(run, tmp_path / "twice.zoomorph").read_bytes() == packed.read_bytes()  # reproducible


def test_a_packed_auto_run_carries_its_cut_and_predicts_as_the_run_folder(tmp_path):
    data = prepared_folder(tmp_path / "data", n=12, fov=AUTO)  # the default field of view
    run = make_run(tmp_path / "run", data)
    packed = api.pack(run, tmp_path / "auto.zoomorph")
    preprocessing = json.loads(zipfile.ZipFile(packed).read("preprocessing.json"))
    assert preprocessing["fov"] == AUTO and preprocessing["fov_auto"] == AUTO_CUT
    assert f"a square of {AUTO_MULTIPLE} × its R90" in preprocessing["crop"]
    images = sorted((data.root.parent / "synthetic" / "images").glob("*.jpg"))[:6]
    from_packed = predicted(packed, images, tmp_path / "p.parquet")
    pd.testing.assert_frame_equal(from_packed, predicted(run, images, tmp_path / "r.parquet"))
    assert from_packed["fov_crop"].between(20, 424).all()  # each galaxy's own crop, said per row


@pytest.mark.parametrize("fov", [FIXED_FOV, AUTO])
def test_the_cards_zoom_check_says_what_zooming_that_runs_crops_measures(fov, tmp_path):
    data = prepared_folder(tmp_path / "data", n=12, fov=fov)
    summary = {"model": TINY_MODEL, "head": "classes", "image_size": SIZE, "zoom": ZOOM}
    card = model_card(Run.open(make_run(tmp_path / "run", data, summary=summary)))
    scale = card.split("**Scale**")[1]
    assert scale.startswith(f" (the zoom check: {zoom_check_caption(fov)}; summary.json)")
    assert ("`zoomorph evaluate RUN --shifts`" in scale) == (fov == AUTO)  # where an auto run's scales are
    assert "| 0.5× | 25.0 % | 30.0 % |" in scale


def test_evaluate_export_and_serve_take_the_packed_file_and_write_beside_it(case, data, tmp_path):
    run, packed, images = case
    cache = open_packed(packed)
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    metrics = api.evaluate(packed)
    outputs = outputs_dir(packed)
    assert outputs.name == "tiny.outputs"
    assert json.loads((outputs / "metrics.json").read_text()) == metrics
    assert metrics["variants"]["plain"]["accuracy"] == Run.open(run).metrics()["variants"]["plain"]["accuracy"]
    assert (outputs / "predictions_val.parquet").exists() and (outputs / "MODEL_CARD.md").exists()
    graph = api.export(packed)
    assert graph == outputs / "model.onnx" and (outputs / "model.onnx.json").exists()
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before  # the cache was never written

    served = ServedModel(packed)  # auto: the packed graph, no export
    assert served.backend == "onnx" and served.run.name == "tiny"
    pixels = np.stack([served.decode(p.read_bytes(), p.name, Limits()).pixels for p in images])
    answers = served.answers(served.samples(pixels, Options()))
    expected = predicted(run, images, tmp_path / "r.parquet")
    assert [a["predicted"] for a in answers] == expected["predicted"].tolist()

    result = runner.invoke(app, ["evaluate", str(packed)])
    assert result.exit_code == 0, result.output
    assert "tiny.outputs" in result.output.replace("\n", "")


def rewritten(packed: Path, tmp_path: Path, change) -> Path:
    """A copy of the packed file with its members changed by change(members) (the manifest kept)."""
    with zipfile.ZipFile(packed) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    change(members)
    out = tmp_path / "sent.zoomorph"
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out


def flipped(data: bytes) -> bytes:
    return data[:-8] + bytes(b ^ 1 for b in data[-8:])


TAMPERING = {
    "model.safetensors": lambda m: m.update({"model.safetensors": flipped(m["model.safetensors"])}),
    "config.json": lambda m: m.update({"config.json": m["config.json"].replace(b'"fov": 256', b'"fov": 212')}),
    "extra.py": lambda m: m.update({"extra.py": b"import os"}),
    "model.onnx": lambda m: m.pop("model.onnx"),
}


@pytest.mark.parametrize("member", list(TAMPERING))
def test_a_packed_file_changed_after_packing_is_refused_naming_the_file_and_member(case, tmp_path, member):
    _, packed, images = case
    sent = rewritten(packed, tmp_path, TAMPERING[member])
    with pytest.raises(PackedFileError, match=rf"{re.escape(str(sent))}: member '{re.escape(member)}'"):
        Run.open(sent)
    result = runner.invoke(app, ["predict", str(sent), str(images[0]), "--out", str(tmp_path / "o.parquet")])
    assert result.exit_code == 2 and member in result.output and "refused" in result.output
    assert not (tmp_path / "o.parquet").exists()


def test_not_a_packed_file_and_a_changed_cache(case, tmp_path):
    _, packed, _ = case
    (tmp_path / "junk.zoomorph").write_bytes(b"not a zip")
    with pytest.raises(PackedFileError, match="junk.zoomorph: not a readable packed model"):
        Run.open(tmp_path / "junk.zoomorph")
    cache = open_packed(packed)
    (cache / "config.json").chmod(0o644)
    (cache / "config.json").write_text("{}")  # the cache changed on disk: extracted again, not trusted
    assert Run.open(packed).config.model == TINY_MODEL
    assert checked_members(packed, packed.read_bytes())["config.json"] == (cache / "config.json").read_bytes()


def number(pattern: str, text: str) -> list[float]:
    found = re.search(pattern, text)
    assert found, pattern
    return [float(g) for g in found.groups()]


def test_the_card_holds_the_figures_of_the_runs_metrics(case):
    run, packed, _ = case
    card = zipfile.ZipFile(packed).read("MODEL_CARD.md").decode()
    assert card == (run / "MODEL_CARD.md").read_text()  # evaluate refreshed the folder's card, pack packed it
    metrics = Run.open(run).metrics()
    plain, tta = metrics["variants"]["plain"], metrics["variants"]["tta"]
    pct = r"([\d.]+) % \(95 % CI ([\d.]+)–([\d.]+) %\)"
    accuracy = [[100 * v["accuracy"], 100 * v["ci"]["accuracy"]["low"], 100 * v["ci"]["accuracy"]["high"]]
                for v in (plain, tta)]
    np.testing.assert_allclose(number(rf"\| accuracy \| {pct} \| {pct} \|", card), np.ravel(accuracy), atol=0.051)
    assert number(r"\| balanced accuracy \| ([\d.]+) %", card)[0] == pytest.approx(
        100 * plain["balanced_accuracy"], abs=0.051)
    assert number(r"\| expected calibration error \(15 bins\) \| ([\d.]+)", card)[0] == pytest.approx(
        plain["ece"], abs=5e-4)
    assert f"`{metrics['split_hash']}`" in card and f"{metrics['n']:,} galaxies" in card
    blur = next(r for r in metrics["shifts"]["results"] if r["shift"] == "blur" and r["level"] == "middle")
    assert number(rf"{re.escape(blur['label'])}: ([\d.]+) %", card)[0] == pytest.approx(
        100 * blur["accuracy"], abs=0.051)
    assert number(r"\| 0\.5× \| ([\d.]+) %", card)[0] == pytest.approx(100 * ZOOM["0.5"]["accuracy"], abs=0.051)
    assert "CITATION.cff" in card and "central 256 × 256 px" in card and "24 for training" in card


def test_info_prints_the_card_of_a_run_folder_and_of_a_packed_file(case):
    run, packed, _ = case
    for target in (run, packed):
        result = runner.invoke(app, ["info", str(target)])
        assert result.exit_code == 0, result.output
        assert "Model card: run" in result.output and "Known limits" in result.output
    assert "The packed file" in api.info(packed) and open_packed(packed).name in api.info(packed)


def test_training_writes_the_card_and_evaluate_refreshes_it(data, tmp_path):
    run = tmp_path / "trained"
    api.train(data.root, model=TINY_MODEL, out=run, epochs=1, batch_size=8, progress=False)
    card = (run / "MODEL_CARD.md").read_text()
    assert "Not evaluated yet" in card and "Scale" in card and "0.5×" in card
    metrics = api.evaluate(run)
    card = (run / "MODEL_CARD.md").read_text()
    assert "Not evaluated yet" not in card
    assert number(r"\| accuracy \| ([\d.]+) %", card)[0] == pytest.approx(
        100 * metrics["variants"]["plain"]["accuracy"], abs=0.051)
