"""The zoom check: how a model holds up when galaxies appear at other angular scales.

Training runs it on the validation split at its end and keeps it in summary.json
under "zoom"; it predicts through the same Predictor as evaluate and predict.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from zoomorph.data.augment import zoom
from zoomorph.data.dataset import PreparedData
from zoomorph.inference import Predictor
from zoomorph.schema import ANSWER_COLUMNS

ZOOMS = (0.5, 0.75, 1.0, 1.5)


def zoom_robustness(net: torch.nn.Module, data: PreparedData, rows: np.ndarray, head: str,
                    zooms=ZOOMS) -> dict[str, dict]:
    """Accuracy and balanced accuracy (classes) or RMSE (votes) on `rows` of `data` with the images zoomed
    by each factor about their centre (0.5: the galaxy half as large), keyed by the factor ("0.5")."""
    images, table = data.images[np.sort(rows)], data.table.iloc[np.sort(rows)]
    out = {}
    for factor in zooms:
        probs = Predictor.from_model(net, head, view=partial(zoom, factor=factor)).probabilities(images)
        if head == "classes":
            truth, pred = table["label_index"].to_numpy(), probs.argmax(1)
            out[f"{factor:g}"] = {"accuracy": accuracy_score(truth, pred),
                                  "balanced_accuracy": balanced_accuracy_score(truth, pred)}
        else:
            out[f"{factor:g}"] = {"rmse": float(np.sqrt(np.mean((probs - table[ANSWER_COLUMNS].to_numpy()) ** 2)))}
    return out
