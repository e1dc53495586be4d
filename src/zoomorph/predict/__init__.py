"""Classifying images at scale: `predict(run_dir, inputs, out)` and `export_onnx(run_dir)`.

The names load on first use, so that decoding worker processes, which import
zoomorph.io, start without importing torch (docs/predict.md).
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {"predict": "engine", "PredictSummary": "engine", "export_onnx": "onnx"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"zoomorph.predict.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'zoomorph.predict' has no attribute {name!r}")
