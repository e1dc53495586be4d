"""Finetuning (train --init RUN): another run's backbone, a fresh head, frozen parts, a slower backbone."""

from __future__ import annotations

import json
from types import SimpleNamespace

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from tiny_runs import TINY_MODEL
from torch import nn
from typer.testing import CliRunner

from zoomorph.cli import app
from zoomorph.data.dataset import PreparedData
from zoomorph.data.prepare import prepare
from zoomorph.data.synthetic import make_synthetic
from zoomorph.errors import InputNotFound, ZoomorphError
from zoomorph.evaluation.robustness import zoom_check_caption
from zoomorph.io.decode import AUTO
from zoomorph.models import backbone_blocks, create_model, list_models, register_model
from zoomorph.models.layers import GlobalAvgPool, conv_bn
from zoomorph.models.recipe import MODERN_RECIPE, Recipe
from zoomorph.runs import CannotResume, Run, RunConfig, RunFileError
from zoomorph.schema import ANSWER_COLUMNS
from zoomorph.training import GalaxyModule, train

BN_MODEL, SIZE = "test-tiny-bn", 32
FAST = dict(progress=False, batch_size=16)

if BN_MODEL not in list_models():
    # BatchNorm in every block, as the real models have: what freezing must keep in eval mode.
    @register_model(BN_MODEL, description="three conv-BN-ReLU blocks, for tests", default_image_size=SIZE,
                    recipe=MODERN_RECIPE, head_dropout=0.2)
    def _tiny_bn(image_size: int) -> tuple[nn.Module, int]:
        return nn.Sequential(conv_bn(3, 8, 3, 2), conv_bn(8, 16, 3, 2), conv_bn(16, 32, 3, 2), GlobalAvgPool()), 32


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> SimpleNamespace:
    """Two synthetic sets: the parent's (hubble, 3 classes) and the new one (hubble+edge-on, 4 classes, half val)."""
    root = tmp_path_factory.mktemp("finetune")
    make_synthetic(root / "a", 320, seed=1, workers=1)
    make_synthetic(root / "b", 160, seed=2, workers=1)
    first = prepare(root / "a" / "images", root / "a" / "solutions.csv", root / "pa", preset="hubble", size=SIZE,
                    workers=1, progress=False).data
    new = prepare(root / "b" / "images", root / "b" / "solutions.csv", root / "pb", preset="hubble+edge-on",
                  size=SIZE, val=0.5, workers=1, progress=False).data
    return SimpleNamespace(first=first, new=new, root=root)


def parent_run(run_dir, data: PreparedData, model: str = BN_MODEL, head: str = "classes", seed: int = 0) -> Run:
    """A run folder as training leaves it, with weights (BatchNorm statistics too) far from any fresh model's."""
    classes = data.classes if head == "classes" else list(ANSWER_COLUMNS)
    config = RunConfig(model, head, classes, SIZE, data.fov, data.preset_name, str(data.root), data.split_hash)
    config.save(run_dir)
    torch.manual_seed(seed)
    net = create_model(model, head=head, num_classes=len(classes), image_size=SIZE)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.add_(torch.randn_like(t)).abs_() if "running_var" in name else t.add_(torch.randn_like(t))
    run = Run(run_dir, config)
    run.save_weights(net)
    return run


class Watch(Callback):
    """What the module holds at the start (after setup, before any step) and at each epoch's end."""

    def __init__(self):
        self.start, self.epochs, self.bn_training, self.groups = None, [], [], None

    @staticmethod
    def _copy(module) -> dict:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_train_start(self, trainer, pl_module):
        self.start = (self._copy(pl_module.net.backbone), self._copy(pl_module.net.head))
        self.groups = [{k: v for k, v in g.items() if k != "params"} | {"n": len(g["params"])}
                       for g in trainer.optimizers[0].param_groups]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.bn_training.append([m.training for m in pl_module.net.backbone.modules()
                                     if isinstance(m, nn.BatchNorm2d)])

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(self._copy(pl_module.net.backbone))


def same(a: dict, b: dict, keys=None) -> bool:
    return all(torch.equal(a[k], b[k]) for k in (keys or a))


def test_init_refuses_another_models_run_naming_both(sets, tmp_path):
    parent = parent_run(tmp_path / "parent", sets.first, model=TINY_MODEL)
    with pytest.raises(ZoomorphError, match=rf"holds a '{TINY_MODEL}' run, and this run trains '{BN_MODEL}'"):
        train(sets.new, model=BN_MODEL, init=parent.dir, run_dir=tmp_path / "child", epochs=1, **FAST)
    assert not (tmp_path / "child").exists()  # refused before anything was written


