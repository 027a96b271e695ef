"""bench/trained_vs_zero.py's summary: which rows count, the means over tasks and seeds, the goals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from conftest import load_script
from promptmii import models
from test_analysis import row

FOLLOWER = "llamacpp:qwen2.5-coder-1.5b-instruct"
F1 = {"naive": 0.50, "icl:20": 0.52, "icl:100": 0.55, "promptmii-zero": 0.48, "promptmii": 0.56}
TOKENS = {"naive": 90, "icl:20": 1000, "icl:100": 5000, "promptmii-zero": 300, "promptmii": 200}


def training_run(tmp_path: Path) -> Path:
    run = tmp_path / "ei-run"
    run.mkdir()
    (run / models.RUN_CONFIG).write_text(json.dumps({"policy": "qwen2.5-coder-1.5b-instruct", "template": "criteria"}))
    (run / models.EXPORTED_ADAPTER).write_bytes(b"GGUF" + bytes(100))
    return run


def arm_row(run: Path, task: str, seed: int, arm: str, f1: float, **config) -> object:
    generated = arm.startswith("promptmii")
    return row(
        task,
        arm,
        f1,
        seed=seed,
        m=100,
        prompt_tokens_per_query=TOKENS[arm],
        generator=models.adapter_model_id(run) if arm == "promptmii" else ("base@1" if generated else None),
        template="criteria" if generated else None,
        instruction=f"{arm} instruction for {task}" if generated else "",
        generator_completion_tokens=40 if generated else 0,
        config={"n": 20, "follower": FOLLOWER, "base_generator": "llamacpp:qwen2.5-coder-1.5b-instruct"} | config,
    )


def test_summary_means_over_tasks_and_seeds_with_paired_cis_and_goals(tmp_path: Path) -> None:
    bench = load_script("bench/trained_vs_zero.py")
    run = training_run(tmp_path)
    rows = [
        arm_row(run, task, seed, arm, F1[arm] + 0.01 * seed)
        for task in ("a", "b")
        for seed in (0, 1)
        for arm in bench.ARMS
    ]
    rows += [
        arm_row(run, "a", 0, "promptmii-zero", 0.9, base_generator="llamacpp:other"),  # another base: not this arm
        arm_row(run, "a", 0, "naive", 0.9, n=5),  # another n
        arm_row(run, "c", 0, "promptmii", 0.9),  # a task with one arm so far
    ]
    arm = bench.TrainedArm.of(run)
    summary = bench.summarize(["a", "b", "c"], bench.pick(rows, arm), arm)
    assert summary["tasks_complete"] == 2 and not summary["complete"]
    assert summary["mean"]["promptmii"]["macro_f1"] == 0.565 and summary["mean"]["promptmii-zero"]["macro_f1"] == 0.485
    assert summary["by_seed"]["1"]["naive"] == 0.51
    assert summary["paired_macro_f1"]["promptmii - promptmii-zero"]["mean_difference"] == 0.08
    assert summary["goals"] == {"trained_minus_zero": 0.08, "trained_minus_naive": 0.06, "token_ratio_vs_icl100": 0.04}
    assert summary["goal_met"]
    assert summary["adapter_sha256"] == models.file_sha256(run / models.EXPORTED_ADAPTER)
    assert summary["template"] == "criteria" and summary["seeds"] == [0, 1]
    assert summary["instruction_stats"]["promptmii"]["0"]["distinct_instructions"] == 2
    assert summary["so_far"]["0"]["tasks"] == 2  # task c lacks seed 0's other arms
    so_far = summary["so_far"]["0"]
    assert so_far["paired_macro_f1"]["promptmii - naive"]["mean_difference"] == 0.06
    assert so_far["instruction_stats"]["promptmii"]["distinct_instructions"] == 2


def test_a_small_task_counts_at_the_m_asked_for(tmp_path: Path) -> None:
    bench = load_script("bench/trained_vs_zero.py")
    run = training_run(tmp_path)
    arm = bench.TrainedArm.of(run)
    small = dataclasses.replace(arm_row(run, "cb", 0, "promptmii", 0.3, m=100), m=56)  # cb has 56 rows to score
    other = arm_row(run, "cb", 0, "naive", 0.3, m=50)  # a run that asked for m=50
    assert bench.is_arm_row(small, arm) and not bench.is_arm_row(other, arm)


def test_no_goal_is_met_without_complete_tasks(tmp_path: Path) -> None:
    bench = load_script("bench/trained_vs_zero.py")
    run = training_run(tmp_path)
    arm = bench.TrainedArm.of(run)
    summary = bench.summarize(["a"], bench.pick([arm_row(run, "a", 0, "promptmii", 0.9)], arm), arm)
    assert summary["tasks_complete"] == 0 and not summary["goal_met"]
    assert summary["mean"]["promptmii"]["macro_f1"] is None and summary["paired_macro_f1"] == {}


def test_rows_of_the_same_adapter_under_its_training_run_name_count(tmp_path: Path) -> None:
    bench = load_script("bench/trained_vs_zero.py")
    run = training_run(tmp_path)
    arm = bench.TrainedArm.of(run)
    sha12 = models.file_sha256(run / models.EXPORTED_ADAPTER)[:12]
    same_bytes = dataclasses.replace(
        arm_row(run, "a", 0, "promptmii", 0.5), generator=f"expert_iteration_r2-lora@{sha12}"
    )
    other_bytes = dataclasses.replace(same_bytes, generator="ei-run-lora@000000000000")
    assert bench.is_arm_row(same_bytes, arm) and not bench.is_arm_row(other_bytes, arm)


def test_so_far_pools_the_seeds_for_the_arms_every_seed_has(tmp_path: Path) -> None:
    bench = load_script("bench/trained_vs_zero.py")
    run = training_run(tmp_path)
    arms = ("naive", "promptmii-zero", "promptmii")
    rows = [arm_row(run, t, s, a, F1[a] + 0.01 * s) for t in ("a", "b") for s in (0, 1) for a in arms]
    rows += [arm_row(run, t, 0, a, F1[a]) for t in ("a", "b") for a in ("icl:20", "icl:100")]  # seed 0 only
    arm = bench.TrainedArm.of(run)
    summary = bench.summarize(["a", "b"], bench.pick(rows, arm), arm)
    assert summary["tasks_complete"] == 0  # seed 1 lacks the ICL arms
    both = summary["so_far"]["0+1"]
    assert both["tasks"] == 2 and "icl:20" not in both
    assert both["promptmii"] == 0.565 and both["naive"] == 0.505
    assert both["paired_macro_f1"]["promptmii - promptmii-zero"]["mean_difference"] == 0.08
