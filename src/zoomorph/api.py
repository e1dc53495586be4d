"""The Python API the CLI wraps: one function per command, usable from notebooks.

    from zoomorph import api
    api.prepare("images/", "training_solutions_rev1.csv", "prepared/", preset="hubble")
    run = api.train("prepared/", model="convnet")
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from zoomorph.data.catalog import Report, read_labels
from zoomorph.data.prepare import PrepareSummary, prepare
from zoomorph.labels import Labels, assign, get_preset

__all__ = ["label_solutions", "prepare", "PrepareSummary"]


def label_solutions(solutions: Path, preset: str = "hubble", *, conflicts: str = "exclude",
                    min_share: float = 0.8, out: Path | None = None) -> tuple[Labels, Report]:
    """Apply a preset to a solutions file; optionally write GalaxyID,label CSV."""
    report = Report()
    fractions = read_labels(Path(solutions), report)
    result = assign(fractions, get_preset(preset, conflicts, min_share))
    if out is not None:
        pd.DataFrame({"GalaxyID": result.labels.index, "label": result.labels.to_numpy()}).to_csv(out, index=False)
    return result, report


def train(data: Path, model: str | None = None, **kwargs):
    """Train a registered model on a prepared folder (see zoomorph.training.train for options)."""
    from zoomorph.training import DEFAULT_MODEL, train as run_train

    return run_train(data, model=model or DEFAULT_MODEL, **kwargs)


def demo(out: Path = Path("demo"), n: int = 1500, epochs: int | None = None, model: str | None = None,
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
