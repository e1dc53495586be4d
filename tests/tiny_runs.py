"""Tiny prepared folders and run folders for the evaluation tests, made the way the project makes them.

Data: a synthetic Kaggle-layout set through the real `prepare` (32 px).
Runs: a tiny registered CNN, untrained, written to the run-folder contract
(config.json, model.pt, history.csv, summary.json) as training writes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from zoomorph.data.dataset import PreparedData
from zoomorph.data.prepare import prepare
from zoomorph.data.synthetic import make_synthetic
from zoomorph.io.decode import AUTO, FIXED_FOV, Fov
from zoomorph.models import create_model, list_models, register_model
from zoomorph.models.registry import MODERN_RECIPE
from zoomorph.runs import Run, RunConfig
from zoomorph.schema import ANSWER_COLUMNS

TINY_MODEL = "test-tiny-cnn"
SIZE = 32

if TINY_MODEL not in list_models():
    # A full member of the registry (recipe, dropout), so registry-wide model tests hold for it too.
    @register_model(TINY_MODEL, description="two convolutions, for tests", default_image_size=SIZE,
                    recipe=MODERN_RECIPE, head_dropout=0.2)
    def _tiny(image_size: int) -> tuple[nn.Module, int]:
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 8


def prepared_folder(root: Path, n: int = 40, seed: int = 0, fov: Fov = FIXED_FOV) -> PreparedData:
    """A fixed crop unless told: the untrained tiny net answers alike for every auto crop (each synthetic
    galaxy is cut to its own size, so they look alike), and the shift tests need answers that change."""
    solutions = make_synthetic(root / "synthetic", n, seed=seed, workers=1)
    return prepare(root / "synthetic" / "images", solutions, root / "prepared", size=SIZE, fov=fov, val=0.5,
                   workers=1, progress=False).data


def make_run(run_dir: Path, data: PreparedData, head: str = "classes", seed: int = 0,
             history: pd.DataFrame | None = None, summary: dict | None = None) -> Path:
    classes = data.classes if head == "classes" else list(ANSWER_COLUMNS)
    config = RunConfig(TINY_MODEL, head, classes, SIZE, data.settings["fov"], data.settings["preset"],
                       str(data.root), data.split_hash,
                       extra={"seed": seed, **({"fov_auto": data.settings["fov_auto"]} if data.fov == AUTO else {})})
    config.save(run_dir)
    run = Run(run_dir, config)
    torch.manual_seed(seed)
    model = create_model(TINY_MODEL, head=head, num_classes=len(classes), image_size=SIZE)
    with torch.no_grad():  # default init answers almost the same for every galaxy; the tests need variety
        for p in model.parameters():
            p.mul_(4)
    run.save_weights(model)
    if history is None:
        history = pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [1.1, 0.9, 0.8], "val_loss": [1.2, 1.0, 0.95],
                                "train_acc": [0.4, 0.5, 0.6], "val_acc": [0.3, 0.45, 0.5], "lr": [1e-3, 1e-3, 5e-4],
                                "train_seconds": [2.0, 2.0, 2.0], "images_per_s": [10.0, 12.0, 11.0]})
    history.to_csv(run.history_file, index=False)
    summary = summary or {"model": TINY_MODEL, "head": head, "parameters": sum(p.numel() for p in model.parameters()),
                          "image_size": SIZE, "epochs": len(history), "train_seconds": 6.0, "images_per_s": 11.0}
    run.summary_file.write_text(json.dumps(summary))
    return run_dir
