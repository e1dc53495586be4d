"""Training on a tiny synthetic set: it learns, it resumes exactly, it balances, it stops."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from zoomorph.data.datamodule import EpochBatches, GalaxyDataModule, balanced_weights
from zoomorph.data.prepare import prepare
from zoomorph.data.synthetic import make_synthetic
from zoomorph.inference import predict_array
from zoomorph.runs import load_run
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
    probs = predict_array(net, data.images[rows])
    return float((probs.argmax(1) == data.table["label_index"].to_numpy()[rows]).mean())


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


@pytest.mark.slow
def test_interrupted_and_resumed_run_ends_with_same_weights(prepared, tmp_path):
    class Interrupt(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt  # as a user's Ctrl-C: Lightning stops, last.ckpt is from epoch 0

    kw = dict(model="convnet", epochs=2, deterministic=True, augment="kaggle", **FAST)
    train(prepared, run_dir=tmp_path / "straight", **kw)
    try:
        train(prepared, run_dir=tmp_path / "resumed", callbacks=[Interrupt()], **kw)
    except (KeyboardInterrupt, SystemExit):
        pass
    assert (tmp_path / "resumed" / "checkpoints" / "last.ckpt").exists()
    train(prepared, run_dir=tmp_path / "resumed", **kw)
    a = torch.load(tmp_path / "straight" / "model.pt")
    b = torch.load(tmp_path / "resumed" / "model.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert len(pd.read_csv(tmp_path / "resumed" / "history.csv")) == 2


@pytest.mark.slow
def test_seed_threshold_stop_and_votes_head(prepared, tmp_path):
    stopped = train(prepared, model="convnet", run_dir=tmp_path / "stop", epochs=5, val_loss_stop=10.0, **FAST)
    assert stopped.summary["epochs"] == 1  # val loss < 10 after the first epoch: the seed's stop
    votes = train(prepared, model="convnet", head="votes", run_dir=tmp_path / "votes", epochs=2, **FAST)
    assert votes.summary["best_val_rmse"] < 0.5
    net, cfg = load_run(tmp_path / "votes")
    assert cfg.head == "votes" and len(cfg.classes) == 37
