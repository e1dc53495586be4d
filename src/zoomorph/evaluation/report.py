"""One self-contained HTML page per run: configuration, data, curves, metrics, pictures, saliency.

Images are PNGs embedded as base64 data URIs and the style is inline, so the
file can be mailed or archived alone: it references nothing outside itself.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from zoomorph.data.dataset import SKIPPED_FILE, PreparedData
from zoomorph.evaluation import plots
from zoomorph.evaluation.evaluate import VARIANT_TITLES, evaluate_run, summary_rows
from zoomorph.evaluation.saliency import activations, grad_cam
from zoomorph.inference import to_input
from zoomorph.runs import Run, RunConfig
from zoomorph.schema import ANSWER_COLUMNS, QUESTION_OF

SALIENCY_PER_CLASS = 2  # the most confident right and the most confident wrong prediction

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #446; } h2 { color: #335; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ccd; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #eef; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.note { color: #666; font-style: italic; }
"""


def write_report(run: Run | Path, out: Path | None = None) -> Path:
    """Write the run's report (default RUN/report.html); evaluates the run first if it never was."""
    run = Run.of(run)
    cfg = run.config
    metrics = run.metrics() or evaluate_run(run)
    data = PreparedData.load(Path(metrics["data"])) if Path(metrics["data"]).exists() else None
    preds_path = run.predictions_file(metrics["split"])
    predictions = pd.read_parquet(preds_path) if preds_path.exists() else None
    sections = [
        ("configuration", "Configuration", _configuration(cfg, run.summary())),
        ("data", "Data", _data_summary(data)),
        ("training", "Training curves", _training(run.history_file)),
        ("metrics", "Metrics", _metrics(metrics)),
        ("confusion", "Confusion matrix", _confusion(metrics)),
        ("calibration", "Calibration", _calibration(metrics)),
        ("samples", "Sample galaxies", _samples(data, predictions)),
        ("saliency", "Saliency: what the network looks at", _saliency(run, data, predictions)),
    ]
    title = f"zoomorph run {run.name}: {cfg.model} ({cfg.head})"
    intro = (f"<p>Evaluated on the <b>{html.escape(metrics['split'])}</b> split ({metrics['n']:,} galaxies, "
             f"split hash <code>{html.escape(str(metrics['split_hash']))}</code>), "
             f"{html.escape(metrics['evaluated']['at'])}.</p>")
    out = Path(out) if out else run.report_file
    out.write_text(html_page(title, intro, sections), encoding="utf-8")
    return out


def html_page(title: str, intro: str, sections: list[tuple[str, str, str]]) -> str:
    """A complete page: intro HTML, then one <section id=key> per (key, heading, content HTML)."""
    body = "\n".join(f'<section id="{key}">\n<h2>{html.escape(heading)}</h2>\n{content}\n</section>'
                     for key, heading, content in sections)
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{intro}\n{body}\n</body>\n</html>\n")


