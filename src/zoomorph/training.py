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
import pandas as pd
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

import zoomorph
from zoomorph.card import write_card
from zoomorph.data.augment import build_augment
from zoomorph.data.datamodule import GalaxyDataModule
from zoomorph.data.dataset import PreparedData
from zoomorph.errors import ZoomorphError
from zoomorph.evaluation.robustness import zoom_robustness
from zoomorph.files import replace_atomically
from zoomorph.finetune import (
    Finetune,
    batchnorms_to_freeze,
    drop_frozen_gradients,
    freeze_blocks,
    load_backbone,
    open_parent,
    param_groups,
    parent_record,
)
from zoomorph.inference import to_input
from zoomorph.io.decode import AUTO
from zoomorph.models import create_model, model_spec
from zoomorph.models.recipe import Recipe
from zoomorph.runs import Run, RunConfig
from zoomorph.schema import ANSWER_COLUMNS

DEFAULT_MODEL = "convnet-lite"


class GalaxyModule(L.LightningModule):
    """A registered model with its loss, metrics, augmentation and optimiser."""

    def __init__(self, model: str, head: str, num_classes: int, image_size: int, recipe: dict,
                 class_weights: list[float] | None = None, seed: int = 0, finetune: dict | None = None):
        super().__init__()
        self.save_hyperparameters()  # plain values (the recipe as a dict): checkpoints load without pickles
        self.recipe = Recipe.from_dict(recipe)
        self.net = create_model(model, head=head, num_classes=num_classes, image_size=image_size)
        self.net = self.net.to(memory_format=torch.channels_last)
        self.finetune = Finetune.from_dict(finetune) if finetune is not None else None  # train(init=...)
        if self.finetune:
            freeze_blocks(self.net, self.finetune.freeze_blocks)
        self.augment = build_augment(self.recipe.augment)
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
                               label_smoothing=self.recipe.label_smoothing)

    def _step(self, batch, metrics, stage: str) -> torch.Tensor:
        images, targets = batch
        x = to_input(images)
        if stage == "train" and self.augment is not None:
            g = torch.Generator(device=x.device).manual_seed(self._step_seed(0))
            x = self.augment(x, generator=g)
        outputs = self(x)
        loss = self._loss(outputs, targets)
        metrics.update(outputs.softmax(1) if self.hparams.head == "classes" else outputs, targets)
        # validation loss averaged over every process, so a stop on it is decided alike in each
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets),
                 sync_dist=stage == "val")
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, self.train_metrics, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, self.val_metrics, "val")

    def _step_seed(self, stream: int) -> int:
        """A seed of (seed, step, process, stream): the same draws on a rerun, its own in each DDP process."""
        return ((self.hparams.seed * 1_000_003 + self.global_step) * 1024 + self.global_rank) * 2 + stream

    def on_train_epoch_start(self) -> None:
        if self.finetune:  # frozen BatchNorm layers in eval mode, for this epoch (zoomorph.finetune says why)
            self.net.train()
            for bn in batchnorms_to_freeze(self.net, self.finetune, self.current_epoch):
                bn.eval()

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.finetune:
            drop_frozen_gradients(self.net, self.finetune, self.current_epoch)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Dropout draws from the global generator, which Lightning and the data loaders also draw from
        # (differently after a resume): seeding it per step makes each step's masks depend on the step alone.
        torch.manual_seed(self._step_seed(1))

    def configure_optimizers(self):
        r = self.recipe
        kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[r.optimizer]
        params = param_groups(self, self.net.backbone, r.lr, self.finetune) if self.finetune else self.parameters()
        optimizer = kind(params, lr=r.lr, betas=r.betas, eps=r.eps, weight_decay=r.weight_decay)
        if r.scheduler is None:
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)
        if r.scheduler == "onecycle":
            warmup = 0.2 if 0.2 * steps != 1 else 0.25  # OneCycleLR divides by zero for a one-step warm-up
            max_lr = [group["lr"] for group in optimizer.param_groups]  # the backbone's and the head's
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=steps,
                                                            pct_start=warmup)
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class History(Callback):
    """Per-epoch metrics, learning rate and throughput -> RUN/history.csv and .json.

    Its images_per_s (training images / seconds of the epoch's training part) is the
    run's one throughput figure: summary.json takes the median over epochs.

    The rows so far travel in every checkpoint (state_dict), so a resumed run
    continues the history its checkpoint knew, whatever a kill left in the CSV.
    """

    def __init__(self, run: Run, n_train: int):
        self.path, self.n_train = run.history_file, n_train
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
        groups = trainer.optimizers[0].param_groups  # a finetuning run's: the backbone's, then the head's
        row = {"epoch": trainer.current_epoch, **metrics, "lr": groups[-1]["lr"],
               **({"backbone_lr": groups[0]["lr"]} if len(groups) > 1 else {}), "train_seconds": seconds,
               "images_per_s": self.n_train / max(seconds, 1e-9)}
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        if not trainer.is_global_zero:  # every process keeps the rows (for its checkpoint state); one writes
            return
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
    return {"zoomorph": zoomorph.__version__, "torch": torch.__version__, "lightning": L.__version__}


