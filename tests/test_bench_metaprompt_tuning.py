"""bench/metaprompt_tuning.py's summary: which rows make which arm (reused spine rows included), the goal."""

from __future__ import annotations

import argparse

from conftest import load_script
from test_analysis import row

GENERATORS = {
    "1.5b": {
        "spec": "llamacpp:qwen2.5-coder-1.5b-instruct",
        "model_id": "gen15@1",
        "default_template": {"name": "terse", "sha256": "d" * 64},
        "tuned_template": {"name": "tuned/gen15", "sha256": "t" * 64, "header": {"llm_calls": "2700"}},
    }
}


def zero_row(
    task: str, f1: float, *, template: str | None, sha: str | None, config_template: str | None = None, **fields
) -> object:
    config = {"m": 100, "template": config_template or template}
    fields = {"generator": "gen15@1"} | fields
    return row(
        task, "promptmii-zero", f1, m=100, template=template, template_sha256=sha,
        instruction=f"instruction for {task}", config=config, **fields,
    )  # fmt: skip


def test_reused_pre_hash_rows_count_as_the_default_arm_and_the_goal_is_judged() -> None:
    bench = load_script("bench/metaprompt_tuning.py")
    rows = [row(t, arm, 0.50, m=100, config={"m": 100}) for t in ("a", "b") for arm in bench.SHARED_ARMS]
    # spine's Zero rows predate template hashes: they name their template in their config only
    rows += [zero_row(t, 0.45, template=None, sha=None, config_template="terse") for t in ("a", "b")]
    rows += [zero_row(t, 0.56, template="tuned/gen15", sha="t" * 64, prompt_tokens_per_query=150) for t in ("a", "b")]
    another_template = zero_row("a", 0.99, template=None, sha=None, config_template="structured")
    another_seed = zero_row("a", 0.99, template="tuned/gen15", sha="t" * 64, seed=1)
    rows += [another_template, another_seed]

    args = argparse.Namespace(m=100, follower="llamacpp:qwen2.5-coder-1.5b-instruct")
    assert bench.arm_of(another_template, GENERATORS) is None
    summary = bench.summarize(["a", "b"], rows, GENERATORS, args)

    assert summary["complete"] and summary["tasks_complete"] == 2
    assert summary["mean"]["promptmii-zero/default/1.5b"]["macro_f1"] == 0.45
    assert summary["mean"]["promptmii-zero/tuned/1.5b"]["macro_f1"] == 0.56
    assert summary["paired"]["tuned-default/1.5b"]["mean"] == 0.11
    assert summary["goal"]["met_over_naive"] and summary["goal"]["met_over_default"] and summary["goal"]["met_tokens"]
    assert summary["tuning_llm_calls"] == {"1.5b": 2700}


def test_the_goal_is_not_met_by_a_tuned_template_under_naive_plus_two_points() -> None:
    bench = load_script("bench/metaprompt_tuning.py")
    rows = [row(t, arm, 0.50, m=100, config={"m": 100}) for t in ("a", "b") for arm in bench.SHARED_ARMS]
    rows += [zero_row(t, 0.40, template="terse", sha="d" * 64) for t in ("a", "b")]
    rows += [zero_row(t, 0.51, template="tuned/gen15", sha="t" * 64) for t in ("a", "b")]
    args = argparse.Namespace(m=100, follower="llamacpp:qwen2.5-coder-1.5b-instruct")
    goal = bench.summarize(["a", "b"], rows, GENERATORS, args)["goal"]
    assert goal["met_over_default"] and not goal["met_over_naive"]


def test_a_tuned_template_with_the_default_text_is_the_default_arm() -> None:
    bench = load_script("bench/metaprompt_tuning.py")
    same = {"1.5b": GENERATORS["1.5b"] | {"tuned_template": {"name": "tuned/gen15", "sha256": "d" * 64,
                                                             "header": {"llm_calls": "3165"}},
                                          "tuned_is_default": True}}  # fmt: skip
    rows = [row(t, arm, 0.50, m=100, config={"m": 100}) for t in ("a", "b") for arm in bench.SHARED_ARMS]
    rows += [zero_row(t, f1, template="terse", sha="d" * 64) for t, f1 in (("a", 0.40), ("b", 0.44))]
    args = argparse.Namespace(m=100, follower="llamacpp:qwen2.5-coder-1.5b-instruct")
    summary = bench.summarize(["a", "b"], rows, same, args)
    assert summary["complete"]
    assert summary["mean"]["promptmii-zero/tuned/1.5b"] == summary["mean"]["promptmii-zero/default/1.5b"]
    assert summary["paired"]["tuned-default/1.5b"]["mean"] == 0.0
    assert not summary["goal"]["met_over_default"] and not summary["goal"]["met_over_naive"]


