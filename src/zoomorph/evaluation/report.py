"""One self-contained HTML page per run: configuration, data, curves, metrics, pictures, saliency.

Images are PNGs embedded as base64 data URIs and the style is inline, so the
file can be mailed or archived alone: it references nothing outside itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from markupsafe import Markup

from zoomorph.data.dataset import SKIPPED_FILE, PreparedData
from zoomorph.evaluation import plots
from zoomorph.evaluation.evaluate import VARIANT_TITLES, evaluate_run, shift_rows, summary_rows
from zoomorph.evaluation.html import Section, image, join, note, page, table, text
from zoomorph.evaluation.saliency import activations, grad_cam
from zoomorph.evaluation.shifts import SHIFTS
from zoomorph.inference import to_input
from zoomorph.io.decode import AUTO, AUTO_MULTIPLE
from zoomorph.runs import Run, RunConfig
from zoomorph.schema import ANSWER_COLUMNS, QUESTION_OF

SALIENCY_PER_CLASS = 2  # the most confident right and the most confident wrong prediction

def write_report(run: Run | Path, out: Path | None = None) -> Path:
    """Write the run's report (default RUN/report.html); evaluates the run first if it never was."""
    run = Run.of(run)
    cfg = run.config
    metrics = run.metrics() or evaluate_run(run)
    data = PreparedData.load(Path(metrics["data"])) if Path(metrics["data"]).exists() else None
    preds_path = run.predictions_file(metrics["split"])
    predictions = pd.read_parquet(preds_path) if preds_path.exists() else None
    sections = [
        Section("configuration", "Configuration", _configuration(cfg, run.summary())),
        Section("data", "Data", _data_summary(data)),
        Section("training", "Training curves", _training(run.history_file)),
        Section("metrics", "Metrics", _metrics(metrics)),
        Section("shifts", "Survey shifts", _shifts(metrics)),
        Section("confusion", "Confusion matrix", _confusion(metrics)),
        Section("calibration", "Calibration", _calibration(metrics)),
        Section("samples", "Sample galaxies", _samples(data, predictions)),
        Section("saliency", "Saliency: what the network looks at", _saliency(run, data, predictions)),
    ]
    title = f"zoomorph run {run.name}: {cfg.model} ({cfg.head})"
    intro = text("<p>Evaluated on the <b>{}</b> split ({:,} galaxies, split hash <code>{}</code>), {}.</p>",
                 metrics["split"], metrics["n"], metrics["split_hash"], metrics["evaluated"]["at"])
    out = Path(out) if out else run.report_file
    out.parent.mkdir(parents=True, exist_ok=True)  # a packed run's NAME.outputs/
    out.write_text(page(title, intro, sections), encoding="utf-8")
    return out


def _configuration(cfg: RunConfig, summary: dict) -> Markup:
    settings = {"model": cfg.model, "head": cfg.head, "input size (px)": cfg.image_size,
                "field of view": f"auto ({AUTO_MULTIPLE} × each galaxy's R90)" if cfg.fov == AUTO else
                f"{cfg.fov} Kaggle px", "label preset": cfg.preset, "prepared data": cfg.data,
                "split hash": cfg.split_hash, "classes": ", ".join(cfg.classes) if cfg.head == "classes" else
                "the 37 Galaxy Zoo answers"}
    settings.update({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in cfg.extra.items()})
    outcome = {k: f"{v:,.4g}" if isinstance(v, float) else v for k, v in summary.items()
               if not isinstance(v, (dict, list))}
    parts = [table([[k, v] for k, v in settings.items()], ["setting", "value"])]
    if outcome:
        parts += [text("<h3>Training outcome</h3>"), table([[k, v] for k, v in outcome.items()], ["summary", "value"])]
    return join(*parts)


def _data_summary(data: PreparedData | None) -> Markup:
    if data is None:
        return note("The prepared data folder is no longer where the evaluation found it.")
    catalog = data.table
    counts = pd.crosstab(catalog["label"].fillna("(unassigned)"), catalog["split"], margins=True,
                         margins_name="all")
    parts = [text("<p>{:,} images in <code>{}</code>, {} px, preset <b>{}</b>.</p>\n<h3>Images per class and "
                  "split</h3>", len(catalog), data.root, data.image_size, data.preset_name),
             table([[name, *row] for name, row in zip(counts.index, counts.to_numpy().tolist())],
                   ["class", *counts.columns])]
    skipped_path = data.root / SKIPPED_FILE
    if skipped_path.exists():
        report = pd.read_csv(skipped_path, dtype=str).fillna("")
        skipped = report[report["action"] == "skipped"]
        parts.append(text("<h3>Skipped inputs</h3>\n<p>{:,} inputs were skipped and {:,} converted (details: "
                          "<code>{}</code>).</p>", len(skipped), int((report["action"] == "converted").sum()),
                          skipped_path))
        if len(skipped):
            reasons = skipped.groupby(["stage", "reason"]).size().reset_index().to_numpy().tolist()
            parts.append(table(reasons, ["stage", "reason", "items"]))
    return join(*parts)


def _training(history_path: Path) -> Markup:
    if not history_path.exists():
        return note("No history.csv: the run was not trained by zoomorph or is incomplete.")
    return image(plots.training_curves(pd.read_csv(history_path)), "training curves")


