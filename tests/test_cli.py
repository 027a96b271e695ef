"""The CLI through click's CliRunner: outputs match the rows written, errors are one line + exit 1."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SENTIMENT_WORDS, sentiment_examples, write_corpus
from fakes import FakeBackend, keyword_rule, query_input
from promptmii import models
from promptmii.cli import main
from promptmii.data import Task
from promptmii.instruction_file import load_instruction_file
from promptmii.results import read_results

HINT = "Decide the sentiment from the words love, great, hate and awful."


def write_examples(path: Path, count: int = 40) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for e in sentiment_examples(count):
            writer.writerow([e.text, e.label])
    return path


@pytest.fixture
def fakes(register_backend) -> dict[str, str]:
    follower = FakeBackend("fake-follower", rule=keyword_rule(SENTIMENT_WORDS, "positive", needs="sentiment"))
    generator = FakeBackend("fake-generator", rule=lambda chat: HINT)
    return {
        "follower": register_backend("fake:follower", follower),
        "generator": register_backend("fake:generator", generator),
    }


def run(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def naive_then_icl(data: Path, follower: str, out: Path) -> list[str]:
    """induce arguments that run naive, then icl (the step the faulty followers above fail on)."""
    return [
        "induce",
        str(data),
        "--n",
        "4",
        "--m",
        "12",
        "--methods",
        "naive,icl",
        "--follower",
        follower,
        "-o",
        str(out),
    ]


def induce_with_fakes(fakes: dict[str, str], data: Path, out: Path, *extra: str) -> object:
    models = ["--follower", fakes["follower"], "--base-generator", fakes["generator"]]
    return run("induce", str(data), "--n", "8", "--m", "12", *models, "-o", str(out), *extra)


def test_induce_prints_the_table_and_instruction(tmp_path: Path, fakes: dict[str, str]) -> None:
    data = write_examples(tmp_path / "reviews.csv")
    out = tmp_path / "out"
    result = induce_with_fakes(fakes, data, out, "--format", "table")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = ["method", "macro-F1", "accuracy", "invalid", "tokens/query", "LLM", "calls", "seconds", "status"]
    assert lines[0].split() == header
    rows = {r.method: r for r in read_results(out / "results.jsonl")}
    for method, row in rows.items():
        [line] = [line for line in lines if line.startswith(method + " ")]
        assert line.split()[1:5] == [
            f"{row.macro_f1:.3f}",
            f"{row.accuracy:.3f}",
            f"{row.invalid_rate:.3f}",
            str(row.prompt_tokens_per_query),
        ]
        assert line.split()[-1] == "ok"
    assert rows["promptmii-zero"].macro_f1 == 1.0 and rows["naive"].macro_f1 < 0.5
    assert f"Instruction (fake:generator):\n\n{HINT}" in result.stdout


def test_induce_shows_the_instruction_of_the_generator_asked_for(
    tmp_path: Path, fakes: dict[str, str], register_backend
) -> None:
    trained = register_backend("fake:trained", FakeBackend("trained", rule=lambda chat: "A trained instruction."))
    data = write_examples(tmp_path / "reviews.csv")
    asked = ["--generator", trained, "--methods", "naive,promptmii-zero", "--format", "table"]
    result = induce_with_fakes(fakes, data, tmp_path / "out", *asked)
    assert result.exit_code == 0, result.output
    assert f"Instruction (fake:generator):\n\n{HINT}" in result.stdout  # the untrained one: promptmii not asked for
    assert load_instruction_file(tmp_path / "out").generator == "fake:generator"


def test_induce_jsonl_output_equals_the_rows_on_disk(tmp_path: Path, fakes: dict[str, str]) -> None:
    data = write_examples(tmp_path / "reviews.csv")
    out = tmp_path / "out"
    result = induce_with_fakes(fakes, data, out, "--methods", "naive,promptmii-zero", "-q")
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    on_disk = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert printed == on_disk and [p["method"] for p in printed] == ["naive", "promptmii-zero"]


def test_induce_no_eval_makes_one_generator_call(tmp_path: Path, fakes: dict[str, str], register_backend) -> None:
    generator = FakeBackend("g2", rule=lambda chat: f"Instruction: {HINT}")
    spec = register_backend("fake:g2", generator)
    result = run(
        "induce",
        str(write_examples(tmp_path / "r.csv")),
        "--no-eval",
        "--m",
        "5",
        "--base-generator",
        spec,
        "--no-cache",
        "-o",
        str(tmp_path / "out"),
    )
    assert result.stdout.strip() == HINT and len(generator.calls) == 1
    assert (tmp_path / "out" / "instruction.json").is_file()


def test_eval_over_a_corpus_with_means_and_csv(tmp_path: Path, fakes: dict[str, str]) -> None:
    tasks = [
        Task("a", ("negative", "positive"), tuple(sentiment_examples(30)), tuple(sentiment_examples(10, 100)), "test"),
        Task(
            "b",
            ("negative", "positive"),
            tuple(sentiment_examples(30, 200)),
            tuple(sentiment_examples(10, 300)),
            "test",
        ),
    ]
    corpus = write_corpus(tmp_path / "corpus", tasks)
    args = [
        "eval",
        "--tasks",
        str(corpus),
        "--split",
        "test",
        "--methods",
        "naive,icl:4",
        "--n",
        "4",
        "--m",
        "10",
        "--follower",
        fakes["follower"],
        "-o",
        str(tmp_path / "o"),
    ]
    table = run(*args, "--format", "table")
    assert table.exit_code == 0 and "Mean over tasks:" in table.stdout
    as_csv = run(*args, "--format", "csv")  # second run: everything is done, rows come from the file
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [(r["task"], r["method"]) for r in rows] == [("a", "naive"), ("a", "icl:4"), ("b", "naive"), ("b", "icl:4")]
    assert len(read_results(tmp_path / "o" / "results.jsonl")) == 4


def test_models_lists_bundled_models() -> None:
    result = run("models", "--format", "json")
    assert [m["name"] for m in json.loads(result.stdout)] == [
        "qwen2.5-coder-1.5b-instruct",
        "qwen2.5-coder-0.5b-instruct",
        *models.shipped_adapters(),  # a trained generator in the package, if one ships
    ]


# ---------------------------------------------------------------- errors: one line, exit 1


def error_line(*args: str) -> str:
    """The error a failing command ends with: one `Error:` line on stderr, exit 1, nothing on stdout."""
    result = run(*args)
    assert result.exit_code == 1, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and result.stdout == ""
    return last


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    assert error_line("induce", str(tmp_path / "empty.csv")).endswith("empty.csv: the file is empty")
    data = str(write_examples(tmp_path / "r.csv"))
    assert "unknown backend 'lamacpp' (did you mean 'llamacpp'?)" in error_line(
        "induce", data, "--m", "5", "--no-eval", "--base-generator", "lamacpp:x"
    )
    assert "unknown model 'qwen'" in error_line(
        "induce", data, "--m", "5", "--no-eval", "--base-generator", "llamacpp:qwen"
    )
    assert "n=20 shown examples + m=50 held-out rows need 70" in error_line("induce", data)
    assert "unknown method 'icll'" in error_line("induce", data, "--methods", "icll")


def test_corrupt_gguf_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    data = str(write_examples(tmp_path / "r.csv"))
    (tmp_path / "junk.gguf").write_bytes(b"not a model at all")
    assert "junk.gguf: not a GGUF file" in error_line(
        "induce", data, "--m", "5", "--no-eval", "--base-generator", f"llamacpp:{tmp_path / 'junk.gguf'}"
    )
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    assert "cut.gguf: llama.cpp cannot load this GGUF" in error_line(
        "induce", data, "--m", "5", "--no-eval", "--base-generator", f"llamacpp:{tmp_path / 'cut.gguf'}"
    )


def test_a_broken_follower_stops_with_one_line_and_keeps_finished_rows(tmp_path: Path, register_backend) -> None:
    data = write_examples(tmp_path / "r.csv")
    broken = FakeBackend(
        "flaky", rule=lambda chat: "positive", fail_when=lambda chat: "Now classify" in chat[0]["content"]
    )
    spec = register_backend("fake:flaky", broken)
    line = error_line(*naive_then_icl(data, spec, tmp_path / "o"))
    assert line == "Error: the follower failed on all 12 inputs (fake failure)"
    assert [r.method for r in read_results(tmp_path / "o" / "results.jsonl")] == ["naive"]


def test_ctrl_c_exits_130_and_keeps_finished_rows(tmp_path: Path, register_backend) -> None:
    def interrupt_on_icl(chat):
        if "Now classify" in chat[0]["content"]:
            raise KeyboardInterrupt
        return "positive"

    spec = register_backend("fake:interrupted", FakeBackend("interrupted", rule=interrupt_on_icl))
    data = write_examples(tmp_path / "r.csv")
    result = run(*naive_then_icl(data, spec, tmp_path / "o"), "-q")
    assert result.exit_code == 130 and "run the same command again to resume" in result.stderr
    assert [r.method for r in read_results(tmp_path / "o" / "results.jsonl")] == ["naive"]


def test_induce_on_a_corpus_folder_says_to_use_eval(tmp_path: Path, sentiment_task: Task) -> None:
    other = Task("other", sentiment_task.labels, sentiment_task.train, sentiment_task.test, "test")
    corpus = write_corpus(tmp_path / "corpus", [sentiment_task, other])
    line = error_line("induce", str(corpus), "--n", "4", "--m", "5")
    assert line == (
        f"Error: {corpus}: a corpus of 2 tasks, and induce writes one task's instruction; give one task's file, "
        f"or score them all with: promptmii eval --tasks {corpus}"
    )


@pytest.mark.parametrize("command", ["induce", "eval"])
def test_eval_and_induce_take_every_eval_config_field_as_an_option(command: str) -> None:
    from dataclasses import fields

    from promptmii.experiment import EvalConfig

    params = {p.name: p for p in main.commands[command].params}
    for spec in fields(EvalConfig):
        assert spec.name in params, f"--{spec.name.replace('_', '-')} missing from {command}"
        assert params[spec.name].help == spec.metadata["help"]


def test_a_missing_extra_is_named_before_anything_runs(
    tmp_path: Path, fakes: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gepa", None)  # as if `pip install promptmii` left gepa out
    data = write_examples(tmp_path / "reviews.csv")
    line = error_line(
        "induce", str(data), "--n", "8", "--m", "12", "--methods", "naive,gepa", "-o", str(tmp_path / "o")
    )
    assert line == "Error: method gepa needs gepa, which is not installed: pip install 'promptmii[search]'"
    assert not (tmp_path / "o").exists()


def eval_two_tasks(tmp_path: Path, follower: str) -> Path:
    tasks = [
        Task(
            t,
            ("negative", "positive"),
            tuple(sentiment_examples(30, 1000 * i)),
            tuple(sentiment_examples(10, 500 + 1000 * i)),
            "test",
        )
        for i, t in enumerate(("a", "b"))
    ]
    corpus = write_corpus(tmp_path / "corpus", tasks)
    out = tmp_path / "runs"
    args = ["--tasks", str(corpus), "--methods", "naive,icl:4", "--n", "4", "--m", "10", "--follower", follower]
    assert run("eval", *args, "-o", str(out), "-q").exit_code == 0
    return out


def test_report_end_to_end_on_a_small_results_file(tmp_path: Path, register_backend) -> None:
    # Naive always answers "positive"; behind ICL shots the follower reads the input's words, so icl:4 wins.
    def rule(chat) -> str:
        icl = "Now classify" in chat[0]["content"]
        return "negative" if icl and any(w in query_input(chat) for w in ("awful", "hate")) else "positive"

    runs = eval_two_tasks(tmp_path, register_backend("fake:reader", FakeBackend("reader", rule=rule)))
    result = run("report", str(runs), "-o", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "report" / "report.md")
    rows = read_results(runs / "results.jsonl")
    main_csv = list(csv.DictReader(io.StringIO((tmp_path / "report" / "main.csv").read_text())))
    by_method = {r["arm"].split(" ")[0]: r for r in main_csv}
    for method in ("naive", "icl:4"):
        f1s = [r.macro_f1 for r in rows if r.method == method]
        assert len(f1s) == 2 and float(by_method[method]["macro_f1"]) == pytest.approx(sum(f1s) / 2, abs=5e-5)
    assert float(by_method["icl:4"]["macro_f1"]) > float(by_method["naive"]["macro_f1"])
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Main table" in report and "![macro-F1 vs tokens](f1_vs_tokens.png)" in report
    assert (tmp_path / "report" / "f1_vs_tokens.png").read_bytes()[:4] == b"\x89PNG"
    again = run("report", str(runs), "-o", str(tmp_path / "again"))  # the same files give the same report
    assert again.exit_code == 0 and (tmp_path / "again" / "report.md").read_text() == report


def test_report_without_its_extra_says_which(tmp_path: Path, register_backend, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = eval_two_tasks(tmp_path, register_backend("fake:p", FakeBackend("p", rule=lambda chat: "positive")))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    line = error_line("report", str(runs), "-o", str(tmp_path / "report"))
    assert line == "Error: promptmii report needs matplotlib, which is not installed: pip install 'promptmii[report]'"
    assert not (tmp_path / "report").exists()


def test_induce_with_check_says_whether_the_instruction_was_kept(tmp_path: Path, fakes: dict[str, str]) -> None:
    data = write_examples(tmp_path / "reviews.csv")
    result = induce_with_fakes(fakes, data, tmp_path / "out", "--methods", "naive,promptmii-zero+check", "-q")
    assert result.exit_code == 0, result.output
    assert "check on the 8 shown rows: instruction 1.000, Naive" in result.stderr
    assert "the instruction is kept" in result.stderr
    saved = load_instruction_file(tmp_path / "out")
    assert saved.instruction == HINT
    assert saved.check is not None and saved.check["kept"] and saved.check["instruction"] == HINT


def test_induce_refuses_check_without_evaluation(tmp_path: Path, fakes: dict[str, str]) -> None:
    data = write_examples(tmp_path / "reviews.csv")
    result = induce_with_fakes(fakes, data, tmp_path / "out", "--methods", "promptmii-zero+check", "--no-eval")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: promptmii-zero+check labels the shown rows with the follower; drop --no-eval or +check"
    )
