"""Training under Lightning's "ddp" strategy, two CPU processes (gloo): what each process does, verified.

One run of train(devices=2, strategy="ddp") in a subprocess (Lightning's launcher re-runs the script for
rank 1, so it cannot run inside pytest's own process), recording in each process:

* which cache rows each training batch held (each image mapped back to its row by its bytes): the two
  ranks' batches are disjoint and together are the epoch, every training galaxy once (balance="none");
  and every validation galaxy is scored once, by one of them;
* the val loss each saw and the epochs each trained: the seed's val-loss stop (val_loss_stop) ends
  training on both at the same epoch, on the same (synchronised) val loss;
* every change each process made under the run folder (Python's audit hook: files opened for writing,
  renames, removals, folders made; and torch.save, which writes in C++): only rank 0 writes the run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from zoomorph.data.prepare import prepare
from zoomorph.data.synthetic import make_synthetic

TESTS = Path(__file__).resolve().parent
EPOCHS = 5  # at most; the stop below ends the run earlier
LR = 0.03  # the tiny model (no BatchNorm) then lowers val loss steadily: about 1.05, 0.99, 0.89, 0.82 ...
THRESHOLD = 0.95  # ... so the stop fires after the third epoch (epoch 2), clear of the values either side
TIMEOUT = 240  # seconds; a process left waiting for the other (a one-rank stop) hangs until killed

SCRIPT = r'''
"""python ddp_train.py PREPARED RUN RECORD THRESHOLD EPOCHS BATCH LR: train() under "ddp" on 2 CPU processes.
Lightning re-runs this script for rank 1 (LOCAL_RANK=1). Each rank rewrites RECORD/rank<r>.json at every
epoch, so a run that hangs still leaves what each rank saw and did."""
import json
import os
import sys
from pathlib import Path

RANK = int(os.environ.get("LOCAL_RANK", "0"))
PREPARED, RUN_DIR, RECORD = (Path(p).resolve() for p in sys.argv[1:4])
THRESHOLD, EPOCHS, BATCH, LR = float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
RUN = str(RUN_DIR)
WRITES = []  # [how, path relative to RUN]: every change this process makes under RUN
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_CHANGES = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate", "os.link",
            "os.symlink", "shutil.copyfile", "shutil.copytree", "shutil.move", "os.chmod", "os.utime"}


def _note(how, path):
    if isinstance(path, (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(path))
        if path == RUN or path.startswith(RUN + os.sep):
            WRITES.append([how, os.path.relpath(path, RUN)])


def _audit(event, args):
    if event == "open":  # builtins.open (mode str) and os.open (flags)
        path, mode, flags = args
        if any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS):
            _note("open", path)
    elif event in _CHANGES:  # os.replace is "os.rename"; Path.unlink is "os.remove"
        for arg in args[:2]:
            _note(event, arg)


sys.addaudithook(_audit)

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

_save = torch.save


def _noted_save(obj, f, *args, **kwargs):  # torch.save opens a path in C++, unseen by the audit hook
    _note("torch.save", f)
    return _save(obj, f, *args, **kwargs)


torch.save = _noted_save
torch.set_num_threads(1)

import tiny_runs  # registers the tiny model
from zoomorph.training import train


class Record(Callback):
    def __init__(self):
        self.batches, self.val_batches, self.val, self.global_rank, self.fit = [], [], [], None, {}
        self.row_of, self.unique, self.train_rows, self.val_rows = {}, None, [], []

    def setup(self, trainer, pl_module, stage):
        images = trainer.datamodule.data.images
        self.row_of = {np.asarray(images[i]).tobytes(): i for i in range(len(images))}
        self.unique = len(self.row_of) == len(images)  # else the bytes cannot name a row
        self.train_rows = [int(r) for r in trainer.datamodule.train_rows]
        self.val_rows = [int(r) for r in trainer.datamodule.val_rows]
        self.global_rank = trainer.global_rank

    def _rows(self, batch):  # the uint8 pixels as the cache holds them: augmentation comes later, on the device
        return [self.row_of.get(image.tobytes(), -1) for image in batch[0].cpu().numpy()]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append([trainer.current_epoch, batch_idx, self._rows(batch)])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.dump()  # every step: whatever fails later in the epoch, the record holds its batches

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.val_batches.append([trainer.current_epoch, batch_idx, self._rows(batch)])

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            seen = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("val_loss", "val_acc")}
            self.val.append([trainer.current_epoch, seen])
            self.dump()

    def on_train_epoch_end(self, trainer, pl_module):
        self.dump()

    def on_fit_end(self, trainer, pl_module):
        self.fit = {"global_rank": trainer.global_rank, "world_size": trainer.world_size,
                    "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None}
        self.dump()

    def dump(self, **extra):
        record = {"rank": RANK, "global_rank": self.global_rank, "unique_images": self.unique,
                  "train_rows": self.train_rows, "val_rows": self.val_rows, "batches": self.batches,
                  "val_batches": self.val_batches, "val": self.val, "fit": self.fit, "writes": WRITES, **extra}
        RECORD.mkdir(parents=True, exist_ok=True)
        tmp = RECORD / f"rank{RANK}.json.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, RECORD / f"rank{RANK}.json")


record = Record()
result = train(PREPARED, model=tiny_runs.TINY_MODEL, run_dir=RUN_DIR, epochs=EPOCHS, batch_size=BATCH, lr=LR,
               augment="none", balance="none", val_loss_stop=THRESHOLD, accelerator="cpu", devices=2,
               strategy="ddp", precision="32-true", progress=False, callbacks=[record])
record.dump(returned=True, summary=result.summary and {k: result.summary[k] for k in ("epochs", "best_epoch")})
'''

# Variables that would make Lightning think it runs under torchrun, SLURM, MPI, ...: the launcher must be its own.
LAUNCH_ENV = ("LOCAL_RANK", "RANK", "GLOBAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
              "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED", "PL_TRAINER_GPUS")
LAUNCH_PREFIXES = ("SLURM_", "TORCHELASTIC_", "OMPI_", "PMI_", "JSM_", "LSB_")


def batch_size_for(n: int) -> int:
    """A batch size giving an even number of batches: then no batch is left over, and the 2 ranks' batches
    are the whole epoch (with an odd number, the sampler drops the last so that both take the same count)."""
    for b in (9, 8, 10, 7, 11, 6):
        if math.ceil(n / b) % 2 == 0:
            return b
    raise AssertionError(f"no batch size gives {n} training galaxies an even number of batches")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    make_synthetic(root / "set", 480, seed=1, workers=1)
    data = prepare(root / "set" / "images", root / "set" / "solutions.csv", root / "prepared", preset="hubble",
                   size=32, workers=1, progress=False).data
    batch = batch_size_for(len(data.indices("train")))
    script = root / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV and not k.startswith(LAUNCH_PREFIXES)}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")])))
    run, records = root / "run", root / "record"
    args = [sys.executable, str(script), str(root / "prepared"), str(run), str(records), str(THRESHOLD),
            str(EPOCHS), str(batch), str(LR)]
    # Its own process group: rank 1 is rank 0's child, and a hung pair is killed together.
    proc = subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, timed_out = proc.communicate(timeout=TIMEOUT)[0], False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, timed_out = proc.communicate()[0], True
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # rank 1 may outlive rank 0
        except ProcessLookupError:
            pass
    ranks = [json.loads(p.read_text()) if p.exists() else None for p in (records / f"rank{r}.json" for r in (0, 1))]
    return {"run": run, "ranks": ranks, "returncode": proc.returncode, "timed_out": timed_out,
            "output": output[-6000:], "batch": batch}


def _records(ddp_run) -> list[dict]:
    missing = [r for r, rec in enumerate(ddp_run["ranks"]) if rec is None]
    assert not missing, f"rank(s) {missing} recorded nothing; output:\n{ddp_run['output']}"
    return ddp_run["ranks"]


def _how_it_ended(ddp_run) -> str:
    ends = [f"rank {r}: " + ("returned" if rec and rec.get("returned") else "did not return")
            + (f", last trained epoch {max((b[0] for b in rec['batches']), default=None)}" if rec else "")
            for r, rec in enumerate(ddp_run["ranks"])]
    state = "timed out (hung)" if ddp_run["timed_out"] else f"exit code {ddp_run['returncode']}"
    return f"{state}; {'; '.join(ends)}\n{ddp_run['output']}"


def _by_epoch(batches) -> dict[int, list[list[int]]]:
    epochs: dict[int, list[list[int]]] = {}
    for epoch, _, rows in batches:
        epochs.setdefault(epoch, []).append(rows)
    return epochs


@pytest.mark.slow
def test_ddp_run_completes_on_both_ranks(ddp_run):
    records = _records(ddp_run)
    assert not ddp_run["timed_out"] and ddp_run["returncode"] == 0, _how_it_ended(ddp_run)
    assert [rec["fit"].get("global_rank") for rec in records] == [0, 1], _how_it_ended(ddp_run)
    assert all(rec["fit"]["world_size"] == 2 and rec["fit"]["backend"] == "gloo" for rec in records)
    assert all(rec.get("returned") for rec in records), _how_it_ended(ddp_run)


@pytest.mark.slow
def test_ddp_ranks_share_each_epoch_without_overlap(ddp_run):
    rank0, rank1 = _records(ddp_run)
    assert rank0["unique_images"], "two cache rows hold the same pixels: batches cannot be mapped back"
    train_rows = set(rank0["train_rows"])
    assert rank1["train_rows"] == rank0["train_rows"]
    epochs0, epochs1 = _by_epoch(rank0["batches"]), _by_epoch(rank1["batches"])
    assert epochs0 and set(epochs0) == set(epochs1), (sorted(epochs0), sorted(epochs1))
    for epoch in sorted(epochs0):
        a, b = epochs0[epoch], epochs1[epoch]
        assert len(a) == len(b), f"epoch {epoch}: {len(a)} and {len(b)} batches (DDP needs equal counts)"
        rows0, rows1 = [r for rows in a for r in rows], [r for rows in b for r in rows]
        assert -1 not in rows0 + rows1, "a training image matched no cache row"
        assert not set(rows0) & set(rows1), f"epoch {epoch}: both ranks trained on {sorted(set(rows0) & set(rows1))}"
        both = Counter(rows0 + rows1)
        assert max(both.values()) == 1, f"epoch {epoch}: repeated rows {[r for r, c in both.items() if c > 1]}"
        assert set(both) == train_rows, (f"epoch {epoch}: missing {sorted(train_rows - set(both))}, "
                                         f"not training rows {sorted(set(both) - train_rows)}")
    # validation: every val galaxy scored once per epoch, by one rank or the other
    val_rows = set(rank0["val_rows"])
    val0, val1 = _by_epoch(rank0["val_batches"]), _by_epoch(rank1["val_batches"])
    assert set(val0) == set(epochs0) and set(val1) == set(epochs0), \
        f"validation ran in epochs {sorted(val0)} (rank 0) and {sorted(val1)} (rank 1) of {sorted(epochs0)}"
    for epoch in sorted(val0):
        scored = Counter([r for rows in val0[epoch] + val1[epoch] for r in rows])
        assert set(scored) == val_rows and max(scored.values()) == 1, \
            f"epoch {epoch}: val rows missing {sorted(val_rows - set(scored))}, " \
            f"repeated {sorted(r for r, c in scored.items() if c > 1)}"


@pytest.mark.slow
def test_ddp_val_loss_stop_fires_on_both_ranks_at_the_same_epoch(ddp_run):
    rank0, rank1 = _records(ddp_run)
    val0 = {epoch: seen.get("val_loss") for epoch, seen in rank0["val"]}
    val1 = {epoch: seen.get("val_loss") for epoch, seen in rank1["val"]}
    assert val0 and None not in val0.values(), f"rank 0 logged no val_loss: {rank0['val']}\n{_how_it_ended(ddp_run)}"
    # the stop decides on val_loss: it must be the loss over all val galaxies, the same number on both ranks
    assert val0 == pytest.approx(val1, rel=1e-6, abs=1e-7), f"val_loss per epoch: rank 0 {val0}, rank 1 {val1}"
    below = [epoch for epoch, loss in sorted(val0.items()) if loss < THRESHOLD]
    assert below, f"val_loss never fell below {THRESHOLD} in {EPOCHS} epochs: {val0} (retune LR/THRESHOLD)"
    stop = below[0]
    assert stop < EPOCHS - 1, f"stop at the last epoch proves nothing: {val0}"
    trained = [sorted(_by_epoch(rec["batches"])) for rec in (rank0, rank1)]
    assert trained == [list(range(stop + 1))] * 2, \
        f"val_loss fell below {THRESHOLD} at epoch {stop}; epochs trained: {trained}\n{_how_it_ended(ddp_run)}"
    assert all(rec.get("returned") for rec in (rank0, rank1)), _how_it_ended(ddp_run)
    assert rank0["summary"]["epochs"] == stop + 1


@pytest.mark.slow
def test_ddp_run_folder_is_written_by_rank_0_only(ddp_run):
    rank0, rank1 = _records(ddp_run)
    assert rank1["writes"] == [], f"rank 1 changed the run folder: {Counter(map(tuple, rank1['writes']))}"
    written = Counter(path for how, path in rank0["writes"] if how in ("open", "torch.save", "os.rename"))
    # The record must see the writes it is there to count (else an empty rank-1 list would prove nothing).
    for path in ("config.json", "history.csv", "model.pt", "summary.json", "checkpoints/last.ckpt",
                 "checkpoints/best.ckpt"):
        assert written[path] or written[path + ".tmp"], f"rank 0's writes of {path} went unseen: {written}"
    opened = Counter(path for how, path in rank0["writes"] if how == "open")
    assert opened["config.json"] == 1 and opened["summary.json"] == 1, opened
    run = ddp_run["run"]
    for name in ("config.json", "history.csv", "history.json", "model.pt", "summary.json", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), f"{name} missing from the run folder"
    assert not list(run.rglob("*.tmp")), f"temporary files left: {list(run.rglob('*.tmp'))}"
