"""No committed benchmark row hides a failure, and the checker that says so can tell a redone row from an open one."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO, load_script


def check_rows():
    return load_script("bench/check_rows.py")


def test_no_committed_benchmark_row_hides_a_failure() -> None:
    dirs = sorted(p.parent for p in (REPO / "bench" / "runs").glob("*/results.jsonl"))
    assert dirs
    assert [record for d in dirs for record in check_rows().hidden_failures(d)] == []


def test_a_failed_row_is_open_until_a_later_row_of_the_same_setting_is_done(tmp_path: Path) -> None:
    committed = REPO / "bench" / "runs" / "search_vs_one_call" / "results.jsonl"
    rows = [json.loads(line) for line in committed.read_text().splitlines() if line.strip()]
    redo = next(r for r in rows if (r["task"], r["method"], r["n_shots"]) == ("fnc1_stance", "promptmii-zero", 100))
    # the row it redid, as the run before results schema 4 wrote it: "done", with the failure in its warnings
    old = {k: v for k, v in redo.items() if k not in ("status", "error", "data_hash")}
    failure = "generator call failed: prompt of 34861 tokens + 1024 to generate exceeds the context of 32768"
    old |= {"schema_version": 3, "instruction": "", "warnings": [failure], "fingerprint": "before-schema-4"}
    (tmp_path / "results.jsonl").write_text(json.dumps(old) + "\n")
    [open_row] = check_rows().hidden_failures(tmp_path)
    assert "exceeds the context" in open_row["problem"] and open_row["written_as"] == "done (before schema 4)"
    (tmp_path / "results.jsonl").write_text(json.dumps(old) + "\n" + json.dumps(redo) + "\n")
    assert check_rows().hidden_failures(tmp_path) == []
    (tmp_path / "results.jsonl").write_text(json.dumps(redo) + "\n" + json.dumps(old) + "\n")
    assert len(check_rows().hidden_failures(tmp_path)) == 1  # a failure after the done row is open again


def test_instruction_stats_count_distinct_instructions_and_their_length() -> None:
    from promptmii.results import read_results

    stats = load_script("bench/_common.py").instruction_stats
    rows = read_results(REPO / "bench" / "runs" / "trained_vs_zero" / "results.jsonl")
    trained = [r for r in rows if r.method == "promptmii" and r.generator == "bench-grpo-cpu-lora@ce74d7644150"]
    # the 10-step GRPO generator wrote "Sort texts into categories." on 22 of 23 tasks: the collapse, counted
    collapsed = stats(trained)
    assert collapsed["rows"] == 23 and collapsed["distinct_instructions"] <= 2
    expected = round(sum(r.generator_completion_tokens for r in trained) / 23, 1)
    assert collapsed["mean_instruction_tokens"] == expected
    without_generator = [r for r in rows if r.generator is None]  # naive rows write no instruction
    assert stats(without_generator) == {
        "distinct_instructions": None,
        "rows": len(without_generator),
        "mean_instruction_tokens": None,
    }


def test_collapsed_rows_finds_the_followers_one_label_answers_in_the_committed_samples() -> None:
    from promptmii.results import read_results

    collapsed_rows = load_script("bench/_common.py").collapsed_rows
    run = REPO / "bench" / "runs" / "metaprompt_tuning"
    naive = {r.task: r for r in read_results(run / "results.jsonl") if r.method == "naive" and r.seed == 1}
    found = collapsed_rows(list(naive.values()), [run / "samples.jsonl", run / "no-such-samples.jsonl"])
    assert len(found) == len(naive)  # every row's 100 samples are there
    # the 1.5B follower answered "spam" to 98 of 100 SMS (8 spam) and "positive"/"negative" evenly on sst2
    assert found[naive["sms_spam"].key] and not found[naive["sst2"].key]


def test_collapsed_rows_skip_a_row_whose_samples_are_incomplete(tmp_path: Path) -> None:
    from test_analysis import row

    collapsed_rows = load_script("bench/_common.py").collapsed_rows
    whole, cut = row("a", m=3), row("b", m=3)

    def sample(r, index: int, prediction: str) -> dict:
        return {"task": r.task, "method": r.method, "fingerprint": r.fingerprint, "index": index,
                "gold": ["x", "y", "y"][index], "prediction": prediction}  # fmt: skip

    samples = [sample(whole, i, "x") for i in (0, 1, 2, 2)] + [sample(cut, i, "x") for i in (0, 1)]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    assert collapsed_rows([whole, cut], [tmp_path / "samples.jsonl"]) == {whole.key: True}
