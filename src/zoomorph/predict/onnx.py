"""ONNX export of a run, and the onnxruntime backends of predict() ("onnx", and "onnx-int8").

The graph takes what the decoders produce and returns what predict() writes:

    input  "pixels":  uint8 (batch, image_size, image_size, 3), RGB 0-255, already
                      centre-cropped to `fov` and resized (zoomorph.data.images.decode)
    output "outputs": float32 (batch, K): class probabilities (softmax included) for a
                      classes run, the 37 cumulative vote fractions for a votes run

uint8 in, so that a client sends 4x fewer bytes and cannot get the scaling
wrong: the /255 and the NHWC -> NCHW transpose are in the graph. The JSON
sidecar (`model.onnx.json`) records the preprocessing and the column names.
`int8=True` writes the same graph quantised (zoomorph.predict.quantize) to
`model.int8.onnx`, and its sidecar says how far it is from the float32 one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from zoomorph.predict.predictor import Q1, PixelModel, weights_digest
from zoomorph.runs import RunConfig, load_run

ONNX_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
INPUT, OUTPUT = "pixels", "outputs"


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def graph_path(run_dir: Path, int8: bool = False) -> Path:
    """Where a run's exported graph lives: RUN/model.onnx, or RUN/model.int8.onnx."""
    return Path(run_dir) / (INT8_FILE if int8 else ONNX_FILE)


def _trace(model: nn.Module, cfg: RunConfig, out: Path) -> None:
    pixels = torch.zeros(2, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8)
    exporter_log = logging.getLogger("torch.onnx")  # it warns that torchvision's ops are not registered
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # the exporter's own deprecation chatter
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(PixelModel(model, cfg.head).eval(), (pixels,), out, input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_shapes=({0: torch.export.Dim("batch")},),
                              dynamo=True, external_data=False, verbose=False)
    finally:
        exporter_log.setLevel(level)


def _quantized_export(model: nn.Module, cfg: RunConfig, out: Path, calibration: list[str | Path] | None) -> dict:
    """Trace, quantise into `out`, and measure the quantised graph against the float32 one."""
    from zoomorph.predict import quantize

    pixels, source = quantize.calibration_pixels(cfg, calibration)  # first: a missing source fails fast
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / ONNX_FILE
        _trace(model, cfg, fp32)
        ranges = quantize.quantize_int8(fp32, out, pixels, INPUT)
        check_on, labels, checked = quantize.check_pixels(cfg) or (pixels, None, "the calibration images")
        top = Q1 if cfg.head == "votes" else slice(None)  # votes: the class of the first question
        check = quantize.compare_outputs(fp32, out, check_on, labels, top)
    return {"weights": "int8, per output channel",
            "activations": f"uint8, static ranges: {ranges}",
            "calibration": source, "check": {"on": checked, **check}}


def export_onnx(run_dir: Path, out: Path | None = None, *, int8: bool = False,
                calibration: list[str | Path] | None = None) -> Path:
    """Write the run's model as ONNX (dynamic batch) plus its JSON sidecar; returns the .onnx path.

    `int8`: statically quantised, calibrated on `calibration` (any predict inputs) or, when not
    given, on the run's own training images; written to RUN/model.int8.onnx by default.
    """
    if calibration and not int8:
        raise ValueError("calibration images set the int8 activation ranges: give them with int8=True (--int8)")
    run_dir = Path(run_dir)
    out = Path(out) if out else graph_path(run_dir, int8)
    model, cfg = load_run(run_dir)
    tmp = out.with_name(out.name + ".tmp")  # written whole or not at all, as the weights check trusts it
    if int8:
        extra = {"quantization": _quantized_export(model, cfg, tmp, calibration)}
    else:
        _trace(model, cfg, tmp)
        extra = {}
    os.replace(tmp, out)
    meta = {
        "model": cfg.model, "head": cfg.head, "classes": cfg.classes, "preset": cfg.preset,
        "image_size": cfg.image_size, "fov": cfg.fov,
        "input": {"name": INPUT, "dtype": "uint8", "shape": ["batch", cfg.image_size, cfg.image_size, 3],
                  "layout": "NHWC, RGB 0-255", "preprocessing": (
                      f"central crop of {cfg.fov}/424 of the shorter side, bilinear resize to {cfg.image_size}")},
        "output": {"name": OUTPUT, "dtype": "float32",
                   "meaning": "class probabilities" if cfg.head == "classes" else "cumulative vote fractions"},
        "weights_sha256": weights_digest(run_dir),
        "graph_sha256": _digest(out),  # a damaged or replaced graph no longer matches: it is re-exported
    }
    sidecar(out).write_text(json.dumps(meta | extra, indent=2))
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _is_current(path: Path, run_dir: Path, int8: bool) -> bool:
    """The graph exists, is the one its sidecar describes (bytes intact), was made from the run's weights
    and config (and, for int8, was quantised)."""
    if not (path.exists() and sidecar(path).exists()):
        return False
    try:
        meta = json.loads(sidecar(path).read_text())
    except ValueError:  # a damaged sidecar: export again
        return False
    cfg = RunConfig.load(run_dir)
    return (meta.get("graph_sha256") == _digest(path) and meta.get("weights_sha256") == weights_digest(run_dir)
            and all(meta.get(k) == getattr(cfg, k) for k in ("model", "head", "classes", "image_size"))
            and (not int8 or "quantization" in meta))


def exported(run_dir: Path, int8: bool = False, say: Callable[[str], object] | None = None) -> Path:
    """RUN/model.onnx (or model.int8.onnx), (re-)exported first when missing, damaged, or made from other
    weights or another config; `say` hears about an export before it starts (seconds, a minute with int8).

    A stale int8 graph is re-calibrated on the run's training images, not on earlier --calibration images.
    """
    path = graph_path(run_dir, int8)
    if not _is_current(path, run_dir, int8):
        if say:
            say(f"exporting {path} (once per trained model)")
        export_onnx(run_dir, path, int8=int8)
    return path


def onnx_forward(run_dir: Path, threads: int, int8: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The backend: uint8 NHWC batch -> outputs, by onnxruntime with `threads` intra-op threads.

    Opens the graph that `exported` made (predict() calls it once, before any worker or Ray actor
    starts); refuses one made from other weights rather than have several processes export at once.
    """
    import onnxruntime as ort

    path = graph_path(run_dir, int8)
    if not _is_current(path, run_dir, int8):
        raise ValueError(f"{path} is missing, damaged or was made from other weights: export it again "
                         f"(`zoomorph export {run_dir}{' --int8' if int8 else ''}`)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # int8 QDQ graphs are for CPUs: on CUDA they would fall back to float or run slowly
    wanted = ("CPUExecutionProvider",) if int8 else ("CUDAExecutionProvider", "CPUExecutionProvider")
    providers = [p for p in wanted if p in ort.get_available_providers()]
    session = ort.InferenceSession(str(path), options, providers=providers)

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT], {INPUT: np.ascontiguousarray(pixels.numpy())})[0])

    return forward
