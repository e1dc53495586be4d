"""The labelled table: label files joined with images into one table (id, source, vote fractions, class).

Reads label files as they were published (float GalaxyIDs, an unnamed index
column, CRLF, partial columns) and every image layout of zoomorph.io, then
joins them by zoomorph.io.ids.join_key. Nothing is dropped without a line in
the skipped report: each entry names the file or row and says why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from zoomorph.errors import ZoomorphError
from zoomorph.io.catalogues import catalogue_frames, is_catalogue
from zoomorph.io.ids import join_keys, source_id
from zoomorph.io.sources import Source, Unusable, input_sources
from zoomorph.labels import Labels, Preset, assign
from zoomorph.schema import ANSWER_COLUMNS, ID_COLUMN, validate

ID_ALIASES = ("GalaxyID", "galaxy_id", "id", "objid", "dr7objid")
SEPARATORS = ",;\t"
CHUNK = 65536  # catalogue rows read at a time (prepare holds the table whole anyway)


class LabelFileError(ZoomorphError):
    """A label file that cannot be used at all (wrong header, unreadable)."""


@dataclass
class Report:
    """What was skipped or changed, one row per item, and why."""

    rows: list[dict] = field(default_factory=list)

    def add(self, item: str, stage: str, reason: str, action: str = "skipped") -> None:
        self.rows.append({"item": str(item), "stage": stage, "reason": reason, "action": action})

    def extend(self, items, stage: str, reason: str, action: str = "skipped") -> None:
        self.rows.extend({"item": str(i), "stage": stage, "reason": reason, "action": action} for i in items)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["item", "stage", "reason", "action"])

    def summary(self) -> pd.Series:
        """Counts per (stage, reason, action): the short form for terminals."""
        df = self.frame()
        return df.groupby(["stage", "reason", "action"]).size() if len(df) else pd.Series(dtype=int)


def _separator(path: Path) -> str:
    """The one of `,` `;` tab that the header line holds most of (spreadsheets save `;` in many locales)."""
    with open(path, errors="replace") as file:
        header = file.readline()
    return max(SEPARATORS, key=header.count)


def _clean_ids(raw: pd.Series, path: Path, report: Report, stage: str) -> pd.Series:
    """A GalaxyID column as join keys (`100090.0` -> "100090"); a missing one, or a number that is not an
    integer, is reported and None."""
    numeric = pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)  # Arrow columns too
    ids = join_keys(raw)
    bad = (ids.isna() | ids.isin(["nan", "None"])).to_numpy() | (numeric != np.floor(numeric)) & ~np.isnan(numeric)
    for row in np.flatnonzero(bad):  # by index label: the table may have lost rows before
        value = "nan" if pd.isna(raw.iloc[row]) else str(raw.iloc[row])  # as a numpy column shows a gap
        report.add(f"{path}:row {raw.index[row] + 2}", stage, f"unusable GalaxyID {value!r}")
    return ids.where(~bad)


def read_labels(path: Path, report: Report | None = None) -> pd.DataFrame:
    """A solutions file (full or partial) -> fractions indexed by GalaxyID (str).

    Comma-, semicolon- (with decimal commas) or tab-separated. Rows with NaN, negative or >1
    fractions, duplicate IDs, or answers that break the decision tree are skipped and reported by
    row and ID.
    """
    return _read_labels(Path(path), report if report is not None else Report())[0]


def _read_labels(path: Path, report: Report) -> tuple[pd.DataFrame, dict[str, str]]:
    """read_labels, and for each GalaxyID whose rows were all rejected, why (for the join's report)."""
    sep = _separator(path)
    try:
        df = pd.read_csv(path, sep=sep, decimal="," if sep == ";" else ".")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise LabelFileError(f"{path}: cannot be read as CSV ({err})") from err
    df = df.loc[:, [c for c in df.columns if not str(c).startswith("Unnamed:")]]  # pandas' index column
    id_col = next((c for c in ID_ALIASES if c in df.columns), None)
    answers = [c for c in ANSWER_COLUMNS if c in df.columns]
    if id_col is None or not answers:
        raise LabelFileError(
            f"{path}: wrong header: expected {ID_COLUMN} and answer columns like Class1.1 … Class11.6, "
            f"found {', '.join(map(str, df.columns[:8]))}{' …' if len(df.columns) > 8 else ''}")
    stage = "labels"
    ids = _clean_ids(df[id_col], path, report, stage)
    values = df[answers].apply(pd.to_numeric, errors="coerce")
    where = [f"{path}:row {row + 2} (GalaxyID {gid})" for row, gid in enumerate(ids)]  # the header is line 1
    rejected: dict[str, str] = {}

    keep = ids.notna()
    for what, bad in (("missing or non-numeric fraction", values.isna().any(axis=1)),
                      ("negative fraction", (values < 0).any(axis=1)),
                      ("fraction above 1", (values > 1 + 1e-6).any(axis=1))):
        bad &= keep
        for row in np.flatnonzero(bad.to_numpy()):
            report.add(where[row], stage, what)
            rejected.setdefault(ids.iloc[row], f"{what} ({where[row]})")
        keep &= ~bad
    dup = ids.where(keep).duplicated(keep="first") & keep  # a rejected first row does not count
    first = pd.Series(np.arange(len(df))[keep & ~dup], index=ids[keep & ~dup])
    for row in np.flatnonzero(dup.to_numpy()):
        kept = first[ids.iloc[row]]
        same = (values.iloc[row].to_numpy() == values.iloc[kept].to_numpy()).all()
        report.add(where[row], stage, "duplicate GalaxyID (first row kept)" if same else
                   f"duplicate GalaxyID with other values than row {kept + 2} (first row kept)")
    keep &= ~dup

    out = values[keep.to_numpy()].set_axis(ids[keep].to_numpy(), axis=0)
    out.index.name = ID_COLUMN
    broken = _tree_breakers(out)
    for gid, msg in broken.items():
        report.add(f"{path}:GalaxyID {gid}", stage, msg)
        rejected[gid] = f"{msg} ({path})"
    out = out.drop(index=list(broken))
    return out, {gid: why for gid, why in rejected.items() if gid not in out.index}  # not those kept in another row


def _tree_breakers(fractions: pd.DataFrame) -> dict[str, str]:
    """GalaxyID -> why its answers do not sum to their parent (the first broken question)."""
    out = {}
    for v in validate(fractions):
        out.setdefault(v.galaxy_id, f"breaks the decision tree: Q{v.question} answers sum to "
                                    f"{v.total:.4f}, expected {v.expected:.4f}")
    return out


# ---------------------------------------------------------------- images

def find_images(images: Path, report: Report) -> pd.DataFrame:
    """Image sources -> table (id, source[, label from folder or catalogue columns...]).

    `images` is a directory (flat Kaggle layout, or one folder per class when
    its images sit in sub-folders), a zip archive, an image or FITS file, or a
    catalogue CSV/Parquet with a path column. An image's id is its file name as
    written (zoomorph.io.ids.source_id), or the catalogue's GalaxyID column.
    """
    images = Path(images)
    if is_catalogue(str(images)):
        return _from_catalogue(images, report)
    found = list(input_sources(str(images)))
    sources = [s for s, ok in zip(found, _usable(found, report)) if ok]
    table = pd.DataFrame({"source": sources, "id": [source_id(s) for s in sources]})
    if images.is_dir():
        parents = {Path(s).parent for s in sources}
        if parents and images not in parents and all(p.parent == images for p in parents):
            table["folder_label"] = [Path(s).parent.name for s in sources]  # folder per class
    dup = join_keys(table["id"]).duplicated(keep="first")  # 0123.jpg and 123.jpg: one galaxy
    report.extend(table.loc[dup, "source"], "images", "duplicate GalaxyID (first file kept)")
    return table[~dup].reset_index(drop=True)


def _usable(sources: list[Source], report: Report) -> list[bool]:
    """Whether each source can be read; each Unusable one (a folder that cannot be listed, a catalogue row
    without a path, ...) is reported with its reason."""
    for source in sources:
        if isinstance(source, Unusable):
            report.add(source.item, "images", source.reason)
    return [not isinstance(s, Unusable) for s in sources]


def _from_catalogue(path: Path, report: Report) -> pd.DataFrame:
    """A catalogue's rows (io.catalogues: its columns read exactly) whose path is there; index = data row - 1."""
    pieces = list(catalogue_frames(str(path), CHUNK))
    df = pd.concat([columns for columns, _ in pieces], ignore_index=True)
    found = [s for _, sources in pieces for s in sources]
    usable = _usable(found, report)
    df = df.assign(source=[s if ok else None for s, ok in zip(found, usable)])[usable]
    id_col = next((c for c in ID_ALIASES if c in df.columns), None)
    ids = (_clean_ids(df[id_col], path, report, "images") if id_col else df["source"].map(source_id))
    table = df.drop(columns=[id_col] if id_col else []).assign(id=ids.to_numpy())
    missing = ~table["source"].map(os.path.isfile)
    report.extend(table.loc[missing, "source"], "images", "catalogue path does not exist")
    table = table[~missing & table["id"].notna()]
    dup = join_keys(table["id"]).duplicated(keep="first")
    report.extend(table.loc[dup, "source"], "images", "duplicate id in catalogue (first row kept)")
    return table[~dup].reset_index(drop=True)


# ---------------------------------------------------------------- joining

@dataclass
class Catalog:
    table: pd.DataFrame  # id, source, label (None = unassigned), fractions when known
    classes: list[str]
    report: Report
    counts: dict  # the accounting printed by `prepare`


def build_catalog(images: Path, labels: Path | None, preset: Preset | None) -> Catalog:
    """Join image sources with labels and apply a preset; account for every input."""
    report = Report()
    found = find_images(images, report)
    counts: dict = {"images found": len(found) + sum(r["stage"] == "images" for r in report.rows)}

    if labels is None:
        if "folder_label" not in found:
            raise LabelFileError(f"{images}: no labels file given and no class folders to take labels from")
        table = found.rename(columns={"folder_label": "label"})
        classes = sorted(table["label"].unique())
    else:
        fractions, rejected = _read_labels(Path(labels), report)
        counts["label rows"] = len(fractions) + sum(r["stage"] == "labels" for r in report.rows)
        keys = join_keys(found["id"])  # the labels' index holds join keys too (_clean_ids)
        has_label = keys.isin(fractions.index)
        why = keys.map(rejected)
        for source, reason in zip(found["source"][~has_label], why[~has_label]):
            report.add(source, "join", "image has no label row" if pd.isna(reason) else f"label row rejected: {reason}")
        orphan = fractions.index[~fractions.index.isin(keys)]
        report.extend(orphan, "join", "label row has no image")
        counts["images without label row"] = int((~has_label & why.isna()).sum())
        counts["images whose label row was rejected"] = int((~has_label & why.notna()).sum())
        counts["label rows without image"] = len(orphan)
        chosen = fractions.loc[keys[has_label]]
        table = found[has_label].join(chosen.set_axis(found.index[has_label.to_numpy()]))
        result: Labels = assign(chosen, preset)
        table["label"] = result.labels.to_numpy()
        in_table = set(chosen.index)
        for gid, row in result.conflicts.iterrows():
            if gid in in_table:
                report.add(gid, "preset", f"meets several rules: {row['classes']}",
                           "excluded" if preset.conflicts == "exclude" else "kept as first rule")
        classes = preset.classes
        counts["conflicts"] = int(result.conflicts.index.isin(list(in_table)).sum())
        counts["unassigned by preset"] = int(table["label"].isna().sum()) - (
            counts["conflicts"] if preset.conflicts == "exclude" else 0)
    counts["labelled images"] = int(table["label"].notna().sum())
    counts.update({f"class {c}": int((table["label"] == c).sum()) for c in classes})
    return Catalog(table.reset_index(drop=True), list(classes), report, counts)


__all__ = ["Catalog", "LabelFileError", "Report", "build_catalog", "find_images", "read_labels"]