def _metrics(metrics: dict) -> Markup:
    variants = metrics["variants"]
    header = ["metric", *(VARIANT_TITLES.get(v, v) for v in variants)]
    parts = [table([[label, *values] for label, values in summary_rows(metrics)], header),
             note("In brackets: bootstrap 95 % confidence intervals (percentile, resampling the galaxies).")]
    plain = variants["plain"]
    if plain.get("per_class"):
        auc = plain.get("roc_auc", {})
        rows = [[name, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}", s["support"],
                 "-" if auc.get(name) is None else f"{auc[name]:.3f}"]
                for name, s in plain["per_class"].items() if s["support"] or s["precision"]]
        parts += [text("<h3>Per class (plain)</h3>"),
                  table(rows, ["class", "precision", "recall", "F1", "galaxies", "ROC-AUC"])]
    if "rmse_per_question" in plain:
        rows = [[q, *(f"{v['rmse_per_question'][q]:.4f}" for v in variants.values())]
                for q in plain["rmse_per_question"]]
        parts += [text("<h3>RMSE per Galaxy Zoo question</h3>"), table(rows, ["question", *header[1:]])]
    return join(*parts)


def _shifts(metrics: dict) -> Markup:
    header, rows = shift_rows(metrics)
    if not rows:
        return note("Not evaluated under survey shifts: `zoomorph evaluate RUN --shifts` adds them.")
    suite = metrics["shifts"]
    mimics = [[s.title, ", ".join(s.label(v) for v in s.strengths), s.mimics] for s in SHIFTS]
    return join(text("<p>The {:,} galaxies re-read from their files at full resolution, changed as another "
                     "survey or cutout service would deliver them, then cut as the run's decoder cuts "
                     "({:.0f} s per 1,000 galaxies).</p>", suite["n"], suite["seconds_per_1000"]),
                table(rows, header),
                note("In brackets: bootstrap 95 % intervals. Change: points of accuracy against the "
                     "unshifted images through the same path (first row). Predictions drift to: the class "
                     "whose share of the answers the shift raises most, in points of the galaxies."),
                text("<h3>What each shift mimics</h3>"), table(mimics, ["shift", "strengths", "mimics"]))


def _confusion(metrics: dict) -> Markup:
    figures = [image(plots.confusion_figure(v["confusion"], v["classes"], VARIANT_TITLES.get(name, name)),
                      f"confusion matrix ({name})")
               for name, v in metrics["variants"].items() if "confusion" in v]
    return join(*figures) if figures else note("This run has no classes to confuse (votes without a label preset).")


def _calibration(metrics: dict) -> Markup:
    figures = [image(plots.reliability_diagram(v["reliability"], v["ece"],
                                                f"Calibration, {VARIANT_TITLES.get(name, name)}"),
                      f"reliability diagram ({name})")
               for name, v in metrics["variants"].items() if "reliability" in v]
    if not figures:
        return note("Calibration needs class probabilities; a votes run predicts fractions instead.")
    return join(text("<p>How far the predicted probability of the top class can be trusted: bars on the diagonal "
                     "mean a galaxy given 80 % is right 80 % of the time.</p>"), *figures)


def _samples(data: PreparedData | None, predictions: pd.DataFrame | None) -> Markup:
    if data is None:
        return note("The prepared data folder is not available.")
    parts = [image(plots.class_samples(data), "random galaxies per class")]
    if predictions is not None and "confidence" in predictions:
        for kind, title in plots.EXAMPLE_KINDS.items():
            if kind == "confident_wrong" and (predictions["label"] == predictions["pred"]).all():
                parts.append(note(f"{title}: none, every galaxy of this split was classified correctly."))
            else:
                parts.append(image(plots.prediction_examples(data, predictions, kind), title))
    return join(*parts)


def _saliency(run: Run, data: PreparedData | None, predictions: pd.DataFrame | None) -> Markup:
    if data is None or predictions is None or predictions.empty:
        return note("Saliency needs the prepared data and the predictions of an evaluation.")
    model, cfg = run.load_model("cpu"), run.config
    examples = _saliency_examples(predictions)
    images = [data.images[r] for r in examples["row"]]
    inputs = to_input(torch.from_numpy(np.stack(images)))
    cams, captions = [], []
    for x, (_, ex) in zip(inputs, examples.iterrows()):
        if cfg.head == "classes":
            target, why = cfg.classes.index(ex["pred"]), f"predicted {ex['pred']} ({ex['confidence']:.2f})"
        else:  # a votes model: explain its answer to the first question (smooth / features / star)
            target = int(np.argmax([ex[f"pred_{c}"] for c in ANSWER_COLUMNS[:3]]))
            why = f"Q1: {QUESTION_OF[ANSWER_COLUMNS[target]].answers[target]}"
        cams.append(grad_cam(model, x, target))
        captions.append(f"id {ex['id']}, true {'unassigned' if pd.isna(ex['label']) else ex['label']}\n{why}")
    acts = activations(model, inputs[0])
    return join(text("<p>Grad-CAM (Selvaraju et al. 2017) on the last convolution layer: red marks the regions "
                     "that raise the explained output.</p>"),
                image(plots.grad_cam_overlays(images, cams, captions), "Grad-CAM overlays"),
                text("<h3>Activations</h3>"),
                image(plots.activation_tiles(acts, images[0]), "activations of the first conv layers"))


def _saliency_examples(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per true class: its most confident correct and most confident wrong prediction (if any)."""
    if "confidence" not in predictions:
        return predictions.groupby("label", dropna=False).head(SALIENCY_PER_CLASS)
    ranked = predictions.assign(right=predictions["label"] == predictions["pred"])
    ranked = ranked.sort_values("confidence", ascending=False)
    return ranked.groupby(["label", "right"]).head(1).sort_values(["label", "right"], ascending=[True, False])
