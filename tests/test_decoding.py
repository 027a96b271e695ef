"""Follower decoding modes (generate, score, score-calibrated, constrained) through run_follower and eval."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SENTIMENT_WORDS, sentiment_examples
from fakes import FakeBackend, query_input
from promptmii.cache import CachedBackend
from promptmii.data import Task, task_hash
from promptmii.errors import DataError, PromptMIIError
from promptmii.evaluate import CONTENT_FREE_INPUT, run_follower
from promptmii.experiment import EvalConfig, run_eval
from promptmii.parse import INVALID, pick_label
from promptmii.results import ResultsDir, fingerprint, read_results

LABELS = ("negative", "positive")


def biased_scorer(chat: list[dict], labels: list[str]) -> dict[str, float]:
    """Knows the sentiment words, but has a strong prior for 'positive' (+2), like a biased small model."""
    text = query_input(chat).lower()
    truth = next((label for word, label in SENTIMENT_WORDS.items() if word in text), None)
    return {label: (1.5 if label == truth else 0.0) + (2.0 if label == "positive" else 0.0) for label in labels}


def test_pick_label_takes_the_best_score_ties_to_the_first_and_calibrates() -> None:
    assert pick_label({"a": -1.0, "b": -0.5}) == "b"
    assert pick_label({"a": -1.0, "b": -1.0}) == "a"
    assert pick_label({"a": -1.0, "b": -0.5}, baseline={"a": -3.0, "b": -0.1}) == "a"
    assert pick_label({}) == INVALID


def test_score_mode_never_answers_invalid_and_counts_one_call_per_input() -> None:
    follower = FakeBackend(scorer=biased_scorer)
    test = sentiment_examples(12)
    run = run_follower(follower, "Classify.", LABELS, test, decoding="score")
    assert INVALID not in run.predictions
    assert run.predictions == ["positive"] * 12  # the prior wins without calibration
    assert run.calls == 12 and follower.calls == []


def test_calibration_removes_the_label_prior() -> None:
    follower = FakeBackend(scorer=biased_scorer)
    test = sentiment_examples(12)
    run = run_follower(follower, "Classify.", LABELS, test, decoding="score-calibrated")
    assert run.predictions == [e.label for e in test]
    assert run.calls == 13  # + the content-free input
    assert query_input(follower.scored[0]) == CONTENT_FREE_INPUT


def test_constrained_mode_passes_the_label_set_to_the_backend() -> None:
    follower = FakeBackend(rule=lambda chat: "positive")
    run_follower(follower, "Classify.", LABELS, sentiment_examples(3), decoding="constrained")
    assert {params.choices for _, params in follower.calls} == {LABELS}
    run_follower(follower, "Classify.", LABELS, sentiment_examples(3), decoding="generate")
    assert follower.calls[-1][1].choices == ()


def test_unknown_decoding_mode_is_refused() -> None:
    with pytest.raises(DataError, match="unknown decoding mode 'beam'"):
        run_follower(FakeBackend(), "x", LABELS, sentiment_examples(2), decoding="beam")
    with pytest.raises(PromptMIIError, match="unknown decoding 'beam'"):
        EvalConfig(decoding="beam")


def test_label_scores_are_cached(tmp_path: Path) -> None:
    inner = FakeBackend(scorer=biased_scorer)
    cached = CachedBackend(inner, tmp_path / "cache.sqlite")
    chat = [{"role": "user", "content": "Input: I love it"}]
    first = cached.label_logprobs(chat, list(LABELS))
    assert cached.label_logprobs(chat, list(LABELS)) == first
    assert len(inner.scored) == 1


def test_cached_label_scores_count_as_cache_hits(tmp_path: Path) -> None:
    cached = CachedBackend(FakeBackend(scorer=biased_scorer), tmp_path / "cache.sqlite")
    test = sentiment_examples(6)
    first = run_follower(cached, "x", LABELS, test, decoding="score")
    again = run_follower(cached, "x", LABELS, test, decoding="score-calibrated")  # the 6 scorings repeat
    assert (first.cache_hits, again.cache_hits, again.calls) == (0, 6, 7)


def test_decoding_is_recorded_and_separates_done_keys(tmp_path: Path, register_backend) -> None:
    follower = register_backend("fake:scorer", FakeBackend("scorer", scorer=biased_scorer, rule=lambda c: "positive"))
    task = Task("s", LABELS, tuple(sentiment_examples(20)), tuple(sentiment_examples(10, 100)))
    out = ResultsDir(tmp_path)
    for decoding in ("generate", "score-calibrated"):
        config = EvalConfig(methods=("naive",), n=4, m=10, follower=follower, decoding=decoding, cache=False)
        run_eval([task], config, out, quiet=True)
    rows = {r.decoding: r for r in read_results(out.results_path)}
    assert set(rows) == {"generate", "score-calibrated"}
    positives = sum(e.label == "positive" for e in task.test) / len(task.test)
    assert rows["score-calibrated"].macro_f1 == 1.0 and rows["generate"].accuracy == positives
    assert rows["generate"].token_counter == "fake-whitespace"
    # generate adds nothing to the fingerprint, so rows made before decoding modes existed stay done (with
    # their scored rows checked, as every row from before data hashes: experiment.result_keys)
    data = task_hash(task)
    assert rows["generate"].fingerprint == fingerprint(n_shots=4, m=10, seed=0, follower="scorer", data=data)