def train(data, *, model: str | None = None, head: str = "classes", run_dir: Path | None = None,
          epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
          augment: str | None = None, balance: str = "sampler", seed: int = 0, deterministic: bool = False,
          resume: bool = True, val_loss_stop: float | None = None, patience: int | None = None,
          accelerator: str = "auto", devices="auto", num_nodes: int = 1, strategy: str = "auto",
          precision: str | None = None, max_minutes: float | None = None, progress: bool = True,
          callbacks: list[Callback] | tuple = (), init: Run | str | Path | None = None, freeze_epochs: int = 0,
          freeze_blocks: int = 0, backbone_lr_mult: float | None = None) -> TrainResult:
    """Train a registered model on a prepared folder; returns the run folder and its summary.

    Defaults come from the model's recipe (model_spec(name).recipe); arguments that are not None
    override them; `model` None: the project's default, or init's model. Re-running the same call resumes
    from RUN/checkpoints/last.ckpt, exactly (resume=False starts over). Under DDP every process runs this;
    the first one writes the run folder.

    `init`: a trained run (or its folder) of the same model to start from: its backbone, a fresh head
    (zoomorph.finetune), with freeze_epochs, freeze_blocks and backbone_lr_mult (default: Finetune's).
    """
    data = data if isinstance(data, PreparedData) else PreparedData.load(Path(data))
    parent, finetune = None, None
    if init is not None:
        parent = open_parent(init, model)  # model None: the parent's
        model = parent.config.model
        finetune = Finetune(freeze_epochs, freeze_blocks, **({} if backbone_lr_mult is None else
                                                              {"backbone_lr_mult": backbone_lr_mult}))
    elif freeze_epochs or freeze_blocks or backbone_lr_mult is not None:
        raise ZoomorphError("freeze_epochs, freeze_blocks and backbone_lr_mult (--freeze-epochs, --freeze-blocks, "
                            "--backbone-lr-mult) are for a run started from another: give init (--init RUN)")
    model = model or DEFAULT_MODEL
    recipe = model_spec(model).recipe.but(lr=lr, batch_size=batch_size, augment=augment, epochs=epochs,
                                          val_loss_stop=val_loss_stop, patience=patience)
    run_dir = Path(run_dir or Path("runs") / f"{data.root.name}-{model}-{head}")
    L.seed_everything(seed, workers=True, verbose=False)
    dm = GalaxyDataModule(data, head, recipe.batch_size, balance, seed)
    weights = dm.class_weights()
    classes = data.classes if head == "classes" else list(ANSWER_COLUMNS)
    config = RunConfig(model, head, classes, data.image_size, data.fov, data.preset_name,
                       str(data.root.resolve()), data.split_hash,
                       extra={"recipe": recipe.to_dict(), "balance": balance, "seed": seed,
                              "deterministic": deterministic, "versions": _versions(),
                              "n_train": len(dm.train_rows), "n_val": len(dm.val_rows),
                              **({"fov_auto": data.settings["fov_auto"]} if data.fov == AUTO else {})})
    if finetune:
        config.extra["finetune"] = {"parent": parent_record(parent), **finetune.to_dict()}
    run = Run(run_dir, config)
    module = GalaxyModule(model, head, len(classes), data.image_size, recipe.to_dict(),
                          weights.tolist() if weights is not None else None, seed,
                          finetune.to_dict() if finetune else None)
    if parent:  # before the folder is claimed: a parent that does not fit changes nothing
        load_backbone(module.net, parent, data.image_size)
    trainer, best = build_trainer(run, recipe, head, len(dm.train_rows), callbacks=callbacks,
                                  progress=progress, accelerator=accelerator, devices=devices,
                                  num_nodes=num_nodes, strategy=strategy, precision=precision,
                                  deterministic=deterministic, max_minutes=max_minutes)
    last = _claim(run, resume, trainer)
    with _quiet_lightning():
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last else None)
    if not trainer.is_global_zero:
        return TrainResult(run_dir, {})
    net = export_best(best, run)
    summary = write_summary(run, net, best, data, dm)
    write_card(run)  # RUN/MODEL_CARD.md, refreshed by evaluate
    return TrainResult(run_dir, summary)


