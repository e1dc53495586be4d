from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from zoomorph.data.dataset import PreparedData
from zoomorph.evaluation.metrics import reliability_bins
from zoomorph.evaluation.plots import (
    activation_tiles,
    class_samples,
    confusion_figure,
    grad_cam_overlays,
    png_bytes,
    prediction_examples,
    reliability_diagram,
    save_png,
    training_curves,
)

CLASSES = ["elliptical", "lenticular", "spiral"]
COLOUR = {"elliptical": (200, 0, 0), "lenticular": (0, 200, 0), "spiral": (0, 0, 200)}


@pytest.fixture
def data() -> PreparedData:
    """12 tiny galaxies, 4 per class, each painted its class's colour so a grid can be checked by eye and test."""
    labels = np.repeat(CLASSES, 4)
    images = np.array([np.full((8, 8, 3), COLOUR[c], np.uint8) for c in labels])
    table = pd.DataFrame({"id": np.arange(100, 112), "source": "x", "label": labels,
                          "label_index": np.repeat([0, 1, 2], 4), "split": ["train", "val"] * 6})
    return PreparedData(Path("."), images, table, {"classes": CLASSES, "split_hash": "abc"})


def texts(fig) -> set[str]:
    return {t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))} | {fig.get_suptitle()}


def is_png(fig) -> bool:
    return png_bytes(fig).startswith(b"\x89PNG")


def test_training_curves_panels_and_overlay(tmp_path):
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.0, 0.7, 0.5], "val_loss": [1.1, 0.8, 0.7],
                            "train_acc": [0.5, 0.7, 0.8], "val_acc": [0.4, 0.6, 0.7], "lr": [1e-3, 5e-4, 1e-4]})
    fig = training_curves(history)
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Accuracy", "Learning rate"]
    assert fig.axes[2].get_yscale() == "log"
    assert np.allclose(fig.axes[0].lines[1].get_ydata(), history["val_loss"])
    assert save_png(fig, tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")

    no_acc = history.drop(columns=["train_acc", "val_acc", "lr"])
    overlay = training_curves({"seed": history, "small": no_acc})
    assert [ax.get_title() for ax in overlay.axes] == ["Loss", "Accuracy", "Learning rate"]
    legend = [t.get_text() for t in overlay.axes[0].get_legend().get_texts()]
    assert legend == ["seed train", "seed validation", "small train", "small validation"]
    assert len(overlay.axes[1].lines) == 2  # only "seed" has accuracy
    assert "(2 runs)" in overlay.get_suptitle()


def test_confusion_figure_shows_counts_and_row_shares():
    fig = confusion_figure([[3, 1, 0], [0, 2, 0], [0, 0, 0]], CLASSES)
    written = texts(fig)
    assert {"3", "1", "2", "0.75", "0.25", "1.00", "0.00"} <= written
    assert set(CLASSES) <= written and {"true class", "predicted class"} <= written
    assert is_png(fig)


def test_reliability_diagram():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=200)
    fig = reliability_diagram(reliability_bins(rng.integers(0, 3, 200), probs), ece=0.123)
    assert "ECE 0.123" in fig.axes[0].get_title()
    assert sum(p.get_height() for p in fig.axes[1].patches) == 200
    assert is_png(fig)


def test_class_samples_rows_hold_their_class(data):
    fig = class_samples(data, per_class=3, split="val")
    grid = np.array(fig.axes).reshape(3, 3)
    for row, name in zip(grid, CLASSES):
        assert row[0].get_ylabel() == name
        shown = [ax.images[0].get_array() for ax in row if ax.images]
        assert len(shown) == 2  # 2 val galaxies per class, the third cell stays empty
        assert all(tuple(img[0, 0]) == COLOUR[name] for img in shown)
    assert is_png(fig)


def test_prediction_examples(data):
    preds = pd.DataFrame({"row": np.arange(12), "id": data.table["id"], "label": data.table["label"],
                          "pred": ["elliptical", "spiral", "elliptical", "lenticular"] * 3,
                          "confidence": np.linspace(0.4, 0.95, 12)})
    wrong = prediction_examples(data, preds, "confident_wrong", per_class=2)
    captions = [ax.get_title() for ax in wrong.axes if ax.images]
    expected = preds[preds.label != preds.pred].sort_values("confidence", ascending=False).groupby("label").head(2)
    assert len(captions) == len(expected)
    assert all(c.startswith(p) for c, p in zip(captions, expected.sort_values("label", kind="stable")["pred"]))
    assert "true: spiral" in {ax.get_ylabel() for ax in wrong.axes}

    uncertain = prediction_examples(data, preds, "uncertain", per_class=1)
    assert [ax.get_title().split()[1] for ax in uncertain.axes if ax.images] == ["0.40", "0.60", "0.80"]
    with pytest.raises(ValueError, match="kind"):
        prediction_examples(data, preds, "funny")


def test_activation_tiles_and_grad_cam_overlays(data):
    acts = [("0", np.random.rand(4, 8, 8)), ("3", np.random.rand(16, 4, 4))]
    fig = activation_tiles(acts, image=data.images[0], channels=6)
    assert len(fig.axes) == 2 * 7
    assert sum(bool(ax.images) for ax in fig.axes) == 2 + 4 + 6  # input per row + available channels
    assert fig.axes[7].get_ylabel().startswith("3\n16x4x4")
    assert is_png(fig)

    cams = [np.random.rand(8, 8), np.random.rand(8, 8)]
    overlay = grad_cam_overlays(data.images[:2], cams, ["spiral 0.9", "elliptical 0.8"])
    assert len(overlay.axes) == 4 and len(overlay.axes[1].images) == 2
    assert is_png(overlay)
