"""A run folder: what training writes and evaluation, reports and prediction read.

    RUN/config.json     RunConfig below (model, head, classes, preprocessing, data, split)
    RUN/model.pt        state_dict of the best model (plain torch, no Lightning needed)
    RUN/history.csv     one row per epoch: epoch, train_loss, val_loss, train_acc, val_acc, lr, images_per_s, ...
    RUN/history.json    the same, as JSON records
    RUN/summary.json    the run's outcome (best epoch, val metrics, train time, class balance)
    RUN/checkpoints/    Lightning checkpoints (best.ckpt, last.ckpt) for resuming
    RUN/metrics.json    written by `zoomorph evaluate`
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"
HISTORY_FILE = "history.csv"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.json"


@dataclass
class RunConfig:
    model: str  # registry name
    head: str  # "classes" (N-way logits) or "votes" (37 Galaxy Zoo fractions)
    classes: list[str]  # class names for "classes"; the 37 answer columns for "votes"
    image_size: int  # model input side, pixels
    fov: int  # central crop side, in Kaggle (424 px) pixels
    preset: str | None = None  # label preset the classes came from
    data: str | None = None  # prepared data folder it was trained on
    split_hash: str | None = None  # hash of the split manifest (compare refuses mismatches)
    extra: dict = field(default_factory=dict)  # recipe, versions, seed, ...

    def save(self, run_dir: Path) -> None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / CONFIG_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> "RunConfig":
        path = Path(run_dir) / CONFIG_FILE
        if not path.exists():
            raise FileNotFoundError(f"{run_dir}: not a run folder (no {CONFIG_FILE})")
        return cls(**json.loads(path.read_text()))


def build_model(cfg: RunConfig) -> torch.nn.Module:
    from zoomorph.models import create_model

    return create_model(cfg.model, head=cfg.head, num_classes=len(cfg.classes), image_size=cfg.image_size)


def load_run(run_dir: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, RunConfig]:
    """The trained model (eval mode, on `device`) and its config."""
    cfg = RunConfig.load(run_dir)
    model = build_model(cfg)
    state = torch.load(Path(run_dir) / WEIGHTS_FILE, map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg


def save_weights(run_dir: Path, model: torch.nn.Module) -> None:
    torch.save(model.state_dict(), Path(run_dir) / WEIGHTS_FILE)
