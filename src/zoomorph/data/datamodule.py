"""Batches of uint8 images from the prepared cache, for Lightning.

The dataset is indexed by a whole batch of rows at once (one fancy-indexing
read of the memory-mapped cache per batch), so there is no per-image Python
in the loop; augmentation happens later, on the batch tensor, on the device.
Sampling is seeded per epoch, so a resumed run sees the same batches as an
uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from zoomorph.data.dataset import PreparedData, check_classes
from zoomorph.errors import ZoomorphError
from zoomorph.schema import ANSWER_COLUMNS


class CacheBatches(Dataset):
    """`dataset[rows]` -> (uint8 images (B, H, W, 3), targets) for an array of row numbers."""

    def __init__(self, data: PreparedData, rows: np.ndarray, head: str = "classes"):
        self.images = data.images
        self.rows = np.asarray(rows)
        table = data.table.iloc[self.rows]
        self.targets = torch.from_numpy(np.array(
            table[ANSWER_COLUMNS].to_numpy(np.float32) if head == "votes"
            else table["label_index"].to_numpy(np.int64)))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        positions = np.sort(np.asarray(positions))  # sorted reads are sequential on disk
        images = torch.from_numpy(np.ascontiguousarray(self.images[self.rows[positions]]))
        return images, self.targets[positions]


class EpochBatches(Sampler):
    """Batches of positions for one epoch: shuffled, or class-balanced (drawn with replacement).

    `weights` (one per position) makes it a weighted sampler: each class then
    contributes equally on average, as the original project's copying to 8,000
    images per class did, but without copies. Seeded by (seed, epoch).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 weights: np.ndarray | None = None, evaluation: bool = False):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        # evaluation: under DDP each process takes every world-th example (not batch), none dropped, so
        # each galaxy is scored exactly once however few there are; processes may differ by one batch.
        self.evaluation = evaluation
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def __len__(self) -> int:
        world, rank = _world()
        if self.evaluation:
            return -(-len(range(rank, self.n, world)) // self.batch_size)
        return -(-self.n // self.batch_size) // world

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        world, rank = _world()
        if self.evaluation:
            order = order[rank::world]
        batches = [order[i:i + self.batch_size].numpy() for i in range(0, len(order), self.batch_size)]
        if world > 1 and not self.evaluation:
            # DDP training: each process takes every world-th batch; all take the same count, or they hang.
            batches = batches[rank:len(batches) - len(batches) % world:world]
        yield from batches


def _world() -> tuple[int, int]:
    """(world size, rank) of the DDP process group; (1, 0) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """One weight per example, inversely proportional to its class's frequency."""
    counts = np.bincount(labels)
    return 1.0 / counts[labels]


class GalaxyDataModule(L.LightningDataModule):
    def __init__(self, data: PreparedData | Path, head: str = "classes", batch_size: int = 64,
                 balance: str = "sampler", seed: int = 0, eval_batch_size: int = 256):
        super().__init__()
        self.data = data if isinstance(data, PreparedData) else PreparedData.load(Path(data))
        if head == "votes" and not self.data.has_votes:
            raise ZoomorphError(f"{self.data.root}: the votes head needs all 37 fractions; these labels lack them")
        if balance not in ("sampler", "weights", "none"):
            raise ZoomorphError(f"balance {balance!r}: choose sampler, weights or none")
        self.head, self.batch_size, self.balance, self.seed = head, batch_size, balance, seed
        self.eval_batch_size = eval_batch_size
        labelled = head == "classes"  # the votes head learns from every galaxy with fractions
        self.train_rows = self.data.indices("train", labelled=labelled)
        self.val_rows = self.data.indices("val", labelled=labelled)
        if len(self.train_rows) == 0 or len(self.val_rows) == 0:
            raise ZoomorphError(f"{self.data.root}: needs labelled galaxies in both train and val splits")
        if labelled:  # folders prepared before prepare refused such labels
            try:
                check_classes(self.data.table, self.data.classes)
            except ValueError as err:
                raise ZoomorphError(f"{self.data.root}: {err}") from None

    def class_counts(self, rows: np.ndarray) -> dict[str, int]:
        labels = self.data.table["label_index"].to_numpy()[rows]
        return {c: int((labels == i).sum()) for i, c in enumerate(self.data.classes)}

    def class_weights(self) -> torch.Tensor | None:
        """Loss weights inversely proportional to class frequency (balance="weights")."""
        if self.head != "classes" or self.balance != "weights":
            return None
        counts = np.array(list(self.class_counts(self.train_rows).values()), dtype=np.float64)
        return torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)

    def _loader(self, rows: np.ndarray, sampler: Sampler) -> DataLoader:
        # batch_size=None: the sampler yields whole batches and the dataset reads each in one go.
        return DataLoader(CacheBatches(self.data, rows, self.head), sampler=sampler, batch_size=None)

    def train_dataloader(self) -> DataLoader:
        weights = None
        if self.head == "classes" and self.balance == "sampler":
            weights = balanced_weights(self.data.table["label_index"].to_numpy()[self.train_rows])
        sampler = EpochBatches(len(self.train_rows), self.batch_size, self.seed, shuffle=True, weights=weights)
        return self._loader(self.train_rows, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_rows, EpochBatches(len(self.val_rows), self.eval_batch_size, shuffle=False,
                                                        evaluation=True))