def test_init_refuses_a_missing_or_damaged_run_and_options_without_init(sets, tmp_path):
    with pytest.raises(InputNotFound, match="not a run folder"):
        train(sets.new, init=tmp_path / "nothing", run_dir=tmp_path / "child", epochs=1, **FAST)
    parent = parent_run(tmp_path / "parent", sets.first)
    parent.weights_file.write_bytes(b"not weights")
    with pytest.raises(RunFileError, match="damaged"):
        train(sets.new, init=parent.dir, run_dir=tmp_path / "child", epochs=1, **FAST)
    parent.weights_file.unlink()
    with pytest.raises(InputNotFound, match="no trained weights"):
        train(sets.new, init=parent.dir, run_dir=tmp_path / "child", epochs=1, **FAST)
    with pytest.raises(ZoomorphError, match=r"give init \(--init RUN\)"):
        train(sets.new, model=BN_MODEL, freeze_epochs=2, run_dir=tmp_path / "child", epochs=1, **FAST)
    assert not (tmp_path / "child").exists()


def test_a_backbone_that_cannot_take_the_image_size_is_refused(sets, tmp_path):
    # the seed models flatten their last feature map into a dense layer: 94 px weights fit no 130 px image
    config = RunConfig("seed-model1", "classes", ["a", "b"], 94, 94)
    config.save(tmp_path / "seed")
    Run(tmp_path / "seed", config).save_weights(create_model("seed-model1", num_classes=2, image_size=94))
    root = sets.root
    data = prepare(root / "b" / "images", root / "b" / "solutions.csv", tmp_path / "p130", preset="hubble",
                   size=130, fov=130, workers=1, progress=False).data
    with pytest.raises(ZoomorphError, match="trained at 94 px and cannot take 130 px images"):
        train(data, init=tmp_path / "seed", run_dir=tmp_path / "child", epochs=1, **FAST)
    assert not (tmp_path / "child").exists()


def test_init_loads_the_backbone_exactly_with_a_fresh_head_and_records_the_parent(sets, tmp_path):
    parent = parent_run(tmp_path / "parent", sets.first, head="votes")  # a votes run: a classes child
    watch = Watch()
    train(sets.new, init=parent.dir, run_dir=tmp_path / "child", epochs=1, seed=3, callbacks=[watch], **FAST)
    backbone, head = watch.start
    trained = parent.load_model()
    assert same(backbone, trained.backbone.state_dict())  # bit for bit, BatchNorm statistics included
    L.seed_everything(3, verbose=False)  # the head is the one a fresh model of this seed has
    fresh = create_model(BN_MODEL, num_classes=4, image_size=SIZE)
    assert same(head, fresh.head.state_dict()) and head["1.weight"].shape == (4, 32)
    recorded = json.loads((tmp_path / "child" / "config.json").read_text())["extra"]["finetune"]
    assert recorded["parent"] == {"run": str(parent.dir.resolve()), "weights_sha256": parent.weights_digest,
                                  "model": BN_MODEL, "head": "votes", "classes": list(ANSWER_COLUMNS),
                                  "image_size": SIZE, "fov": sets.first.fov}
    assert {k: recorded[k] for k in ("freeze_epochs", "freeze_blocks", "backbone_lr_mult")} == \
        {"freeze_epochs": 0, "freeze_blocks": 0, "backbone_lr_mult": 1.0}
    assert Run.open(tmp_path / "child").config.model == BN_MODEL  # no --model: the parent's


def test_freeze_epochs_keeps_the_backbone_then_trains_it(sets, tmp_path):
    parent = parent_run(tmp_path / "parent", sets.first)
    watch = Watch()
    train(sets.new, init=parent.dir, run_dir=tmp_path / "child", epochs=4, freeze_epochs=2, callbacks=[watch],
          **FAST)
    start = parent.load_model().backbone.state_dict()
    assert same(watch.epochs[0], start) and same(watch.epochs[1], start)  # weights and BatchNorm statistics
    assert not same(watch.epochs[2], start) and not same(watch.epochs[3], watch.epochs[2])
    assert watch.bn_training == [[False] * 3, [False] * 3, [True] * 3, [True] * 3]  # eval while frozen


