"""int8 export and the onnx-int8 backend: a quantised graph, calibrated and checked against float32."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from predict_toys import make_run as make_toy_run, write_images
from tiny_runs import make_run, prepared_folder
from typer.testing import CliRunner

from zoomorph import runs
from zoomorph.cli import app
from zoomorph.predict import export_onnx, predict, quantize, writers
from zoomorph.schema import ANSWER_COLUMNS, validate

pytestmark = pytest.mark.slow  # each export traces the model with torch.export and calibrates (~5-10 s)


def quantised_ops(path) -> dict[str, int]:
    graph = onnx.load(str(path)).graph
    int8_weights = sum(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    return {"QuantizeLinear": sum(n.op_type == "QuantizeLinear" for n in graph.node), "int8 weights": int8_weights}


def test_int8_export_calibrates_on_training_images_and_checks_on_validation(tmp_path):
    data = prepared_folder(tmp_path, n=40)
    run = make_run(tmp_path / "run", data)
    path = export_onnx(run, int8=True)

    assert path == run / "model.int8.onnx"
    ops = quantised_ops(path)
    assert ops["QuantizeLinear"] > 0 and ops["int8 weights"] >= 2  # both convolutions hold int8 weights
    meta = json.loads((run / "model.int8.onnx.json").read_text())
    quantization = meta["quantization"]
    n_train, n_val = len(data.indices("train", labelled=False)), len(data.indices("val", labelled=False))
    assert quantization["calibration"] == f"{n_train} training images of {data.root}"
    check = quantization["check"]
    assert check["on"] == f"{n_val} validation images" and check["images"] == n_val
    assert check["same_top_output"] >= 0.8 and check["mean_abs_difference"] < 0.05
    labelled = data.indices("val", labelled=True)
    assert check["labelled_images"] == len(labelled) > 0
    assert 0 <= check["accuracy_int8"] <= 1 and 0 <= check["accuracy_fp32"] <= 1

    # and predict serves it: close to the float32 graph, error rows kept
    images = write_images(tmp_path / "images", range(20), side=424)
    (tmp_path / "images" / "99.jpg").write_bytes(b"")
    exact, quantised = (pd.read_parquet(predict(run, [tmp_path / "images"], tmp_path / f"{b}.parquet", backend=b,
                                                workers=0, progress=False).out) for b in ("onnx", "onnx-int8"))
    assert len(quantised) == len(images) + 1 and quantised["error"].tolist() == exact["error"].tolist()
    values = [c for c in exact.columns if c.startswith("p_")]
    ok = exact["error"] == ""
    gap = np.abs(quantised.loc[ok, values].to_numpy() - exact.loc[ok, values].to_numpy())
    assert gap.mean() < 0.05 and not np.array_equal(quantised.loc[ok, values], exact.loc[ok, values])




def test_int8_without_training_images_needs_calibration_and_is_redone_for_new_weights(tmp_path, toys):
    run = make_toy_run(tmp_path, "toy-spatial")  # a run folder with no prepared data behind it
    images = write_images(tmp_path / "images", range(40))
    with pytest.raises(ValueError, match="--calibration"):
        predict(run, images, tmp_path / "a.parquet", backend="onnx-int8", progress=False)
    assert not (tmp_path / "a.parquet.parts").exists()  # refused before anything started

    result = CliRunner().invoke(app, ["export", str(run), "--int8", "--calibration", str(tmp_path / "images")])
    assert result.exit_code == 0, result.output
    assert "same top output" in result.output
    meta = json.loads((run / "model.int8.onnx.json").read_text())["quantization"]
    assert meta["calibration"] == f"40 images sampled from {tmp_path / 'images'}"
    assert meta["check"]["on"] == "the calibration images" and "accuracy_int8" not in meta["check"]
    first = pd.read_parquet(predict(run, images, tmp_path / "b.parquet", backend="onnx-int8", progress=False).out)
    assert first["error"].eq("").all()
    assert np.allclose(first.filter(like="p_").sum(axis=1), 1, atol=1e-5)  # the head stays float

    make_toy_run(tmp_path, "toy-spatial", seed=1)  # new weights: the int8 graph is stale, and nothing to calibrate
    with pytest.raises(ValueError, match="calibration"):
        predict(run, images, tmp_path / "c.parquet", backend="onnx-int8", progress=False)


def test_pixels_feed_the_int8_graph_directly_and_exactly(tmp_path, toys, monkeypatch):
    run = make_toy_run(tmp_path, "toy-spatial")
    images = write_images(tmp_path / "images", range(32))
    direct = export_onnx(run, int8=True, calibration=images)
    pixels = quantize.calibration_pixels(runs.RunConfig.load(run), images)[0]
    graph = onnx.load(str(direct)).graph
    assert not {n.op_type for n in graph.node} & {"Cast", "Div"}
    first = next(n for n in graph.node if graph.input[0].name in n.input)
    quantised_input = next(n for n in graph.node if n.op_type == "DequantizeLinear"
                           and n.input[0] in (first.output[0], graph.input[0].name))
    scale = next(t for t in graph.initializer if t.name == quantised_input.input[1])
    assert onnx.numpy_helper.to_array(scale) == np.float32(1 / 255)

    monkeypatch.setattr(quantize, "_feed_pixels", lambda path, scaled: None)  # keep Cast -> Div -> QuantizeLinear
    via_floats = export_onnx(run, tmp_path / "via-floats.onnx", int8=True, calibration=images)
    assert {"Cast", "Div"} <= {n.op_type for n in onnx.load(str(via_floats)).graph.node}
    outputs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"pixels": pixels})[0]
               for p in (direct, via_floats)]
    np.testing.assert_array_equal(*outputs)


def test_calibration_images_are_accounted_for_in_uneven_batches(tmp_path, toys):
    run = make_toy_run(tmp_path, "toy-spatial")
    write_images(tmp_path / "cal", range(100))  # more than one calibration batch, the last one short
    (tmp_path / "cal" / "bad.jpg").write_text("not a jpeg")
    export_onnx(run, int8=True, calibration=[tmp_path / "cal"])
    calibration = json.loads((run / "model.int8.onnx.json").read_text())["quantization"]["calibration"]
    assert calibration.startswith(f"100 images sampled from {tmp_path / 'cal'} (1 unreadable skipped, e.g. ")
    assert "bad.jpg" in calibration

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "1.jpg").write_text("not a jpeg")
    with pytest.raises(ValueError, match="1.jpg"):
        export_onnx(run, int8=True, calibration=[tmp_path / "bad"])
    with pytest.raises(ValueError, match="int8"):
        export_onnx(run, calibration=[tmp_path / "cal"])  # calibration images without int8: a mistake


def test_a_recalibrated_graph_does_not_resume_an_earlier_prediction(tmp_path, toys, monkeypatch):
    run = make_toy_run(tmp_path, "toy-spatial")
    images = write_images(tmp_path / "images", range(24))
    export_onnx(run, int8=True, calibration=images[:12])
    out = tmp_path / "out.parquet"
    real_write = writers.PartWriter._write

    def die_after_one_part(self, chunk):
        real_write(self, chunk)
        raise KeyboardInterrupt

    monkeypatch.setattr(writers.PartWriter, "_write", die_after_one_part)
    with pytest.raises(KeyboardInterrupt):
        predict(run, images, out, backend="onnx-int8", chunk_size=8, workers=0, progress=False)
    monkeypatch.setattr(writers.PartWriter, "_write", real_write)

    export_onnx(run, int8=True, calibration=images[12:])  # other ranges: other probabilities
    with pytest.raises(ValueError, match="different prediction"):
        predict(run, images, out, backend="onnx-int8", chunk_size=8, workers=0, progress=False)


def test_int8_votes_outputs_still_obey_the_tree(tmp_path, toys):
    run = make_toy_run(tmp_path, "toy-pooled", head="votes")
    images = write_images(tmp_path / "images", range(30))
    export_onnx(run, int8=True, calibration=images)
    out = pd.read_parquet(predict(run, images, tmp_path / "v.parquet", backend="onnx-int8", progress=False).out)
    fractions = out[list(ANSWER_COLUMNS)]
    assert validate(fractions, tolerance=1e-5) == []  # the vote products ran in float32


@pytest.mark.parametrize("model", ["convnet-lite", "convnet"])
def test_untrained_convnets_quantise_and_only_lite_fuses_its_activations(tmp_path, model):
    # With SiLU, zero-initialised residual branches give tensors with almost no spread of values,
    # on which onnxruntime's percentile histograms fail: the export must still succeed.
    cfg = runs.RunConfig(model=model, head="classes", classes=["a", "b"], image_size=32, fov=207)
    cfg.save(tmp_path / "run")
    runs.Run(tmp_path / "run", cfg).save_weights(runs.build_model(cfg))
    images = write_images(tmp_path / "images", range(16))
    path = export_onnx(tmp_path / "run", int8=True, calibration=images)
    quantization = json.loads((tmp_path / "run" / "model.int8.onnx.json").read_text())["quantization"]
    fallback = quantization["activations"].startswith("uint8, static ranges: min/max (percentile histograms failed")
    assert fallback == (model == "convnet")
    assert quantization["check"]["images"] == 16

    # What onnxruntime runs: ReLU6 folds into the int8 convolutions, SiLU needs int8 passes of its own
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}
    assert "QLinearConv" in ops
    # the uint8 pixels go straight into the first int8 convolution, and the pooled features straight
    # into the float head: no Cast/Div/QuantizeLinear at the input, no strided Gather after the pool
    assert not ops & {"Cast", "Div", "QuantizeLinear", "Gather"}
    activations = ops & {"Clip", "Relu", "Sigmoid", "QLinearSigmoid", "QLinearMul"}
    assert activations == (set() if model == "convnet-lite" else {"QLinearSigmoid", "QLinearMul"})
