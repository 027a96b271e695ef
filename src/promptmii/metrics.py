"""Pure metrics over (gold, predicted) label lists: macro-F1, accuracy, invalid rate.

macro-F1 is averaged over the gold classes present in the scored set. A wrong or INVALID prediction
is a false negative for its gold class; a wrong real label is also a false positive for that label
(which only matters if that label is itself a gold class here). This equals scikit-learn's
`f1_score(gold, pred, labels=sorted(set(gold)), average="macro", zero_division=0)`, checked in tests.
The reference's three disagreeing F1s (REFERENCE.md A3) are what this replaces.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from promptmii.parse import INVALID


@dataclass(frozen=True)
class Scores:
    macro_f1: float
    accuracy: float
    invalid_rate: float
    n: int


def macro_f1(gold: list[str], pred: list[str]) -> float:
    """Mean per-class F1 over the gold classes present; 0.0 for an empty set."""
    _check(gold, pred)
    if not gold:
        return 0.0
    true_pos: Counter[str] = Counter()
    predicted: Counter[str] = Counter(pred)
    actual: Counter[str] = Counter(gold)
    for g, p in zip(gold, pred, strict=True):
        if g == p:
            true_pos[g] += 1
    f1s = []
    for label in actual:
        denominator = predicted[label] + actual[label]
        f1s.append(2 * true_pos[label] / denominator if denominator else 0.0)
    return sum(f1s) / len(f1s)


def accuracy(gold: list[str], pred: list[str]) -> float:
    _check(gold, pred)
    return sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold) if gold else 0.0


def invalid_rate(pred: list[str]) -> float:
    return sum(p == INVALID for p in pred) / len(pred) if pred else 0.0


def score(gold: list[str], pred: list[str]) -> Scores:
    return Scores(macro_f1(gold, pred), accuracy(gold, pred), invalid_rate(pred), len(gold))


def _check(gold: list[str], pred: list[str]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
