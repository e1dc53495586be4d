"""Training: what to compute (GalaxyModule), what to run it with (callbacks), and `train()`.

The loop, devices, checkpoints and DDP are Lightning's. A checkpoint is written
at every epoch's end with all the state the next epoch needs, and randomness is
keyed to (seed, epoch) for the data order and (seed, step, process) for
augmentation and dropout, so a run resumed after a kill ends exactly as one never
interrupted (in deterministic mode; docs/training.md says what is promised where).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from zoomorph.data.augment import build_augment
from zoomorph.data.datamodule import GalaxyDataModule
from zoomorph.files import replace_atomically
from zoomorph.inference import to_input
from zoomorph.models import create_model, model_spec
from zoomorph.runs import CHECKPOINTS_DIR, LAST_CHECKPOINT, SUMMARY_FILE, RunConfig, claim_run_dir, save_weights

DEFAULT_MODEL = "convnet-lite"


class GalaxyModule(L.LightningModule):
    """A registered model with its loss, metrics, augmentation and optimiser."""

    def __init__(self, model: str, head: str, num_classes: int, image_size: int, recipe: dict,
                 augment: str = "none", class_weights: list[float] | None = None, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.net = create_model(model, head=head, num_classes=num_classes, image_size=image_size)
        self.net = self.net.to(memory_format=torch.channels_last)
        self.augment = build_augment(augment)
        self.register_buffer("class_weights", torch.tensor(class_weights) if class_weights else None)
        if head == "classes":
            make = lambda: torchmetrics.MetricCollection({  # noqa: E731
                "acc": torchmetrics.Accuracy("multiclass", num_classes=num_classes),
                "bal_acc": torchmetrics.Accuracy("multiclass", num_classes=num_classes, average="macro")})
        else:
            make = lambda: torchmetrics.MetricCollection(  # noqa: E731
                {"rmse": torchmetrics.MeanSquaredError(squared=False)})
        self.train_metrics, self.val_metrics = make().clone(prefix="train_"), make().clone(prefix="val_")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.hparams.head == "votes":
            return F.mse_loss(outputs, targets)
        return F.cross_entropy(outputs, targets, weight=self.class_weights,
                               label_smoothing=self.hparams.recipe.get("label_smoothing", 0.0))

    def _step(self, batch, metrics, stage: str) -> torch.Tensor:
        images, targets = batch
        x = to_input(images)
        if stage == "train" and self.augment is not None:
            g = torch.Generator(device=x.device).manual_seed(self._step_seed(0))
            x = self.augment(x, generator=g)
        outputs = self(x)
        loss = self._loss(outputs, targets)
        metrics.update(outputs.softmax(1) if self.hparams.head == "classes" else outputs, targets)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets))
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, self.train_metrics, "train")

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # images/s for the progress bar, smoothed over recent steps
        now, last = time.perf_counter(), getattr(self, "_last_step", None)
        if last is not None:
            rate = len(batch[1]) / max(now - last, 1e-9)
            self._rate = rate if batch_idx == 1 else 0.9 * self._rate + 0.1 * rate
            self.log("img/s", self._rate, prog_bar=True, on_step=True, on_epoch=False, logger=False)
        self._last_step = None if batch_idx + 1 == self.trainer.num_training_batches else now

    def validation_step(self, batch, batch_idx):
        self._step(batch, self.val_metrics, "val")

    def _step_seed(self, stream: int) -> int:
        """A seed of (seed, step, process, stream): the same draws on a rerun, its own in each DDP process."""
        return ((self.hparams.seed * 1_000_003 + self.global_step) * 1024 + self.global_rank) * 2 + stream

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Dropout draws from the global generator, which Lightning and the data loaders also draw from
        # (differently after a resume): seeding it per step makes each step's masks depend on the step alone.
        torch.manual_seed(self._step_seed(1))

    def configure_optimizers(self):
        r = self.hparams.recipe
        kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[r.get("optimizer", "adam")]
        optimizer = kind(self.parameters(), lr=r.get("lr", 1e-3), betas=tuple(r.get("betas", (0.9, 0.999))),
                         eps=r.get("eps", 1e-8), weight_decay=r.get("weight_decay", 0.0))
        schedule = r.get("scheduler")
        if schedule is None:
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)
        if schedule == "onecycle":
            warmup = 0.2 if 0.2 * steps != 1 else 0.25  # OneCycleLR divides by zero for a one-step warm-up
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=r.get("lr", 1e-3), total_steps=steps,
                                                            pct_start=warmup)
        elif schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        else:
            raise ValueError(f"scheduler {schedule!r}: choose onecycle, cosine or none")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class StopBelowValLoss(Callback):
    """The original project's stop: end training once validation loss falls below a threshold."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def on_validation_end(self, trainer, pl_module) -> None:
        loss = trainer.callback_metrics.get("val_loss")
        if loss is not None and not trainer.sanity_checking and float(loss) < self.threshold:
            trainer.should_stop = True


