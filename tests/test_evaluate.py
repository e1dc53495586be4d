import json
import shutil

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from tiny_runs import make_run, prepared_folder

from zoomorph.evaluation import evaluate
from zoomorph.evaluation.evaluate import evaluate_run, format_metrics_table
from zoomorph.runs import Run
from zoomorph.schema import ANSWER_COLUMNS


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_folder(tmp_path_factory.mktemp("data"))


def test_classes_run(data, tmp_path):
    run = make_run(tmp_path / "run", data)
    metrics = evaluate_run(run, split="val", bootstrap=200)
    assert json.loads(Run.open(run).metrics_file.read_text()) == metrics
    val = data.indices("val")
    assert metrics["n"] == len(val) and metrics["split"] == "val"
    assert metrics["split_hash"] == metrics["trained_split_hash"] == data.split_hash
    assert list(metrics["variants"]) == ["plain"]

    preds = pd.read_parquet(Run.open(run).predictions_file("val"))
    assert preds["id"].tolist() == data.table["id"].iloc[val].tolist()
    assert preds["row"].tolist() == val.tolist()
    probs = preds[[f"prob_{c}" for c in data.classes]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert (preds["pred"] == np.array(data.classes)[probs.argmax(axis=1)]).all()
    assert np.allclose(preds["confidence"], probs.max(axis=1))

    plain = metrics["variants"]["plain"]
    assert plain["accuracy"] == pytest.approx((preds["pred"] == preds["label"]).mean())
    assert np.sum(plain["confusion"]) == len(val)
    for ci in plain["ci"].values():
        assert ci["low"] <= ci["estimate"] <= ci["high"] and ci["n"] == 200
    assert 0 <= plain["ece"] <= 1 and plain["log_loss"] > 0


def symmetrised(images: np.ndarray) -> np.ndarray:
    """Each image averaged over its 8 rotations and flips: every dihedral view of it is the same picture."""
    views = [np.rot90(v, k, axes=(1, 2)) for v in (images, images[:, :, ::-1]) for k in range(4)]
    return (np.sum(views, axis=0, dtype=np.int32) // 8).astype(np.uint8)


def test_tta_averages_the_eight_dihedral_views(data, tmp_path):
    run = make_run(tmp_path / "run", data)
    metrics = evaluate_run(run, tta=True, bootstrap=50)
    assert list(metrics["variants"]) == ["plain", "tta"]
    preds = pd.read_parquet(Run.open(run).predictions_file("val"))
    assert not np.allclose(preds["prob_spiral"], preds["prob_spiral_tta"], atol=1e-4)

    # Galaxies that look the same in every view: the average of the views is the plain prediction.
    shutil.copytree(data.root, tmp_path / "symmetric")
    np.save(tmp_path / "symmetric" / "images.npy", symmetrised(np.asarray(data.images)))
    evaluate_run(run, data_dir=tmp_path / "symmetric", tta=True, bootstrap=50)
    preds = pd.read_parquet(Run.open(run).predictions_file("val"))
    for c in data.classes:
        assert np.allclose(preds[f"prob_{c}"], preds[f"prob_{c}_tta"], atol=1e-5)


def test_votes_run_scores_rmse_and_the_preset_classes(data, tmp_path, monkeypatch):
    run = make_run(tmp_path / "votes", data, head="votes")
    metrics = evaluate_run(run, bootstrap=50)
    plain = metrics["variants"]["plain"]
    rows = data.indices("val", labelled=False)  # every galaxy has fractions, labelled or not
    assert metrics["n"] == len(rows)
    preds = pd.read_parquet(Run.open(run).predictions_file("val"))
    predicted = preds[[f"pred_{c}" for c in ANSWER_COLUMNS]].to_numpy()
    truth = data.table[ANSWER_COLUMNS].to_numpy()[rows]
    assert plain["rmse"] == pytest.approx(np.sqrt(np.mean((predicted - truth) ** 2)))
    assert set(plain["rmse_per_question"]) == {f"Q{i}" for i in range(1, 12)}
    assert plain["classes"] == data.classes + ["(none)"] and plain["preset"] == "hubble"
    assert plain["n"] == len(data.indices("val"))  # class metrics: the galaxies the preset labels
    assert 0 <= plain["coverage"] <= 1

    # An oracle that predicts the true fractions: the preset must give back exactly the prepared labels.
    monkeypatch.setattr(evaluate.Predictor, "probabilities", lambda self, images, *a, **kw: truth)
    oracle = evaluate_run(run, bootstrap=50)["variants"]["plain"]
    assert oracle["rmse"] == 0 and oracle["accuracy"] == 1 and oracle["coverage"] == 1
    preds = pd.read_parquet(Run.open(run).predictions_file("val"))
    assert preds["pred"].tolist() == preds["label"].tolist()


def test_refuses_data_the_run_cannot_read(data, tmp_path):
    run = make_run(tmp_path / "run", data)
    model, cfg = Run.open(run).load_model(), Run.open(run).config
    cfg.image_size = 64
    cfg.save(run)
    with pytest.raises(ValueError, match="says image_size 64, but .* was trained at 32 px"):
        evaluate_run(run)  # the weights know their size
    Run.open(run).save_weights(model)  # as if trained at 64 px (the tiny model pools globally): the data are not
    with pytest.raises(ValueError, match="64 px"):
        evaluate_run(run)
    cfg.image_size, cfg.data = 32, None
    cfg.save(run)
    Run.open(run).save_weights(model)
    with pytest.raises(ValueError, match="pass data_dir"):
        evaluate_run(run)
    assert evaluate_run(run, data_dir=data.root, bootstrap=10)["data"] == str(data.root)
    with pytest.raises(ValueError, match="no galaxies"):
        evaluate_run(run, data_dir=data.root, split="test")


def test_format_metrics_table(data, tmp_path):
    run = make_run(tmp_path / "run", data)
    metrics = evaluate_run(run, tta=True, bootstrap=50)
    table = format_metrics_table(metrics)
    assert [c.header for c in table.columns] == ["metric", "plain", "TTA (8 dihedral views)"]
    console = Console(record=True, width=160)
    console.print(table)
    text = console.export_text()
    acc, ci = metrics["variants"]["tta"]["accuracy"], metrics["variants"]["tta"]["ci"]["accuracy"]
    assert f"{acc:.3f} ({ci['low']:.3f}-{ci['high']:.3f})" in text
    assert "expected calibration error" in text and "Kaggle RMSE" not in text
