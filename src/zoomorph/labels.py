"""Label presets: vote fractions -> one class per galaxy (or none).

A preset is an ordered list of class rules; a rule is a list of conditions
that must all hold. A condition compares either a cumulative Kaggle column
(`Class1.1 > 0.8`) or the conditional share of an answer within its question
(`share(Class4.1) >= 0.619`). Presets and users' TOML rule files use the same
form, parsed by a regular expression: user text is never evaluated.

Built in (docs/labels.md explains the reasoning):
  seed             the original project's three rules, reproduced exactly
  hubble           elliptical / lenticular / spiral on conditional shares with
                   the thresholds of Willett et al. 2013 (the default)
  smooth-featured  the top question: argmax with a minimum share
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

from zoomorph.errors import ZoomorphError
from zoomorph.schema import ANSWER_COLUMNS, to_conditional

OPERATORS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
CONDITION = re.compile(r"^\s*(share\(\s*)?(Class\d+\.\d+)(?(1)\s*\))\s*(>=|<=|>|<)\s*([0-9]*\.?[0-9]+)\s*$")
CONFLICT_POLICIES = ("exclude", "first")
DEFAULT_PRESET = "hubble"


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: float
    share: bool  # compare the conditional share rather than the cumulative fraction

    @classmethod
    def parse(cls, text: str) -> "Condition":
        m = CONDITION.match(text)
        if not m or m.group(2) not in ANSWER_COLUMNS:
            raise ZoomorphError(
                f"cannot read condition {text!r}: expected e.g. 'Class1.1 > 0.8' or 'share(Class4.1) >= 0.619'")
        return cls(m.group(2), m.group(3), float(m.group(4)), bool(m.group(1)))

    def __str__(self) -> str:
        col = f"share({self.column})" if self.share else self.column
        value = repr(float(self.value)).removesuffix(".0")  # the shortest text that parses back exactly
        return f"{col} {self.op} {value}"


@dataclass(frozen=True)
class Preset:
    name: str
    rules: dict[str, list[Condition]]  # class name -> conditions, in priority order
    conflicts: str = "exclude"  # a galaxy meeting two rules: "exclude" (counted) or "first" rule wins

    @property
    def classes(self) -> list[str]:
        return list(self.rules)

    @property
    def columns(self) -> set[str]:
        return {c.column for conds in self.rules.values() for c in conds}

    def to_dict(self) -> dict:
        """As JSON: the exact rules (conditions as their text), so a prepared folder records its labels."""
        return {"name": self.name, "rules": {c: [str(x) for x in conds] for c, conds in self.rules.items()},
                "conflicts": self.conflicts}

    @classmethod
    def from_dict(cls, d: dict) -> "Preset":
        return cls(d["name"], {c: [Condition.parse(text) for text in conds] for c, conds in d["rules"].items()},
                   d.get("conflicts", "exclude"))


@dataclass
class Labels:
    """One class per galaxy (None = unassigned), and the accounting of who was not."""

    preset: Preset
    labels: pd.Series  # index GalaxyID, values class name or None
    conflicts: pd.DataFrame  # GalaxyID -> the classes whose rules it met (2 or more)
    counts: dict[str, int] = field(default_factory=dict)  # class -> galaxies labelled so
    matches: dict[str, int] = field(default_factory=dict)  # class -> galaxies meeting its rule

    @property
    def classes(self) -> list[str]:
        return self.preset.classes

    @property
    def unassigned(self) -> int:
        return int(self.labels.isna().sum()) - self.excluded_conflicts

    @property
    def excluded_conflicts(self) -> int:
        return len(self.conflicts) if self.preset.conflicts == "exclude" else 0


def _rules(spec: dict[str, list[str]]) -> dict[str, list[Condition]]:
    return {name: [Condition.parse(c) for c in conds] for name, conds in spec.items()}


def seed_preset(conflicts: str = "exclude") -> Preset:
    """The original Keras project's rules, on cumulative fractions, exactly."""
    return Preset("seed", _rules({
        "elliptical": ["Class1.1 > 0.8", "Class7.1 > 0.4"],
        "lenticular": ["Class1.1 > 0.8", "Class7.2 > 0.4"],
        "spiral": ["Class1.2 > 0.8", "Class2.1 > 0.4"],
    }), conflicts)


