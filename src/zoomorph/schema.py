"""The Galaxy Zoo 2 decision tree as data (the Kaggle "Galaxy Challenge" form).

The Kaggle solutions file holds 37 *cumulative* (weighted) vote fractions: an
answer's value is its share of the votes within its question times the value
of the answer that led to the question. So the answers of a question sum to
the value of their parent answer (or to 1 for the two questions everyone
answers, Q1 and Q6). The *conditional* share divides that parent back out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Question:
    number: int
    text: str
    answers: tuple[str, ...]
    parent: str | None  # column of the answer that leads here; None = everyone answers

    @property
    def columns(self) -> list[str]:
        return [f"Class{self.number}.{i}" for i in range(1, len(self.answers) + 1)]


QUESTIONS: tuple[Question, ...] = (
    Question(1, "Is the galaxy simply smooth and rounded, with no sign of a disk?",
             ("smooth", "features or disk", "star or artifact"), None),
    Question(2, "Could this be a disk viewed edge-on?", ("yes", "no"), "Class1.2"),
    Question(3, "Is there a sign of a bar feature through the centre?", ("yes", "no"), "Class2.2"),
    Question(4, "Is there any sign of a spiral arm pattern?", ("yes", "no"), "Class2.2"),
    Question(5, "How prominent is the central bulge?",
             ("no bulge", "just noticeable", "obvious", "dominant"), "Class2.2"),
    Question(6, "Is there anything odd?", ("yes", "no"), None),
    Question(7, "How rounded is it?", ("completely round", "in between", "cigar-shaped"), "Class1.1"),
    Question(8, "Is the odd feature a ring, or is the galaxy disturbed or irregular?",
             ("ring", "lens or arc", "disturbed", "irregular", "other", "merger", "dust lane"),
             "Class6.1"),
    Question(9, "Does the galaxy have a bulge at its centre? If so, what shape?",
             ("rounded", "boxy", "no bulge"), "Class2.1"),
    Question(10, "How tightly wound do the spiral arms appear?", ("tight", "medium", "loose"),
             "Class4.1"),
    Question(11, "How many spiral arms are there?", ("1", "2", "3", "4", "more than four",
                                                      "can't tell"), "Class4.1"),
)

ANSWER_COLUMNS: list[str] = [c for q in QUESTIONS for c in q.columns]  # the 37, in Kaggle order
Q1 = slice(0, 3)  # Class1.1-1.3 of the 37: the question everyone answers, a distribution that sums to 1
ID_COLUMN = "GalaxyID"
QUESTION_OF: dict[str, Question] = {c: q for q in QUESTIONS for c in q.columns}


def question(number: int) -> Question:
    return QUESTIONS[number - 1]


def question_slices() -> list[tuple[int, int, int | None]]:
    """(start, stop, parent column index or None) per question, over the 37 answer columns.

    The form models need to normalise a 37-vector question by question.
    """
    out, start = [], 0
    for q in QUESTIONS:
        stop = start + len(q.answers)
        parent = ANSWER_COLUMNS.index(q.parent) if q.parent else None
        out.append((start, stop, parent))
        start = stop
    return out


def parent_values(cumulative: pd.DataFrame, q: Question) -> pd.Series:
    """The value each question's answers must sum to, per row."""
    if q.parent is None:
        return pd.Series(1.0, index=cumulative.index)
    return cumulative[q.parent]


def to_conditional(cumulative: pd.DataFrame) -> pd.DataFrame:
    """Cumulative (Kaggle) fractions -> each answer's share within its question.

    Where nobody reached a question (parent value 0) the shares are NaN: there
    is no vote to divide, and 0 would wrongly read as "nobody said yes".
    Only the questions whose columns are present are converted.
    """
    out = {}
    for q in QUESTIONS:
        if not set(q.columns) <= set(cumulative.columns):
            continue
        if q.parent is not None and q.parent not in cumulative.columns:
            continue
        block = cumulative[q.columns].astype(float)
        total = block.sum(axis=1) if q.parent is None else cumulative[q.parent].astype(float)
        shares = block.div(total.where(total > 0), axis=0)
        out.update(shares.to_dict("series"))
    return pd.DataFrame(out, index=cumulative.index)[[c for c in ANSWER_COLUMNS if c in out]]


def to_cumulative(conditional: pd.DataFrame) -> pd.DataFrame:
    """Conditional shares (all 37) -> cumulative Kaggle fractions (NaN shares count as 0)."""
    cond = conditional[ANSWER_COLUMNS].astype(float).fillna(0.0)
    out = pd.DataFrame(index=conditional.index, columns=ANSWER_COLUMNS, dtype=float)
    for q in QUESTIONS:  # questions are ordered so that parents come first
        scale = 1.0 if q.parent is None else out[q.parent]
        for c in q.columns:
            out[c] = cond[c] * scale
    return out


@dataclass
class TreeViolation:
    galaxy_id: object  # the row's index label
    question: int
    total: float
    expected: float


def validate(cumulative: pd.DataFrame, tolerance: float = 1e-3) -> list[TreeViolation]:
    """Rows whose answers do not sum to their parent answer (or to 1), per question.

    Checks only the questions whose columns (and parent column) are present,
    so partial label files are validated as far as they go.
    """
    bad: list[TreeViolation] = []
    for q in QUESTIONS:
        if not set(q.columns) <= set(cumulative.columns):
            continue
        if q.parent is not None and q.parent not in cumulative.columns:
            continue
        total = cumulative[q.columns].sum(axis=1).to_numpy()
        expected = parent_values(cumulative, q).to_numpy(dtype=float)
        for i in np.flatnonzero(np.abs(total - expected) > tolerance):
            bad.append(TreeViolation(cumulative.index[i], q.number, float(total[i]), float(expected[i])))
    return bad
