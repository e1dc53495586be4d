"""Stratified, seeded train/validation/test split by GalaxyID, kept as a manifest.

The manifest (id, split) is written once next to the prepared data and reused,
so every later run, and every model compared, sees the same validation set.
Augmentation happens only at training time, so validation never holds
augmented copies of anything.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from zoomorph.errors import ZoomorphError
from zoomorph.io.ids import join_keys

SPLITS = ("train", "val", "test")


def make_split(ids: pd.Series, strata: pd.Series, val: float = 0.2, test: float = 0.0,
               seed: int = 0) -> pd.Series:
    """Split name per id, stratified by `strata` (unassigned rows are a stratum of their own).

    Each stratum gets round(n * val) validation and round(n * test) test members,
    chosen by a seeded permutation of its ids in sorted order, so the result
    depends only on (ids, strata, fractions, seed), not on input order.
    """
    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise ZoomorphError(f"split fractions val={val}, test={test}: each in [0, 1), together below 1")
    frame = pd.DataFrame({"id": ids.astype(str).to_numpy(), "stratum": strata.fillna("<none>").astype(str).to_numpy()})
    frame = frame.sort_values("id", kind="stable")
    rng = np.random.default_rng(seed)
    split = pd.Series("train", index=frame["id"].to_numpy(), dtype=object)
    for _, group in frame.groupby("stratum", sort=True):
        order = group["id"].to_numpy()[rng.permutation(len(group))]
        n_val, n_test = round(len(order) * val), round(len(order) * test)
        split[order[:n_val]] = "val"
        split[order[n_val:n_val + n_test]] = "test"
    return split.reindex(ids.astype(str).to_numpy())


def reuse_or_make(manifest: Path, ids: pd.Series, strata: pd.Series, **kw) -> tuple[pd.Series, int]:
    """The split from an existing manifest where it knows the id; new ids are split afresh.

    Returns the split per id and how many ids the manifest did not know.
    """
    split = pd.Series(index=ids.astype(str).to_numpy(), dtype=object)
    if Path(manifest).exists():
        known = read_manifest(manifest)
        split = known.reindex(split.index)
    fresh = split.isna().to_numpy()
    if fresh.any():
        split[fresh] = make_split(ids[fresh], strata[fresh], **kw).to_numpy()
    return split, int(fresh.sum())


def given_split(manifest: Path, ids: pd.Series) -> pd.Series:
    """Each id's split as an explicit manifest says (`prepare --split`), matched by join key as labels are
    (`0123` is `123`); NaN for an id the manifest does not list. Used as given: nothing is re-split."""
    known = read_manifest(manifest)
    keys = join_keys(pd.Series(known.index, dtype=object))
    twice = keys[keys.duplicated()]
    if len(twice):
        raise ZoomorphError(f"{manifest}: id {twice.iloc[0]!r} is listed twice")
    by_key = pd.Series(known.to_numpy(), index=keys.to_numpy(), dtype=object)
    return pd.Series(by_key.reindex(join_keys(ids).to_numpy()).to_numpy(), index=ids.astype(str).to_numpy(),
                     dtype=object)


def read_manifest(path: Path) -> pd.Series:
    df = pd.read_csv(path, dtype={"id": str, "split": str})
    if not {"id", "split"} <= set(df.columns):
        raise ZoomorphError(f"{path}: a split manifest has the columns id and split; found {', '.join(df.columns)}")
    bad = ~df["split"].isin(SPLITS)
    if bad.any():
        raise ZoomorphError(f"{path}: row {int(np.flatnonzero(bad)[0]) + 2}: split must be one of {SPLITS}")
    return pd.Series(df["split"].to_numpy(), index=df["id"].to_numpy(), dtype=object)


def write_manifest(path: Path, split: pd.Series) -> str:
    """Write (id, split) sorted by id; return its hash (what `compare` checks)."""
    df = pd.DataFrame({"id": split.index.astype(str), "split": split.to_numpy()}).sort_values("id")
    text = df.to_csv(index=False, lineterminator="\n")
    Path(path).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