def _claim(run: Run, resume: bool, trainer: L.Trainer) -> Path | None:
    """The first process checks and claims the run folder (Run.claim). The others of a DDP run,
    on this node or another, only find the checkpoint it resumes from. The Trainer knows the global
    rank once built (node rank included), so nothing is written before it is."""
    if trainer.is_global_zero:
        return run.claim(resume)
    last = run.last_checkpoint
    return last if resume and last.exists() else None


def monitored(head: str) -> tuple[str, str]:
    """The metric the best checkpoint and early stopping follow, and which way is better."""
    return ("val_acc", "max") if head == "classes" else ("val_rmse", "min")


def build_trainer(run: Run, recipe: Recipe, head: str, n_train: int, *, callbacks=(), progress: bool = True,
                  precision: str | None = None, max_minutes: float | None = None,
                  **hardware) -> tuple[L.Trainer, ModelCheckpoint]:
    """A Lightning Trainer writing into the run's folder, and its best-checkpoint callback.

    `hardware`: accelerator, devices, num_nodes, strategy, deterministic (Trainer's own arguments).
    """
    monitor, mode = monitored(head)
    ckpt_dir = run.checkpoints_dir
    best = ModelCheckpoint(ckpt_dir, filename="best", monitor=monitor, mode=mode, enable_version_counter=False)
    # every epoch, after the History row (Lightning runs checkpoint callbacks last): what resume starts from
    latest = ModelCheckpoint(ckpt_dir, filename="last", save_on_train_epoch_end=True, enable_version_counter=False)
    cbs: list[Callback] = [best, latest, History(run, n_train), *callbacks]
    if recipe.val_loss_stop is not None:  # the seed project's stop; never by patience
        cbs.append(EarlyStopping("val_loss", mode="min", stopping_threshold=recipe.val_loss_stop,
                                 patience=recipe.epochs + 1))
    if recipe.patience is not None:
        cbs.append(EarlyStopping(monitor, patience=recipe.patience, mode=mode))
    if progress:
        cbs.append(RichProgressBar(leave=True))
    with _quiet_lightning():
        trainer = L.Trainer(
            max_epochs=recipe.epochs, precision=precision or default_precision(), callbacks=cbs,
            plugins=[AtomicCheckpointIO()], default_root_dir=run.dir,
            logger=L.pytorch.loggers.CSVLogger(run.dir, name="logs"), enable_progress_bar=progress,
            enable_model_summary=False, use_distributed_sampler=False,
            max_time={"minutes": max_minutes} if max_minutes else None, log_every_n_steps=1, **hardware)
    return trainer, best


def export_best(best: ModelCheckpoint, run: Run) -> torch.nn.Module:
    """The best epoch's network, loaded by Lightning from its checkpoint, saved as RUN/model.pt."""
    path = best.best_model_path or str(run.last_checkpoint)
    net = GalaxyModule.load_from_checkpoint(path, map_location="cpu").net.eval()
    run.save_weights(net)
    return net


def write_summary(run: Run, net: torch.nn.Module, best: ModelCheckpoint, data: PreparedData,
                  dm: GalaxyDataModule) -> dict:
    """RUN/summary.json: the outcome (best epoch and score, time, throughput, class balance, zoom)."""
    config = run.config
    history = pd.read_csv(run.history_file) if run.history_file.exists() else pd.DataFrame()
    monitor, _ = monitored(config.head)
    path = best.best_model_path or str(run.last_checkpoint)
    classes, weights = config.head == "classes", dm.class_weights()
    summary = {
        "model": config.model, "head": config.head, "parameters": sum(p.numel() for p in net.parameters()),
        "image_size": config.image_size, "epochs": int(history["epoch"].max()) + 1 if len(history) else 0,
        "best_epoch": int(torch.load(path, map_location="cpu", weights_only=True)["epoch"]),
        f"best_{monitor}": float(best.best_model_score) if best.best_model_score is not None else None,
        "train_seconds": float(history["train_seconds"].sum()) if len(history) else 0.0,
        "images_per_s": float(history["images_per_s"].median()) if len(history) else None,
        "balance": config.extra["balance"], "class_weights": weights.tolist() if weights is not None else None,
        "train_class_counts": dm.class_counts(dm.train_rows) if classes else None,
        "val_class_counts": dm.class_counts(dm.val_rows) if classes else None,
        "zoom": zoom_robustness(net, data, dm.val_rows, config.head),
    }
    run.summary_file.write_text(json.dumps(summary, indent=2))
    return summary
