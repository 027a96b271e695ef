"""Pure metrics over (gold, predicted) label lists: macro-F1, accuracy, invalid rate, label collapse.

macro-F1 is averaged over the gold classes present in the scored set. A wrong or INVALID prediction
is a false negative for its gold class; a wrong real label is also a false positive for that label
(which only matters if that label is itself a gold class here). This equals scikit-learn's
`f1_score(gold, pred, labels=sorted(set(gold)), average="macro", zero_division=0)`, checked in tests.
The reference computes F1 three ways that disagree (training maps INVALID to label 0, evaluation drops
empty replies; millix19/promptmii); this one function replaces them.
bootstrap_ci and wilcoxon_p compare two methods through their paired per-task differences (analysis.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from promptmii.errors import require
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


def top_label_share(pred: list[str]) -> tuple[str | None, float]:
    """The label predicted most often and its share of all replies (INVALID is never that label).

    A small follower often answers one label to nearly every input whatever the instruction says; this is
    how a benchmark sees it without reading the samples.
    """
    labels = Counter(p for p in pred if p != INVALID)
    if not labels:
        return None, 0.0
    label, count = labels.most_common(1)[0]
    return label, count / len(pred)


def label_collapsed(gold: list[str], pred: list[str], *, share: float = 0.9) -> bool:
    """True when one label takes at least `share` of the replies but less than `share` of the gold labels."""
    _check(gold, pred)
    label, predicted_share = top_label_share(pred)
    return bool(gold) and label is not None and predicted_share >= share and gold.count(label) / len(gold) < share


def mean(values: Iterable[float]) -> float:
    """The arithmetic mean; 0.0 for no values (an empty table cell, not an error)."""
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def score(gold: list[str], pred: list[str]) -> Scores:
    return Scores(macro_f1(gold, pred), accuracy(gold, pred), invalid_rate(pred), len(gold))


def _check(gold: list[str], pred: list[str]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")


def bootstrap_ci(
    differences: list[float], *, resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired per-task differences, resampling tasks.

    Tasks are the unit we generalise over, so they are what gets resampled; the seed makes a report
    reproducible byte for byte.

    >>> bootstrap_ci([0.5, 0.5, 0.5])
    (0.5, 0.5)
    >>> low, high = bootstrap_ci([0.1, 0.2, 0.3, 0.4], seed=1)
    >>> low < 0.25 < high
    True
    """
    if not differences:
        raise ValueError("bootstrap_ci needs at least one difference")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    values = np.asarray(differences, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def wilcoxon_p(differences: list[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired per-task differences (zeros dropped).

    Signed ranks, not a t-test: per-task F1 differences are bounded and often skewed. All-zero
    differences mean no evidence either way, so p = 1.0 (scipy would warn and divide by zero).

    >>> wilcoxon_p([1.0, 2.0, 3.0, 4.0, 5.0])  # all 2**5 sign patterns equally likely: 2 / 32
    0.0625
    >>> wilcoxon_p([0.0, 0.0])
    1.0
    """
    if not differences:
        raise ValueError("wilcoxon_p needs at least one difference")
    if all(d == 0 for d in differences):
        return 1.0
    stats = require("scipy.stats", "report", "the paired Wilcoxon test")
    return float(stats.wilcoxon(differences).pvalue)
