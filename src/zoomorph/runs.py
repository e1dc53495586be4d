"""A run folder: what training writes and evaluation, reports, export and prediction read.

    RUN/config.json        RunConfig below (model, head, classes, preprocessing, data, split)
    RUN/model.pt           state_dict of the best model (plain torch, no Lightning needed); its _metadata
                           records the image size it was trained at, which Run.load_model checks against config.json
    RUN/history.csv        one row per epoch: epoch, train_loss, val_loss, train_acc, val_acc, lr, images_per_s, ...
    RUN/history.json       the same, as JSON records
    RUN/summary.json       the run's outcome (best epoch, val metrics, train time, class balance, zoom check)
    RUN/checkpoints/       Lightning checkpoints (best.ckpt, last.ckpt) for resuming
    RUN/metrics.json       written by `zoomorph evaluate`, with RUN/predictions_<split>.parquet
    RUN/report.html        written by `zoomorph report`
    RUN/model.onnx         the exported graph (and model.int8.onnx), each with a .json sidecar beside it
    RUN/MODEL_CARD.md      the model card (zoomorph.card): written by training, refreshed by `zoomorph evaluate`

`Run` is the one place that names these files: every other module asks it. `Run.open` also opens a packed
model file, NAME.zoomorph (zoomorph.packed): from its checked, read-only cache folder, with the weights as
model.safetensors; what commands write for it (metrics, predictions, card, report, graphs) goes to
NAME.outputs/ beside the file (`Run.out_dir`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from zoomorph.errors import InputNotFound, ZoomorphError
from zoomorph.files import replace_atomically
from zoomorph.io.decode import AUTO, check_auto_cut
from zoomorph.models import create_model
from zoomorph.models.recipe import Finetune, Recipe
from zoomorph.packed import is_packed, open_packed, outputs_dir

_CONFIG, _WEIGHTS, _HISTORY = "config.json", "model.pt", "history.csv"
_SUMMARY, _METRICS = "summary.json", "metrics.json"
_CHECKPOINTS, _LAST_CHECKPOINT, _REPORT = "checkpoints", "last.ckpt", "report.html"
_GRAPH, _INT8_GRAPH, _CARD = "model.onnx", "model.int8.onnx", "MODEL_CARD.md"
PACKED_WEIGHTS = "model.safetensors"  # a packed run's weights: safetensors, never a pickle
# What training writes, and what is derived from the weights: `train --fresh` removes these before it starts.
RUN_OUTPUTS = (_WEIGHTS, _HISTORY, "history.json", _SUMMARY, _METRICS, "predictions_*.parquet", _REPORT,
               _GRAPH, _INT8_GRAPH, "model*.onnx.json", _CHECKPOINTS, "logs", _CARD)
_FINETUNE_FIELDS = tuple(Finetune().to_dict())  # freeze_epochs, freeze_blocks, backbone_lr_mult
RECORD = "zoomorph:run"  # key of the weights' own record in the state_dict's _metadata (no module has that name)


@dataclass
class RunConfig:
    model: str  # registry name
    head: str  # "classes" (N-way logits) or "votes" (37 Galaxy Zoo fractions)
    classes: list[str]  # class names for "classes"; the 37 answer columns for "votes"
    image_size: int  # model input side, pixels
    fov: int | str  # central crop side, in Kaggle (424 px) pixels, or "auto" (zoomorph.io.decode.Fov)
    preset: str | None = None  # label preset the classes came from
    data: str | None = None  # prepared data folder it was trained on
    split_hash: str | None = None  # hash of the split manifest (compare refuses mismatches)
    extra: dict = field(default_factory=dict)  # recipe, versions, seed, ...

    def save(self, run_dir: Path) -> None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / _CONFIG).write_text(json.dumps(asdict(self), indent=2))

    def differences(self, other: "RunConfig") -> list[str]:
        """What `other` changes that a run cannot resume across: what it learns from and how (the recipe:
        epochs, lr, batch size, augmentation, ...). The data folder may move; versions may change."""
        mine, theirs = self._learning_settings(), other._learning_settings()
        return [f"{key} {_brief(mine.get(key))} in the run, {_brief(theirs.get(key))} now"
                for key in dict.fromkeys([*mine, *theirs]) if mine.get(key) != theirs.get(key)]

    def _learning_settings(self) -> dict:
        fixed = ("model", "head", "classes", "image_size", "fov", "preset", "split_hash")
        settings = {key: getattr(self, key) for key in fixed}
        settings |= {key: self.extra.get(key) for key in ("balance", "seed")}
        # the recipe in full (a run made before a field existed has today's default there), as JSON gives it
        recipe = Recipe.from_dict(self.extra.get("recipe") or {}).to_dict()
        # a finetuning run (train --init): the weights it started from (by digest: the parent may move), and
        # how it trains them; None for a run trained from scratch
        finetune = self.extra.get("finetune")
        start = {"init": finetune["parent"]["weights_sha256"][:16] if finetune else None}
        tuning = Finetune.from_dict(finetune).to_dict() if finetune else dict.fromkeys(_FINETUNE_FIELDS)
        return _plain(settings | recipe | start | tuning)

    @classmethod
    def load(cls, run_dir: Path) -> "RunConfig":
        path = Path(run_dir) / _CONFIG
        if not path.exists():
            raise InputNotFound(f"{run_dir}: not a run folder (no {_CONFIG})")
        return cls(**json.loads(path.read_text()))


class RunFileError(ZoomorphError):
    """A run's model.pt is damaged or does not fit its config.json: the message says which and what to do."""


