"""Several runs side by side: one table row per run, overlaid training curves.

Numbers are only comparable on the same galaxies, so runs evaluated on
different splits (split name or split-manifest hash) are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from markupsafe import Markup

from zoomorph.errors import ZoomorphError
from zoomorph.evaluation import plots
from zoomorph.evaluation.evaluate import drift_text, evaluate_run
from zoomorph.evaluation.html import Section, image, join, note, page, table, text
from zoomorph.evaluation.shifts import SHIFTS
from zoomorph.runs import Run, build_model

COLUMNS = ["run", "model", "head", "parameters", "input_size", "epochs", "train_seconds", "images_per_s",
           "accuracy", "accuracy_low", "accuracy_high", "balanced_accuracy", "ece", "rmse", "tta_accuracy",
           *(f"shift_{s.name}" for s in SHIFTS), "split", "split_hash"]


def compare_runs(runs: list[Run | Path]) -> pd.DataFrame:
    """One row per run (columns: COLUMNS). Evaluates a run that has no metrics.json yet (val split)."""
    runs = [Run.of(r) for r in runs]
    if not runs:
        raise ZoomorphError("compare needs at least one run folder")
    metrics = [r.metrics() or evaluate_run(r) for r in runs]
    _check_same_split(runs, metrics)
    return pd.DataFrame([_row(r, m) for r, m in zip(runs, metrics)], columns=COLUMNS)


def _check_same_split(runs: list[Run], metrics: list[dict]) -> None:
    splits = {(m["split"], m["split_hash"]) for m in metrics}
    if len(splits) > 1:
        lines = "\n".join(f"  {r.dir}: split {m['split']!r}, hash {m['split_hash']}" for r, m in zip(runs, metrics))
        raise ZoomorphError("these runs were evaluated on different galaxies and cannot be compared:\n" + lines
                         + "\nevaluate them all on the same prepared data and split first")


def _row(run: Run, metrics: dict) -> dict:
    cfg, summary = run.config, run.summary()
    history = pd.read_csv(run.history_file) if run.history_file.exists() else pd.DataFrame()
    plain, tta = metrics["variants"]["plain"], metrics["variants"].get("tta", {})
    ci = plain.get("ci", {}).get("accuracy", {})
    return {
        "run": run.name, "model": cfg.model, "head": cfg.head,
        "parameters": summary.get("parameters") or sum(p.numel() for p in build_model(cfg).parameters()),
        "input_size": cfg.image_size,
        "epochs": summary.get("epochs") or len(history),
        "train_seconds": summary.get("train_seconds") or _history_stat(history, "train_seconds", "sum"),
        "images_per_s": summary.get("images_per_s") or _history_stat(history, "images_per_s", "median"),
        "accuracy": plain.get("accuracy", np.nan), "accuracy_low": ci.get("low", np.nan),
        "accuracy_high": ci.get("high", np.nan), "balanced_accuracy": plain.get("balanced_accuracy", np.nan),
        "ece": plain.get("ece", np.nan), "rmse": plain.get("rmse", np.nan),
        "tta_accuracy": tta.get("accuracy", np.nan), **_middle_shifts(metrics),
        "split": metrics["split"], "split_hash": metrics["split_hash"],
    }


def _middle_shifts(metrics: dict) -> dict:
    """shift_<name>: accuracy (RMSE for a votes run without classes) at each shift's middle strength;
    NaN for a run evaluated without --shifts."""
    results = {r["shift"]: r for r in metrics.get("shifts", {}).get("results", []) if r["level"] == "middle"}
    return {f"shift_{s.name}": results[s.name].get("accuracy", results[s.name].get("rmse", np.nan))
            if s.name in results else np.nan for s in SHIFTS}


def _shift_section(runs: list[Run]) -> Markup:
    """Accuracy of every run under every shift and strength (runs evaluated with --shifts), and which way
    each shift drifts its answers."""
    metrics = {r.name: r.metrics() for r in runs}
    if not any(m.get("shifts") for m in metrics.values()):
        return note("None of the runs was evaluated under survey shifts (`zoomorph evaluate RUN --shifts`).")

    def cell(run_metrics: dict, i: int) -> str:
        suite = run_metrics.get("shifts")
        if not suite:
            return ""
        scores = suite["reference"] if i < 0 else suite["results"][i]
        ci = scores.get("ci", {}).get("accuracy")
        score = (f"{scores['accuracy']:.3f} ({ci['low']:.3f}-{ci['high']:.3f})" if ci
                 else f"{scores['rmse']:.4f}" if "rmse" in scores else "")
        drift = "-" if i < 0 else drift_text(scores, suite["reference"], run_metrics.get("classes", []))
        return score if drift in ("-", "none") else f"{score}, {drift}"

    settings = [("none", "as cut")] + [(s.title, s.label(v)) for s in SHIFTS for v in s.strengths]
    rows = [[title, label, *(cell(m, i - 1) for m in metrics.values())]
            for i, (title, label) in enumerate(settings)]
    return join(table(rows, ["shift", "strength", *metrics]),
                note("Accuracy (RMSE for votes runs without classes), bootstrap 95 % interval in brackets, "
                     "then the class whose share of the answers the shift raises, in points (as in "
                     "`zoomorph report`). Blank: the run was evaluated without --shifts."))


def _history_stat(history: pd.DataFrame, column: str, how: str) -> float:
    return float(history[column].agg(how)) if column in history else np.nan


def write_compare_html(runs: list[Run | Path], out: Path) -> Path:
    """A self-contained page: the comparison table and every run's training curves on shared axes."""
    runs = [Run.of(r) for r in runs]
    rows = compare_runs(runs)
    first = rows.iloc[0]
    intro = text("<p>{} runs, all evaluated on the <b>{}</b> split (split hash <code>{}</code>).</p>",
                 len(rows), first["split"], first["split_hash"])
    histories = {r.name: pd.read_csv(r.history_file) for r in runs if r.history_file.exists()}
    curves = (image(plots.training_curves(histories), "training curves of all runs") if histories
              else note("None of the runs has a history.csv."))
    sections = [Section("table", "Runs", join(table(_display_rows(rows), DISPLAY_HEADER), note(
                    "Accuracy in brackets: bootstrap 95 % interval. Blank: not applicable to the run."))),
                Section("shifts", "Survey shifts", _shift_section(runs)),
                Section("curves", "Training curves", curves)]
    out = Path(out)
    out.write_text(page("zoomorph run comparison", intro, sections), encoding="utf-8")
    return out


DISPLAY_HEADER = ["run", "model", "head", "parameters", "input (px)", "epochs", "train time (s)", "images/s",
                  "accuracy", "balanced accuracy", "ECE", "Kaggle RMSE", "accuracy with TTA"]


def _display_rows(table: pd.DataFrame) -> list[list[str]]:
    number = lambda v, fmt: "" if pd.isna(v) else format(v, fmt)  # noqa: E731
    return [[r.run, r.model, r.head, number(r.parameters, ","), r.input_size, r.epochs, number(r.train_seconds, ".0f"),
             number(r.images_per_s, ".0f"),
             "" if pd.isna(r.accuracy) else f"{r.accuracy:.3f} ({r.accuracy_low:.3f}-{r.accuracy_high:.3f})",
             number(r.balanced_accuracy, ".3f"), number(r.ece, ".3f"), number(r.rmse, ".4f"),
             number(r.tta_accuracy, ".3f")]
            for r in table.itertuples()]
