"""The model side of prediction: decoded uint8 batches -> result rows.

`PixelModel` is what gets served and exported (pixels in, probabilities out);
`Predictor` runs it with the torch or an ONNX backend, with TTA and MC dropout,
and turns its outputs into the result columns: values, predicted class,
uncertainty, error. The engines (engine.py, ray_engine.py) feed it batches.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import nn

from zoomorph.inference import outputs_to_probs, to_input
from zoomorph.runs import WEIGHTS_FILE, RunConfig, load_run
from zoomorph.schema import ANSWER_COLUMNS

Q1 = slice(0, 3)  # Class1.1-1.3: the question everyone answers, a distribution that sums to 1


class PixelModel(nn.Module):
    """uint8 (B, H, W, 3) pixels -> class probabilities (or the 37 vote fractions): what gets served."""

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return outputs_to_probs(self.model(to_input(pixels)), self.head)


def weights_digest(run_dir: Path) -> str:
    return hashlib.sha256((Path(run_dir) / WEIGHTS_FILE).read_bytes()).hexdigest()


# ---------------------------------------------------------------- output columns

def output_columns(cfg: RunConfig, preset: str | None, mc_samples: int) -> dict[str, pa.DataType]:
    """Result columns after the listing's: values, predicted class, uncertainty, error."""
    values = [f"p_{c}" for c in cfg.classes] if cfg.head == "classes" else list(ANSWER_COLUMNS)
    columns = {c: pa.float32() for c in values}
    if cfg.head == "classes" or preset:
        columns["predicted"] = pa.string()
    columns["entropy"] = pa.float32()
    if mc_samples:
        columns.update(std=pa.float32(), mutual_info=pa.float32())
    columns["error"] = pa.string()
    return columns


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over the last axis."""
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(-1)


def uncertainty(samples: np.ndarray) -> dict[str, np.ndarray]:
    """(S, n, C) class distributions -> entropy of their mean; with MC samples (S > 1 draws of
    dropout) also the std of the top class's probability and the mutual information (BALD)."""
    mean = samples.mean(0)
    out = {"entropy": _entropy(mean)}
    if len(samples) > 1:
        top = mean.argmax(1)
        out["std"] = samples.std(0)[np.arange(len(mean)), top]
        out["mutual_info"] = out["entropy"] - _entropy(samples).mean(0)
    return out


# ---------------------------------------------------------------- the model side

class Predictor:
    """Decoded batches -> result rows, with the torch or ONNX backend, TTA and MC dropout."""

    def __init__(self, run_dir: Path, *, backend: str = "torch", tta: bool = False, mc_samples: int = 0,
                 preset: str | None = None):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cfg = RunConfig.load(run_dir)
        self.tta, self.mc_samples, self.preset = tta, mc_samples, preset
        self.columns = list(output_columns(self.cfg, preset, mc_samples))
        if backend != "torch":
            from zoomorph.predict.onnx import onnx_forward

            # as many threads as torch would use
            self.forward = onnx_forward(run_dir, torch.get_num_threads(), int8=backend == "onnx-int8")
        else:
            model, _ = load_run(run_dir, self.device)
            self.forward = self._torch_forward(PixelModel(model, self.cfg.head))

    def _torch_forward(self, model: PixelModel) -> Callable[[torch.Tensor], torch.Tensor]:
        cuda = self.device.type == "cuda"
        model = model.to(memory_format=torch.channels_last)
        if self.mc_samples:
            dropout = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
            if not dropout:
                raise ValueError(f"model {self.cfg.model!r} has no dropout layers: MC dropout needs some")
            for m in dropout:  # dropout samples, BatchNorm keeps its running statistics
                m.train()
        amp = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16

        @torch.inference_mode()
        def forward(pixels: torch.Tensor) -> torch.Tensor:
            pixels = pixels.pin_memory().to(self.device, non_blocking=True) if cuda else pixels
            with torch.autocast("cuda", dtype=amp, enabled=cuda):
                return model(pixels).float().cpu()

        return forward

    def _views_mean(self, pixels: torch.Tensor) -> torch.Tensor:
        if not self.tta:
            return self.forward(pixels)
        from zoomorph.data.augment import dihedral

        nchw = pixels.permute(0, 3, 1, 2)  # dihedral turns the last two axes: H and W
        return torch.stack([self.forward(dihedral(nchw, k).permute(0, 2, 3, 1).contiguous())
                            for k in range(8)]).mean(0)

    def samples(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        """(S, n, K): S = 1, or one draw of the dropout masks per MC sample (seeded by `seed`)."""
        x = torch.from_numpy(pixels)
        if not self.mc_samples:
            return self._views_mean(x).numpy()[None]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)  # the same rows get the same masks on a rerun or a resume
            return torch.stack([self._views_mean(x) for _ in range(self.mc_samples)]).numpy()

    def results(self, pixels: np.ndarray, errors: list[str], seed: int) -> pd.DataFrame:
        """One row per source of a decoded batch: `pixels` holds its readable ones, in order."""
        n, errors = len(errors), np.asarray(errors, dtype=object)
        ok = errors == ""
        columns = {c: np.full(n, np.nan, np.float32) for c in self.columns}
        columns["error"] = errors
        if "predicted" in columns:
            columns["predicted"] = np.full(n, None, dtype=object)
        if ok.any():
            samples = self.samples(pixels, seed)
            mean = samples.mean(0)
            for name, values in zip(self.columns[:mean.shape[1]], mean.T, strict=True):  # values come first
                columns[name][ok] = values
            if "predicted" in columns:
                columns["predicted"][ok] = self._predicted(mean)
            for name, values in uncertainty(samples if self.cfg.head == "classes" else samples[..., Q1]).items():
                columns[name][ok] = values
        return pd.DataFrame(columns)

    def _predicted(self, values: np.ndarray) -> np.ndarray:
        if self.cfg.head == "classes":
            return np.asarray(self.cfg.classes, dtype=object)[values.argmax(1)]
        from zoomorph.labels import assign

        return assign(pd.DataFrame(values, columns=ANSWER_COLUMNS), self.preset).labels.to_numpy()
