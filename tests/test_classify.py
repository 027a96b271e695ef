"""instruction.json and `promptmii classify`: the file round trip, bad files, streaming, resume, failures."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SENTIMENT_WORDS, sentiment_examples
from fakes import FakeBackend, keyword_rule, query_input, user_text
from promptmii import backends, prompts
from promptmii.classify import ClassifyConfig, classify
from promptmii.cli import main
from promptmii.instruction_file import InstructionFile, InstructionFileError, load_instruction_file
from promptmii.results import read_results

HINT = "Decide the sentiment from the words love, great, hate and awful."
LABELS = ("negative", "positive")


def instruction_file(follower: str = "fake:follower", **changes: object) -> InstructionFile:
    settings = {
        "instruction": HINT,
        "labels": LABELS,
        "format_constraint": prompts.format_constraint(LABELS),
        "follower": follower,
        "generator": "fake:generator",
        "template": "terse",
        "n": 8,
        "seed": 0,
    }
    return InstructionFile(**(settings | changes))


@pytest.fixture
def follower(register_backend) -> FakeBackend:
    backend = FakeBackend("fake-follower", rule=keyword_rule(SENTIMENT_WORDS, "no idea", needs="sentiment"))
    register_backend("fake:follower", backend)
    return backend


def write_rows(path: Path, count: int, *, unlabelled: bool = True) -> Path:
    """`count` reviews as CSV or JSONL (by suffix): id + text, and the gold label unless unlabelled."""
    rows = [
        {"id": i, "text": e.text} | ({} if unlabelled else {"label": e.label})
        for i, e in enumerate(sentiment_examples(count))
    ]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def run(*args: str, stdin: str | None = None) -> object:
    return CliRunner().invoke(main, list(args), input=stdin, catch_exceptions=False)


def error_line(result: object) -> str:
    assert result.exit_code == 1, result.output
    return result.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- instruction.json


def test_instruction_file_round_trip(tmp_path: Path) -> None:
    made = instruction_file(evaluation=({"method": "naive", "macro_f1": 0.5},), label_values=(0, 1))
    path = made.save(tmp_path / "run")  # a folder: instruction.json inside
    assert path == tmp_path / "run" / "instruction.json"
    assert load_instruction_file(tmp_path / "run") == made == load_instruction_file(path)
    assert json.loads(path.read_text())["kind"] == "promptmii-instruction"
    assert made.follower_prompt("I love it") == prompts.follower_prompt(HINT, LABELS, "I love it")


def test_the_file_format_constraint_is_the_one_sent(tmp_path: Path) -> None:
    made = instruction_file(format_constraint="Say negative or positive.")
    assert made.follower_prompt("x")[0]["content"] == f"{HINT}\n\nSay negative or positive.\n\nInput: x"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such instruction file (write one with `promptmii induce`)"),
        ("{not json", "not valid JSON"),
        ('{"instruction": "x"}', 'not a promptmii instruction file (no "kind": "promptmii-instruction")'),
        ({"schema_version": 99}, "schema_version 99, this promptmii reads 1 (upgrade promptmii"),
        ({"labels": None}, "labels must be a list of non-empty strings"),
        ({"labels": ["spam"]}, "1 distinct label(s); a classifier needs at least two"),
        ({"labels": ["Spam", "spam "]}, "labels repeat or differ only in case or spaces"),
        ({"instruction": "  "}, "instruction is empty"),
        ({"n": "twenty"}, "n must be an integer"),
        ({"label_values": [1]}, "label_values must list one value per label (2)"),
    ],
)
def test_bad_instruction_files_are_refused_with_one_line(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "instruction.json"
    if isinstance(content, dict):
        record = json.loads(instruction_file().save(path).read_text()) | content
        path.write_text(json.dumps(record))
    elif content is not None:
        path.write_text(content)
    with pytest.raises(InstructionFileError) as error:
        load_instruction_file(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_file_without_required_fields_names_them(tmp_path: Path) -> None:
    path = instruction_file().save(tmp_path / "i.json")
    record = json.loads(path.read_text())
    del record["format_constraint"], record["seed"]
    path.write_text(json.dumps(record))
    with pytest.raises(InstructionFileError, match="lacks format_constraint, seed"):
        load_instruction_file(path)


@pytest.fixture
def fakes(follower: FakeBackend, register_backend) -> dict[str, str]:
    generator = FakeBackend("fake-generator", rule=lambda chat: HINT)
    register_backend("fake:generator", generator)
    return {"follower": "fake:follower", "generator": "fake:generator"}


def test_induce_writes_instruction_json_with_its_table(tmp_path: Path, fakes: dict[str, str]) -> None:
    data = write_rows(tmp_path / "reviews.csv", 40, unlabelled=False)
    out = tmp_path / "out"
    models = ["--follower", fakes["follower"], "--base-generator", fakes["generator"]]
    result = run("induce", str(data), "--n", "8", "--m", "12", "--text-col", "text", *models, "-o", str(out))
    assert result.exit_code == 0, result.output
    made = load_instruction_file(out / "instruction.json")
    rows = read_results(out / "results.jsonl")
    zero = next(r for r in rows if r.method == "promptmii-zero")
    assert made.instruction == zero.instruction == HINT
    assert (made.labels, made.format_constraint) == (LABELS, prompts.format_constraint(LABELS))
    assert (made.follower, made.generator, made.template, made.n, made.seed) == (
        "fake:follower",
        "fake:generator",
        "terse",
        8,
        0,
    )
    assert (made.follower_model_id, made.generator_model_id, made.task) == (
        "fake-follower",
        "fake-generator",
        "reviews",
    )
    assert [(e["method"], e["macro_f1"], e["m"]) for e in made.evaluation] == [(r.method, r.macro_f1, 12) for r in rows]
    assert made.promptmii_version and made.schema_version == 1


def test_induce_no_eval_needs_only_the_n_shown_rows(tmp_path: Path, fakes: dict[str, str]) -> None:
    data = write_rows(tmp_path / "reviews.csv", 40, unlabelled=False)  # n=20 + m=50 would need 70
    out = tmp_path / "out"
    result = run(
        "induce", str(data), "--no-eval", "--text-col", "text", "--base-generator", fakes["generator"], "-o", str(out)
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == HINT
    made = load_instruction_file(out)
    assert made.instruction == HINT and made.n == 20 and made.evaluation == ()
    [(meta_prompt, _)] = backends._LOADED[fakes["generator"]].calls
    assert user_text(meta_prompt).count("\nLabel: ") == 20  # the n shown rows, drawn from all 40
    too_few = write_rows(tmp_path / "few.csv", 10, unlabelled=False)
    line = error_line(run("induce", str(too_few), "--no-eval", "--base-generator", fakes["generator"]))
    assert "10 rows, but n=20 shown examples + m=0 held-out rows need 20" in line


# ---------------------------------------------------------------- classify


def classify_args(tmp_path: Path, data: Path, out: Path | None, *extra: str) -> list[str]:
    path = instruction_file().save(tmp_path / "instruction.json")
    return ["classify", str(path), str(data), *(["-o", str(out)] if out else []), "--no-cache", "-q", *extra]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_classify_labels_every_row_in_shared_prefix_batches(tmp_path: Path, follower: FakeBackend, suffix: str) -> None:
    data = write_rows(tmp_path / f"in{suffix}", 10)
    (tmp_path / f"in{suffix}").write_text((tmp_path / f"in{suffix}").read_text())
    out = tmp_path / f"out{suffix}"
    result = run(*classify_args(tmp_path, data, out, "--chunk-size", "4"))
    assert result.exit_code == 0, result.output
    rows, gold = read_rows(out), sentiment_examples(10)
    assert [str(r["id"]) for r in rows] == [str(i) for i in range(10)]
    assert [r["prediction"] for r in rows] == [e.label for e in gold]
    assert {str(r["invalid"]).lower() for r in rows} == {str(r["failed"]).lower() for r in rows} == {"false"}
    assert follower.batches == [4, 4, 2]
    prefixes = {chat[0]["content"].rsplit("Input: ", 1)[0] for chat, _ in follower.calls}
    assert prefixes == {instruction_file().follower_prompt("")[0]["content"].rsplit("Input: ", 1)[0]}
    assert "10 rows in" in result.stderr and "0 invalid, 0 failed" in result.stderr


def test_an_off_label_reply_is_invalid_and_never_a_label(tmp_path: Path, register_backend) -> None:
    register_backend("fake:follower", FakeBackend("f", rule=lambda chat: "it is positive, I think"))
    out = tmp_path / "out.csv"
    result = run(*classify_args(tmp_path, write_rows(tmp_path / "in.csv", 3), out))
    assert result.exit_code == 0, result.output
    assert [(r["prediction"], r["invalid"], r["failed"]) for r in read_rows(out)] == [("", "true", "false")] * 3


def test_classify_flushes_each_chunk_before_asking_the_next_and_reads_lazily(tmp_path: Path, register_backend) -> None:
    out = tmp_path / "out.csv"
    seen: list[int] = []
    lines = LazyLines(["id,text\n", *(f"{i},review {i}\n" for i in range(9))])

    def rule(chat: list[dict[str, str]]) -> str:
        seen.append(len(out.read_text().splitlines()) if out.exists() else 0)
        if lines.read_at_first_call is None:
            lines.read_at_first_call = lines.read
        return "positive"

    register_backend("fake:follower", FakeBackend("f", rule=rule))
    summary = classify(
        instruction_file(), "-", str(out), ClassifyConfig(chunk_size=4, cache=False), stdin=lines, quiet=True
    )
    assert summary.rows == 9
    assert seen == [1] * 4 + [5] * 4 + [9]  # the header, then each chunk on disk before the next is asked
    assert lines.read_at_first_call <= 1 + 4 + 1  # header + one chunk (+ the reader's look-ahead), not the file


class LazyLines(io.StringIO):
    """stdin that remembers how many lines were read when the follower was first asked."""

    def __init__(self, lines: list[str]):
        super().__init__("".join(lines))
        self.read = 0
        self.read_at_first_call: int | None = None

    def readline(self, *args: object) -> str:  # iteration reads through readline too
        self.read += 1
        return super().readline(*args)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_killed_run_resumes_without_losing_or_repeating_rows(tmp_path: Path, register_backend, suffix: str) -> None:
    data, out = write_rows(tmp_path / f"in{suffix}", 10), tmp_path / f"out{suffix}"

    def interrupt_at_row_6(chat):
        if query_input(chat).startswith("review 6:"):
            raise KeyboardInterrupt
        return keyword_rule(SENTIMENT_WORDS, "no idea")(chat)

    register_backend("fake:follower", FakeBackend("f", rule=interrupt_at_row_6))
    killed = run(*classify_args(tmp_path, data, out, "--chunk-size", "4"))
    assert killed.exit_code == 130 and "run the same command again to resume" in killed.stderr
    assert len(read_rows(out)) == 4  # rows 0-3; the chunk with row 6 never landed
    with out.open("a") as f:
        f.write("4,review 4: I great it,posi" if suffix == ".csv" else '{"id": 4, "text": "review 4: I gr')

    resumed = FakeBackend("f2", rule=keyword_rule(SENTIMENT_WORDS, "no idea"))
    register_backend("fake:follower", resumed)
    again = run(*classify_args(tmp_path, data, out, "--chunk-size", "4"))
    assert again.exit_code == 0, again.output
    rows = read_rows(out)
    assert [str(r["id"]) for r in rows] == [str(i) for i in range(10)]
    assert [r["prediction"] for r in rows] == [e.label for e in sentiment_examples(10)]
    assert [query_input(chat).split(":")[0] for chat, _ in resumed.calls] == [f"review {i}" for i in range(4, 10)]
    assert "10 rows in" in again.stderr and "(4 resumed)" in again.stderr


def test_resume_refuses_an_output_written_from_another_input(tmp_path: Path, follower: FakeBackend) -> None:
    out = tmp_path / "out.csv"
    assert run(*classify_args(tmp_path, write_rows(tmp_path / "a.csv", 3), out)).exit_code == 0
    other = tmp_path / "b.csv"
    other.write_text("id,text\n" + "".join(f"{i},something else {i}\n" for i in range(5)))
    line = error_line(run(*classify_args(tmp_path, other, out)))
    assert "row 3 was labelled from another text than" in line and "use another -o" in line
    line = error_line(run(*classify_args(tmp_path, other, out, "--decoding", "score")))
    assert "its columns are not the ones this run writes" in line


def test_failed_calls_are_marked_failed_and_the_exit_code_says_so(tmp_path: Path, register_backend) -> None:
    flaky = FakeBackend(
        "f", rule=keyword_rule(SENTIMENT_WORDS, "no idea"), fail_when=lambda chat: "review 2:" in query_input(chat)
    )
    register_backend("fake:follower", flaky)
    out = tmp_path / "out.jsonl"
    result = run(*classify_args(tmp_path, write_rows(tmp_path / "in.csv", 6), out))
    assert error_line(result) == f"Error: 1 rows failed and are marked failed in {out} (first: fake failure)"
    rows = read_rows(out)
    assert [(r["prediction"], r["failed"], r["error"]) for r in rows][2] == (None, True, "fake failure")
    assert [r["prediction"] for i, r in enumerate(rows) if i != 2] == [
        e.label for i, e in enumerate(sentiment_examples(6)) if i != 2
    ]


def test_an_outage_stops_the_run_and_the_rerun_finishes_it(tmp_path: Path, register_backend) -> None:
    data, out = write_rows(tmp_path / "in.csv", 8), tmp_path / "out.csv"
    down = FakeBackend("f", rule=lambda chat: "positive", fail_when=lambda chat: "review 5:" in query_input(chat)
                       or "review 4:" in query_input(chat))  # fmt: skip
    register_backend("fake:follower", down)
    line = error_line(run(*classify_args(tmp_path, data, out, "--chunk-size", "2")))
    assert line == (
        "Error: the follower failed on all 2 rows from row 5 on (fake failure); the rows before are saved: "
        "run the same command again to resume"
    )
    assert len(read_rows(out)) == 4  # nothing of the failed chunk was written, nothing labelled
    register_backend("fake:follower", FakeBackend("f", rule=lambda chat: "positive"))
    assert run(*classify_args(tmp_path, data, out, "--chunk-size", "2")).exit_code == 0
    assert [r["id"] for r in read_rows(out)] == [str(i) for i in range(8)]


def test_classify_reads_stdin_and_writes_stdout(tmp_path: Path, follower: FakeBackend) -> None:
    lines = "".join(json.dumps({"text": e.text, "n": i}) + "\n" for i, e in enumerate(sentiment_examples(3)))
    result = run(*classify_args(tmp_path, Path("-"), None), stdin=lines)
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(p["n"], p["prediction"]) for p in printed] == [(i, e.label) for i, e in enumerate(sentiment_examples(3))]
    as_csv = run(*classify_args(tmp_path, Path("-"), None, "--format", "csv"), stdin="text\nI love it\nI hate it\n")
    assert as_csv.stdout.splitlines() == [
        "text,prediction,invalid,failed,error",
        "I love it,positive,false,false,",
        "I hate it,negative,false,false,",
    ]


def test_score_decoding_writes_label_probabilities(tmp_path: Path, register_backend) -> None:
    def scorer(chat, labels):
        return (
            {"negative": -0.1, "positive": -2.4}
            if "hate" in query_input(chat)
            else {"negative": -3.0, "positive": -0.05}
        )

    register_backend("fake:follower", FakeBackend("f", scorer=scorer))
    out = tmp_path / "out.csv"
    result = run(*classify_args(tmp_path, write_rows(tmp_path / "in.csv", 4), out, "--decoding", "score"))
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    for row in rows:
        p = {label: float(row[f"p({label})"]) for label in LABELS}
        assert abs(sum(p.values()) - 1) < 1e-9 and row["prediction"] == max(p, key=p.get)
    assert [r["prediction"] for r in rows] == ["positive", "positive", "positive", "negative"]
    assert float(rows[3]["p(negative)"]) == pytest.approx(1 / (1 + 2.718281828459045 ** (-2.3)))


def test_another_follower_is_warned_about(tmp_path: Path, follower: FakeBackend, register_backend, caplog) -> None:
    register_backend("fake:other", FakeBackend("other", rule=lambda chat: "positive"))
    with caplog.at_level(logging.WARNING, logger="promptmii.classify"):
        result = run(*classify_args(tmp_path, write_rows(tmp_path / "in.csv", 3), None, "--follower", "fake:other"))
    assert result.exit_code == 0, result.output
    assert [r.getMessage() for r in caplog.records] == [
        "the instruction was validated on fake:follower; labelling with fake:other (its scores may not carry over)"
    ]


def test_text_columns_are_detected_or_given(tmp_path: Path, follower: FakeBackend) -> None:
    data = tmp_path / "in.csv"
    data.write_text("ticket,body\n1,I love it\n")
    # no known name: the statistics of labelled files decide (mostly distinct strings, longest on average)
    detected = run(*classify_args(tmp_path, data, None))
    assert detected.stdout.splitlines()[1] == "1,I love it,positive,false,false,"
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text('{"a": 1, "b": 2}\n')
    line = error_line(run(*classify_args(tmp_path, numbers, None)))
    assert "no text column among: a, b" in line and "--text-col" in line
    given = run(*classify_args(tmp_path, data, None, "--text-col", "body"))
    assert given.stdout.splitlines()[1] == "1,I love it,positive,false,false,"
    line = error_line(run(*classify_args(tmp_path, data, None, "--text-col", "bdy")))
    assert "column 'bdy' not found (did you mean 'body'?)" in line
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("premise,hypothesis\nI love it,fine\n")
    assert run(*classify_args(tmp_path, pairs, None)).exit_code == 0
    assert query_input(follower.calls[-1][0]) == "Premise: I love it\nHypothesis: fine"
    clash = tmp_path / "clash.csv"
    clash.write_text("text,prediction\nI love it,x\n")
    assert "already has a column 'prediction', which classify writes" in error_line(
        run(*classify_args(tmp_path, clash, None))
    )
    assert "no rows to classify" in error_line(run(*classify_args(tmp_path, Path("-"), None), stdin="\n"))


def test_memory_does_not_grow_with_the_file(tmp_path: Path, follower: FakeBackend) -> None:
    import tracemalloc

    class Unlogged(list):  # the fake's call log would grow with the rows; this test measures classify alone
        def append(self, item: object) -> None:
            pass

    follower.calls, follower.batches = Unlogged(), Unlogged()
    peaks = []
    for count in (200, 4000):
        data = write_rows(tmp_path / f"in{count}.csv", count)
        tracemalloc.start()
        classify(
            instruction_file(), str(data), str(tmp_path / f"out{count}.csv"), ClassifyConfig(cache=False), quiet=True
        )
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert len(read_rows(tmp_path / f"out{count}.csv")) == count
    assert peaks[1] < 1.5 * peaks[0]  # 20x the rows; holding them would take 20x the memory
