"""A prepared data folder: what `zoomorph prepare` writes and training reads.

    PREPARED/prepared.json   settings: classes, preset, image_size, fov, split_hash, counts, sources
    PREPARED/catalog.parquet one row per usable image, in cache order:
                             id, source, label, label_index (-1 = unassigned), split,
                             and the 37 vote fractions when the labels had them all;
                             with fov "auto": fov_radius (the galaxy's R90), fov_crop (the
                             side cut), both in the source image's pixels, and fov_flag
                             (why it fell back to the full frame; "" when it did not)
    PREPARED/split.csv       the split manifest (id, split), reused by every later run
    PREPARED/images.npy      uint8 (N, S, S, 3) image cache, row i = catalogue row i
    PREPARED/skipped.csv     every input that was skipped or converted, and why
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from zoomorph.errors import InputNotFound, ZoomorphError
from zoomorph.io.decode import AUTO, Fov, check_auto_cut, parse_fov
from zoomorph.labels import Preset
from zoomorph.schema import ANSWER_COLUMNS

SETTINGS_FILE = "prepared.json"
CATALOG_FILE = "catalog.parquet"
SPLIT_FILE = "split.csv"
IMAGES_FILE = "images.npy"
SKIPPED_FILE = "skipped.csv"


def check_classes(table: pd.DataFrame, classes: list[str]) -> None:
    """Refuse data a classifier cannot learn from: fewer than two of `classes` with galaxies in both the
    train and the val split (with one, accuracy is 100% by construction, and torchmetrics fails).

    `table` has a `label` column (class name; missing = unassigned) and a `split` column, as a
    prepared folder's catalogue has. The message names every class and its count in each split.
    """
    labelled = table[table["label"].notna()]
    counts = pd.crosstab(labelled["label"], labelled["split"]).reindex(index=classes, columns=["train", "val"],
                                                                        fill_value=0)
    if ((counts["train"] > 0) & (counts["val"] > 0)).sum() < 2:
        per_class = "; ".join(f"{c}: {row['train']} train, {row['val']} val" for c, row in counts.iterrows())
        raise ZoomorphError(f"a classifier needs two classes with galaxies in both the train and val splits; "
                         f"these labels give {per_class or 'no classes'}")


@dataclass
class PreparedData:
    root: Path
    images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped
    table: pd.DataFrame  # row i describes images[i]
    settings: dict

    @property
    def classes(self) -> list[str]:
        return list(self.settings["classes"])

    @property
    def has_votes(self) -> bool:
        return set(ANSWER_COLUMNS) <= set(self.table.columns)

    @property
    def split_hash(self) -> str:
        return self.settings["split_hash"]

    @property
    def image_size(self) -> int:
        """The cached images' side, pixels."""
        return int(self.settings["image_size"])

    @property
    def fov(self) -> Fov:
        """The central crop they were cut from, in Kaggle (424 px) pixels, or "auto" (each galaxy's own)."""
        fov = parse_fov(self.settings["fov"], f"{self.root / SETTINGS_FILE}: fov")
        if fov == AUTO:  # cached by another version's auto crop: training on it would not match predict
            check_auto_cut(self.settings.get("fov_auto"), str(self.root))
        return fov

    @property
    def preset_name(self) -> str | None:
        """The label preset's name ("folders" for class folders)."""
        return self.settings.get("preset")

    @property
    def preset(self) -> Preset | None:
        """The exact rules the labels came from (thresholds, conflict policy); None for class folders."""
        rules = self.settings.get("rules")
        if not rules:
            return None
        return Preset.from_dict({"name": self.preset_name or "rules", "rules": rules,
                                 "conflicts": self.settings.get("conflicts", "exclude")})

    def indices(self, split: str = "train", labelled: bool = True) -> np.ndarray:
        """Row numbers of one split ("train", "val", "test" or "all")."""
        mask = np.ones(len(self.table), bool) if split == "all" else (self.table["split"] == split).to_numpy()
        if labelled:
            mask = mask & (self.table["label_index"].to_numpy() >= 0)
        return np.flatnonzero(mask)

    @classmethod
    def load(cls, root: Path) -> "PreparedData":
        root = Path(root)
        if not (root / SETTINGS_FILE).exists():
            raise InputNotFound(f"{root}: not a prepared data folder (run `zoomorph prepare` first)")
        settings = json.loads((root / SETTINGS_FILE).read_text())
        table = pd.read_parquet(root / CATALOG_FILE)
        images = np.load(root / IMAGES_FILE, mmap_mode="r")
        if len(images) != len(table):
            raise ZoomorphError(f"{root}: image cache has {len(images)} rows, catalogue {len(table)}; re-run prepare")
        return cls(root, images, table, settings)
