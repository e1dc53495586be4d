"""ONNX export of a run, and the onnxruntime backend of predict().

The graph takes what the decoders produce and returns what predict() writes:

    input  "pixels":  uint8 (batch, image_size, image_size, 3), RGB 0-255, already
                      centre-cropped to `fov` and resized (zoomorph.data.images.decode)
    output "outputs": float32 (batch, K): class probabilities (softmax included) for a
                      classes run, the 37 cumulative vote fractions for a votes run

uint8 in, so that a client sends 4x fewer bytes and cannot get the scaling
wrong: the /255 and the NHWC -> NCHW transpose are in the graph. The JSON
sidecar (`model.onnx.json`) records the preprocessing and the column names.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from zoomorph.predict.engine import PixelModel, weights_digest
from zoomorph.runs import load_run

ONNX_FILE = "model.onnx"
INPUT, OUTPUT = "pixels", "outputs"


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def export_onnx(run_dir: Path, out: Path | None = None) -> Path:
    """Write the run's model as ONNX (dynamic batch) plus its JSON sidecar; returns the .onnx path."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / ONNX_FILE
    model, cfg = load_run(run_dir)
    pixels = torch.zeros(2, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8)
    tmp = out.with_name(out.name + ".tmp")  # written whole or not at all, as the weights check trusts it
    with warnings.catch_warnings():  # the exporter's own deprecation chatter
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(PixelModel(model, cfg.head).eval(), (pixels,), tmp, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_shapes=({0: torch.export.Dim("batch")},),
                          dynamo=True, external_data=False, verbose=False)
    os.replace(tmp, out)
    sidecar(out).write_text(json.dumps({
        "model": cfg.model, "head": cfg.head, "classes": cfg.classes, "preset": cfg.preset,
        "image_size": cfg.image_size, "fov": cfg.fov,
        "input": {"name": INPUT, "dtype": "uint8", "shape": ["batch", cfg.image_size, cfg.image_size, 3],
                  "layout": "NHWC, RGB 0-255", "preprocessing": (
                      f"central crop of {cfg.fov}/424 of the shorter side, bilinear resize to {cfg.image_size}")},
        "output": {"name": OUTPUT, "dtype": "float32",
                   "meaning": "class probabilities" if cfg.head == "classes" else "cumulative vote fractions"},
        "weights_sha256": weights_digest(run_dir),
    }, indent=2))
    return out


def onnx_forward(run_dir: Path, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The backend: uint8 NHWC batch -> outputs, by onnxruntime on RUN/model.onnx with `threads` intra-op threads.

    (Re-)exports it first when it is missing or was made from other weights.
    """
    import onnxruntime as ort

    path = Path(run_dir) / ONNX_FILE
    meta = sidecar(path)
    if not (path.exists() and meta.exists()
            and json.loads(meta.read_text()).get("weights_sha256") == weights_digest(run_dir)):
        export_onnx(run_dir, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    session = ort.InferenceSession(str(path), options, providers=providers)

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT], {INPUT: np.ascontiguousarray(pixels.numpy())})[0])

    return forward
