"""Heads: features -> class logits, or features -> the 37 Galaxy Zoo vote fractions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zoomorph.errors import ZoomorphError
from zoomorph.schema import ANSWER_COLUMNS, question_slices

NUM_VOTES = len(ANSWER_COLUMNS)


def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


class ClassesHead(nn.Sequential):
    """Raw logits (B, num_classes)."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__(_dropout(dropout), nn.Linear(in_features, num_classes))


class VotesHead(nn.Module):
    """The 37 cumulative vote fractions, consistent with the decision tree by construction.

    As in the Kaggle winner's model (Dieleman et al. 2015): each question's answers
    are a softmax scaled by the value of the answer that leads to the question,
    so they sum to that value (to 1 for Q1 and Q6). Parents come earlier in the
    tree order, so one pass in order has every parent ready.
    """

    def __init__(self, in_features: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = _dropout(dropout)
        self.linear = nn.Linear(in_features, NUM_VOTES)
        self.questions = question_slices()

    def forward(self, x: Tensor) -> Tensor:
        logits = self.linear(self.dropout(x))
        columns: list[Tensor] = []  # built question by question, in column order
        for start, stop, parent in self.questions:
            shares = logits[:, start:stop].softmax(dim=1)
            columns.extend((shares if parent is None else shares * columns[parent][:, None]).unbind(1))
        return torch.stack(columns, dim=1)


def build_head(kind: str, in_features: int, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """kind "classes" -> ClassesHead; "votes" -> VotesHead (num_classes is ignored)."""
    if kind == "classes":
        return ClassesHead(in_features, num_classes, dropout)
    if kind == "votes":
        return VotesHead(in_features, dropout)
    raise ZoomorphError(f"unknown head {kind!r}; known heads: classes, votes")
