"""The report from results files: hand-computed tables, paired statistics, bins, transfer, bad input."""

from __future__ import annotations

import csv
import doctest
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from promptmii import metrics
from promptmii.analysis import Arm, arm_names, win_rate, write_report
from promptmii.errors import PromptMIIError
from promptmii.metrics import bootstrap_ci, wilcoxon_p
from promptmii.results import Result, fingerprint

PNG = b"\x89PNG\r\n\x1a\n"


def row(task: str, method: str = "naive", f1: float = 0.5, **fields: Any) -> Result:
    """A result row with every required field filled; the fingerprint follows the settings that vary here."""
    values: dict[str, Any] = {
        "task": task,
        "method": method,
        "n_shots": 20,
        "n_shots_used": 20,
        "seed": 0,
        "m": 10,
        "follower": "fol@1",
        "generator": None,
        "macro_f1": f1,
        "accuracy": f1,
        "invalid_rate": 0.0,
        "prompt_tokens_per_query": 100,
        "follower_prompt_tokens": 1000,
        "follower_completion_tokens": 10,
        "generator_prompt_tokens": 0,
        "generator_completion_tokens": 0,
        "generator_calls": 0,
        "follower_calls": 10,
        "llm_calls": 10,
        "cache_hits": 0,
        "seconds": 1.0,
        "instruction": "",
        "warnings": [],
        "config": {},
        "fingerprint": "",
    } | fields
    if not values["fingerprint"]:
        keys = ("follower", "generator", "n_shots", "seed", "config", "decoding")
        values["fingerprint"] = fingerprint(**{k: values.get(k) for k in keys})
    return Result(**values)


def write(path: Path, rows: list[Result | dict[str, Any]]) -> Path:
    lines = [json.dumps(r if isinstance(r, dict) else asdict(r)) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def by(rows: list[dict[str, str]], column: str) -> dict[str, dict[str, str]]:
    return {r[column]: r for r in rows}


# ---------------------------------------------------------------- pure statistics


def test_bootstrap_ci_is_seeded_and_contains_the_mean() -> None:
    diffs = [0.13, -0.07, 0.21, 0.02, 0.18, 0.05, -0.11, 0.09]
    low, high = bootstrap_ci(diffs, seed=3)
    assert (low, high) == bootstrap_ci(diffs, seed=3)
    assert (low, high) != bootstrap_ci(diffs, seed=4)
    assert low < sum(diffs) / len(diffs) < high
    narrow = bootstrap_ci(diffs, level=0.5, seed=3)
    assert low <= narrow[0] < narrow[1] <= high
    assert bootstrap_ci([0.25] * 4) == (0.25, 0.25)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])