def test_two_seeds_average_per_task_and_a_task_missing_a_seed_is_left_out() -> None:
    bench = load_script("bench/metaprompt_tuning.py")
    rows = [row(t, "naive", 0.50, m=100, seed=s, config={"m": 100}) for t in ("a", "b") for s in (0, 1)]
    rows += [zero_row(t, 0.40, template="tuned/gen15", sha="t" * 64) for t in ("a", "b")]
    rows += [zero_row("a", 0.60, template="tuned/gen15", sha="t" * 64, seed=1)]  # task b lacks seed 1
    args = argparse.Namespace(m=100, follower="llamacpp:qwen2.5-coder-1.5b-instruct")
    arms = ["naive", "promptmii-zero/tuned/1.5b"]

    summary = bench.summarize(["a", "b"], rows, GENERATORS, args, seeds=[0, 1], only=arms)

    assert summary["tasks_complete"] == 1 and not summary["complete"]
    assert list(summary["mean"]) == arms  # icl:20 and the default arm were not asked for
    assert summary["mean"]["promptmii-zero/tuned/1.5b"]["macro_f1"] == 0.5  # (0.40 + 0.60) / 2 on task a
    assert summary["mean_by_seed"] == {"0": {"naive": 0.5, "promptmii-zero/tuned/1.5b": 0.4},
                                       "1": {"naive": 0.5, "promptmii-zero/tuned/1.5b": 0.6}}  # fmt: skip
    assert summary["goal"] is None  # the goal needs the default arm
    assert "tuned-naive/1.5b" in summary["paired"] and "tuned-default/1.5b" not in summary["paired"]


def test_a_tuned_generator_is_paired_with_the_other_generators_default() -> None:
    bench = load_script("bench/metaprompt_tuning.py")
    small = {"spec": "llamacpp:small", "model_id": "gen05@1", "default_template": {"name": "terse", "sha256": "d" * 64},
             "tuned_template": {"name": "tuned/gen05", "sha256": "s" * 64, "header": {}}}  # fmt: skip
    generators = GENERATORS | {"0.5b": small}
    rows = [row(t, arm, 0.50, m=100, config={"m": 100}) for t in ("a", "b") for arm in bench.SHARED_ARMS]
    for generator, template, f1 in (("gen15@1", "t", 0.45), ("gen15@1", "d", 0.40), ("gen05@1", "s", 0.48),
                                    ("gen05@1", "d", 0.30)):  # fmt: skip
        rows += [zero_row(t, f1, template="x", sha=template * 64, generator=generator) for t in ("a", "b")]
    args = argparse.Namespace(m=100, follower="llamacpp:qwen2.5-coder-1.5b-instruct")

    paired = bench.summarize(["a", "b"], rows, generators, args)["paired"]

    assert paired["tuned/0.5b-default/1.5b"]["mean"] == 0.08
    assert paired["tuned/1.5b-default/0.5b"]["mean"] == 0.15


def test_label_collapse_counts_each_arms_cells_and_names_their_tasks() -> None:
    bench = load_script("bench/metaprompt_tuning.py")
    rows = [row(t, "naive", 0.50, m=100, config={"m": 100}) for t in ("a", "b")]
    rows += [zero_row(t, 0.40, template="tuned/gen15", sha="t" * 64) for t in ("a", "b")]
    collapse = {rows[0].key: True, rows[1].key: False, rows[2].key: False}  # tuned on task b has no samples
    args = argparse.Namespace(m=100, follower="llamacpp:qwen2.5-coder-1.5b-instruct")

    summary = bench.summarize(["a", "b"], rows, GENERATORS, args, only=["naive", "promptmii-zero/tuned/1.5b"],
                              collapse=collapse)  # fmt: skip

    assert summary["label_collapse"] == {
        "naive": {"collapsed_cells": 1, "cells": 2, "cells_without_samples": 0, "tasks": ["a"]},
        "promptmii-zero/tuned/1.5b": {"collapsed_cells": 0, "cells": 2, "cells_without_samples": 1, "tasks": []},
    }
    assert bench.summarize(["a", "b"], rows, GENERATORS, args)["label_collapse"] == {}  # no samples read


def test_a_candidate_template_is_its_own_arm_paired_with_naive_and_the_default() -> None:
    bench = load_script("bench/metaprompt_tuning.py")
    generators = {"1.5b": GENERATORS["1.5b"] | {"candidate_templates": {"balanced": "b" * 64}}}
    rows = [row(t, arm, 0.50, m=100, config={"m": 100}) for t in ("a", "b") for arm in bench.SHARED_ARMS]
    rows += [zero_row(t, 0.40, template="terse", sha="d" * 64) for t in ("a", "b")]
    rows += [zero_row(t, 0.41, template="tuned/gen15", sha="t" * 64) for t in ("a", "b")]
    rows += [zero_row(t, 0.60, template="balanced", sha="b" * 64) for t in ("a", "b")]
    assert bench.arm_of(rows[-1], generators) == "promptmii-zero/balanced/1.5b"
    args = argparse.Namespace(m=100, follower="llamacpp:qwen2.5-coder-1.5b-instruct")
    summary = bench.summarize(["a", "b"], rows, generators, args)
    assert summary["mean"]["promptmii-zero/balanced/1.5b"]["macro_f1"] == 0.60
    assert summary["paired"]["balanced-naive/1.5b"]["mean"] == 0.10
    assert summary["paired"]["balanced-default/1.5b"]["mean"] == 0.20
    assert summary["goal"]["met_over_default"] is False  # the goal judges the tuned arm, never a candidate
