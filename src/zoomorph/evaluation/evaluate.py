"""Evaluate a run folder on one split of its prepared data: RUN/metrics.json + RUN/predictions_<split>.parquet.

A "classes" run is scored on its class probabilities. A "votes" run is scored
as in the Kaggle challenge (RMSE over the 37 fractions) and, through the label
preset its data was prepared with, as a classifier of the classes that preset
derives from the predicted fractions.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich import box
from rich.table import Table

from zoomorph.card import write_card
from zoomorph.data.dataset import PreparedData
from zoomorph.errors import ZoomorphError
from zoomorph.evaluation.metrics import (
    BOOTSTRAP_METRICS,
    bootstrap_ci,
    classification_metrics,
    kaggle_rmse,
    label_metrics,
    rmse_per_question,
)
from zoomorph.evaluation.robustness import shift_settings, shifted_outputs
from zoomorph.evaluation.shifts import level
from zoomorph.inference import Predictor
from zoomorph.io.decode import AUTO
from zoomorph.labels import assign
from zoomorph.runs import Run, RunConfig
from zoomorph.schema import ANSWER_COLUMNS

NO_CLASS = "(none)"  # what a vote preset says when the predicted fractions meet no rule
VARIANT_TITLES = {"plain": "plain", "tta": "TTA (8 dihedral views)"}


def evaluate_run(run: Run | Path, data_dir: Path | None = None, split: str = "val", tta: bool = False,
                 batch_size: int = 256, bootstrap: int = 1000, shifts: bool = False) -> dict:
    """Score a trained run on `split`, plainly and (tta=True) averaged over the 8 dihedral views; with
    `shifts`, also on the survey-shift suite (metrics["shifts"], see `shift_suite`).

    Writes RUN/metrics.json and RUN/predictions_<split>.parquet and refreshes RUN/MODEL_CARD.md (for a
    packed file, into NAME.outputs/ beside it: Run.out_dir); returns the metrics dict.
    """
    started = time.perf_counter()
    run = Run.of(run)
    if shifts:  # the suite cuts as this version does: the run must have learnt from those crops
        run.check_cut()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, cfg = run.load_model(device), run.config
    data = _data_for(cfg, data_dir, run.source)
    rows = data.indices(split, labelled=cfg.head == "classes")  # the votes head scores every galaxy
    if len(rows) == 0:
        raise ZoomorphError(f"{data.root}: no galaxies to evaluate in split {split!r}")
    table = data.table.iloc[rows].reset_index(drop=True).assign(row=rows)
    images = data.images[rows]

    # float32 on a GPU too (no autocast): these are the figures the run is judged by
    outputs = {"plain": Predictor.from_model(model, cfg.head).probabilities(images, batch_size)}
    if tta:
        outputs["tta"] = Predictor.from_model(model, cfg.head, tta=True).probabilities(images, batch_size)

    score = _score_classes if cfg.head == "classes" else partial(_score_votes, preset=data.preset)
    variants, predictions = {}, table[["row", "id", "label"]].copy()
    for name, out in outputs.items():
        variants[name], columns = score(out, table, cfg.classes, bootstrap)
        suffix = "" if name == "plain" else f"_{name}"
        predictions = predictions.assign(**{k + suffix: v for k, v in columns.items()})

    scope = {"split": split, "split_hash": data.split_hash, "data": str(data.root)}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    suite = ({**shift_suite(model, cfg, table, score, bootstrap), "at": now, "weights_sha256": run.weights_digest}
             if shifts else _earlier_suite(run, scope))
    metrics = {
        "run": run.name, "model": cfg.model, "head": cfg.head, "n": len(rows), **scope,
        "trained_split_hash": cfg.split_hash, "classes": variants["plain"]["classes"], "variants": variants,
        **({"shifts": suite} if suite else {}),
        "evaluated": {"at": now, "device": device,
                      "seconds": round(time.perf_counter() - started, 2)},
    }
    run.out_dir.mkdir(parents=True, exist_ok=True)
    run.metrics_file.write_text(json.dumps(metrics, indent=2))
    predictions.to_parquet(run.predictions_file(split), index=False)
    write_card(run)
    return metrics


def _earlier_suite(run: Run, scope: dict) -> dict | None:
    """The survey-shift results in RUN/metrics.json when they are of these weights (by digest) on these
    galaxies: a plain `evaluate` keeps them rather than drop minutes of work; a retrained run loses them."""
    try:
        earlier = json.loads(run.metrics_file.read_text())
    except (OSError, ValueError):
        return None
    suite = earlier.get("shifts")
    if not suite or {k: earlier.get(k) for k in scope} != scope:
        return None
    return suite if suite.get("weights_sha256") == run.weights_digest else None


# "confusion": which way a shift moves the answers (prediction_drift), beyond how many it gets wrong
SHIFT_SCORES = ("n", "accuracy", "balanced_accuracy", "ci", "confusion", "rmse", "coverage")


def shift_suite(model: torch.nn.Module, cfg: RunConfig, table: pd.DataFrame, score, bootstrap: int) -> dict:
    """The galaxies of `table` under every survey shift (evaluation.shifts.SHIFTS), scored as the plain
    variant is: {"n", "seconds", "seconds_per_1000", "reference": scores, "results": [scores per setting]}.

    "reference" is the untransformed frames through the same full-resolution path, the baseline each
    shift is measured against (it can differ a little from "plain": the cache decodes by DCT scaling).
    """
    started = time.perf_counter()
    settings = shift_settings()
    outputs = shifted_outputs(Predictor.from_model(model, cfg.head), table["source"].tolist(), cfg.image_size,
                              cfg.fov, settings)
    scored = [{k: v for k, v in score(out, table, cfg.classes, bootstrap)[0].items() if k in SHIFT_SCORES}
              for out in outputs]
    results = [{"shift": shift.name, "title": shift.title, "strength": strength, "level": level(shift, strength),
                "label": shift.label(strength), **scores}
               for (shift, strength), scores in zip(settings[1:], scored[1:])]
    seconds = time.perf_counter() - started
    return {"n": len(table), "seconds": round(seconds, 2), "seconds_per_1000": round(1000 * seconds / len(table), 1),
            "reference": scored[0], "results": results}


def _data_for(cfg: RunConfig, data_dir: Path | None, run_dir: Path) -> PreparedData:
    if data_dir is None and cfg.data is None:
        raise ZoomorphError(f"{run_dir}: the run does not name its prepared data; pass data_dir")
    data = PreparedData.load(Path(data_dir or cfg.data))
    if data.image_size != cfg.image_size:
        raise ZoomorphError(f"{data.root} holds {data.image_size} px images; "
                         f"{run_dir} was trained on {cfg.image_size} px (prepare the data at that size)")
    if data.fov != cfg.fov or (cfg.fov == AUTO and data.settings.get("fov_auto") != cfg.extra.get("fov_auto")):
        raise ZoomorphError(f"{data.root} is cut with fov {data.fov!r}; {run_dir} was trained on fov {cfg.fov!r} "
                            "(prepare the data with the run's fov)" if data.fov != cfg.fov else
                            f"{data.root} and {run_dir} were cut with different fov auto crops (prepare again)")
    if cfg.head == "classes" and data.classes != list(cfg.classes):
        raise ZoomorphError(f"{data.root} has classes {data.classes}; {run_dir} predicts {list(cfg.classes)}")
    if cfg.head == "votes" and not data.has_votes:
        raise ZoomorphError(f"{data.root}: a votes run needs the 37 vote fractions, these labels lack them")
    return data


def _with_ci(metrics: dict, y_true: np.ndarray, y_pred: np.ndarray, n: int) -> dict:
    metrics["ci"] = {m: bootstrap_ci(y_true, y_pred, m, n=n) for m in BOOTSTRAP_METRICS}
    return metrics


def _score_classes(probs: np.ndarray, table: pd.DataFrame, classes: list[str], bootstrap: int):
    y_true, y_pred = table["label_index"].to_numpy(), probs.argmax(axis=1)
    metrics = _with_ci(classification_metrics(y_true, probs, classes), y_true, y_pred, bootstrap)
    metrics["classes"] = list(classes)
    columns = {"pred": np.asarray(classes, dtype=object)[y_pred], "confidence": probs.max(axis=1),
               **{f"prob_{c}": probs[:, i] for i, c in enumerate(classes)}}
    return metrics, columns


def _score_votes(fractions: np.ndarray, table: pd.DataFrame, classes: list[str], bootstrap: int, preset):
    truth = table[ANSWER_COLUMNS].to_numpy(dtype=float)
    metrics = {"rmse": kaggle_rmse(truth, fractions), "rmse_per_question": rmse_per_question(truth, fractions),
               "classes": []}
    columns = {f"pred_{c}": fractions[:, i] for i, c in enumerate(ANSWER_COLUMNS)}
    if preset is None:
        return metrics, columns
    predicted = preset_labels(fractions, table["id"], preset)
    columns["pred"] = predicted.to_numpy()
    labelled = (table["label_index"] >= 0).to_numpy()
    if labelled.any():
        names = preset.classes + [NO_CLASS]
        index = {c: i for i, c in enumerate(names)}
        y_true = table["label_index"].to_numpy()[labelled]
        y_pred = predicted[labelled].fillna(NO_CLASS).map(index).to_numpy()
        metrics.update(_with_ci(label_metrics(y_true, y_pred, names), y_true, y_pred, bootstrap))
        metrics["coverage"] = float((y_pred != index[NO_CLASS]).mean())
        metrics["classes"], metrics["preset"] = names, preset.name
    return metrics, columns


def preset_labels(fractions: np.ndarray, ids: pd.Series, preset) -> pd.Series:
    """Classes a label preset derives from predicted vote fractions (None where no rule is met)."""
    frame = pd.DataFrame(fractions, columns=ANSWER_COLUMNS, index=pd.Index(ids, name="GalaxyID"))
    return assign(frame, preset).labels.reset_index(drop=True)


def _number(value: float | None, ci: dict | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" ({ci['low']:.3f}-{ci['high']:.3f})" if ci else "")


def summary_rows(metrics: dict) -> list[tuple[str, list[str]]]:
    """(metric, one value per variant) in display order; intervals are the bootstrap 95 % CIs."""
    variants = list(metrics["variants"].values())
    rows = [("galaxies", [f"{metrics['n']:,}"] * len(variants))]
    if any(v.get("n", metrics["n"]) != metrics["n"] for v in variants):  # votes: class metrics on the labelled
        rows.append(("galaxies with a preset class", [f"{v.get('n', 0):,}" for v in variants]))
    scalar = [("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"),
              ("ROC-AUC (macro, one-vs-rest)", "roc_auc_macro"), ("log loss", "log_loss"),
              ("expected calibration error", "ece"), ("Kaggle RMSE (37 answers)", "rmse"),
              ("share given a class by the preset", "coverage")]
    for title, key in scalar:
        if any(key in v for v in variants):
            rows.append((title, [_number(v.get(key), v.get("ci", {}).get(key)) for v in variants]))
    for name in metrics["classes"]:
        if all(v.get("per_class", {}).get(name, {}).get("support") for v in variants):
            rows.append((f"{name}: recall / F1",
                         [f"{v['per_class'][name]['recall']:.3f} / {v['per_class'][name]['f1']:.3f}"
                          for v in variants]))
    return rows


def format_metrics_table(metrics: dict) -> Table:
    """The summary as a rich table, variants side by side (for the CLI)."""
    title = f"{metrics['run']}: {metrics['model']} on the {metrics['split']} split"
    table = Table(title=title, title_justify="left", caption="in brackets: bootstrap 95 % interval")
    table.add_column("metric")
    for name in metrics["variants"]:
        table.add_column(VARIANT_TITLES.get(name, name), justify="right")
    for label, values in summary_rows(metrics):
        table.add_row(label, *values)
    return table


SHIFT_HEADER = ["shift", "strength", "level", "accuracy", "balanced accuracy", "change in accuracy",
                "predictions drift to", "Kaggle RMSE"]


def prediction_drift(scores: dict, reference: dict, classes: list[str]) -> tuple[str, float] | None:
    """(class, points): the class whose share of the predictions a shift raises most against `reference`,
    and by how many points of the galaxies (a systematic, as Galaxy Zoo's own volunteers see fewer features
    in distant galaxies); None without both confusion matrices (a votes run without classes, or a suite
    evaluated before they were kept)."""
    if "confusion" not in scores or "confusion" not in reference:
        return None
    shifted, unshifted = (np.asarray(s["confusion"], float) for s in (scores, reference))
    gain = 100 * (shifted.sum(axis=0) / max(shifted.sum(), 1) - unshifted.sum(axis=0) / max(unshifted.sum(), 1))
    top = int(np.argmax(gain))
    return classes[top], float(gain[top])


def drift_text(scores: dict, reference: dict, classes: list[str]) -> str:
    """prediction_drift in words: "smooth +4.5", "none" (no class gains), "-" (no matrices to tell)."""
    drift = prediction_drift(scores, reference, classes)
    if drift is None:
        return "-"
    name, points = drift
    return f"{name} {points:+.1f}" if round(points, 1) > 0 else "none"


def shift_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """The survey-shift table: header (of SHIFT_HEADER, the columns the run has) and rows, the reference
    first; intervals are bootstrap 95 %, "change" is points of accuracy against the reference, "drift" the
    class the shift pushes predictions to (prediction_drift). No rows when the run was evaluated without
    --shifts."""
    suite = metrics.get("shifts")
    if not suite:
        return SHIFT_HEADER, []
    ref = suite["reference"]

    def row(title: str, label: str, lvl: str, s: dict) -> list[str]:
        change = (f"{100 * (s['accuracy'] - ref['accuracy']):+.1f}" if "accuracy" in s and "accuracy" in ref
                  else "-")
        drift = "-" if s is ref else drift_text(s, ref, metrics["classes"])
        return [title, label, lvl, _number(s.get("accuracy"), s.get("ci", {}).get("accuracy")),
                _number(s.get("balanced_accuracy"), s.get("ci", {}).get("balanced_accuracy")), change, drift,
                "-" if "rmse" not in s else f"{s['rmse']:.4f}"]

    rows = [row("none (full resolution, as cut)", "-", "-", ref)] + [
        row(r["title"], r["label"], r["level"], r) for r in suite["results"]]
    keep = [i for i in range(len(SHIFT_HEADER)) if i < 3 or any(r[i] != "-" for r in rows)]
    return [SHIFT_HEADER[i] for i in keep], [[r[i] for i in keep] for r in rows]


def format_shifts_table(metrics: dict) -> Table:
    """The survey-shift table as a rich table for the CLI: percentages, to fit 80 columns."""
    suite, ref = metrics["shifts"], metrics["shifts"]["reference"]
    table = Table(title=f"{metrics['run']}: survey shifts ({suite['n']:,} galaxies, "
                        f"{suite['seconds_per_1000']:.0f} s per 1,000)", title_justify="left", box=box.SIMPLE,
                  caption="in brackets: bootstrap 95 % interval (both in metrics.json); change: accuracy points "
                          "against none; `zoomorph report RUN` adds which way the answers drift")
    scored = "accuracy" in ref
    for name in ["shift", "strength"] + (["accuracy %", "balanced %", "change"] if scored else ["Kaggle RMSE"]):
        table.add_column(name, justify="left" if name in ("shift", "strength") else "right")

    def cells(s: dict) -> list[str]:
        if not scored:
            return [f"{s['rmse']:.4f}"]
        ci = s["ci"]["accuracy"]
        return [f"{100 * s['accuracy']:.1f} ({100 * ci['low']:.1f}-{100 * ci['high']:.1f})",
                f"{100 * s['balanced_accuracy']:.1f}", f"{100 * (s['accuracy'] - ref['accuracy']):+.1f}"]

    table.add_row("none", "as cut", *cells(ref), end_section=True)
    results = suite["results"]
    for i, r in enumerate(results):
        first, last = i == 0 or results[i - 1]["shift"] != r["shift"], i + 1 == len(results) or \
            results[i + 1]["shift"] != r["shift"]
        table.add_row(r["title"] if first else "", r["label"], *cells(r), end_section=last)
    return table
