"""Figures for reports: each function returns a matplotlib Figure, `png_bytes`/`save_png` write it.

Figures are built with `matplotlib.figure.Figure` (the Agg canvas, no pyplot
state), so they are safe in scripts, tests and threads and need no closing.
Every figure carries a title, axis labels and class names: it must read on its own.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import ConfusionMatrixDisplay

from zoomorph.data.dataset import PreparedData
from zoomorph.errors import ZoomorphError

EXAMPLE_KINDS = {
    "confident_right": "Most confident correct predictions",
    "confident_wrong": "Most confident mistakes",
    "uncertain": "Least confident predictions",
}
CURVE_PANELS = (("loss", "Loss"), ("acc", "Accuracy"), ("lr", "Learning rate"))


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def save_png(fig: Figure, path: Path, dpi: int = 100) -> Path:
    Path(path).write_bytes(png_bytes(fig, dpi))
    return Path(path)


def training_curves(history: pd.DataFrame | Mapping[str, pd.DataFrame]) -> Figure:
    """Loss, accuracy (train dashed, validation solid) and learning rate per epoch.

    One history, or several by run name to overlay them (one colour per run).
    Panels whose columns no history has are left out.
    """
    runs = {"": history} if isinstance(history, pd.DataFrame) else dict(history)
    panels = [(key, title) for key, title in CURVE_PANELS
              if any(_curve_columns(h, key) for h in runs.values())]
    fig = Figure(figsize=(5 * max(len(panels), 1), 4), layout="constrained")
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    colours = colormaps["tab10"]
    for ax, (key, title) in zip(axes, panels):
        for i, (run, h) in enumerate(runs.items()):
            epoch = h["epoch"] if "epoch" in h else np.arange(1, len(h) + 1)
            for column in _curve_columns(h, key):
                split = column.split("_")[0]
                label = " ".join(p for p in (run, {"train": "train", "val": "validation"}.get(split, "")) if p)
                ax.plot(epoch, h[column], marker=".", color=colours(i % 10), label=label or column,
                        linestyle="--" if split == "train" else "-")
        ax.set(title=title, xlabel="epoch", ylabel=title.lower())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key == "lr":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Training curves" + (f" ({len(runs)} runs)" if len(runs) > 1 else ""))
    return fig


def _curve_columns(history: pd.DataFrame, key: str) -> list[str]:
    if key == "lr":
        return ["lr"] if "lr" in history and history["lr"].notna().any() else []
    return [c for c in (f"train_{key}", f"val_{key}") if c in history and history[c].notna().any()]


def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str], title: str = "") -> Figure:
    """Counts next to row-normalised shares (each true class's row sums to 1)."""
    counts = np.asarray(confusion)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros(counts.shape, float), where=rows > 0)
    side = 2.5 + 0.7 * len(classes)
    fig = Figure(figsize=(2 * side + 1, side), layout="constrained")
    for ax, matrix, name, fmt in zip(fig.subplots(1, 2), (counts, shares), ("counts", "share of true class"),
                                     ("d", ".2f")):
        ConfusionMatrixDisplay(matrix, display_labels=list(classes)).plot(
            ax=ax, cmap="Blues", values_format=fmt, colorbar=False, xticks_rotation=45)
        ax.set(title=f"Confusion matrix: {name}", xlabel="predicted class", ylabel="true class")
    if title:
        fig.suptitle(title)
    return fig


