"""Training on a tiny synthetic set: it learns, it resumes exactly, it balances, it stops."""

import json
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from zoomorph.data.datamodule import EpochBatches, GalaxyDataModule, balanced_weights
from zoomorph.data.prepare import prepare
from zoomorph.data.synthetic import make_synthetic
from zoomorph.inference import Predictor
from zoomorph.runs import CannotResume, Run, RunConfig
from zoomorph.training import train

FAST = dict(progress=False, batch_size=32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synthetic(root / "set", 240, seed=1)
    return prepare(root / "set" / "images", root / "set" / "solutions.csv", root / "prepared",
                   preset="hubble", size=32, progress=False).data


def accuracy(net, data) -> float:
    rows = data.indices("val")
    probs = Predictor.from_model(net, "classes").probabilities(data.images[rows])
    return float((probs.argmax(1) == data.table["label_index"].to_numpy()[rows]).mean())


def load_run(run_dir):
    run = Run.open(run_dir)
    return run.load_model(), run.config


def test_balanced_sampler_equalises_classes():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    sampler = EpochBatches(len(labels), 100, seed=0, weights=balanced_weights(labels))
    drawn = np.concatenate(list(sampler))
    share = np.bincount(labels[drawn], minlength=3) / len(drawn)
    np.testing.assert_allclose(share, 1 / 3, atol=0.05)
    sampler.set_epoch(1)
    assert not np.array_equal(np.concatenate(list(sampler)), drawn)  # a new draw each epoch
    sampler.set_epoch(0)
    assert np.array_equal(np.concatenate(list(sampler)), drawn)  # and the same draw for the same epoch


def test_datamodule_batches_are_whole_uint8_batches(prepared):
    dm = GalaxyDataModule(prepared, batch_size=16)
    images, targets = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (16, 32, 32, 3) and targets.shape == (16,)
    val = GalaxyDataModule(prepared, balance="none").val_dataloader()
    seen = np.concatenate([t.numpy() for _, t in val])
    assert len(seen) == len(prepared.indices("val"))  # validation: each galaxy once, never augmented copies


@pytest.mark.slow
def test_tiny_training_run_learns(prepared, tmp_path):
    from zoomorph.models import create_model
    untrained = accuracy(create_model("convnet", num_classes=3, image_size=32).eval(), prepared)
    # batch 16: enough steps in 8 epochs for BatchNorm's running statistics to settle
    train(prepared, model="convnet", run_dir=tmp_path / "run", epochs=8, augment="none", progress=False,
          batch_size=16)
    net, cfg = load_run(tmp_path / "run")
    trained = accuracy(net, prepared)
    assert trained > max(untrained, 0.5) + 0.1, (untrained, trained)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["epoch"].tolist() == list(range(8))
    assert {"train_loss", "val_loss", "val_acc", "val_bal_acc", "lr", "images_per_s"} <= set(history.columns)
    as_json = pd.read_json(tmp_path / "run" / "history.json")
    assert as_json["epoch"].tolist() == history["epoch"].tolist()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["zoom"]) == {"0.5", "0.75", "1", "1.5"}
    assert summary["zoom"]["1"]["accuracy"] == pytest.approx(trained, abs=1e-6)
    assert cfg.classes == prepared.classes and cfg.split_hash == prepared.split_hash
    assert sum(summary["train_class_counts"].values()) == len(prepared.indices("train"))


# A run whose best epoch comes after the interruptions below (val accuracy flat until epoch 5), with
# dropout, augmentation and a one-cycle schedule: every kind of state a resume has to restore.
RESUMABLE = dict(model="convnet", epochs=8, deterministic=True, augment="seed", progress=False, batch_size=16)
TIMINGS = ["train_seconds", "images_per_s"]  # wall-clock figures, the only columns allowed to differ


@pytest.fixture(scope="module")
def straight(prepared, tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    train(prepared, run_dir=run, **RESUMABLE)
    return run


def assert_same_run(a, b, interrupted_at: int) -> None:
    """The whole outcome of two runs is equal: every epoch's figures, the last weights and the best ones."""
    ha, hb = pd.read_csv(a / "history.csv"), pd.read_csv(b / "history.csv")
    assert ha["epoch"].tolist() == hb["epoch"].tolist() == list(range(RESUMABLE["epochs"]))
    pd.testing.assert_frame_equal(ha.drop(columns=TIMINGS), hb.drop(columns=TIMINGS), check_exact=True)
    for name in ("last.ckpt", "best.ckpt"):
        ca, cb = (torch.load(r / "checkpoints" / name, weights_only=False) for r in (a, b))
        assert ca["epoch"] == cb["epoch"], name
        for k in ca["state_dict"]:
            torch.testing.assert_close(ca["state_dict"][k], cb["state_dict"][k], rtol=0, atol=0, msg=f"{name} {k}")
    best_epoch = json.loads((a / "summary.json").read_text())["best_epoch"]
    assert best_epoch > interrupted_at  # so equal best weights are no leftover of the epochs before the stop
    assert json.loads((b / "summary.json").read_text())["best_epoch"] == best_epoch
    wa, wb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)