def html_image(fig: Figure, alt: str) -> str:
    encoded = base64.b64encode(plots.png_bytes(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def html_note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def html_table(rows: list[list], header: list[str]) -> str:
    cells = lambda row, tag: "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in row)  # noqa: E731
    body = "\n".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    return f"<table>\n<tr>{cells(header, 'th')}</tr>\n{body}\n</table>"


def _configuration(cfg: RunConfig, summary: dict) -> str:
    settings = {"model": cfg.model, "head": cfg.head, "input size (px)": cfg.image_size,
                "field of view (Kaggle px)": cfg.fov, "label preset": cfg.preset, "prepared data": cfg.data,
                "split hash": cfg.split_hash, "classes": ", ".join(cfg.classes) if cfg.head == "classes" else
                "the 37 Galaxy Zoo answers"}
    settings.update({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in cfg.extra.items()})
    outcome = {k: f"{v:,.4g}" if isinstance(v, float) else v for k, v in summary.items()
               if not isinstance(v, (dict, list))}
    text = html_table([[k, v] for k, v in settings.items()], ["setting", "value"])
    if outcome:
        text += "\n<h3>Training outcome</h3>\n" + html_table([[k, v] for k, v in outcome.items()], ["summary", "value"])
    return text


def _data_summary(data: PreparedData | None) -> str:
    if data is None:
        return html_note("The prepared data folder is no longer where the evaluation found it.")
    table = data.table
    counts = pd.crosstab(table["label"].fillna("(unassigned)"), table["split"], margins=True, margins_name="all")
    text = (f"<p>{len(table):,} images in <code>{html.escape(str(data.root))}</code>, "
            f"{data.image_size} px, preset <b>{html.escape(str(data.preset_name))}</b>.</p>"
            "\n<h3>Images per class and split</h3>\n"
            + html_table([[name, *row] for name, row in zip(counts.index, counts.to_numpy().tolist())],
                     ["class", *counts.columns]))
    skipped_path = data.root / SKIPPED_FILE
    if skipped_path.exists():
        report = pd.read_csv(skipped_path, dtype=str).fillna("")
        skipped = report[report["action"] == "skipped"]
        text += (f"\n<h3>Skipped inputs</h3>\n<p>{len(skipped):,} inputs were skipped and "
                 f"{int((report['action'] == 'converted').sum()):,} converted (details: "
                 f"<code>{html.escape(str(skipped_path))}</code>).</p>")
        if len(skipped):
            reasons = skipped.groupby(["stage", "reason"]).size().reset_index().to_numpy().tolist()
            text += "\n" + html_table(reasons, ["stage", "reason", "items"])
    return text


def _training(history_path: Path) -> str:
    if not history_path.exists():
        return html_note("No history.csv: the run was not trained by zoomorph or is incomplete.")
    return html_image(plots.training_curves(pd.read_csv(history_path)), "training curves")


def _metrics(metrics: dict) -> str:
    variants = metrics["variants"]
    header = ["metric", *(VARIANT_TITLES.get(v, v) for v in variants)]
    text = (html_table([[label, *values] for label, values in summary_rows(metrics)], header)
            + html_note("In brackets: bootstrap 95 % confidence intervals (percentile, resampling the galaxies)."))
    plain = variants["plain"]
    if plain.get("per_class"):
        auc = plain.get("roc_auc", {})
        rows = [[name, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}", s["support"],
                 "-" if auc.get(name) is None else f"{auc[name]:.3f}"]
                for name, s in plain["per_class"].items() if s["support"] or s["precision"]]
        text += "\n<h3>Per class (plain)</h3>\n" + html_table(rows, ["class", "precision", "recall", "F1", "galaxies",
                                                                 "ROC-AUC"])
    if "rmse_per_question" in plain:
        rows = [[q, *(f"{v['rmse_per_question'][q]:.4f}" for v in variants.values())]
                for q in plain["rmse_per_question"]]
        text += "\n<h3>RMSE per Galaxy Zoo question</h3>\n" + html_table(rows, ["question", *header[1:]])
    return text


def _confusion(metrics: dict) -> str:
    figures = [html_image(plots.confusion_figure(v["confusion"], v["classes"], VARIANT_TITLES.get(name, name)),
                      f"confusion matrix ({name})")
               for name, v in metrics["variants"].items() if "confusion" in v]
    return "\n".join(figures) or html_note("This run has no classes to confuse (votes without a label preset).")


def _calibration(metrics: dict) -> str:
    figures = [html_image(plots.reliability_diagram(v["reliability"], v["ece"],
                                                f"Calibration, {VARIANT_TITLES.get(name, name)}"),
                      f"reliability diagram ({name})")
               for name, v in metrics["variants"].items() if "reliability" in v]
    if not figures:
        return html_note("Calibration needs class probabilities; a votes run predicts fractions instead.")
    return ("<p>How far the predicted probability of the top class can be trusted: bars on the diagonal "
            "mean a galaxy given 80 % is right 80 % of the time.</p>\n" + "\n".join(figures))


def _samples(data: PreparedData | None, predictions: pd.DataFrame | None) -> str:
    if data is None:
        return html_note("The prepared data folder is not available.")
    parts = [html_image(plots.class_samples(data), "random galaxies per class")]
    if predictions is not None and "confidence" in predictions:
        for kind, title in plots.EXAMPLE_KINDS.items():
            if kind == "confident_wrong" and (predictions["label"] == predictions["pred"]).all():
                parts.append(html_note(f"{title}: none, every galaxy of this split was classified correctly."))
            else:
                parts.append(html_image(plots.prediction_examples(data, predictions, kind), title))
    return "\n".join(parts)


def _saliency(run: Run, data: PreparedData | None, predictions: pd.DataFrame | None) -> str:
    if data is None or predictions is None or predictions.empty:
        return html_note("Saliency needs the prepared data and the predictions of an evaluation.")
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
    return ("<p>Grad-CAM (Selvaraju et al. 2017) on the last convolution layer: red marks the regions that "
            "raise the explained output.</p>\n"
            + html_image(plots.grad_cam_overlays(images, cams, captions), "Grad-CAM overlays")
            + "\n<h3>Activations</h3>\n"
            + html_image(plots.activation_tiles(acts, images[0]), "activations of the first conv layers"))


def _saliency_examples(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per true class: its most confident correct and most confident wrong prediction (if any)."""
    if "confidence" not in predictions:
        return predictions.groupby("label", dropna=False).head(SALIENCY_PER_CLASS)
    ranked = predictions.assign(right=predictions["label"] == predictions["pred"])
    ranked = ranked.sort_values("confidence", ascending=False)
    return ranked.groupby(["label", "right"]).head(1).sort_values(["label", "right"], ascending=[True, False])
