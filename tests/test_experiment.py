"""The pipeline above the backend, for real, with FakeBackend at the model boundary."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from conftest import SENTIMENT_WORDS
from fakes import FakeBackend, keyword_rule, query_input
from promptmii import prompts
from promptmii.baselines import parse_method
from promptmii.data import Task, draw, task_hash
from promptmii.errors import BackendError, DataError, PromptMIIError
from promptmii.evaluate import FOLLOWER_MAX_TOKENS
from promptmii.experiment import Backends, EvalConfig, _fingerprint, result_keys, run_eval
from promptmii.metrics import macro_f1
from promptmii.results import ResultsDir, read_results

HINT = "Decide the sentiment from the words love, great, hate and awful."


def make_backends(config: EvalConfig, follower: FakeBackend, generator: FakeBackend | None = None) -> Backends:
    overrides = {"follower": follower}
    if generator is not None:
        overrides["base_generator"] = generator
    return Backends(config, overrides=overrides)


def smart_follower(**kwargs) -> FakeBackend:
    """Labels correctly only when the prompt carries the hint (an instruction that helps)."""
    return FakeBackend("fake-follower", rule=keyword_rule(SENTIMENT_WORDS, "positive", needs="sentiment"), **kwargs)


def test_methods_rows_and_samples(tmp_path: Path, sentiment_task: Task) -> None:
    config = EvalConfig(methods=("naive", "icl:4", "promptmii-zero"), n=8, m=12, cache=False)
    follower, generator = smart_follower(), FakeBackend("fake-generator")
    generator.enqueue(f"Instruction:\n{HINT}")
    out = ResultsDir(tmp_path / "run")
    rows = run_eval([sentiment_task], config, out, backends=make_backends(config, follower, generator), quiet=True)

    by_method = {r.method: r for r in rows}
    assert list(by_method) == ["naive", "icl:4", "promptmii-zero"]
    naive, icl, zero = by_method.values()
    # Naive: the follower gets no hint and answers 'positive' always: F1 of (6 pos / 6 neg) = (2/3 + 0)/2
    assert naive.macro_f1 == pytest.approx(1 / 3) and naive.accuracy == 0.5
    assert zero.macro_f1 == 1.0 and zero.instruction == HINT
    assert (naive.llm_calls, icl.llm_calls, zero.llm_calls) == (12, 12, 13)
    assert (zero.generator_calls, zero.follower_calls, zero.generator) == (1, 12, "fake-generator")
    assert (icl.n_shots, icl.n_shots_used, naive.n_shots_used) == (4, 4, 0)
    # tokens per query = the shared prefix with an empty input, template included (fake: words + 3)
    expected = follower.count_tokens(prompts.follower_prompt(HINT, sentiment_task.labels, ""))
    assert zero.prompt_tokens_per_query == expected
    # the generator saw exactly the first n shots of the seeded draw, in the one example format
    shots, test = draw(sentiment_task, 8, 12, seed=0)
    assert prompts.format_examples(shots) in generator.calls[0][0][0]["content"]
    assert generator.calls[0][1].temperature == 0.0
    # every follower call is greedy and short
    assert {(p.temperature, p.max_tokens) for _, p in follower.calls} == {(0.0, FOLLOWER_MAX_TOKENS)}
    # samples: m rows per result, in the order of the scored test draw
    samples = [json.loads(line) for line in out.samples_path.read_text().splitlines()]
    assert len(samples) == 36
    zero_samples = [s for s in samples if s["method"] == "promptmii-zero"]
    assert [s["text"] for s in zero_samples] == [e.text for e in test]
    assert all(s["prediction"] == s["gold"] for s in zero_samples)
    # rows on disk are the rows returned, with config and seed
    assert read_results(out.results_path) == rows
    assert all(r.config["seed"] == 0 and r.config["m"] == 12 and r.run_id for r in rows)


def test_resume_skips_done_rows_and_makes_no_calls(tmp_path: Path, sentiment_task: Task) -> None:
    config = EvalConfig(methods=("naive", "icl:4"), n=4, m=12, cache=False)
    out = ResultsDir(tmp_path / "run")
    run_eval([sentiment_task], config, out, backends=make_backends(config, smart_follower()), quiet=True)
    follower = smart_follower()
    assert (
        run_eval(
            [sentiment_task], config, ResultsDir(tmp_path / "run"), backends=make_backends(config, follower), quiet=True
        )
        == []
    )
    assert follower.calls == []
    # a different m is a different experiment: not mistaken for done
    bigger = replace(config, m=10)
    assert len(run_eval([sentiment_task], bigger, out, backends=make_backends(bigger, follower), quiet=True)) == 2


def test_killed_run_keeps_finished_rows_and_resumes(tmp_path: Path, sentiment_task: Task) -> None:
    config = EvalConfig(methods=("naive", "icl:4"), n=4, m=12, cache=False)

    def dies_on_icl(chat):
        if "Now classify the next input." in chat[0]["content"]:
            raise KeyboardInterrupt
        return "positive"

    with pytest.raises(KeyboardInterrupt):
        run_eval(
            [sentiment_task],
            config,
            ResultsDir(tmp_path / "run"),
            backends=make_backends(config, FakeBackend("fake-follower", rule=dies_on_icl)),
            quiet=True,
        )
    assert [r.method for r in read_results(tmp_path / "run" / "results.jsonl")] == ["naive"]
    follower = smart_follower()
    rows = run_eval(
        [sentiment_task], config, ResultsDir(tmp_path / "run"), backends=make_backends(config, follower), quiet=True
    )
    assert [r.method for r in rows] == ["icl:4"] and len(follower.calls) == 12


def test_orphan_samples_of_an_unfinished_row_are_dropped(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "samples.jsonl").write_text(json.dumps({"task": "t", "method": "naive", "fingerprint": "f"}) + "\n{half")
    with ResultsDir(out).lock():  # the writer repairs what a crash left, under the lock
        assert (out / "samples.jsonl").read_text() == ""


def test_same_seed_same_numbers_other_seed_other_draw(tmp_path: Path, sentiment_task: Task) -> None:
    def run(seed: int, name: str):
        config = EvalConfig(methods=("icl:4",), n=4, m=6, seed=seed, cache=False)
        follower = FakeBackend(rule=lambda chat: "positive" if "great" in chat[0]["content"] else "negative")
        [row] = run_eval(
            [sentiment_task], config, ResultsDir(tmp_path / name), backends=make_backends(config, follower), quiet=True
        )
        return row, follower.calls

    (a, calls_a), (b, calls_b), (_, calls_c) = run(0, "a"), run(0, "b"), run(1, "c")
    assert (a.macro_f1, a.accuracy, calls_a) == (b.macro_f1, b.accuracy, calls_b)
    assert calls_c != calls_a


def test_a_failed_follower_call_fails_the_row_and_the_next_run_retries_it(tmp_path: Path, sentiment_task: Task) -> None:
    config = EvalConfig(methods=("naive",), n=4, m=12, cache=False)
    follower = FakeBackend(rule=lambda chat: "positive", fail_when=lambda chat: "review 100:" in chat[0]["content"])
    out = ResultsDir(tmp_path / "r")
    [row] = run_eval([sentiment_task], config, out, backends=make_backends(config, follower), quiet=True)
    assert row.failed and row.status == "failed"
    assert row.error == "1 of 12 follower calls failed (first: fake failure)" and row.error in row.warnings
    assert not out.samples_path.exists() or out.samples_path.read_text() == ""  # a failed row keeps no samples
    assert out.done_keys() == set()
    healthy = FakeBackend(rule=lambda chat: "positive")
    [retried] = run_eval([sentiment_task], config, out, backends=make_backends(config, healthy), quiet=True)
    assert not retried.failed and retried.key == row.key and len(healthy.calls) == 12
    assert [r.status for r in read_results(out.results_path)] == ["failed", "done"]
    assert len(out.samples_path.read_text().splitlines()) == 12
    assert run_eval([sentiment_task], config, out, backends=make_backends(config, healthy), quiet=True) == []


def test_a_backend_that_fails_everything_stops_the_run(tmp_path: Path, sentiment_task: Task) -> None:
    config = EvalConfig(methods=("naive", "icl"), n=4, m=12, cache=False)
    follower = FakeBackend(fail_when=lambda chat: True)
    with pytest.raises(BackendError, match="the follower failed on all 12 inputs"):
        run_eval(
            [sentiment_task], config, ResultsDir(tmp_path / "r"), backends=make_backends(config, follower), quiet=True
        )


def test_icl_too_long_for_the_context_drops_shots_and_says_so(tmp_path: Path, sentiment_task: Task) -> None:
    config = EvalConfig(methods=("icl:30",), n=4, m=12, cache=False)
    follower = FakeBackend(rule=lambda chat: "positive", context_length=150)
    [row] = run_eval(
        [sentiment_task], config, ResultsDir(tmp_path / "r"), backends=make_backends(config, follower), quiet=True
    )
    assert 0 < row.n_shots_used < 30 and row.n_shots == 30
    assert row.warnings == [
        f"icl:30 does not fit the follower's context of 150 tokens; used {row.n_shots_used} shots (the longest left out)"
    ]
    longest = max(len(chat[0]["content"].split()) + 3 for chat, _ in follower.calls)
    assert longest + FOLLOWER_MAX_TOKENS <= 150


def test_a_test_text_longer_than_the_context_is_refused(tmp_path: Path, sentiment_task: Task) -> None:
    huge = replace(
        sentiment_task, test=(*sentiment_task.test[:-1], replace(sentiment_task.test[-1], text="word " * 5000))
    )
    config = EvalConfig(methods=("naive",), n=4, m=12, cache=False)
    with pytest.raises(
        DataError,
        match=r"sentiment: test text \d+ is \d+ tokens with the prompt, longer than the follower's context of 4096",
    ):
        run_eval([huge], config, ResultsDir(tmp_path / "r"), backends=make_backends(config, FakeBackend()), quiet=True)


@pytest.mark.parametrize(
    ("generator", "error"),
    [
        (FakeBackend("g", fail_when=lambda chat: True), "generator call failed: fake failure"),
        (FakeBackend("g", rule=lambda chat: "   "), "the generator wrote an empty instruction"),
    ],
    ids=["failed-call", "empty-instruction"],
)
def test_no_instruction_is_a_failed_row_not_a_naive_score(
    tmp_path: Path, sentiment_task: Task, generator: FakeBackend, error: str
) -> None:
    config = EvalConfig(methods=("promptmii-zero",), n=4, m=12, cache=False)
    follower = smart_follower()
    out = ResultsDir(tmp_path / "r")
    [row] = run_eval([sentiment_task], config, out, backends=make_backends(config, follower, generator), quiet=True)
    assert row.failed and row.error == error and row.instruction.strip() == ""
    assert follower.calls == []  # nothing to score: the follower is not asked
    assert out.done_keys() == set()
    good = FakeBackend("g", rule=lambda chat: HINT)
    [retried] = run_eval([sentiment_task], config, out, backends=make_backends(config, follower, good), quiet=True)
    assert (retried.failed, retried.instruction, retried.macro_f1) == (False, HINT, 1.0)


def test_a_meta_prompt_too_long_for_the_generator_shows_fewer_examples_longest_first(
    tmp_path: Path, sentiment_task: Task
) -> None:
    long_text = "a long rambling review that goes on " * 6 + "I love it"
    at = sentiment_task.train.index(draw(sentiment_task, 8, 12, seed=0)[0][3])  # the 4th shot becomes long
    train = list(sentiment_task.train)
    train[at] = replace(train[at], text=long_text)
    task = replace(sentiment_task, train=tuple(train))
    config = EvalConfig(methods=("promptmii-zero",), n=8, m=12, max_instruction_tokens=50, cache=False)
    shots, _ = draw(task, 8, 12, seed=0)
    template = prompts.meta_template(prompts.DEFAULT_TEMPLATE)  # config.template None: the default for this model
    full = FakeBackend().count_tokens(prompts.meta_prompt(template, shots, task.labels))
    generator = FakeBackend("g", rule=lambda chat: HINT, context_length=full + 50 - 1)  # one token short
    out = ResultsDir(tmp_path / "r")
    [row] = run_eval([task], config, out, backends=make_backends(config, smart_follower(), generator), quiet=True)
    [(sent, params)] = generator.calls
    assert generator.count_tokens(sent) + params.max_tokens <= generator.context_length
    assert not row.failed and (row.n_shots, row.n_shots_used) == (8, 7)
    kept = [e for e in shots if e.text != long_text]
    assert len(kept) == 7 and prompts.format_examples(kept) in sent[0]["content"]
    assert "does not fit the generator's context" in row.warnings[0]
    tiny = FakeBackend("g", rule=lambda chat: HINT, context_length=60)
    with pytest.raises(DataError, match="the meta-prompt with even one example does not fit"):
        run_eval([task], config, ResultsDir(tmp_path / "r2"), backends=make_backends(config, smart_follower(), tiny))


def test_changed_data_is_computed_again_and_unchanged_data_reused(tmp_path: Path, sentiment_task: Task) -> None:
    other = replace(sentiment_task, id="other")
    config = EvalConfig(methods=("naive", "icl:4"), n=4, m=12, cache=False)
    out = ResultsDir(tmp_path / "r")
    run_eval([sentiment_task, other], config, out, backends=make_backends(config, smart_follower()), quiet=True)
    edited = replace(other, test=(replace(other.test[0], label="negative"), *other.test[1:]))  # same id, new rows
    follower = smart_follower()
    rows = run_eval([sentiment_task, edited], config, out, backends=make_backends(config, follower), quiet=True)
    assert [(r.task, r.method) for r in rows] == [("other", "naive"), ("other", "icl:4")]
    assert {r.data_hash for r in rows} == {task_hash(edited)} and task_hash(edited) != task_hash(other)
    assert run_eval([sentiment_task, edited], config, out, backends=make_backends(config, follower), quiet=True) == []


def test_rows_from_before_data_hashes_are_reused_while_their_scored_rows_match(
    tmp_path: Path, sentiment_task: Task
) -> None:
    config = EvalConfig(methods=("naive",), n=4, m=12, cache=False)
    out = ResultsDir(tmp_path / "r")
    [row] = run_eval([sentiment_task], config, out, backends=make_backends(config, smart_follower()), quiet=True)
    backends = make_backends(config, smart_follower())
    old_fp = _fingerprint(parse_method("naive"), config, backends, None)
    legacy = {**asdict(row), "fingerprint": old_fp, "data_hash": None, "schema_version": 3}
    del legacy["status"], legacy["error"]
    samples = [{**json.loads(s), "fingerprint": old_fp} for s in out.samples_path.read_text().splitlines()]
    out.results_path.write_text(json.dumps(legacy) + "\n")
    out.samples_path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    assert result_keys([sentiment_task], config, backends, out) == [("sentiment", "naive", old_fp)]
    assert run_eval([sentiment_task], config, out, backends=backends, quiet=True) == []
    edited = replace(sentiment_task, test=(replace(sentiment_task.test[0], text="I hate it, new"),
                                            *sentiment_task.test[1:]))  # fmt: skip
    [again] = run_eval([edited], config, out, backends=backends, quiet=True)
    assert again.fingerprint != old_fp and again.data_hash == task_hash(edited)


def test_test_side_smaller_than_m_is_scored_whole_and_recorded(tmp_path: Path, sentiment_task: Task) -> None:
    config = EvalConfig(methods=("naive",), n=4, m=50, cache=False)
    [row] = run_eval(
        [sentiment_task],
        config,
        ResultsDir(tmp_path / "r"),
        backends=make_backends(config, smart_follower()),
        quiet=True,
    )
    assert row.m == 12 and row.warnings == ["test side has 12 rows, fewer than m=50: scored all of them"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"methods": ("promptmii",), "generator": None}, "method promptmii needs --generator"),
        ({"methods": ("icl:x",)}, "only icl takes a shot count"),
        ({"methods": ("naiv",)}, "unknown method 'naiv' (did you mean 'naive'?)"),
        ({"methods": ()}, "no methods given"),
        ({"n": 0}, "n and m must be at least 1"),
        ({"template": "fancy"}, "unknown meta-prompt template 'fancy'"),
    ],
)
def test_config_rejects_impossible_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(PromptMIIError, match=re.escape(message)):
        EvalConfig(**kwargs)


def test_method_specs() -> None:
    assert parse_method("icl:100").spec == "icl:100" and parse_method("icl").n_shots(20) == 20
    assert parse_method("naive").n_shots(20) == 20 and parse_method("icl:5").n_shots(20) == 5


def test_promptmii_uses_the_given_generator_and_zero_the_base_one(tmp_path: Path, sentiment_task: Task) -> None:
    config = EvalConfig(methods=("promptmii-zero", "promptmii"), n=4, m=12, generator="trained:spec", cache=False)
    base, trained = FakeBackend("base", rule=lambda chat: "Classify."), FakeBackend("trained", rule=lambda chat: HINT)
    backends = Backends(config, overrides={"follower": smart_follower(), "base_generator": base, "generator": trained})
    zero, trained_row = run_eval([sentiment_task], config, ResultsDir(tmp_path / "r"), backends=backends, quiet=True)
    assert (zero.generator, zero.instruction, zero.macro_f1) == ("base", "Classify.", pytest.approx(1 / 3))
    assert (trained_row.generator, trained_row.instruction, trained_row.macro_f1) == ("trained", HINT, 1.0)
    assert zero.fingerprint != trained_row.fingerprint


def test_check_keeps_an_instruction_that_beats_naive_on_the_shown_examples(
    tmp_path: Path, sentiment_task: Task
) -> None:
    config = EvalConfig(methods=("promptmii-zero", "promptmii-zero+check"), n=8, m=12, cache=False)
    follower, generator = smart_follower(), FakeBackend("fake-generator", rule=lambda chat: HINT)
    out = ResultsDir(tmp_path / "run")
    plain, checked = run_eval([sentiment_task], config, out, backends=make_backends(config, follower, generator))
    # on the 8 shown examples the hint labels every one right, Naive answers "positive" to all of them
    shots, _ = draw(sentiment_task, 8, 12, seed=0)
    naive_on_shots = round(macro_f1([e.label for e in shots], ["positive"] * 8), 4)
    assert checked.check == {"instruction": HINT, "instruction_macro_f1": 1.0, "naive_macro_f1": naive_on_shots,
                             "n": 8, "kept": True}  # fmt: skip
    assert (checked.instruction, checked.macro_f1) == (HINT, plain.macro_f1) == (HINT, 1.0)
    # one generator call, 2 x 8 follower calls on the shown examples, 12 on the scored ones
    assert (checked.generator_calls, checked.follower_calls, checked.llm_calls) == (1, 28, 29)
    assert checked.search_follower_calls == 0 and plain.check is None
    assert checked.fingerprint != plain.fingerprint
    assert read_results(out.results_path) == [plain, checked]


def test_check_falls_back_to_naive_when_the_instruction_does_not_beat_it(tmp_path: Path, sentiment_task: Task) -> None:
    config = EvalConfig(methods=("naive", "promptmii-zero+check"), n=8, m=12, cache=False)
    generator = FakeBackend("fake-generator", rule=lambda chat: "Read the text and answer.")  # no hint: a tie
    out = ResultsDir(tmp_path / "run")
    naive, checked = run_eval(
        [sentiment_task], config, out, backends=make_backends(config, smart_follower(), generator)
    )
    assert checked.check["instruction"] == "Read the text and answer." and checked.check["kept"] is False
    assert checked.check["instruction_macro_f1"] == checked.check["naive_macro_f1"]
    assert checked.instruction == prompts.NAIVE_INSTRUCTION
    assert (checked.macro_f1, checked.prompt_tokens_per_query) == (naive.macro_f1, naive.prompt_tokens_per_query)


def test_a_failed_follower_call_in_the_check_fails_the_row_and_the_next_run_retries_it(
    tmp_path: Path, sentiment_task: Task
) -> None:
    config = EvalConfig(methods=("promptmii-zero+check",), n=8, m=12, cache=False)
    shots, _ = draw(sentiment_task, 8, 12, seed=0)
    flaky = smart_follower(fail_when=lambda chat: query_input(chat) == shots[0].text)
    generator = FakeBackend("fake-generator", rule=lambda chat: HINT)
    out = ResultsDir(tmp_path / "run")
    [failed] = run_eval([sentiment_task], config, out, backends=make_backends(config, flaky, generator))
    assert failed.failed and "follower calls of the check failed" in failed.error and failed.check is None
    [retried] = run_eval([sentiment_task], config, out, backends=make_backends(config, smart_follower(), generator))
    assert not retried.failed and retried.check["kept"] and retried.macro_f1 == 1.0


def test_only_the_generator_methods_take_check() -> None:
    assert parse_method("promptmii+check").spec == "promptmii+check" and parse_method("promptmii+check").check
    assert parse_method("promptmii-zero+check").name == "promptmii-zero"
    for spec in ("naive+check", "icl:20+check", "ape+check"):
        with pytest.raises(PromptMIIError, match=re.escape("only promptmii-zero and promptmii take +check")):
            parse_method(spec)
