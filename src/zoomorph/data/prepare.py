"""`zoomorph prepare`: labels + split + image cache in one step.

catalogue (images joined with labels, preset applied) -> split manifest ->
uint8 cache -> a prepared folder (see dataset.py for its layout).

Data that no model could train on is refused (PrepareRefused) before anything
is written to OUT: an existing prepared folder stays as it was, and a new OUT
is not left behind. The skipped-items report of a refused call goes beside
it, to OUT.skipped.csv (not into OUT, where it would stand for data that was
never prepared), and a later successful call removes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from zoomorph.data.cache import build_cache, cache_key, drop_rows
from zoomorph.data.dataset import (
    CATALOG_FILE,
    IMAGES_FILE,
    SETTINGS_FILE,
    SKIPPED_FILE,
    SPLIT_FILE,
    PreparedData,
    check_classes,
)
from zoomorph.data.labelled import Catalog, build_catalog
from zoomorph.data.split import given_split, reuse_or_make, write_manifest
from zoomorph.errors import ZoomorphError
from zoomorph.io.decode import AUTO, AUTO_CUT, DEFAULT_FOV, FOV_COLUMNS, Fov, parse_fov
from zoomorph.labels import DEFAULT_PRESET, get_preset
from zoomorph.schema import ANSWER_COLUMNS

DEFAULT_SIZE = 64
STAGED_IMAGES = "images.new.npy"  # the cache being built; it replaces images.npy once every check has passed


@dataclass
class PrepareSummary:
    data: PreparedData
    counts: dict  # the accounting: found, labelled, skipped by reason, per class, per split
    reused_cache: bool
    warnings: list[str] = field(default_factory=list)  # e.g. classes that only the votes head can learn from


class PrepareRefused(ZoomorphError):
    """Data no model can train on. `counts`: the accounting so far; `report`: where the skipped items went."""

    def __init__(self, message: str, counts: dict, report: Path):
        super().__init__(message)
        self.counts, self.report = counts, report


def refused_report(out: Path) -> Path:
    """The skipped-items report of a refused prepare: beside OUT, which it leaves alone."""
    out = Path(os.path.abspath(out))  # "." and "a/.." have a name too
    return out.parent / f"{out.name}.{SKIPPED_FILE}"


def prepare(images: Path, labels: Path | None, out: Path, *, preset: str = DEFAULT_PRESET,
            conflicts: str = "exclude", min_share: float = 0.8, size: int = DEFAULT_SIZE,
            fov: Fov = DEFAULT_FOV, val: float = 0.2, test: float = 0.0, seed: int = 0,
            workers: int | None = None, progress: bool = True, split_file: Path | None = None) -> PrepareSummary:
    """Prepare a data folder for training. Reuses the split manifest and the cache when valid.

    `split_file`: an explicit split manifest (id, split) to use as given instead of val/test/seed (a
    cross-validation fold, a subset of the training galaxies); galaxies it does not list are left out,
    each reported in skipped.csv.

    Raises PrepareRefused when no labelled image is usable, or when fewer than two classes have
    galaxies in both the train and val splits (unless all 37 vote fractions are there for the votes
    head: then that is a warning). `workers`: decoding processes, None = one per core, 0 = none (all in
    this process). `fov`: the central crop in Kaggle pixels, or "auto", each galaxy's own extent
    (zoomorph.io.decode); auto writes each image's radius, crop and fall-back flag into the catalogue.
    """
    out, fov = Path(out), parse_fov(fov)
    chosen = get_preset(preset, conflicts, min_share) if labels is not None else None
    catalog = build_catalog(Path(images), Path(labels) if labels else None, chosen)
    table, counts, staged = catalog.table, catalog.counts, out / STAGED_IMAGES
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        if table.empty:
            raise ZoomorphError(_nothing_usable(images, labels, counts))
        if split_file is None:
            split, fresh = reuse_or_make(out / SPLIT_FILE, table["id"], table["label"], val=val, test=test,
                                         seed=seed)
        else:
            split, fresh = given_split(split_file, table["id"]), 0
            unlisted = split.isna().to_numpy()
            catalog.report.extend(table["source"][unlisted], "split", f"not in the split manifest {split_file}")
            counts["not in the split manifest"] = int(unlisted.sum())
            table, split = table[~unlisted].copy(), split[~unlisted]
        table["split"] = split.to_numpy()
        _trainable(table, catalog.classes)  # before the decoding: refuse in seconds, not hours
        sources = table["source"].tolist()
        key = cache_key(sources, size, fov)
        old = json.loads((out / SETTINGS_FILE).read_text()) if (out / SETTINGS_FILE).exists() else {}
        reused = old.get("cache_key") == key and (out / IMAGES_FILE).exists()
        if reused:  # same images and settings: keep the cache and what its decoding reported
            kept = pd.read_parquet(out / CATALOG_FILE, columns=["id", *(FOV_COLUMNS if fov == AUTO else ())])
            table = table[table["id"].isin(kept["id"])]
            if fov == AUTO:  # the same sources in the same order: the rows the cache holds
                table = table.assign(**{c: kept[c].to_numpy() for c in FOV_COLUMNS})
            earlier = pd.read_csv(out / SKIPPED_FILE, dtype=str).fillna("")
            catalog.report.rows += earlier[earlier["stage"] == "decode"].to_dict("records")
        else:
            table = _decode(table, sources, catalog, staged, size, fov, workers, progress)
        counts["unreadable images"] = sum(r["stage"] == "decode" and r["action"] == "skipped"
                                          for r in catalog.report.rows)
        counts["converted images"] = sum(r["action"] == "converted" for r in catalog.report.rows)
        if fov == AUTO:
            counts.update(_fallbacks(table))
        warnings = _trainable(table, catalog.classes)  # again: unreadable images may have emptied a split
    except ValueError as err:
        staged.unlink(missing_ok=True)
        if created:
            out.rmdir()
        catalog.report.frame().to_csv(refused_report(out), index=False)
        raise PrepareRefused(str(err), counts, refused_report(out)) from err

    (out / SETTINGS_FILE).unlink(missing_ok=True)  # not a prepared folder until every file is rewritten
    if not reused:
        os.replace(staged, out / IMAGES_FILE)
    table = table.reset_index(drop=True)
    classes = catalog.classes
    table["label_index"] = table["label"].map({c: i for i, c in enumerate(classes)}).fillna(-1).astype("int64")
    table.to_parquet(out / CATALOG_FILE, index=False)
    split_hash = write_manifest(out / SPLIT_FILE, pd.Series(table["split"].to_numpy(), index=table["id"]))
    catalog.report.frame().to_csv(out / SKIPPED_FILE, index=False)
    refused_report(out).unlink(missing_ok=True)

    counts["cached images"] = len(table)
    counts["split ids new to the manifest"] = fresh
    labelled = table[table["label_index"] >= 0]
    for name in ("train", "val", "test"):
        counts[f"{name} (labelled)"] = int((labelled["split"] == name).sum())
    settings = {
        "classes": classes, "preset": chosen.name if chosen else "folders",
        "rules": chosen.to_dict()["rules"] if chosen else None, "conflicts": conflicts, "image_size": size,
        "fov": fov, **({"fov_auto": AUTO_CUT} if fov == AUTO else {}), "split_hash": split_hash,
        "split": {"val": val, "test": test, "seed": seed} if split_file is None else {"manifest": str(split_file)},
        "cache_key": key,
        "images": str(images), "labels": str(labels) if labels else None, "counts": counts,
    }
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
    return PrepareSummary(PreparedData.load(out), counts, reused, warnings)


def _decode(table: pd.DataFrame, sources: list[str], catalog: Catalog, staged: Path, size: int, fov: Fov,
            workers: int | None, progress: bool) -> pd.DataFrame:
    """Build the cache into `staged`; report what decoding converted or could not read, and drop the latter.
    With fov auto, each image's radius, crop and flag become columns of the table."""
    result = build_cache(sources, staged, size, fov, workers, progress)
    if fov == AUTO:
        table = table.assign(**{c: result.fov[c].to_numpy() for c in FOV_COLUMNS})
    for row, note in result.notes.items():
        catalog.report.add(sources[row], "decode", note, "converted")
    for row, error in result.errors.items():
        catalog.report.add(sources[row], "decode", error)
    if not result.errors:
        return table
    bad = np.array(sorted(result.errors))
    drop_rows(staged, bad)
    return table.drop(index=table.index[bad])


def _fallbacks(table: pd.DataFrame) -> dict:
    """The accounting of fov auto: how many images fell back to the full frame, and why."""
    flags = table["fov_flag"][table["fov_flag"] != ""]
    reasons = flags.str.replace(": full frame", "", regex=False).value_counts()
    return {"fov auto: full frame (fall-backs)": len(flags),
            **{f"fov auto: {reason}": int(n) for reason, n in reasons.items()}}


def _nothing_usable(images: Path, labels: Path | None, counts: dict) -> str:
    if labels is None:
        return f"{images}: no usable images"
    if not counts["label rows"]:
        return f"{labels}: no data rows, only a header"
    return (f"no image in {images} has a usable label row in {labels} (an image's id is its file name, "
            "or a catalogue's id column)")


def _trainable(table: pd.DataFrame, classes: list[str]) -> list[str]:
    """check_classes; but with all 37 vote fractions the votes head can still learn from every galaxy of
    both splits, so degenerate classes are then a warning."""
    try:
        check_classes(table, classes)
    except ValueError as err:
        if not set(ANSWER_COLUMNS) <= set(table.columns) or not {"train", "val"} <= set(table["split"]):
            raise
        return [f"{err}. Only the votes head (train --head votes) can learn from this folder"]
    return []