def test_freeze_blocks_keeps_those_blocks_to_the_end(sets, tmp_path):
    parent = parent_run(tmp_path / "parent", sets.first)
    watch = Watch()
    train(sets.new, init=parent.dir, run_dir=tmp_path / "child", epochs=3, freeze_blocks=2, callbacks=[watch], **FAST)
    start, end = parent.load_model().backbone.state_dict(), watch.epochs[-1]
    frozen = [k for k in start if k.split(".")[0] in ("0", "1")]  # blocks 0 and 1 of the three
    assert same(end, start, frozen)
    assert not same(end, start, [k for k in start if k.startswith("2.")])
    assert watch.bn_training[-1] == [False, False, True]
    with pytest.raises(ZoomorphError, match="--freeze-blocks 4: this model's backbone has 3 blocks"):
        train(sets.new, init=parent.dir, run_dir=tmp_path / "other", epochs=1, freeze_blocks=4, **FAST)


def test_the_blocks_of_every_registered_model():
    counts = {"convnet": 10, "convnet-lite": 10, "resnet": 9, "rotinv": 5, "seed-model1": 7, "seed-model2": 6,
              BN_MODEL: 3}
    for name, n in counts.items():
        backbone = create_model(name).backbone
        blocks = backbone_blocks(backbone)
        assert len(blocks) == n, name
        in_blocks = [id(p) for block in blocks for m in block for p in m.parameters()]
        assert sorted(in_blocks) == sorted(id(p) for p in backbone.parameters()), name  # each in one block
        assert all(any(True for m in block for _ in m.parameters()) for block in blocks), name


def test_backbone_lr_multiplier_in_the_optimiser_and_every_schedule(sets, tmp_path):
    parent = parent_run(tmp_path / "parent", sets.first)
    watch = Watch()
    train(sets.new, init=parent.dir, run_dir=tmp_path / "child", epochs=2, lr=0.01, backbone_lr_mult=0.25,
          callbacks=[watch], **FAST)
    n_backbone = len(list(create_model(BN_MODEL).backbone.parameters()))
    assert [(g["name"], g["n"], g["max_lr"]) for g in watch.groups] == [("backbone", n_backbone, 0.0025),
                                                                          ("head", 2, 0.01)]
    history = pd.read_csv(tmp_path / "child" / "history.csv")
    assert (history["backbone_lr"] / history["lr"]).round(9).eq(0.25).all()
    for scheduler in ("onecycle", "cosine"):
        module = GalaxyModule(BN_MODEL, "classes", 4, SIZE, Recipe(scheduler=scheduler).to_dict(),
                              finetune={"backbone_lr_mult": 0.1})
        module._trainer = SimpleNamespace(estimated_stepping_batches=20)
        setup = module.configure_optimizers()
        optimizer, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
        for _ in range(19):
            backbone, head = (g["lr"] for g in optimizer.param_groups)
            assert backbone == pytest.approx(head * 0.1, rel=1e-9), scheduler
            optimizer.step()
            schedule.step()


def test_a_resumed_finetuning_run_checks_its_settings(sets, tmp_path):
    parent = parent_run(tmp_path / "parent", sets.first)
    other = parent_run(tmp_path / "other", sets.first, seed=1)
    kw = dict(run_dir=tmp_path / "child", epochs=1, **FAST)
    train(sets.new, init=parent.dir, freeze_epochs=1, **kw)
    digest = parent.weights_digest[:16]
    for change, named in ((dict(init=parent.dir, freeze_epochs=2), "freeze_epochs 1 in the run, 2 now"),
                          (dict(init=parent.dir, freeze_epochs=1, backbone_lr_mult=0.5),
                           "backbone_lr_mult 1.0 in the run, 0.5 now"),
                          (dict(init=other.dir, freeze_epochs=1), f"init '{digest}' in the run, "
                                                                  f"'{other.weights_digest[:16]}' now"),
                          (dict(model=BN_MODEL), f"init '{digest}' in the run, None now")):
        with pytest.raises(CannotResume, match="--fresh") as refused:
            train(sets.new, **kw | change)
        assert named in str(refused.value) and "give the settings it has" in str(refused.value)
    again = train(sets.new, init=parent.dir, freeze_epochs=1, **kw)  # the same call: resumed, finished
    assert again.summary["epochs"] == 1


