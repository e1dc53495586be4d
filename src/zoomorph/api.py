"""The Python API the CLI wraps: one function per command, usable from notebooks.

    from zoomorph import api
    api.prepare("images/", "training_solutions_rev1.csv", "prepared/", preset="hubble")
    run = api.train("prepared/", model="convnet")
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from zoomorph.data import prepare as preparing
from zoomorph.data.labelled import Report, read_labels
from zoomorph.data.prepare import PrepareSummary
from zoomorph.labels import DEFAULT_PRESET, Labels, assign, get_preset
from zoomorph.models import model_spec

__all__ = ["PrepareSummary", "compare", "demo", "evaluate", "export", "label_solutions", "predict", "prepare",
           "report", "train"]


def label_solutions(solutions: Path, preset: str = "hubble", *, conflicts: str = "exclude",
                    min_share: float = 0.8, out: Path | None = None) -> tuple[Labels, Report]:
    """Apply a preset to a solutions file; optionally write GalaxyID,label CSV."""
    report = Report()
    fractions = read_labels(Path(solutions), report)
    result = assign(fractions, get_preset(preset, conflicts, min_share))
    if out is not None:
        pd.DataFrame({"GalaxyID": result.labels.index, "label": result.labels.to_numpy()}).to_csv(out, index=False)
    return result, report


def prepare(images: Path, labels: Path | None, out: Path, *, model: str | None = None, preset: str = DEFAULT_PRESET,
            conflicts: str = "exclude", min_share: float = 0.8, size: int | None = None, fov: int | None = None,
            val: float = 0.2, test: float = 0.0, seed: int = 0, workers: int | None = None,
            progress: bool = True) -> PrepareSummary:
    """Labels + stratified split + uint8 image cache in one step (zoomorph.data.prepare.prepare).

    Args:
        images: an image folder, a Kaggle zip, or a catalogue CSV/Parquet with a path column.
        labels: a solutions / labels CSV; None for class folders.
        out: the prepared folder to write (refused data leaves it as it was).
        model: prepare for this registered model: its default image size and field of view
            (e.g. 150 px of the central 150 px for the seed models) unless size / fov are given.
        size, fov: the cached side in pixels, and the central crop in Kaggle (424 px) pixels;
            default 64 and 256.
        preset, conflicts, min_share: how vote fractions become classes (docs/labels.md).
        val, test, seed: the split; workers: decoding processes (None: one per core, 0: none).

    Returns:
        the prepared data, the accounting of every input, whether the cache was reused, warnings.
    """
    if model is not None:
        spec = model_spec(model)
        size, fov = size or spec.default_image_size, fov or spec.default_fov
    return preparing.prepare(images, labels, out, preset=preset, conflicts=conflicts, min_share=min_share,
                             size=size or preparing.DEFAULT_SIZE, fov=fov or preparing.DEFAULT_FOV, val=val,
                             test=test, seed=seed, workers=workers, progress=progress)


def train(data: Path, model: str | None = None, **kwargs):
    """Train a registered model on a prepared folder (see zoomorph.training.train for options)."""
    from zoomorph.training import DEFAULT_MODEL, train as run_train

    return run_train(data, model=model or DEFAULT_MODEL, **kwargs)


def demo(out: Path = Path("demo"), n: int = 1500, epochs: int | None = 15, model: str | None = None,
         seed: int = 0, progress: bool = True) -> dict:
    """Synthetic galaxies -> prepare -> train the default model -> validation accuracy.

    The embedded default that shows the whole pipeline on a fresh machine,
    no data needed. Synthetic accuracy is no measure of real performance.
    """
    import time

    from zoomorph.data.synthetic import make_synthetic
    from zoomorph.training import DEFAULT_MODEL, train as run_train

    out, started = Path(out), time.perf_counter()
    solutions = out / "synthetic" / "solutions.csv"
    if not solutions.exists():
        make_synthetic(out / "synthetic", n, seed=seed)
    prepared = prepare(out / "synthetic" / "images", solutions, out / "prepared", preset="hubble", progress=progress)
    result = run_train(prepared.data, model=model or DEFAULT_MODEL, run_dir=out / "run", epochs=epochs,
                       seed=seed, resume=False, progress=progress)
    return {"run_dir": result.run_dir, "prepared": out / "prepared", "counts": prepared.counts,
            "summary": result.summary, "seconds": time.perf_counter() - started}


def evaluate(run_dir: Path, data: Path | None = None, split: str = "val", tta: bool = False) -> dict:
    """Metrics of a trained run on a split; writes RUN/metrics.json."""
    from zoomorph.evaluation.evaluate import evaluate_run

    return evaluate_run(Path(run_dir), Path(data) if data else None, split=split, tta=tta)


def report(run_dir: Path, out: Path | None = None) -> Path:
    """One self-contained HTML report of a run (evaluates it first if needed)."""
    from zoomorph.evaluation.report import write_report

    return write_report(Path(run_dir), out)


def compare(run_dirs: list[Path], out: Path | None = None) -> tuple[pd.DataFrame, Path | None]:
    """The comparison table of several runs (same split required), and its HTML page."""
    from zoomorph.evaluation.compare import compare_runs, write_compare_html

    table = compare_runs([Path(r) for r in run_dirs])
    return table, write_compare_html([Path(r) for r in run_dirs], out) if out else None


def predict(run_dir: Path, inputs: list, out: Path, *, overwrite: bool = False, **kwargs):
    """Classify images, folders, zips, catalogues or FITS into one row per input (see zoomorph.predict);
    `overwrite`: replace an existing `out` that is not predict's own output, and redo a finished one."""
    from zoomorph.predict import predict as run_predict

    return run_predict(Path(run_dir), inputs, Path(out), overwrite=overwrite, **kwargs)


def export(run_dir: Path, out: Path | None = None, *, int8: bool = False, calibration: list | None = None) -> Path:
    """ONNX model (dynamic batch, uint8 NHWC in, probabilities out) and its preprocessing sidecar;
    `int8`: statically quantised for fast CPU serving, calibrated on `calibration` or the run's own images."""
    from zoomorph.predict import export_onnx

    return export_onnx(Path(run_dir), Path(out) if out else None, int8=int8, calibration=calibration)
