"""One table of galaxies: id, image source, vote fractions, class.

Reads label files as they were published (float GalaxyIDs, an unnamed index
column, CRLF, partial columns) and every image layout we support, then joins
them. Nothing is dropped without a line in the skipped report: each entry
names the file or row and says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from zoomorph.data.images import galaxy_id_from_name, list_images
from zoomorph.labels import Labels, Preset, assign
from zoomorph.schema import ANSWER_COLUMNS, ID_COLUMN, validate

ID_ALIASES = ("GalaxyID", "galaxy_id", "id", "objid", "dr7objid")
PATH_ALIASES = ("path", "file", "filename", "image")


class LabelFileError(ValueError):
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


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    return pd.read_csv(path)


def _clean_ids(raw: pd.Series, path: Path, report: Report, stage: str) -> pd.Series:
    """IDs as strings; float-written integers (`100090.0`) become `100090`."""
    numeric = pd.to_numeric(raw, errors="coerce")
    integral = numeric.notna() & (numeric == np.floor(numeric))
    ids = raw.astype(str).str.strip()
    ids[integral] = numeric[integral].astype("int64").astype(str)
    bad = ids.isin(["", "nan", "None"]) | (numeric.notna() & ~integral)
    for row in np.flatnonzero(bad.to_numpy()):
        report.add(f"{path}:row {row + 2}", stage, f"unusable GalaxyID {str(raw.iloc[row])!r}")
    return ids.where(~bad)


def read_labels(path: Path, report: Report | None = None) -> pd.DataFrame:
    """A solutions file (full or partial) -> fractions indexed by GalaxyID (str).

    Rows with NaN, negative or >1 fractions, duplicate IDs, or answers that
    break the decision tree are skipped and reported by row and ID.
    """
    path, report = Path(path), report if report is not None else Report()
    try:
        df = pd.read_csv(path)
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
    file_rows = pd.Series(np.arange(len(df)) + 2, index=df.index)  # line numbers, header = line 1

    keep = ids.notna()
    for what, bad in (("missing or non-numeric fraction", values.isna().any(axis=1)),
                      ("negative fraction", (values < 0).any(axis=1)),
                      ("fraction above 1", (values > 1 + 1e-6).any(axis=1))):
        bad &= keep
        for row in np.flatnonzero(bad.to_numpy()):
            report.add(f"{path}:row {file_rows.iloc[row]} (GalaxyID {ids.iloc[row]})", stage, what)
        keep &= ~bad
    dup = ids.duplicated(keep="first") & keep
    for row in np.flatnonzero(dup.to_numpy()):
        report.add(f"{path}:row {file_rows.iloc[row]} (GalaxyID {ids.iloc[row]})", stage,
                   "duplicate GalaxyID (first row kept)")
    keep &= ~dup

    out = values[keep.to_numpy()].set_axis(ids[keep].to_numpy(), axis=0)
    out.index.name = ID_COLUMN
    broken = _tree_breakers(out)
    for gid, msg in broken.items():
        report.add(f"{path}:GalaxyID {gid}", stage, msg)
    return out.drop(index=list(broken))


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
    its images sit in sub-folders), a zip archive, or a catalogue CSV/Parquet
    with a path column.
    """
    images = Path(images)
    if images.suffix.lower() in (".csv", ".parquet", ".pq"):
        return _from_catalogue(images, report)
    sources = list_images(images)
    table = pd.DataFrame({"source": sources})
    table["id"] = [str(galaxy_id_from_name(s.split("::")[-1]) or Path(s.split("::")[-1]).stem) for s in sources]
    if images.is_dir():
        parents = {Path(s).parent for s in sources}
        if parents and images not in parents and all(p.parent == images for p in parents):
            table["folder_label"] = [Path(s).parent.name for s in sources]  # folder per class
    dup = table["id"].duplicated(keep="first")
    report.extend(table.loc[dup, "source"], "images", "duplicate GalaxyID (first file kept)")
    return table[~dup].reset_index(drop=True)


def _from_catalogue(path: Path, report: Report) -> pd.DataFrame:
    df = _read_table(path)
    path_col = next((c for c in PATH_ALIASES if c in df.columns), None)
    if path_col is None:
        raise LabelFileError(f"{path}: a catalogue needs a path column ({', '.join(PATH_ALIASES)})")
    base = path.parent
    sources = [str(p if Path(p).is_absolute() else base / p) for p in df[path_col].astype(str)]
    id_col = next((c for c in ID_ALIASES if c in df.columns), None)
    ids = (_clean_ids(df[id_col], path, report, "images") if id_col
           else pd.Series([Path(s).stem for s in sources]))
    table = df.drop(columns=[path_col] + ([id_col] if id_col else [])).assign(source=sources, id=ids.to_numpy())
    missing = ~table["source"].map(lambda s: Path(s).is_file())
    report.extend(table.loc[missing, "source"], "images", "catalogue path does not exist")
    table = table[~missing & table["id"].notna()]
    dup = table["id"].duplicated(keep="first")
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
        fractions = read_labels(labels, report)
        counts["label rows"] = len(fractions) + sum(r["stage"] == "labels" for r in report.rows)
        has_label = found["id"].isin(fractions.index)
        report.extend(found.loc[~has_label, "source"], "join", "image has no label row")
        orphan = fractions.index[~fractions.index.isin(found["id"])]
        report.extend(orphan, "join", "label row has no image")
        counts["images without label row"] = int((~has_label).sum())
        counts["label rows without image"] = len(orphan)
        table = found[has_label].join(fractions, on="id")
        result: Labels = assign(fractions.loc[table["id"]], preset)
        table["label"] = result.labels.to_numpy()
        for gid, row in result.conflicts.iterrows():
            if gid in set(table["id"]):
                report.add(gid, "preset", f"meets several rules: {row['classes']}",
                           "excluded" if preset.conflicts == "exclude" else "kept as first rule")
        classes = preset.classes
        counts["conflicts"] = int(result.conflicts.index.isin(table["id"]).sum())
        counts["unassigned by preset"] = int(table["label"].isna().sum()) - (
            counts["conflicts"] if preset.conflicts == "exclude" else 0)
    counts["labelled images"] = int(table["label"].notna().sum())
    counts.update({f"class {c}": int((table["label"] == c).sum()) for c in classes})
    return Catalog(table.reset_index(drop=True), list(classes), report, counts)


__all__ = ["Catalog", "LabelFileError", "Report", "build_catalog", "find_images", "read_labels"]