def hubble_preset(edge_on: bool = False, conflicts: str = "exclude") -> Preset:
    """Hubble-type classes with Galaxy Zoo 2 meanings (Willett et al. 2013 thresholds).

    Edge-on disks cannot be told apart as S0 or spiral (arms are invisible edge-on):
    left unassigned, or their own class with `edge_on=True`.
    """
    disk = ["share(Class1.2) >= 0.430", "share(Class2.2) >= 0.715"]
    spec = {
        "elliptical": ["share(Class1.1) >= 0.8"],
        "lenticular": disk + ["share(Class4.2) >= 0.619"],
        "spiral": disk + ["share(Class4.1) >= 0.619"],
    }
    if edge_on:
        spec["edge-on"] = ["share(Class1.2) >= 0.430", "share(Class2.1) >= 0.602"]
    return Preset("hubble+edge-on" if edge_on else "hubble", _rules(spec), conflicts)


def smooth_featured_preset(min_share: float = 0.8, conflicts: str = "exclude") -> Preset:
    """The top question. With a minimum share above 1/2 the rule is the argmax.

    On conditional shares, so a one-hot Class1 file and a full solutions file agree.
    """
    if min_share <= 0.5:
        raise ZoomorphError("smooth-featured needs a minimum share above 0.5 (it is the top-question argmax)")
    return Preset("smooth-featured", _rules({
        "smooth": [f"share(Class1.1) >= {min_share}"],
        "featured": [f"share(Class1.2) >= {min_share}"],
    }), conflicts)


def read_rules(path: Path) -> Preset:
    """A user's rules file:

        conflicts = "exclude"          # optional
        [classes]
        round = ["share(Class1.1) >= 0.8", "share(Class7.1) >= 0.5"]
        barred = ["share(Class3.1) >= 0.5"]
    """
    try:
        doc = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as err:
        raise ZoomorphError(f"{path}: not valid TOML ({err})") from err
    classes = doc.get("classes")
    if not isinstance(classes, dict) or not classes:
        raise ZoomorphError(f"{path}: needs a [classes] table of class = [conditions]")
    try:
        rules = _rules({str(k): list(v) for k, v in classes.items()})
    except ValueError as err:
        raise ZoomorphError(f"{path}: {err}") from err
    return Preset(Path(path).stem, rules, _policy(doc.get("conflicts", "exclude")))


def _policy(conflicts: str) -> str:
    if conflicts not in CONFLICT_POLICIES:
        raise ZoomorphError(f"conflict policy {conflicts!r}: choose one of {', '.join(CONFLICT_POLICIES)}")
    return conflicts


PRESETS = ("hubble", "hubble+edge-on", "seed", "smooth-featured")


def get_preset(name: str, conflicts: str = "exclude", min_share: float = 0.8) -> Preset:
    """A built-in preset by name, or a rules file by path (`*.toml`)."""
    conflicts = _policy(conflicts)
    if name == "seed":
        return seed_preset(conflicts)
    if name in ("hubble", "hubble+edge-on"):
        return hubble_preset(edge_on=name.endswith("edge-on"), conflicts=conflicts)
    if name == "smooth-featured":
        return smooth_featured_preset(min_share, conflicts)
    if name.endswith(".toml"):
        return read_rules(Path(name))
    raise ZoomorphError(f"unknown preset {name!r}: choose {', '.join(PRESETS)} or a rules .toml file")


def assign(fractions: pd.DataFrame, preset: Preset | str) -> Labels:
    """Apply a preset to vote fractions (index GalaxyID, Kaggle columns; partial files fine)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    missing = sorted(preset.columns - set(fractions.columns))
    if missing:
        raise ZoomorphError(f"preset {preset.name!r} needs columns the labels lack: {', '.join(missing)}")
    shares = to_conditional(fractions)

    met = pd.DataFrame(index=fractions.index)
    for name, conditions in preset.rules.items():
        ok = np.ones(len(fractions), bool)
        for c in conditions:
            values = (shares if c.share else fractions)[c.column].to_numpy(dtype=float)
            ok &= OPERATORS[c.op](np.nan_to_num(values, nan=-np.inf if c.op[0] == ">" else np.inf), c.value)
        met[name] = ok

    n_met = met.sum(axis=1).to_numpy()
    first = met.to_numpy().argmax(axis=1)
    names = np.array(preset.classes, dtype=object)
    labels = pd.Series(np.where(n_met > 0, names[first], None), index=fractions.index, dtype=object)
    both = n_met > 1
    if preset.conflicts == "exclude":
        labels[both] = None
    conflicts = pd.DataFrame(
        {"classes": ["+".join(names[row]) for row in met.to_numpy()[both]]}, index=fractions.index[both])
    counts = {name: int((labels == name).sum()) for name in preset.classes}
    matches = {name: int(met[name].sum()) for name in preset.classes}
    return Labels(preset, labels, conflicts, counts, matches)