def test_wilcoxon_p_by_hand_and_scipy_example() -> None:
    # All 5 differences positive: only 2 of the 2**5 equally likely sign patterns are this extreme.
    assert wilcoxon_p([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2 / 32)
    assert wilcoxon_p([-1.0, -2.0, -3.0, -4.0, -5.0]) == pytest.approx(2 / 32)
    assert wilcoxon_p([0.0, 1.0, 2.0, 3.0]) == pytest.approx(2 / 8)  # the zero is dropped
    # scipy.stats.wilcoxon's documented example (Cushny and Peebles' sleep data differences)
    d = [6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75]
    assert wilcoxon_p(d) == pytest.approx(0.041259765625)
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0


def test_metrics_doctests_hold() -> None:
    assert doctest.testmod(metrics).failed == 0


def test_win_rate_counts_ties_half_over_common_tasks() -> None:
    assert win_rate({"t": 0.5}, {"t": 0.5}) == 0.5
    assert win_rate({"t": 0.5}, {"u": 0.5}) is None
    a = {"t1": 0.8, "t2": 0.5, "t3": 0.6, "t4": 0.9}
    b = {"t1": 0.6, "t2": 0.5, "t3": 0.4}
    assert win_rate(a, b) == pytest.approx(2.5 / 3)  # t4 is not in the denominator


def test_arm_names_add_only_what_tells_arms_apart() -> None:
    arms = [
        Arm("f", "naive", 20, None, "generate"),
        Arm("f", "naive", 5, None, "generate"),
        Arm("f", "icl:20", 20, None, "generate"),
        Arm("f", "promptmii-zero", 20, "small@aa", "generate"),
        Arm("f", "promptmii-zero", 20, "big@bb", "generate"),
        Arm("f", "promptmii-zero", 20, "big@bb", "score"),
        Arm("f", "promptmii", 20, "run@1", "generate"),
        Arm("f", "promptmii", 20, "run@2", "generate"),
    ]
    assert list(arm_names(arms).values()) == [
        "naive n=20",
        "naive n=5",
        "icl:20",
        "promptmii-zero [small]",
        "promptmii-zero [big] (generate)",
        "promptmii-zero [big] (score)",
        "promptmii [run@1]",  # the hash is all that tells these two apart
        "promptmii [run@2]",
    ]


# ---------------------------------------------------------------- the report


@pytest.fixture
def two_arms(tmp_path: Path) -> Path:
    """naive on t1-t4 and icl:20 on t1-t3: a win, a tie, a win, and a task only one arm has."""
    rows = [
        row("t1", "naive", 0.8, accuracy=0.9, prompt_tokens_per_query=100, llm_calls=10, seconds=1.0),
        row("t2", "naive", 0.5, accuracy=0.6, prompt_tokens_per_query=300, llm_calls=20, seconds=3.0),
        row("t3", "naive", 0.6, accuracy=0.7, prompt_tokens_per_query=200, llm_calls=30, seconds=2.0),
        row("t4", "naive", 0.9, accuracy=0.8, prompt_tokens_per_query=200, llm_calls=40, seconds=2.0),
        row("t1", "icl:20", 0.6, prompt_tokens_per_query=2000),
        row("t2", "icl:20", 0.5, prompt_tokens_per_query=2000),
        row("t3", "icl:20", 0.4, prompt_tokens_per_query=2000),
    ]
    (tmp_path / "run").mkdir()
    write(tmp_path / "run" / "results.jsonl", rows)
    return tmp_path / "run"  # a directory holding results.jsonl


def test_report_writes_every_file(two_arms: Path, tmp_path: Path) -> None:
    report = write_report([two_arms], tmp_path / "out")
    assert report == tmp_path / "out" / "report.md"
    names = {p.name for p in report.parent.iterdir()}
    assert names == {
        "report.md",
        "main.csv",
        "per_task.csv",
        "f1_vs_tokens.png",
        "win_rate.csv",
        "win_rate.png",
        "significance.csv",
    }
    for png in ("f1_vs_tokens.png", "win_rate.png"):
        data = (report.parent / png).read_bytes()
        assert data[:8] == PNG and len(data) > 1000
    text = report.read_text(encoding="utf-8")
    assert "No rows of method `promptmii`" in text
    assert "promptmii corpus check" in text  # how to get the bins section
    assert "`main.csv`" in text and "![win rate](win_rate.png)" in text


def test_main_table_means_by_hand(two_arms: Path, tmp_path: Path) -> None:
    report = write_report([two_arms], tmp_path / "out")
    main = by(read_csv(tmp_path / "out" / "main.csv"), "arm")
    assert list(main) == ["naive", "icl:20"]  # first-seen order of methods
    naive = main["naive"]
    assert naive["tasks"] == "4"
    assert naive["macro_f1"] == "0.7000"  # (0.8 + 0.5 + 0.6 + 0.9) / 4
    assert naive["accuracy"] == "0.7500"
    assert naive["prompt_tokens_per_query"] == "200.0000"
    assert naive["llm_calls"] == "25.0000"
    assert naive["cost_seconds"] == "2.0000"  # rows without model_seconds cost their wall seconds
    assert main["icl:20"]["tasks"] == "3" and main["icl:20"]["macro_f1"] == "0.5000"
    assert "| naive | 4 | 0.700 | 0.750 | 0.000 | 200.000 | 25.000 |" in report.read_text(encoding="utf-8")


def test_per_task_blank_where_missing(two_arms: Path, tmp_path: Path) -> None:
    write_report([two_arms], tmp_path / "out")
    per_task = by(read_csv(tmp_path / "out" / "per_task.csv"), "task")
    assert per_task["t1"] == {"task": "t1", "naive": "0.8000", "icl:20": "0.6000"}
    assert per_task["t4"]["icl:20"] == ""


def test_win_rate_matrix_with_tie(two_arms: Path, tmp_path: Path) -> None:
    write_report([two_arms], tmp_path / "out")
    matrix = by(read_csv(tmp_path / "out" / "win_rate.csv"), "arm")
    assert matrix["naive"]["icl:20"] == "0.8333"  # win, tie (half), win over the 3 common tasks
    assert matrix["icl:20"]["naive"] == "0.1667"
    assert matrix["naive"]["naive"] == ""


def test_significance_over_common_tasks(two_arms: Path, tmp_path: Path) -> None:
    write_report([two_arms], tmp_path / "out")
    [pair] = read_csv(tmp_path / "out" / "significance.csv")
    diffs = [0.8 - 0.6, 0.5 - 0.5, 0.6 - 0.4]
    low, high = bootstrap_ci(diffs, seed=0)
    assert (pair["arm_a"], pair["arm_b"], pair["tasks"]) == ("naive", "icl:20", "3")
    assert float(pair["mean_diff"]) == pytest.approx(0.4 / 3, abs=5e-5)
    assert (pair["ci_low"], pair["ci_high"]) == (f"{low:.4f}", f"{high:.4f}")
    assert low <= 0.4 / 3 <= high
    assert pair["wilcoxon_p"] == f"{wilcoxon_p(diffs):.4f}" == "0.5000"  # n=2 after the zero: 2/4


def test_one_common_task_leaves_test_empty(tmp_path: Path) -> None:
    write(tmp_path / "results.jsonl", [row("t1", "naive", 0.5), row("t1", "icl:20", 0.7), row("t2", "naive", 0.1)])
    write_report([tmp_path / "results.jsonl"], tmp_path / "out")
    [pair] = read_csv(tmp_path / "out" / "significance.csv")
    assert pair["mean_diff"] == "-0.2000"
    assert pair["ci_low"] == pair["ci_high"] == pair["wilcoxon_p"] == ""
    assert pair["note"] == "one common task: no CI or test"


def test_two_followers_get_their_own_sections(tmp_path: Path) -> None:
    rows = [
        row(t, m, f1, follower=f)
        for f in ("small@1", "big@2")
        for t, f1 in (("t1", 0.4), ("t2", 0.6))
        for m in ("naive", "icl:20")
    ]
    write(tmp_path / "results.jsonl", rows)
    report = write_report([tmp_path / "results.jsonl"], tmp_path / "out")
    text = report.read_text(encoding="utf-8")
    assert "## Follower `small@1`" in text and "## Follower `big@2`" in text
    assert text.count("### Main table") == 2 and text.count("### Win rate") == 2
    for name in ("main", "per_task", "win_rate", "significance"):
        assert (tmp_path / "out" / f"{name}_small-1.csv").exists()
        assert (tmp_path / "out" / f"{name}_big-2.csv").exists()
    assert not (tmp_path / "out" / "main.csv").exists()
    assert (tmp_path / "out" / "f1_vs_tokens_big-2.png").read_bytes()[:8] == PNG
    assert [r["arm"] for r in read_csv(tmp_path / "out" / "main_big-2.csv")] == ["naive", "icl:20"]


def test_bins_section(two_arms: Path, tmp_path: Path) -> None:
    bins = tmp_path / "bins.jsonl"
    lines = [
        {"task": "t1", "max_similarity": 0.9, "nearest_train_task": "x", "bin": ">0.85"},
        {"task": "t2", "max_similarity": 0.2, "nearest_train_task": "y", "bin": "<0.5"},
        {"task": "t3", "max_similarity": 0.1, "nearest_train_task": "z", "bin": "<0.5"},
    ]  # t4 is missing: "unknown"
    write(bins, lines)
    report = write_report([two_arms], tmp_path / "out", bins=bins)
    table = read_csv(tmp_path / "out" / "by_bin.csv")
    assert [r["bin"] for r in table] == [">0.85", "<0.5", "unknown"]
    rows = by(table, "bin")
    assert rows["<0.5"] == {"bin": "<0.5", "tasks": "2", "naive": "0.5500", "icl:20": "0.4500"}
    assert rows["unknown"] == {"bin": "unknown", "tasks": "1", "naive": "0.9000", "icl:20": ""}
    assert "promptmii corpus check" not in report.read_text(encoding="utf-8")


def test_bad_bins_files_fail_in_one_line(two_arms: Path, tmp_path: Path) -> None:
    with pytest.raises(PromptMIIError, match="no such bins file") as missing:
        write_report([two_arms], tmp_path / "out", bins=tmp_path / "nope.jsonl")
    assert "\n" not in str(missing.value)
    assert not (tmp_path / "out").exists()  # nothing written before the input is known good
    bad = write(tmp_path / "bins.jsonl", [{"task": "t1", "bin": "<0.5"}, {"task": "t2", "max_similarity": 0.3}])
    with pytest.raises(PromptMIIError, match=r'bins\.jsonl: line 2 lacks "task" or "bin"'):
        write_report([two_arms], tmp_path / "out", bins=bad)


def test_transfer_marks_matched_transfer_and_unknown(tmp_path: Path) -> None:
    def trained(task: str, f1: float, follower: str, spec: str, trained_for: str | None) -> Result:
        return row(
            task,
            "promptmii",
            f1,
            follower=follower,
            generator="run@9",
            generator_follower=trained_for,
            config={"follower": spec},
        )

    rows = [
        trained("t1", 0.6, "small@1", "llamacpp:small", "llamacpp:small"),
        trained("t2", 0.8, "small@1", "llamacpp:small", "llamacpp:small"),
        trained("t1", 0.3, "big@2", "llamacpp:big", "llamacpp:small"),
        trained("t1", 0.5, "old@3", "llamacpp:old", None),
        row("t1", "naive", 0.1, follower="small@1"),
    ]
    write(tmp_path / "results.jsonl", rows)
    report = write_report([tmp_path / "results.jsonl"], tmp_path / "out")
    table = by(read_csv(tmp_path / "out" / "transfer.csv"), "follower")
    assert table["small@1"] == {
        "generator": "run@9",
        "trained_for": "llamacpp:small",
        "follower": "small@1",
        "status": "matched",
        "tasks": "2",
        "macro_f1": "0.7000",
    }
    assert table["big@2"]["status"] == "transfer" and table["big@2"]["macro_f1"] == "0.3000"
    assert table["old@3"]["status"] == "unknown"
    assert "| run@9 | llamacpp:small | small@1 | matched | 2 | 0.700 |" in report.read_text(encoding="utf-8")


def test_last_row_wins_and_several_rows_per_cell_are_flagged(tmp_path: Path) -> None:
    first = write(tmp_path / "a.jsonl", [row("t1", "naive", 0.2), row("t2", "naive", 0.4)])
    second = write(
        tmp_path / "b.jsonl",
        [row("t1", "naive", 0.9), row("t2", "naive", 0.8, config={"template": "terse"})],
    )
    report = write_report([first, second], tmp_path / "out")
    per_task = by(read_csv(tmp_path / "out" / "per_task.csv"), "task")
    assert per_task["t1"]["naive"] == "0.9000"  # same key: the later file's row
    assert per_task["t2"]["naive"] == "0.6000"  # two fingerprints of one arm: their mean
    text = report.read_text(encoding="utf-8")
    assert "Rows: 3 (1 repeated (task, method, fingerprint) keys: the last kept)" in text
    assert "1 (arm, task) cells hold several rows, whose mean is used; config keys that differ" in text
    assert "differ between them: template" in text


def test_cost_seconds_is_model_seconds_where_a_row_has_them() -> None:
    replayed = row("t1", "gepa", 0.5, seconds=0.1, model_seconds=900.0)  # a resumed search: short wall time
    old = row("t1", "naive", 0.5, seconds=3.0)  # before schema 3
    assert (replayed.cost_seconds, old.cost_seconds) == (900.0, 3.0)


def test_mixed_schema_versions_read(tmp_path: Path) -> None:
    old = asdict(row("t1", "naive", 0.4))
    newer = ("search_budget", "search_follower_calls", "budget_exhausted", "candidates", "generator_follower")
    for name in (*newer, "model_seconds"):
        del old[name]
    old["schema_version"] = 1
    path = write(tmp_path / "results.jsonl", [old, row("t2", "naive", 0.6, search_budget=50)])
    write_report([path], tmp_path / "out")
    assert read_csv(tmp_path / "out" / "main.csv")[0]["macro_f1"] == "0.5000"


def test_unknown_schema_version_fails(tmp_path: Path) -> None:
    future = asdict(row("t2")) | {"schema_version": 99}
    path = write(tmp_path / "results.jsonl", [row("t1"), future])
    with pytest.raises(PromptMIIError, match="line 2 has schema_version 99"):
        write_report([path], tmp_path / "out")


def test_no_rows_fails_in_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "results.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(PromptMIIError) as error:
        write_report([empty], tmp_path / "out")
    assert str(error.value) == f"{empty}: no result rows"
    with pytest.raises(PromptMIIError, match="no such results file"):
        write_report([tmp_path / "missing.jsonl"], tmp_path / "out")


def test_same_files_give_byte_identical_report(two_arms: Path, tmp_path: Path) -> None:
    one = write_report([two_arms], tmp_path / "one")
    two = write_report([two_arms], tmp_path / "two")
    assert one.read_bytes() == two.read_bytes()
    for name in ("main.csv", "significance.csv", "win_rate.csv"):
        assert (one.parent / name).read_bytes() == (two.parent / name).read_bytes()


def test_templates_are_separate_arms(tmp_path: Path) -> None:
    rows = [
        row(t, "promptmii-zero", f1, generator="g", config={"template": template})
        for t, f1, template in (("a", 0.2, "terse"), ("a", 0.6, "structured"))
    ]
    report = write_report([write(tmp_path / "results.jsonl", rows)], tmp_path / "out").read_text()
    assert "promptmii-zero <terse>" in report and "promptmii-zero <structured>" in report


def test_report_cli(two_arms: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from promptmii.cli import main

    done = CliRunner().invoke(main, ["report", str(two_arms), "-o", str(tmp_path / "rep")], catch_exceptions=False)
    assert done.exit_code == 0 and done.output.strip() == str(tmp_path / "rep" / "report.md")
    missing = CliRunner().invoke(main, ["report", str(tmp_path / "nothing.jsonl")])
    assert (
        missing.exit_code == 1
        and missing.output.strip() == f"Error: {tmp_path / 'nothing.jsonl'}: no such results file"
    )


def test_a_row_missing_fields_fails_in_one_line(tmp_path: Path) -> None:
    broken = {k: v for k, v in asdict(row("t1")).items() if k != "macro_f1"}
    path = write(tmp_path / "results.jsonl", [row("t0"), broken])
    with pytest.raises(PromptMIIError, match=r"line 2 lacks fields \['macro_f1'\]") as error:
        write_report([path], tmp_path / "out")
    assert "\n" not in str(error.value)


def test_a_failed_row_is_listed_until_a_row_of_the_same_setting_is_done(tmp_path: Path) -> None:
    failed = row("t1", "naive", 0.2, status="failed", error="follower unreachable", fingerprint="old")
    done = [row("t1", "naive", 0.6), row("t2", "naive", 0.4)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    open_report = write_report([write(tmp_path / "a" / "results.jsonl", [failed, done[1]])], tmp_path / "ra")
    assert "## Failed rows" in open_report.read_text() and "follower unreachable" in open_report.read_text()
    redone = write_report([write(tmp_path / "b" / "results.jsonl", [failed, *done])], tmp_path / "rb")
    assert "## Failed rows" not in redone.read_text()
    assert by(read_csv(tmp_path / "rb" / "main.csv"), "arm")["naive"]["macro_f1"] == "0.5000"  # the failure's .2 is out