def reliability_diagram(bins: Mapping, ece: float | None = None, title: str = "Calibration") -> Figure:
    """Accuracy against confidence per bin (the diagonal = perfectly calibrated), with bin counts below."""
    edges = np.asarray(bins["edges"])
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    filled = np.asarray(bins["count"]) > 0
    accuracy = np.array([a if a is not None else 0.0 for a in bins["accuracy"]])
    confidence = np.array([c if c is not None else 0.0 for c in bins["confidence"]])
    fig = Figure(figsize=(5.5, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(centres[filled], accuracy[filled], width=width[filled], edgecolor="black", label="accuracy in bin")
    top.scatter(confidence[filled], accuracy[filled], color="darkorange", zorder=3, label="mean confidence")
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.set(ylabel="accuracy", ylim=(0, 1), xlim=(0, 1),
            title=title + (f" (ECE {ece:.3f}, {len(width)} bins)" if ece is not None else ""))
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(centres, bins["count"], width=width, color="grey", edgecolor="black")
    bottom.set(xlabel="confidence of the top class", ylabel="images")
    return fig


def image_grid(images: Sequence[np.ndarray | None], captions: Sequence[str], ncols: int, title: str,
               row_labels: Sequence[str] | None = None) -> Figure:
    """uint8 (S, S, 3) images in rows of `ncols` with a caption each; None leaves a cell empty."""
    nrows = max(1, -(-len(images) // ncols))
    fig = Figure(figsize=(1.9 * ncols + (1 if row_labels else 0), 2.1 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
        if i < len(images) and images[i] is not None:
            ax.imshow(images[i])
            ax.set_title(captions[i], fontsize=8)
    for label, row in zip(row_labels or [], axes):
        row[0].set_ylabel(label, fontsize=11)
    fig.suptitle(title)
    return fig


def class_samples(data: PreparedData, per_class: int = 6, split: str = "all", seed: int = 0) -> Figure:
    """`per_class` random galaxies of each class, one row per class."""
    table = data.table.assign(row=np.arange(len(data.table))).iloc[data.indices(split)]
    picked = table.sample(frac=1.0, random_state=seed).groupby("label").head(per_class)
    cells, captions = [], []
    for name in data.classes:
        rows = picked.loc[picked["label"] == name, ["row", "id"]].to_numpy()
        cells += [data.images[r] for r, _ in rows] + [None] * (per_class - len(rows))
        captions += [f"id {i}" for _, i in rows] + [""] * (per_class - len(rows))
    where = "all splits" if split == "all" else f"{split} split"
    return image_grid(cells, captions, per_class, f"Random galaxies per class ({where})", data.classes)


def prediction_examples(data: PreparedData, predictions: pd.DataFrame, kind: str, per_class: int = 5) -> Figure:
    """Per true class: the most confident right or wrong predictions, or the least confident.

    `predictions` as evaluate writes them: row (in the prepared data), id, label, pred, confidence.
    """
    if kind not in EXAMPLE_KINDS:
        raise ZoomorphError(f"unknown kind {kind!r}; choose {', '.join(EXAMPLE_KINDS)}")
    right = predictions["label"] == predictions["pred"]
    pool = {"confident_right": predictions[right], "confident_wrong": predictions[~right],
            "uncertain": predictions}[kind]
    pool = pool.sort_values("confidence", ascending=kind == "uncertain").groupby("label").head(per_class)
    classes = [c for c in data.classes if c in set(predictions["label"])]
    cells, captions = [], []
    for name in classes:
        chosen = pool[pool["label"] == name]
        cells += [data.images[r] for r in chosen["row"]] + [None] * (per_class - len(chosen))
        captions += [f"{p or 'no class'} {c:.2f}\nid {i}" for p, c, i in
                     zip(chosen["pred"], chosen["confidence"], chosen["id"])] + [""] * (per_class - len(chosen))
    title = f"{EXAMPLE_KINDS[kind]} per true class (caption: predicted class, confidence)"
    return image_grid(cells, captions, per_class, title, [f"true: {c}" for c in classes])


def activation_tiles(acts: Sequence[tuple[str, np.ndarray]], image: np.ndarray | None = None,
                     channels: int = 8) -> Figure:
    """The first `channels` feature maps of each layer, one row per layer, each map scaled to its own range."""
    ncols = channels + (image is not None)
    fig = Figure(figsize=(1.6 * ncols, 1.7 * len(acts) + 0.6), layout="constrained")
    axes = fig.subplots(len(acts), ncols, squeeze=False)
    for (name, maps), row in zip(acts, axes):
        cells = list(row)
        if image is not None:
            cells.pop(0).imshow(image)
            row[0].set_title("input", fontsize=8)
        for c, ax in enumerate(cells):
            if c < len(maps):
                ax.imshow(maps[c], cmap="viridis")
                ax.set_title(f"channel {c}", fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_frame_on(bool(ax.images))
        row[0].set_ylabel(f"{name}\n{maps.shape[0]}x{maps.shape[1]}x{maps.shape[2]}", fontsize=9)
    fig.suptitle("Activations of the first convolution layers")
    return fig


def grad_cam_overlays(images: Sequence[np.ndarray], cams: Sequence[np.ndarray], captions: Sequence[str],
                      title: str = "Grad-CAM: where the network looked") -> Figure:
    """Each image next to its Grad-CAM map laid over it (red = most important)."""
    fig = Figure(figsize=(4.2, 2.2 * len(images) + 0.6), layout="constrained")
    axes = fig.subplots(len(images), 2, squeeze=False)
    for (left, right), image, cam, caption in zip(axes, images, cams, captions):
        left.imshow(image)
        right.imshow(image)
        right.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        left.set_title(caption, fontsize=8)
        right.set_title("Grad-CAM", fontsize=8)
        for ax in (left, right):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title)
    return fig