class CannotResume(ZoomorphError):
    """Training's --out holds a run this call cannot resume (other settings, a damaged checkpoint); nothing
    in it was changed."""


def build_model(cfg: RunConfig) -> torch.nn.Module:
    """The untrained network a run's config describes (tests replace this to serve toy models)."""
    return create_model(cfg.model, head=cfg.head, num_classes=len(cfg.classes), image_size=cfg.image_size)


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sidecar(graph: Path) -> Path:
    """The JSON that describes an exported graph, beside it: model.onnx -> model.onnx.json."""
    return graph.with_name(graph.name + ".json")


class Run:
    """A run folder: its config (read once), its files by name, its weights and their digest (hashed once).

    `Run(dir, config)` is a run about to be trained; `Run.open(dir)` one on disk; `Run.of(x)` takes
    either a Run or a path. A Run pickles with what it has read, so worker processes need not read again.
    `packed`: the NAME.zoomorph file a run was opened from (None for a run folder); `out_dir`: where
    commands write (the run folder itself, or NAME.outputs/ beside a packed file: its cache is read-only).
    """

    def __init__(self, dir: Path, config: RunConfig, packed: Path | None = None):
        self.dir, self.config = Path(dir), config
        self.packed = Path(packed) if packed is not None else None
        self.out_dir = self.dir if self.packed is None else outputs_dir(self.packed)

    @classmethod
    def open(cls, dir: Path) -> "Run":
        """The run in `dir`, or in a packed model file (checked, then read from its cache folder);
        FileNotFoundError when it has no config.json, PackedFileError for a packed file changed after packing."""
        if is_packed(dir):
            cache = open_packed(dir)
            return cls(cache, RunConfig.load(cache), packed=Path(dir))
        return cls(dir, RunConfig.load(dir))

    @classmethod
    def of(cls, run: "Run | str | Path") -> "Run":
        """`run` itself, or the run in that folder: what functions taking either do first."""
        return run if isinstance(run, Run) else cls.open(Path(run))

    def __repr__(self) -> str:
        return f"Run({str(self.source)!r})"

    def check_cut(self) -> None:
        """A ZoomorphError naming the run when it was trained on fov auto crops cut otherwise than this
        version cuts them (zoomorph.io.decode.AUTO_CUT): what predicts, serves or packs it asks first."""
        if self.config.fov == AUTO:
            check_auto_cut(self.config.extra.get("fov_auto"), str(self.source))

    @property
    def source(self) -> Path:
        """What the user named: the run folder, or the packed file (for messages)."""
        return self.packed or self.dir

    @property
    def name(self) -> str:
        return self.packed.stem if self.packed else self.dir.name

    # ------------------------------------------------------------ files by name

    @property
    def config_file(self) -> Path:
        return self.dir / _CONFIG

    @property
    def weights_file(self) -> Path:
        return self.dir / (PACKED_WEIGHTS if self.packed else _WEIGHTS)

    @property
    def history_file(self) -> Path:
        return self.dir / _HISTORY

    @property
    def history_json_file(self) -> Path:
        return self.history_file.with_suffix(".json")

    @property
    def summary_file(self) -> Path:
        return self.dir / _SUMMARY

    @property
    def metrics_file(self) -> Path:
        return self.out_dir / _METRICS

    @property
    def report_file(self) -> Path:
        return self.out_dir / _REPORT

    @property
    def card_file(self) -> Path:
        """MODEL_CARD.md as written here (a packed file's own card is self.dir / its name)."""
        return self.out_dir / _CARD

    @property
    def checkpoints_dir(self) -> Path:
        return self.dir / _CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        """Written at every epoch's end: what a rerun resumes from."""
        return self.checkpoints_dir / _LAST_CHECKPOINT

    def predictions_file(self, split: str) -> Path:
        """Where `evaluate` writes its per-galaxy predictions of `split`."""
        return self.out_dir / f"predictions_{split}.parquet"

    def graph_file(self, int8: bool = False) -> Path:
        """The exported graph: RUN/model.onnx, or RUN/model.int8.onnx; for a packed run the one `export`
        wrote beside it (out_dir: NAME.outputs/, e.g. an int8 graph calibrated on the user's own images),
        else the one packed with it."""
        name = _INT8_GRAPH if int8 else _GRAPH
        exported = self.out_dir / name
        return exported if exported.exists() or not (self.dir / name).exists() else self.dir / name

    def graph_sidecar(self, int8: bool = False) -> Path:
        return sidecar(self.graph_file(int8))

    # ------------------------------------------------------------ what the files hold

    def summary(self) -> dict:
        """summary.json, or {} before training has written it."""
        return json.loads(self.summary_file.read_text()) if self.summary_file.exists() else {}

    def metrics(self) -> dict | None:
        """metrics.json, or None when the run was never evaluated (a packed run not evaluated here: the
        metrics packed with it)."""
        path = self.metrics_file if self.metrics_file.exists() or not self.packed else self.dir / _METRICS
        return json.loads(path.read_text()) if path.exists() else None

    @cached_property
    def weights_digest(self) -> str:
        """sha256 of model.pt, hashed once per Run (save_weights forgets it)."""
        return file_digest(self.weights_file)

    def graph_is_current(self, int8: bool = False) -> bool:
        """The exported graph exists, is the one its sidecar describes (bytes intact), was made from these
        weights and this config (and, for int8, was quantised)."""
        path, described = self.graph_file(int8), self.graph_sidecar(int8)
        if not (path.exists() and described.exists()):
            return False
        try:
            meta = json.loads(described.read_text())
        except ValueError:  # a damaged sidecar: export again
            return False
        return (meta.get("graph_sha256") == file_digest(path) and meta.get("weights_sha256") == self.weights_digest
                and all(meta.get(k) == getattr(self.config, k) for k in ("model", "head", "classes", "image_size"))
                and (not int8 or "quantization" in meta))

    def load_model(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The trained model, in eval mode on `device`; RunFileError names a damaged model.pt or one that
        does not fit config.json (other classes, another model, another image size)."""
        cfg, path, config = self.config, self.weights_file, self.config_file
        if not path.exists():
            raise InputNotFound(f"{path}: no such file (the run has no trained weights: train it first)")
        try:
            state, record = _read_weights(path, device)
        except Exception as err:  # noqa: BLE001 (random bytes, a truncated zip, a pickle: all mean the file is damaged)
            raise RunFileError(f"{path} is damaged (not a readable PyTorch weights file: {type(err).__name__}): "
                               "copy it back from where the run was trained, or retrain the run") from err
        trained = record.get("image_size", self.summary().get("image_size"))  # older runs: in the summary
        if trained is not None and trained != cfg.image_size:
            # a fully convolutional model with a global pool loads at any size, and would answer differently
            raise RunFileError(f"{config} says image_size {cfg.image_size}, but {path} was trained at {trained} "
                               f"px: set image_size back to {trained}, or retrain at the new size")
        model = build_model(cfg)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            first = (str(err).strip().splitlines()[1:2] or [str(err)])[0].strip()  # torch's first per-tensor line
            raise RunFileError(f"{path} does not fit {config} (model {cfg.model!r}, head {cfg.head!r}, "
                               f"{len(cfg.classes)} outputs, {cfg.image_size} px): {first}; restore the "
                               "config.json it was trained with, or retrain the run") from err
        return model.to(device).eval()

    # ------------------------------------------------------------ what training writes

    def save_weights(self, model: torch.nn.Module) -> None:
        """model.pt, written whole or not at all, recording the image size of config.json (when there is one):
        the record rides in the state_dict's _metadata, which a plain load_state_dict ignores."""
        state = model.state_dict()
        if self.config_file.exists():
            state._metadata[RECORD] = {"image_size": RunConfig.load(self.dir).image_size}
        replace_atomically(self.weights_file, lambda tmp: torch.save(state, tmp))
        self.__dict__.pop("weights_digest", None)  # other bytes now

    def clear_outputs(self) -> None:
        """Start the folder over: its config stays until the new one replaces it."""
        for pattern in RUN_OUTPUTS:
            for path in self.dir.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.__dict__.pop("weights_digest", None)

    def claim(self, resume: bool) -> Path | None:
        """Check that training may write this folder with this config, then write the config; the checkpoint
        to resume from (None: start afresh).

        Everything is checked before anything is written, so a refused call leaves an existing run as it
        was: another model, other data or another recipe in the same folder would otherwise overwrite its
        config and then fail on its checkpoint, leaving a run that predict and evaluate cannot load."""
        last = self.last_checkpoint
        if resume and self.config_file.exists():
            changed = RunConfig.load(self.dir).differences(self.config)
            if changed:
                raise CannotResume(
                    f"{self.dir} holds another run ({'; '.join(changed)}); nothing was changed. To resume it, give "
                    "the settings it has (a default may have changed since it started); else another --out, or "
                    "--fresh to start over in this folder (it deletes the run's weights and checkpoints).")
            if last.exists():
                try:
                    torch.load(last, map_location="cpu", weights_only=False)
                except Exception as err:  # noqa: BLE001 (unpickling fails in many ways; each means the same)
                    raise CannotResume(f"{last} is damaged ({type(err).__name__}), so the run cannot resume from "
                                       "it: start over with --fresh, or give another --out") from None
        if not resume:
            self.clear_outputs()
        for leftover in self.checkpoints_dir.glob("*.tmp"):  # a checkpoint a kill cut short
            leftover.unlink()
        self.config.save(self.dir)
        return last if resume and last.exists() else None


def _read_weights(path: Path, device) -> tuple[dict, dict]:
    """The state_dict in a weights file and the weights' own record (the image size they were trained at):
    model.pt by torch (weights only), a packed run's model.safetensors by safetensors, which holds tensors
    and text and nothing that runs code (the file may come from anyone)."""
    if path.suffix == ".safetensors":
        with safetensors.safe_open(path, "pt") as weights:
            meta = weights.metadata() or {}
        return safetensors.torch.load_file(path, device=str(device)), json.loads(meta.get(RECORD, "{}"))
    state = torch.load(path, map_location=device, weights_only=True)
    return state, getattr(state, "_metadata", {}).get(RECORD, {})


def _brief(value) -> str:
    """repr, with a long list (the 37 answer columns) cut to its first names and its length."""
    if isinstance(value, list) and len(value) > 4:
        return f"[{', '.join(map(repr, value[:3]))}, ... {len(value)} in all]"
    return repr(value)


def _plain(value):
    """As JSON would give it back (tuples as lists), so a loaded config equals the one it was saved from."""
    return json.loads(json.dumps(value))