@pytest.mark.slow
def test_run_stopped_by_ctrl_c_resumes_to_the_same_run(prepared, straight, tmp_path):
    class Interrupt(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 5:
                raise KeyboardInterrupt  # as a user's Ctrl-C: Lightning stops; last.ckpt is from epoch 4

    try:
        train(prepared, run_dir=tmp_path / "resumed", callbacks=[Interrupt()], **RESUMABLE)
    except (KeyboardInterrupt, SystemExit):
        pass
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 4
    train(prepared, run_dir=tmp_path / "resumed", **RESUMABLE)
    assert_same_run(straight, tmp_path / "resumed", interrupted_at=4)


KILLED_RUN = """
import os, signal, sys
from lightning.pytorch.callbacks import Callback
from zoomorph.training import train

class Kill(Callback):  # a real SIGKILL in the middle of epoch 3: nothing of it is saved
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 3 and batch_idx == 2:
            os.kill(os.getpid(), signal.SIGKILL)

train(sys.argv[1], run_dir=sys.argv[2], callbacks=[Kill()], **{settings})
"""


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_run(prepared, straight, tmp_path):
    run = tmp_path / "killed"
    script = KILLED_RUN.replace("{settings}", repr(RESUMABLE))
    done = subprocess.run([sys.executable, "-c", script, str(prepared.root), str(run)], capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert len(pd.read_csv(run / "history.csv")) == 3 and not (run / "model.pt").exists()
    assert not list(run.rglob("*.tmp"))  # every file there is whole
    train(prepared, run_dir=run, **RESUMABLE)  # the same command again
    assert_same_run(straight, run, interrupted_at=2)


def files_of(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_another_model_or_head_in_an_existing_run_is_refused_untouched(prepared, tmp_path):
    run = tmp_path / "run"
    kw = dict(epochs=1, progress=False, batch_size=32)
    train(prepared, model="convnet", run_dir=run, **kw)
    before = files_of(run)
    for change, named in ((dict(model="convnet-lite"), "model 'convnet' in the run, 'convnet-lite' now"),
                          (dict(model="convnet", head="votes"), "head 'classes' in the run, 'votes' now"),
                          (dict(model="convnet", lr=0.1), "lr 0.002 in the run, 0.1 now"),
                          (dict(model="convnet", epochs=2), "epochs 1 in the run, 2 now"),
                          (dict(model="convnet", seed=3), "seed 0 in the run, 3 now")):
        with pytest.raises(CannotResume, match="--fresh") as refused:
            train(prepared, run_dir=run, **kw | change)
        assert named in str(refused.value)
        assert files_of(run) == before, change  # not one byte changed
    net, cfg = load_run(run)  # and the run still loads
    assert cfg.model == "convnet"
    result = train(prepared, model="convnet-lite", run_dir=run, resume=False, **kw)  # --fresh: started over
    assert load_run(run)[1].model == "convnet-lite" and result.summary["epochs"] == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_a_damaged_checkpoint_is_refused_with_the_way_out(prepared, tmp_path):
    run = tmp_path / "run"
    config = RunConfig("convnet", "classes", prepared.classes, 32, 256, "hubble", None, prepared.split_hash)
    assert Run(run, config).claim(resume=True) is None  # a new folder: nothing to resume
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"\x80\x02 not a checkpoint")
    with pytest.raises(CannotResume, match=r"last.ckpt is damaged .*--fresh"):
        Run(run, config).claim(resume=True)


@pytest.mark.slow
def test_seed_threshold_stop_and_votes_head(prepared, tmp_path):
    stopped = train(prepared, model="convnet", run_dir=tmp_path / "stop", epochs=5, val_loss_stop=10.0, **FAST)
    assert stopped.summary["epochs"] == 1  # val loss < 10 after the first epoch: the seed's stop
    votes = train(prepared, model="convnet", head="votes", run_dir=tmp_path / "votes", epochs=2, **FAST)
    assert votes.summary["best_val_rmse"] < 0.5
    net, cfg = load_run(tmp_path / "votes")
    assert cfg.head == "votes" and len(cfg.classes) == 37


def test_training_a_classifier_on_one_class_is_refused_naming_the_counts(tmp_path):
    # A one-class rules preset: prepare keeps the folder (all 37 fractions: the votes head can learn),
    # but a classifier would score 100% by construction, so train refuses it before writing anything.
    make_synthetic(tmp_path / "set", 60, seed=2)
    rules = tmp_path / "one.toml"
    rules.write_text('[classes]\nsmooth = ["Class1.1 >= 0.0"]\n')
    data = prepare(tmp_path / "set" / "images", tmp_path / "set" / "solutions.csv", tmp_path / "prepared",
                   preset=str(rules), size=32, progress=False).data
    with pytest.raises(ValueError, match=r"two classes .*smooth: \d+ train, \d+ val"):
        train(data, model="convnet", run_dir=tmp_path / "run", epochs=1, progress=False)
    assert not (tmp_path / "run").exists()
