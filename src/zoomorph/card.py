"""MODEL_CARD.md: what a trained run is, what it learnt from, how well it does and where it fails.

Written into the run folder at the end of training, refreshed by `zoomorph evaluate`, packed into
NAME.zoomorph, printed by `zoomorph info` (docs/packing.md#the-model-card). Every figure comes from the
run's own files (config.json, summary.json, metrics.json), so the card says no more than they hold.
Percentages have one decimal, other scores three: as the CLI's tables print them.
"""

from __future__ import annotations

from pathlib import Path

from zoomorph.evaluation.robustness import zoom_check_caption
from zoomorph.io.decode import describe_fov
from zoomorph.runs import Run

VARIANTS = {"plain": "plain", "tta": "TTA (8 dihedral views)"}


def write_card(run: Run) -> Path:
    """Write (or rewrite) the run's MODEL_CARD.md; its path."""
    path = run.card_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(model_card(run), encoding="utf-8")
    return path


def model_card(run: Run) -> str:
    """The run's model card, as Markdown."""
    summary, metrics = run.summary(), run.metrics()
    sections = [_overview(run, summary), _training_data(run, summary), _intended_use(run),
                _performance(run, summary, metrics), _limits(run, summary, metrics), _citation()]
    return "\n\n".join(sections) + "\n"


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _with_ci(value: float, ci: dict | None, percent: bool) -> str:
    number = _pct if percent else (lambda v: f"{v:.3f}")
    if not ci:
        return number(value)
    low, high = (f"{100 * ci[k]:.1f}" if percent else f"{ci[k]:.3f}" for k in ("low", "high"))
    return f"{number(value)} (95 % CI {low}–{high}{' %' if percent else ''})"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _overview(run: Run, summary: dict) -> str:
    cfg = run.config
    parameters = f" with {summary['parameters']:,} parameters" if summary.get("parameters") else ""
    if cfg.head == "classes":
        does = f"classifies a galaxy image into {len(cfg.classes)} classes: " + ", ".join(f"`{c}`" for c in cfg.classes)
    else:
        does = "predicts the 37 Galaxy Zoo vote fractions (the Kaggle challenge's task)"
    return (f"# Model card: {run.name}\n\nA zoomorph `{cfg.model}` network{parameters} that {does}. It takes "
            f"{cfg.image_size} × {cfg.image_size} px RGB images and returns "
            f"{'class probabilities' if cfg.head == 'classes' else 'cumulative vote fractions'}.")


def _counts(cfg, summary: dict) -> tuple[int | None, int | None]:
    """Galaxies in training and validation: as training counted them, else from the class counts."""
    def total(key: str) -> int | None:
        counts = summary.get(key)
        return sum(counts.values()) if counts else None
    return cfg.extra.get("n_train", total("train_class_counts")), cfg.extra.get("n_val", total("val_class_counts"))


def _training_data(run: Run, summary: dict) -> str:
    cfg = run.config
    n_train, n_val = _counts(cfg, summary)
    lines = [f"- Prepared data: `{cfg.data or 'not recorded'}`, label preset `{cfg.preset or 'none'}`.",
             f"- Split manifest hash: `{cfg.split_hash or 'not recorded'}` (evaluate and compare check it)."]
    if n_train is not None:
        lines.append(f"- Galaxies: {n_train:,} for training, " + (f"{n_val:,} for validation." if n_val is not None
                                                                 else "validation not recorded."))
    lines.append(f"- Input: {describe_fov(cfg.fov, cfg.image_size)}.")
    lines.append("- Normalisation: uint8 RGB divided by 255 into [0, 1]; no mean or standard deviation is "
                 "subtracted (the ONNX graph takes uint8 and does it itself).")
    recipe = cfg.extra.get("recipe") or {}
    if recipe:
        trained = f"{summary['epochs']} epochs" if summary.get("epochs") else f"at most {recipe.get('epochs')} epochs"
        best = f", best at epoch {summary['best_epoch']}" if summary.get("best_epoch") is not None else ""
        lines.append(f"- Training: {trained}{best}; {recipe.get('optimizer')} lr {recipe.get('lr')}, batch "
                     f"{recipe.get('batch_size')}, augmentation `{recipe.get('augment')}`, class balance "
                     f"`{cfg.extra.get('balance')}`, seed {cfg.extra.get('seed')}.")
    parent = (cfg.extra.get("finetune") or {}).get("parent")
    if parent:
        lines.append(f"- Finetuned from `{parent['run']}` (weights sha256 `{parent['weights_sha256'][:16]}…`).")
    out = "## Training data\n\n" + "\n".join(lines)
    train, val = summary.get("train_class_counts"), summary.get("val_class_counts")
    if train:
        rows = [[c, f"{train.get(c, 0):,}", f"{(val or {}).get(c, 0):,}"] for c in train]
        out += "\n\n" + _table(["class", "train", "validation"], rows)
    return out


def _intended_use(run: Run) -> str:
    what = ("classifying galaxies" if run.config.head == "classes" else
            "predicting Galaxy Zoo vote fractions (and classes derived from them by a label preset)")
    return (f"## Intended use\n\nMorphology at scale: {what} in large catalogues of images cut as the training "
            "images were (see the field of view above), to select samples, to rank galaxies for a look by eye, "
            "and to compare with volunteer classifications. Not for images cut otherwise, from another survey "
            "or at another depth without checking the limits below (or finetuning: `zoomorph train --init`), "
            "and not as a measurement of any physical quantity. Its probabilities are only as calibrated as "
            "the calibration figure below says.")