@pytest.mark.slow
def test_a_finetuning_run_stopped_in_its_frozen_epochs_resumes_to_the_same_run(sets, tmp_path):
    parent = parent_run(tmp_path / "parent", sets.first)
    settings = dict(init=parent.dir, epochs=4, freeze_epochs=2, freeze_blocks=1, deterministic=True, augment="seed",
                    **FAST)
    train(sets.new, run_dir=tmp_path / "straight", **settings)

    class Interrupt(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt  # last.ckpt is from epoch 0, inside the frozen epochs

    try:
        train(sets.new, run_dir=tmp_path / "resumed", callbacks=[Interrupt()], **settings)
    except (KeyboardInterrupt, SystemExit):
        pass
    train(sets.new, run_dir=tmp_path / "resumed", **settings)
    timings = ["train_seconds", "images_per_s"]
    a, b = (pd.read_csv(tmp_path / r / "history.csv").drop(columns=timings) for r in ("straight", "resumed"))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert a["epoch"].tolist() == [0, 1, 2, 3]
    for name in ("checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        sa, sb = (torch.load(tmp_path / r / name, weights_only=False)["state_dict"] for r in ("straight", "resumed"))
        assert same(sa, sb), name
    assert same(torch.load(tmp_path / "straight" / "model.pt"), torch.load(tmp_path / "resumed" / "model.pt"))


@pytest.mark.slow
def test_a_tiny_finetune_learns_what_training_from_scratch_does_not(sets, tmp_path):
    # The parent learns hubble on one synthetic set; the new set has a fourth class (edge-on) and 80 labelled
    # galaxies to train on. Same recipe, epochs and seed for both: the finetuned run is well above chance (a
    # quarter; the biggest class is 30%) and fits the new validation set better than training from scratch.
    parent = train(sets.first, model=BN_MODEL, run_dir=tmp_path / "parent", epochs=12, **FAST)
    assert parent.summary["best_val_acc"] > 0.8
    same_budget = dict(epochs=10, lr=0.01, seed=0, **FAST)
    finetuned = train(sets.new, init=tmp_path / "parent", run_dir=tmp_path / "finetuned", **same_budget)
    scratch = train(sets.new, model=BN_MODEL, run_dir=tmp_path / "scratch", **same_budget)
    accuracy = finetuned.summary["zoom"]["1"]["accuracy"]
    assert accuracy > 0.6, accuracy
    losses = [pd.read_csv(tmp_path / r / "history.csv")["val_loss"].min() for r in ("finetuned", "scratch")]
    assert losses[0] < losses[1] - 0.1, losses
    assert accuracy > scratch.summary["zoom"]["1"]["accuracy"]


def test_the_cli_finetunes_and_refuses_in_one_line(sets, tmp_path):
    parent = parent_run(tmp_path / "parent", sets.first)
    runner = CliRunner()
    done = runner.invoke(app, ["train", str(sets.new.root), "--init", str(parent.dir), "--out", str(tmp_path / "c"),
                               "--epochs", "1", "--batch-size", "16", "--freeze-blocks", "1"])
    assert done.exit_code == 0, done.output
    assert sets.new.fov == AUTO  # the default: its zoom check is a size measured wrong, not another scale
    assert f"The zoom check: {zoom_check_caption(AUTO)}." in " ".join(done.output.split())
    recorded = Run.open(tmp_path / "c").config.extra["finetune"]
    assert recorded["freeze_blocks"] == 1 and recorded["parent"]["weights_sha256"] == parent.weights_digest
    refused = runner.invoke(app, ["train", str(sets.new.root), "--init", str(parent.dir), "--model", TINY_MODEL,
                                  "--out", str(tmp_path / "d")])
    flat = " ".join(refused.output.split())
    assert refused.exit_code == 2 and f"holds a '{BN_MODEL}' run, and this run trains '{TINY_MODEL}'" in flat
    assert "Traceback" not in refused.output


def test_prepare_takes_an_explicit_split_manifest(sets, tmp_path):
    # what a cross-validation fold needs (benchmarks/finetune_labels.py): the split as given, and only the
    # galaxies it lists, every other one reported
    table = sets.new.table
    chosen = table[table["label"].notna()].groupby("label").head(5)
    manifest = pd.DataFrame({"id": chosen["id"] + ".0",  # matched as labels are: 100123.0 is 100123
                             "split": ["val" if i % 2 else "train" for i in range(len(chosen))]})
    manifest.to_csv(tmp_path / "fold.csv", index=False)
    root = sets.root
    summary = prepare(root / "b" / "images", root / "b" / "solutions.csv", tmp_path / "fold",
                      preset="hubble+edge-on", size=SIZE, workers=1, progress=False, split_file=tmp_path / "fold.csv")
    got = summary.data.table.set_index("id")["split"]
    assert got.to_dict() == dict(zip(chosen["id"], manifest["split"]))
    assert summary.counts["not in the split manifest"] == len(table) - len(chosen)
    skipped = pd.read_csv(tmp_path / "fold" / "skipped.csv")
    assert (skipped["stage"] == "split").sum() == len(table) - len(chosen)
