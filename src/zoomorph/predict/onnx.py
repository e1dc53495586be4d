"""ONNX export of a run: the graph predict's "onnx" and "onnx-int8" backends run (zoomorph.inference).

The graph takes what the decoders produce and returns what predict() writes:

    input  "pixels":  uint8 (batch, image_size, image_size, 3), RGB 0-255, already
                      cropped to `fov` (a central crop, or "auto": each galaxy's own)
                      and resized (zoomorph.io.decode.decode)
    output "outputs": float32 (batch, K): class probabilities (softmax included) for a
                      classes run, the 37 cumulative vote fractions for a votes run

uint8 in, so that a client sends 4x fewer bytes and cannot get the scaling
wrong: the /255 and the NHWC -> NCHW transpose are in the graph. The JSON
sidecar (`model.onnx.json`) records the preprocessing and the column names.
`int8=True` writes the same graph quantised (zoomorph.predict.quantize) to
`model.int8.onnx`, and its sidecar says how far it is from the float32 one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from zoomorph.errors import ZoomorphError
from zoomorph.inference import GRAPH_INPUT, GRAPH_OUTPUT, PixelModel
from zoomorph.io.decode import AUTO, AUTO_CUT, describe_fov
from zoomorph.predict import quantize
from zoomorph.runs import Run, RunConfig, file_digest, sidecar
from zoomorph.schema import Q1


def _trace(model: nn.Module, cfg: RunConfig, out: Path) -> None:
    pixels = torch.zeros(2, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8)
    exporter_log = logging.getLogger("torch.onnx")  # it warns that torchvision's ops are not registered
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # the exporter's own deprecation chatter
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(PixelModel(model, cfg.head).eval(), (pixels,), out, input_names=[GRAPH_INPUT],
                              output_names=[GRAPH_OUTPUT], dynamic_shapes=({0: torch.export.Dim("batch")},),
                              dynamo=True, external_data=False, verbose=False)
    finally:
        exporter_log.setLevel(level)


def _quantized_export(model: nn.Module, cfg: RunConfig, out: Path, calibration: list[str | Path] | None) -> dict:
    """Trace, quantise into `out`, and measure the quantised graph against the float32 one."""
    pixels, source = quantize.calibration_pixels(cfg, calibration)  # first: a missing source fails fast
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "float32.onnx"
        _trace(model, cfg, fp32)
        ranges = quantize.quantize_int8(fp32, out, pixels, GRAPH_INPUT)
        check_on, labels, checked = quantize.check_pixels(cfg) or (pixels, None, "the calibration images")
        top = Q1 if cfg.head == "votes" else slice(None)  # votes: the class of the first question
        check = quantize.compare_outputs(fp32, out, check_on, labels, top)
    return {"weights": "int8, per output channel",
            "activations": f"uint8, static ranges: {ranges}",
            "calibration": source, "check": {"on": checked, **check}}


def export_onnx(run: Run | Path, out: Path | None = None, *, int8: bool = False,
                calibration: list[str | Path] | None = None) -> Path:
    """Write the run's model as ONNX (dynamic batch) plus its JSON sidecar; returns the .onnx path.

    `int8`: statically quantised, calibrated on `calibration` (any predict inputs) or, when not
    given, on the run's own training images; written to RUN/model.int8.onnx by default (for a packed
    file, NAME.outputs/model.onnx or model.int8.onnx).
    """
    if calibration and not int8:
        raise ZoomorphError("calibration images set the int8 activation ranges: give them with int8=True (--int8)")
    run = Run.of(run)
    run.check_cut()  # a graph's sidecar records this version's auto crop
    out = Path(out) if out else run.out_dir / run.graph_file(int8).name  # a packed run: NAME.outputs/
    out.parent.mkdir(parents=True, exist_ok=True)
    model, cfg = run.load_model(), run.config
    tmp = out.with_name(out.name + ".tmp")  # written whole or not at all, as the weights check trusts it
    if int8:
        extra = {"quantization": _quantized_export(model, cfg, tmp, calibration)}
    else:
        _trace(model, cfg, tmp)
        extra = {}
    os.replace(tmp, out)
    meta = {
        "model": cfg.model, "head": cfg.head, "classes": cfg.classes, "preset": cfg.preset,
        "image_size": cfg.image_size, "fov": cfg.fov, **({"fov_auto": AUTO_CUT} if cfg.fov == AUTO else {}),
        "input": {"name": GRAPH_INPUT, "dtype": "uint8", "shape": ["batch", cfg.image_size, cfg.image_size, 3],
                  "layout": "NHWC, RGB 0-255", "preprocessing": describe_fov(cfg.fov, cfg.image_size)},
        "output": {"name": GRAPH_OUTPUT, "dtype": "float32",
                   "meaning": "class probabilities" if cfg.head == "classes" else "cumulative vote fractions"},
        "weights_sha256": run.weights_digest,
        "graph_sha256": file_digest(out),  # a damaged or replaced graph no longer matches: it is re-exported
    }
    sidecar(out).write_text(json.dumps(meta | extra, indent=2))
    return out


def exported(run: Run, int8: bool = False, say: Callable[[str], object] | None = None) -> Path:
    """RUN/model.onnx (or model.int8.onnx), (re-)exported first when missing, damaged, or made from other
    weights or another config; `say` hears about an export before it starts (seconds, a minute with int8).

    A stale int8 graph is re-calibrated on the run's training images, not on earlier --calibration images.
    """
    path = run.graph_file(int8)
    if not run.graph_is_current(int8):
        if say:
            say(f"exporting {path} (once per trained model)")
        export_onnx(run, path, int8=int8)
    return path