def _performance(run: Run, summary: dict, metrics: dict | None) -> str:
    head = "## Measured performance\n\n"
    if not metrics:
        acc, rmse = summary.get("best_val_acc"), summary.get("best_val_rmse")
        at_end = (f" At the end of training its validation accuracy was {_pct(acc)}." if acc is not None else
                  f" At the end of training its validation RMSE was {rmse:.4f}." if rmse is not None else "")
        return head + f"Not evaluated yet (`zoomorph evaluate {run.source}`).{at_end}"
    variants = metrics["variants"]
    ci_n = next((c["n"] for c in variants["plain"].get("ci", {}).values()), None)
    intro = (f"On the `{metrics['split']}` split of `{metrics['data']}`: {metrics['n']:,} galaxies, split hash "
             f"`{metrics['split_hash']}`, evaluated {metrics['evaluated']['at']} on {metrics['evaluated']['device']}.")
    if metrics.get("trained_split_hash") and metrics["trained_split_hash"] != metrics["split_hash"]:
        intro += f" **The run was trained on another split** (`{metrics['trained_split_hash']}`)."
    if ci_n:
        intro += f" Intervals: 95 % percentile bootstrap over the galaxies ({ci_n:,} resamples)."
    scores = [("accuracy", "accuracy", True), ("balanced accuracy", "balanced_accuracy", True),
              ("expected calibration error (15 bins)", "ece", False), ("log loss", "log_loss", False),
              ("ROC-AUC (macro, one-vs-rest)", "roc_auc_macro", False), ("Kaggle RMSE (37 answers)", "rmse", False),
              ("share given a class by the preset", "coverage", True)]
    rows = [[title] + [_with_ci(v[key], v.get("ci", {}).get(key), percent) if v.get(key) is not None else "-"
                       for v in variants.values()]
            for title, key, percent in scores if any(v.get(key) is not None for v in variants.values())]
    out = head + intro + "\n\n" + _table(["metric"] + [VARIANTS.get(k, k) for k in variants], rows)
    plain = variants["plain"]
    if plain.get("ece") is not None:
        out += (f"\n\nCalibration: the expected calibration error is {plain['ece']:.3f}, the mean gap between the "
                "confidence of the predicted class and how often it is right, over 15 equal-width bins.")
    per_class = plain.get("per_class") or {}
    if per_class:
        rows = [[c, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}", f"{s['support']:,}"]
                for c, s in per_class.items()]
        out += "\n\nPer class (plain):\n\n" + _table(["class", "precision", "recall", "F1", "galaxies"], rows)
    return out


def _limits(run: Run, summary: dict, metrics: dict | None) -> str:
    cfg = run.config
    items = [f"- **Field of view.** The network saw {describe_fov(cfg.fov, cfg.image_size)}. zoomorph cuts new "
             "images the same way (`predict`, `serve`); images cut otherwise are outside what it learnt."]
    if cfg.head == "classes":
        items.append(f"- **Labels.** Classes come from volunteer vote fractions by the preset `{cfg.preset}`; "
                     "galaxies it left out (no rule met, or two) were not trained on, and the model has no "
                     "'uncertain' class: every image gets one of its classes (see the entropy in predict's output).")
    out = "## Known limits\n\n" + "\n".join(items)
    zoom = summary.get("zoom")
    if zoom:
        names = list(next(iter(zoom.values())))
        rows = [[f"{factor}×"] + [_pct(v[m]) if m != "rmse" else f"{v[m]:.4f}" for m in names]
                for factor, v in zoom.items()]
        out += (f"\n\n**Scale** (the zoom check: {zoom_check_caption(cfg.fov)}; summary.json):\n\n"
                + _table(["zoom"] + [m.replace("_", " ") for m in names], rows))
    suite = (metrics or {}).get("shifts")
    if suite:
        out += "\n\n" + _shifts(suite)
    else:
        out += ("\n\n**Survey shifts:** not measured (`zoomorph evaluate "
                f"{run.source} --shifts` scores blur, noise, coarser pixels, JPEG, zoom, colour and offsets).")
    return out


def _shifts(suite: dict) -> str:
    """The survey-shift suite: one row per shift, its weak / middle / strong settings as columns."""
    ref = suite["reference"]
    key = "accuracy" if "accuracy" in ref else "rmse"

    def score(s: dict) -> str:
        return _pct(s[key]) if key == "accuracy" else f"{s[key]:.4f}"

    by_shift: dict[str, dict[str, dict]] = {}
    for r in suite["results"]:
        by_shift.setdefault(r["title"], {})[r["level"]] = r
    rows = [[title] + [f"{s['label']}: {score(s)}" if s else "-" for s in (levels.get(lv) for lv in
                                                                         ("weak", "middle", "strong"))]
            for title, levels in by_shift.items()]
    return (f"**Survey shifts** ({'accuracy' if key == 'accuracy' else 'Kaggle RMSE'} on {suite['n']:,} galaxies "
            f"re-read at full resolution and shifted as other surveys deliver them; unshifted: {score(ref)}; "
            "metrics.json `shifts`, docs/evaluation.md#survey-shifts):\n\n"
            + _table(["shift", "weak", "middle", "strong"], rows))


def _citation() -> str:
    return ("## How to cite\n\nCite zoomorph as its `CITATION.cff` says (at the root of the zoomorph repository; "
            "GitHub's \"Cite this repository\" and `cffconvert` turn it into BibTeX). For a model trained on the "
            "Galaxy Zoo data, cite that too: Willett et al. 2013, MNRAS 435, 2835 (Galaxy Zoo 2), and for the Kaggle "
            "\"Galaxy Zoo – The Galaxy Challenge\" images and vote fractions Dieleman, Willett & Dambre 2015, "
            "MNRAS 450, 1441.")