class History(Callback):
    """Per-epoch metrics, learning rate and throughput -> RUN/history.csv and .json.

    The rows so far travel in every checkpoint (state_dict), so a resumed run
    continues the history its checkpoint knew, whatever a kill left in the CSV.
    """

    def __init__(self, run_dir: Path, n_train: int):
        self.path, self.n_train = Path(run_dir) / "history.csv", n_train
        self.rows: list[dict] = []
        self._start, self._train_seconds = 0.0, None

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict["rows"])

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._train_seconds = time.perf_counter(), None

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        # Lightning validates inside the training epoch, before on_train_epoch_end: the training part ends here.
        if not trainer.sanity_checking and self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = self._train_seconds or time.perf_counter() - self._start
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k != "img/s"}  # bar-only rate
        row = {"epoch": trainer.current_epoch, **metrics,
               "lr": trainer.optimizers[0].param_groups[0]["lr"], "train_seconds": seconds,
               "images_per_s": self.n_train / max(seconds, 1e-9)}
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        table = pd.DataFrame(self.rows)
        replace_atomically(self.path, lambda tmp: table.to_csv(tmp, index=False))
        replace_atomically(self.path.with_suffix(".json"),
                          lambda tmp: table.to_json(tmp, orient="records", indent=1))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their final name and renamed onto it. Lightning's own save stages
    the file in the system's temp folder and moves it, which is a copy (and a half-written
    checkpoint after a kill) when that folder is on another file system."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(Path(path), lambda tmp: torch.save(checkpoint, tmp))


@contextmanager
def _quiet_lightning():
    """Lightning's start-up adverts, an internal deprecation notice and its warning that a resumed run's
    checkpoint folder is not empty are noise to our users; the caller's own settings are left as they were."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            yield
    finally:
        log.setLevel(level)


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict


def default_precision() -> str:
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _versions() -> dict:
    import lightning
    import zoomorph

    return {"zoomorph": zoomorph.__version__, "torch": torch.__version__, "lightning": lightning.__version__}


def zoom_robustness(net: torch.nn.Module, data, rows: np.ndarray, head: str,
                    zooms=(0.5, 0.75, 1.0, 1.5)) -> dict[str, dict]:
    """Validation accuracy (or RMSE) with the images zoomed: galaxies at other angular scales."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    from zoomorph.data.augment import zoom
    from zoomorph.inference import predict_array
    from zoomorph.schema import ANSWER_COLUMNS

    images, table = data.images[np.sort(rows)], data.table.iloc[np.sort(rows)]
    out = {}
    for factor in zooms:
        probs = predict_array(net, images, head, transform=lambda x, f=factor: zoom(x, f))
        if head == "classes":
            truth, pred = table["label_index"].to_numpy(), probs.argmax(1)
            out[f"{factor:g}"] = {"accuracy": accuracy_score(truth, pred),
                                  "balanced_accuracy": balanced_accuracy_score(truth, pred)}
        else:
            out[f"{factor:g}"] = {"rmse": float(np.sqrt(np.mean((probs - table[ANSWER_COLUMNS].to_numpy()) ** 2)))}
    return out


