"""macro-F1 by hand and against scikit-learn; INVALID is an error, never a class we average over."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score

from promptmii.metrics import accuracy, invalid_rate, label_collapsed, macro_f1, score, top_label_share
from promptmii.parse import INVALID


def test_macro_f1_by_hand() -> None:
    gold = ["a", "a", "b", "b"]
    pred = ["a", "b", "b", INVALID]
    # a: tp=1 pred=1 actual=2 -> 2/3 ; b: tp=1 pred=2 actual=2 -> 2/4
    assert macro_f1(gold, pred) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert accuracy(gold, pred) == 0.5
    assert invalid_rate(pred) == 0.25


def test_all_invalid_scores_zero_not_label_zero() -> None:
    # The reference maps INVALID to the first label, which would make this 1/3 F1 for free.
    assert macro_f1(["a", "b", "a"], [INVALID] * 3) == 0.0


def test_absent_gold_class_is_not_averaged() -> None:
    # 'c' is predicted but never gold: it adds a false positive, not a zero-F1 class to the average.
    assert macro_f1(["a", "a"], ["a", "c"]) == pytest.approx(2 / 3)


def test_empty_and_mismatched() -> None:
    assert macro_f1([], []) == 0.0
    with pytest.raises(ValueError, match="2 gold labels but 1 predictions"):
        macro_f1(["a", "b"], ["a"])


labels = st.sampled_from(["a", "b", "c", "d"])


@settings(max_examples=300)
@given(st.lists(st.tuples(labels, st.one_of(labels, st.just(INVALID))), min_size=1, max_size=40))
def test_macro_f1_matches_sklearn(pairs) -> None:
    gold = [g for g, _ in pairs]
    pred = [p for _, p in pairs]
    expected = f1_score(gold, pred, labels=sorted(set(gold)), average="macro", zero_division=0)
    assert macro_f1(gold, pred) == pytest.approx(expected)


def test_score_bundles_everything() -> None:
    s = score(["x", "y"], ["x", INVALID])
    assert (s.accuracy, s.invalid_rate, s.n) == (0.5, 0.5, 2)


def test_top_label_share_never_names_invalid() -> None:
    assert top_label_share(["spam", INVALID, INVALID, "ham"]) in {("spam", 0.25), ("ham", 0.25)}
    assert top_label_share([INVALID, INVALID]) == (None, 0.0)
    assert top_label_share([]) == (None, 0.0)


def test_label_collapse_is_one_label_for_almost_every_input_against_a_mixed_gold() -> None:
    # sms_spam as the 1.5B follower answered it: "spam" to 98 of 100 texts, 8 of them spam.
    gold = ["spam"] * 8 + ["ham"] * 92
    assert label_collapsed(gold, ["spam"] * 98 + ["ham"] * 2)
    assert not label_collapsed(gold, ["spam"] * 89 + ["ham"] * 11)  # under the 90% share
    assert not label_collapsed(["ham"] * 95 + ["spam"] * 5, ["ham"] * 100)  # the gold is that skewed too
    assert not label_collapsed(gold, [INVALID] * 100)  # all-invalid is the invalid rate's problem
    assert not label_collapsed([], [])
    with pytest.raises(ValueError, match="2 gold labels but 1 predictions"):
        label_collapsed(["a", "b"], ["a"])
