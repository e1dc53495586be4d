"""predict's result columns: the Predictor's outputs (zoomorph.inference) as one row per source.

`PredictOptions` are the settings that change what a row holds (and so the
output's fingerprint); `ResultRows` turns a decoded batch into rows: values,
predicted class, uncertainty, with fov "auto" each galaxy's radius, crop and
fall-back flag (as prepare's catalogue has them), error. The engines
(local_engine.py, ray_engine.py) feed it batches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from zoomorph.inference import Predictor
from zoomorph.io.decode import AUTO, FOV_COLUMNS
from zoomorph.io.tables import with_notes
from zoomorph.labels import assign
from zoomorph.runs import Run, RunConfig
from zoomorph.schema import ANSWER_COLUMNS, Q1


@dataclass(frozen=True)
class PredictOptions:
    """What the model side of predict runs: the backend (resolved, never "auto"), TTA, MC dropout samples,
    and the label preset that derives a class from a votes run's fractions."""

    backend: str = "torch"
    tta: bool = False
    mc_samples: int = 0
    preset: str | None = None

    def as_settings(self) -> dict:
        """As the output's fingerprint records them."""
        return asdict(self)


def output_columns(cfg: RunConfig, preset: str | None, mc_samples: int) -> dict[str, pa.DataType]:
    """Result columns after the listing's: values, predicted class, uncertainty, the fov columns (only for a
    run that uses fov "auto": a fixed crop is the same for every row), error."""
    values = [f"p_{c}" for c in cfg.classes] if cfg.head == "classes" else list(ANSWER_COLUMNS)
    columns = {c: pa.float32() for c in values}
    if cfg.head == "classes" or preset:
        columns["predicted"] = pa.string()
    columns["entropy"] = pa.float32()
    if mc_samples:
        columns.update(std=pa.float32(), mutual_info=pa.float32())
    if cfg.fov == AUTO:
        columns.update(fov_radius=pa.float32(), fov_crop=pa.float32(), fov_flag=pa.string())
    columns["error"] = pa.string()
    return columns


RESULT_NOTES = {  # the descriptions (and units) of the result columns, in the outputs that hold them
    "predicted": {"description": "the most probable class"},
    "entropy": {"description": "predictive entropy of the class probabilities, in nats (0: certain)"},
    "std": {"description": "std over the MC dropout samples of the predicted class's probability"},
    "mutual_info": {"description": "mutual information (BALD) between prediction and model, in nats"},
    "fov_radius": {"unit": "pix", "description": "the galaxy's R90 in the source image (fov auto)"},
    "fov_crop": {"unit": "pix", "description": "side of the square cut from the source image (fov auto)"},
    "fov_flag": {"description": "why the crop fell back to the full frame; empty when it did not"},
    "error": {"description": "why the image could not be used; empty when it was"},
}


def result_schema(cfg: RunConfig, preset: str | None, mc_samples: int) -> pa.Schema:
    """output_columns as an Arrow schema, each column with its unit and description (field metadata,
    io.tables.with_notes), which the FITS, VOTable, ECSV and HDF5 outputs write into their headers."""
    columns = output_columns(cfg, preset, mc_samples)
    notes = {c: {"description": f"probability of class {c[2:]}"} for c in columns if c.startswith("p_")}
    notes.update({c: {"description": f"cumulative vote fraction of answer {c[5:]} (Galaxy Zoo 2 tree)"}
                  for c in columns if c in ANSWER_COLUMNS})
    notes.update(RESULT_NOTES)
    if cfg.head != "classes":
        notes["predicted"] = {"description": f"the class preset {preset!r} gives the predicted fractions"}
        notes["entropy"] = {"description": "predictive entropy of the answers to the first question, in nats"}
    return with_notes(pa.schema(list(columns.items())), notes)


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


class ResultRows:
    """Decoded batches -> result rows, for one run with one set of options."""

    def __init__(self, run: Run, options: PredictOptions):
        self.cfg, self.preset = run.config, options.preset
        self.columns = list(output_columns(self.cfg, options.preset, options.mc_samples))
        self.predictor = Predictor.for_run(run, backend=options.backend, tta=options.tta,
                                           mc_samples=options.mc_samples, autocast=True)

    def of_batch(self, pixels: np.ndarray, errors: list[str], seed: int, fov: dict | None = None) -> pd.DataFrame:
        """One row per source of a decoded batch: `pixels` holds its readable ones, in order; `fov` the
        fov columns of every source (io.decode.decode_batch's); the dropout masks are seeded by `seed` (the
        batch's first row), whichever process runs it."""
        n, errors = len(errors), np.asarray(errors, dtype=object)
        ok = errors == ""
        columns = {c: np.full(n, np.nan, np.float32) for c in self.columns}
        columns["error"] = errors
        if "fov_flag" in columns:
            columns.update({c: np.asarray(fov[c]) for c in FOV_COLUMNS})
        if "predicted" in columns:
            columns["predicted"] = np.full(n, None, dtype=object)
        if ok.any():
            samples = self.predictor.samples(pixels, seed)
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
        return assign(pd.DataFrame(values, columns=ANSWER_COLUMNS), self.preset).labels.to_numpy()