def train(data, *, model: str = DEFAULT_MODEL, head: str = "classes", run_dir: Path | None = None,
          epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
          augment: str | None = None, balance: str = "sampler", seed: int = 0, deterministic: bool = False,
          resume: bool = True, val_loss_stop: float | None = None, patience: int | None = None,
          accelerator: str = "auto", devices="auto", num_nodes: int = 1, strategy: str = "auto",
          precision: str | None = None, max_minutes: float | None = None, progress: bool = True,
          callbacks: list[Callback] | tuple = ()) -> TrainResult:
    """Train a registered model on a prepared folder; returns the run folder and its summary.

    Defaults come from the model's recipe (model_spec(name).recipe); arguments override them.
    Re-running the same command resumes from RUN/checkpoints/last.ckpt (resume=False starts over).
    """
    from zoomorph.data.prepared import PreparedData
    from zoomorph.schema import ANSWER_COLUMNS

    data = data if isinstance(data, PreparedData) else PreparedData.load(Path(data))
    spec = model_spec(model)
    recipe = dict(spec.recipe)
    recipe.update({k: v for k, v in {"lr": lr, "batch_size": batch_size, "augment": augment, "epochs": epochs,
                                     "val_loss_stop": val_loss_stop, "patience": patience}.items() if v is not None})
    run_dir = Path(run_dir or Path("runs") / f"{data.root.name}-{model}-{head}")
    ckpt_dir = run_dir / CHECKPOINTS_DIR

    L.seed_everything(seed, workers=True, verbose=False)
    dm = GalaxyDataModule(data, head, recipe.get("batch_size", 64), balance, seed)
    weights = dm.class_weights()
    image_size = data.image_size
    classes = data.classes if head == "classes" else list(ANSWER_COLUMNS)
    config = RunConfig(model, head, classes, image_size, data.fov, data.preset_name,
                       str(data.root.resolve()), data.split_hash,
                       extra={"recipe": recipe, "balance": balance, "seed": seed, "deterministic": deterministic,
                              "versions": _versions(), "n_train": len(dm.train_rows), "n_val": len(dm.val_rows)})
    last = claim_run_dir(run_dir, config, resume)
    module = GalaxyModule(model, head, len(data.classes) if head == "classes" else 37, image_size, recipe,
                          recipe.get("augment", "none"), weights.tolist() if weights is not None else None, seed)

    monitor, mode = ("val_acc", "max") if head == "classes" else ("val_rmse", "min")
    best = ModelCheckpoint(ckpt_dir, filename="best", monitor=monitor, mode=mode, enable_version_counter=False)
    # every epoch, after the History row (Lightning runs checkpoint callbacks last): what resume starts from
    latest = ModelCheckpoint(ckpt_dir, filename="last", save_on_train_epoch_end=True, enable_version_counter=False)
    cbs: list[Callback] = [best, latest, History(run_dir, len(dm.train_rows)), *callbacks]
    if recipe.get("val_loss_stop") is not None:
        cbs.append(StopBelowValLoss(recipe["val_loss_stop"]))
    if recipe.get("patience") is not None:
        cbs.append(EarlyStopping(monitor, patience=recipe["patience"], mode=mode))
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar
        cbs.append(RichProgressBar(leave=True))
    started = time.perf_counter()
    with _quiet_lightning():
        trainer = L.Trainer(
            max_epochs=recipe.get("epochs", 20), accelerator=accelerator, devices=devices, num_nodes=num_nodes,
            strategy=strategy, precision=precision or default_precision(), deterministic=deterministic,
            callbacks=cbs, plugins=[AtomicCheckpointIO()], default_root_dir=run_dir,
            logger=L.pytorch.loggers.CSVLogger(run_dir, name="logs"),
            enable_progress_bar=progress, enable_model_summary=False, use_distributed_sampler=False,
            max_time={"minutes": max_minutes} if max_minutes else None, log_every_n_steps=1)
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last else None)
    seconds = time.perf_counter() - started
    if not trainer.is_global_zero:
        return TrainResult(run_dir, {})

    best_path = best.best_model_path or str(ckpt_dir / LAST_CHECKPOINT)
    state = torch.load(best_path, map_location="cpu", weights_only=False)["state_dict"]
    net = module.net.cpu()
    net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    save_weights(run_dir, net)

    history = pd.read_csv(run_dir / "history.csv") if (run_dir / "history.csv").exists() else pd.DataFrame()
    summary = {
        "model": model, "head": head, "parameters": sum(p.numel() for p in net.parameters()),
        "image_size": image_size, "epochs": int(history["epoch"].max()) + 1 if len(history) else 0,
        "best_epoch": int(torch.load(best_path, map_location="cpu", weights_only=False)["epoch"]),
        f"best_{monitor}": float(best.best_model_score) if best.best_model_score is not None else None,
        "train_seconds": float(history["train_seconds"].sum()) if len(history) else seconds,
        "images_per_s": float(history["images_per_s"].median()) if len(history) else None,
        "balance": balance, "class_weights": weights.tolist() if weights is not None else None,
        "train_class_counts": dm.class_counts(dm.train_rows) if head == "classes" else None,
        "val_class_counts": dm.class_counts(dm.val_rows) if head == "classes" else None,
        "zoom": zoom_robustness(net, data, dm.val_rows, head),
    }
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return TrainResult(run_dir, summary)
