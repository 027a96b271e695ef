"""The instruction-ceiling benchmark pairs its rows with the committed Naive rows, and refuses other examples."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, load_script

SPINE = REPO / "bench" / "runs" / "spine"


def ceiling():
    return load_script("bench/instruction_ceiling.py")


def naive_samples(task: str) -> tuple[dict, list[dict]]:
    """The last committed Naive row of `task` at seed 0 and m=100 in the spine run, and its samples in order."""
    rows = [json.loads(line) for line in (SPINE / "results.jsonl").read_text().splitlines()]
    row = [r for r in rows if (r["task"], r["method"], r["seed"], r["config"]["m"]) == (task, "naive", 0, 100)][-1]
    samples = [json.loads(line) for line in (SPINE / "samples.jsonl").read_text().splitlines()]
    mine = [s for s in samples if (s["task"], s["method"], s["fingerprint"]) == (task, "naive", row["fingerprint"])]
    return row, sorted(mine, key=lambda s: s["index"])


def test_committed_row_rescores_the_committed_samples_and_checks_the_examples_are_the_same() -> None:
    row, samples = naive_samples("sms_spam")
    gold = [s["gold"] for s in samples]
    rescored = ceiling().committed_row(SPINE, "sms_spam", "naive", None, None, 0, 100, gold)
    assert rescored["macro_f1"] == pytest.approx(row["macro_f1"])
    assert rescored["collapsed"] is True  # "spam" to 99 of 100 texts, 12 of them spam
    with pytest.raises(SystemExit, match="other examples"):
        ceiling().committed_row(SPINE, "sms_spam", "naive", None, None, 0, 100, gold[1:] + gold[:1])


def test_summary_pairs_each_kind_with_naive_and_zero_on_the_same_tasks() -> None:
    def arm(f1: float, collapsed: bool = False, tokens: int = 60) -> dict:
        return {"macro_f1": f1, "collapsed": collapsed, "prompt_tokens_per_query": tokens}

    committed = {
        ("test", "sms_spam", 0): {"naive": arm(0.1, collapsed=True), "zero": arm(0.2)},
        ("test", "sst2", 0): {"naive": arm(0.9), "zero": arm(0.7)},
    }
    found = [
        {"split": "test", "task": "sms_spam", "seed": 0, "kind": "described"} | arm(0.5, tokens=90),
        {"split": "test", "task": "sst2", "seed": 0, "kind": "described"} | arm(0.8, tokens=110),
    ]
    summary = ceiling().summarize(found, committed, [0])["test"]
    described = summary["described"]
    assert described["paired"]["described-naive"]["mean"] == pytest.approx(0.15)
    assert described["paired"]["described-zero"]["mean"] == pytest.approx(0.2)
    assert described["paired"]["zero-naive"]["mean"] == pytest.approx(-0.05)
    assert described["mean"]["naive"]["collapsed_tasks"] == ["sms_spam"]
    assert (described["mean"]["naive"]["collapsed_cells"], described["mean"]["naive"]["cells"]) == (1, 2)
    assert described["mean"]["described"]["prompt_tokens_per_query"] == 100
    assert summary["described_on_collapsed"]["tasks"] == 1  # sms_spam is one of Naive's collapsed test tasks
    assert "one_line" not in summary  # a kind without rows is left out, not shown as zero


def test_a_task_scores_its_mean_over_the_seeds_and_a_kind_keeps_the_seeds_it_has() -> None:
    def arm(f1: float) -> dict:
        return {"macro_f1": f1, "collapsed": False, "prompt_tokens_per_query": 60}

    committed = {("test", "sst2", seed): {"naive": arm(0.5), "zero": arm(0.5)} for seed in (0, 1)}
    found = [
        {"split": "test", "task": "sst2", "seed": 0, "kind": "described"} | arm(0.6),
        {"split": "test", "task": "sst2", "seed": 1, "kind": "described"} | arm(0.8),
        {"split": "test", "task": "sst2", "seed": 0, "kind": "one_line"} | arm(0.4),
    ]
    summary = ceiling().summarize(found, committed, [0, 1])["test"]
    assert summary["described"]["seeds"] == [0, 1]
    assert summary["described"]["mean"]["described"]["macro_f1"] == pytest.approx(0.7)
    assert summary["one_line"]["seeds"] == [0]  # no seed-1 rows: summarized at seed 0, not dropped
    assert summary["one_line"]["paired"]["one_line-naive"]["mean"] == pytest.approx(-0.1)
