"""ONNX export and the onnxruntime backend: same outputs as torch within 1e-4."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from predict_toys import make_run, write_images

from zoomorph import runs
from zoomorph.predict import engine, export_onnx, predict

# each export traces the model with torch.export (~5 s); runs build predict_toys' models
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("toys")]


def test_export_has_dynamic_uint8_batch_and_sidecar(tmp_path):
    run = make_run(tmp_path, "toy-spatial")
    path = export_onnx(run, tmp_path / "exported.onnx")
    meta = json.loads((tmp_path / "exported.onnx.json").read_text())
    cfg = runs.RunConfig.load(run)
    assert (meta["image_size"], meta["fov"], meta["classes"], meta["head"]) == (
        cfg.image_size, cfg.fov, cfg.classes, cfg.head)
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["shape"][1:] == [16, 16, 3]

    session = ort.InferenceSession(str(path))
    for batch in (1, 5):
        pixels = np.random.default_rng(batch).integers(0, 256, (batch, 16, 16, 3), dtype=np.uint8)
        probs = session.run(None, {meta["input"]["name"]: pixels})[0]
        assert probs.shape == (batch, 3)
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("head", ["classes", "votes"])
def test_onnx_backend_matches_torch(tmp_path, head):
    run = make_run(tmp_path, "toy-pooled" if head == "votes" else "toy-spatial", head=head)
    images = write_images(tmp_path / "images", range(500, 530))
    (tmp_path / "images" / "531.jpg").write_text("broken")
    torch_out = pd.read_parquet(predict(run, [tmp_path / "images"], tmp_path / "torch.parquet", tta=True,
                                        backend="torch", workers=0, progress=False).out)
    onnx_out = pd.read_parquet(predict(run, [tmp_path / "images"], tmp_path / "onnx.parquet", tta=True,
                                       backend="onnx", workers=0, progress=False).out)
    assert (run / "model.onnx").exists() and len(onnx_out) == len(images) + 1
    values = [c for c in torch_out.columns if c.startswith(("p_", "Class"))]
    np.testing.assert_allclose(onnx_out[values], torch_out[values], atol=1e-4)
    assert onnx_out["error"].tolist() == torch_out["error"].tolist()


def test_stale_export_is_redone_and_mc_dropout_refused(tmp_path):
    run = make_run(tmp_path, "toy-spatial")
    images = write_images(tmp_path / "images", range(3))
    first = pd.read_parquet(predict(run, images, tmp_path / "a.parquet", backend="onnx", progress=False).out)
    make_run(tmp_path, "toy-spatial", seed=1)  # new weights in the same run folder
    second = pd.read_parquet(predict(run, images, tmp_path / "b.parquet", backend="onnx", progress=False).out)
    assert not np.allclose(first["p_spiral"], second["p_spiral"])
    with pytest.raises(ValueError, match="backend='torch'"):
        predict(run, images, tmp_path / "c.parquet", backend="onnx", mc_samples=4, progress=False)


def test_auto_backend_is_onnx_on_a_cpu_torch_for_mc_dropout_and_when_export_fails(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path, "toy-spatial")
    images = write_images(tmp_path / "images", range(20))
    exact = pd.read_parquet(predict(run, images, tmp_path / "t.parquet", backend="torch", progress=False).out)
    auto = predict(run, images, tmp_path / "a.parquet", workers=0)
    assert auto.backend == "onnx" and (run / "model.onnx").exists()
    assert "exporting" in capsys.readouterr().out  # the first call says why it pauses
    predict(run, images, tmp_path / "b.parquet", workers=0)
    assert "exporting" not in capsys.readouterr().out  # later ones reuse the graph
    np.testing.assert_allclose(pd.read_parquet(auto.out)["p_spiral"], exact["p_spiral"], atol=1e-4)
    assert predict(run, images, tmp_path / "m.parquet", mc_samples=2, progress=False).backend == "torch"

    def no_export(*args, **kwargs):
        raise PermissionError(f"{run}: read-only")

    monkeypatch.setattr(engine, "exported", no_export)
    with pytest.warns(UserWarning, match="read-only.*predicting with torch"):
        fallback = predict(run, images, tmp_path / "f.parquet", workers=0, progress=False)
    assert fallback.backend == "torch"
    pd.testing.assert_frame_equal(pd.read_parquet(fallback.out), exact)
    with pytest.raises(PermissionError, match="read-only"):  # asked for by name: no quiet fallback
        predict(run, images, tmp_path / "o.parquet", backend="onnx", progress=False)
