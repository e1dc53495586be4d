"""A run folder: what training writes and evaluation, reports and prediction read.

    RUN/config.json     RunConfig below (model, head, classes, preprocessing, data, split)
    RUN/model.pt        state_dict of the best model (plain torch, no Lightning needed); its _metadata
                        records the image size it was trained at, which load_run checks against config.json
    RUN/history.csv     one row per epoch: epoch, train_loss, val_loss, train_acc, val_acc, lr, images_per_s, ...
    RUN/history.json    the same, as JSON records
    RUN/summary.json    the run's outcome (best epoch, val metrics, train time, class balance)
    RUN/checkpoints/    Lightning checkpoints (best.ckpt, last.ckpt) for resuming
    RUN/metrics.json    written by `zoomorph evaluate`
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from zoomorph.files import replace_atomically

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

    def differences(self, other: "RunConfig") -> list[str]:
        """What `other` changes that a run cannot resume across: what it learns from and how (the recipe:
        epochs, lr, batch size, augmentation, ...). The data folder may move; versions may change."""
        mine, theirs = self._learning_settings(), other._learning_settings()
        return [f"{key} {_brief(mine.get(key))} in the run, {_brief(theirs.get(key))} now"
                for key in dict.fromkeys([*mine, *theirs]) if mine.get(key) != theirs.get(key)]

    def _learning_settings(self) -> dict:
        fixed = ("model", "head", "classes", "image_size", "fov", "preset", "split_hash")
        settings = {key: getattr(self, key) for key in fixed} | {key: self.extra.get(key) for key in ("balance", "seed")}
        return _plain(settings | dict(self.extra.get("recipe") or {}))  # as JSON gives it back: tuples as lists

    @classmethod
    def load(cls, run_dir: Path) -> "RunConfig":
        path = Path(run_dir) / CONFIG_FILE
        if not path.exists():
            raise FileNotFoundError(f"{run_dir}: not a run folder (no {CONFIG_FILE})")
        return cls(**json.loads(path.read_text()))


CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"  # written at every epoch's end: what a rerun resumes from
BEST_CHECKPOINT = "best.ckpt"
# What training writes, and what is derived from the weights: `train --fresh` removes these before it starts.
RUN_OUTPUTS = (WEIGHTS_FILE, HISTORY_FILE, "history.json", SUMMARY_FILE, METRICS_FILE, "predictions_*.parquet",
               "report.html", "model.onnx", "model.int8.onnx", "model*.onnx.json", CHECKPOINTS_DIR, "logs")


def clear_outputs(run_dir: Path) -> None:
    """Start a run folder over: its config stays until the new one replaces it."""
    for pattern in RUN_OUTPUTS:
        for path in Path(run_dir).glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


class CannotResume(ValueError):
    """Training's --out holds a run this call cannot resume (other settings, a damaged checkpoint); nothing
    in it was changed."""


def claim_run_dir(run_dir: Path, config: RunConfig, resume: bool) -> Path | None:
    """Check that training may write `run_dir`, then write its config; the checkpoint to resume from.

    Everything is checked before anything is written, so a refused call leaves an existing run as it
    was: another model, other data or another recipe in the same folder would otherwise overwrite its
    config and then fail on its checkpoint, leaving a run that predict and evaluate cannot load."""
    last = run_dir / CHECKPOINTS_DIR / LAST_CHECKPOINT
    if resume and (run_dir / CONFIG_FILE).exists():
        changed = RunConfig.load(run_dir).differences(config)
        if changed:
            raise CannotResume(
                f"{run_dir} holds another run ({'; '.join(changed)}); nothing was changed. Give another --out, "
                "or --fresh to start over in this folder (it deletes the run's weights and checkpoints).")
        if last.exists():
            try:
                torch.load(last, map_location="cpu", weights_only=False)
            except Exception as err:  # noqa: BLE001 (unpickling fails in many ways; each means the same)
                raise CannotResume(f"{last} is damaged ({type(err).__name__}), so the run cannot resume from it: "
                                  "start over with --fresh, or give another --out") from None
    if not resume:
        clear_outputs(run_dir)
    for leftover in (run_dir / CHECKPOINTS_DIR).glob("*.tmp"):  # a checkpoint a kill cut short
        leftover.unlink()
    config.save(run_dir)
    return last if resume and last.exists() else None


def _brief(value) -> str:
    """repr, with a long list (the 37 answer columns) cut to its first names and its length."""
    if isinstance(value, list) and len(value) > 4:
        return f"[{', '.join(map(repr, value[:3]))}, ... {len(value)} in all]"
    return repr(value)


def _plain(value):
    """As JSON would give it back (tuples as lists), so a loaded config equals the one it was saved from."""
    return json.loads(json.dumps(value))


def build_model(cfg: RunConfig) -> torch.nn.Module:
    from zoomorph.models import create_model

    return create_model(cfg.model, head=cfg.head, num_classes=len(cfg.classes), image_size=cfg.image_size)


class RunFileError(ValueError):
    """A run's model.pt is damaged or does not fit its config.json: the message says which and what to do."""


RECORD = "zoomorph:run"  # key of the weights' own record in the state_dict's _metadata (no module has that name)


def _trained_size(run_dir: Path, state: dict) -> int | None:
    """The image size the weights were trained at: their own record, else (older runs) the training summary."""
    recorded = getattr(state, "_metadata", {}).get(RECORD, {}).get("image_size")
    summary = Path(run_dir) / SUMMARY_FILE
    if recorded is None and summary.exists():
        recorded = json.loads(summary.read_text()).get("image_size")
    return recorded


def load_run(run_dir: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, RunConfig]:
    """The trained model (eval mode, on `device`) and its config; RunFileError names a damaged model.pt or
    one that does not fit config.json (other classes, another model, another image size)."""
    cfg = RunConfig.load(run_dir)
    path = Path(run_dir) / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (the run has no trained weights: train it first)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 (random bytes, a truncated zip, a pickle: all mean the file is damaged)
        raise RunFileError(f"{path} is damaged (not a readable PyTorch weights file: {type(err).__name__}): "
                           "copy it back from where the run was trained, or retrain the run") from err
    trained = _trained_size(run_dir, state)
    if trained is not None and trained != cfg.image_size:
        # a fully convolutional model with a global pool loads at any size, and would answer differently
        raise RunFileError(f"{Path(run_dir) / CONFIG_FILE} says image_size {cfg.image_size}, but {path} was "
                           f"trained at {trained} px: set image_size back to {trained}, or retrain at the new size")
    model = build_model(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = (str(err).strip().splitlines()[1:2] or [str(err)])[0].strip()  # torch's first per-tensor line
        raise RunFileError(f"{path} does not fit {Path(run_dir) / CONFIG_FILE} (model {cfg.model!r}, head "
                           f"{cfg.head!r}, {len(cfg.classes)} outputs, {cfg.image_size} px): {first}; restore the "
                           "config.json it was trained with, or retrain the run") from err
    return model.to(device).eval(), cfg


def save_weights(run_dir: Path, model: torch.nn.Module) -> None:
    """model.pt, written whole or not at all, recording the image size of config.json (when there is one):
    the record rides in the state_dict's _metadata, which a plain load_state_dict ignores."""
    state, config = model.state_dict(), Path(run_dir) / CONFIG_FILE
    if config.exists():
        state._metadata[RECORD] = {"image_size": RunConfig.load(run_dir).image_size}
    replace_atomically(Path(run_dir) / WEIGHTS_FILE, lambda tmp: torch.save(state, tmp))
