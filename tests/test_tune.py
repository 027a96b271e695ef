"""Meta-prompt tuning and template selection with FakeBackend at the model boundary.

The fakes make the meta-prompt matter: the generator writes a helpful instruction (one that mentions
sentiment) only when the meta-prompt it gets mentions sentiment, and the follower is right only
behind such an instruction. The reflection LM proposes such a meta-prompt, so a working search
finds it, and selection on validation keeps it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SENTIMENT_WORDS, sentiment_examples, write_corpus
from fakes import FakeBackend, keyword_rule, user_text
from promptmii import metaprompts, prompts
from promptmii.backends import GenParams
from promptmii.cli import main
from promptmii.data import Task
from promptmii.errors import PromptMIIError
from promptmii.induce import InduceConfig, induce
from promptmii.results import read_results
from promptmii.tune import (
    COMPONENT,
    ECHO_RETRIES,
    INSTRUCTION_SHOWN,
    PLACEHOLDER_RETRIES,
    REFLECTION_PROMPT,
    MetaPromptAdapter,
    TuneConfig,
    TuneLedger,
    TuneReflection,
    TuneTask,
    is_echo,
    normalized,
    task_feedback,
    tune,
)

LABELS = ("negative", "positive")
HINT = "Decide the sentiment from the words love, great, hate and awful."
TUNED = "Write sentiment guidelines for these labels: {labels}\n\n{examples}\n\nReply with the guidelines only."


def is_reflection(chat) -> bool:
    return "I use the meta-prompt below" in user_text(chat)


def generator_rule(chat) -> str:
    """Reflection proposes TUNED; induction writes HINT only from a meta-prompt that mentions sentiment."""
    if is_reflection(chat):
        return f"Here is a better one:\n```\n{TUNED}\n```"
    return HINT if "sentiment" in user_text(chat) else "Sort the texts."


def make_generator() -> FakeBackend:
    return FakeBackend("fake-generator", rule=generator_rule)


def make_follower() -> FakeBackend:
    return FakeBackend("fake-follower", rule=keyword_rule(SENTIMENT_WORDS, "positive", needs="sentiment"))


def tune_task(name: str, offset: int = 0, m: int = 4) -> TuneTask:
    return TuneTask(name, LABELS, tuple(sentiment_examples(4, offset)), tuple(sentiment_examples(m, offset + 50)))


def ledger(generator: FakeBackend, follower: FakeBackend, budget: int = 1000) -> TuneLedger:
    return TuneLedger(generator, follower, generator, budget, InduceConfig())


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    tasks = [
        Task(f"train{i}", LABELS, tuple(sentiment_examples(30, 100 * i)), tuple(sentiment_examples(12, 100 * i + 50)),
             split="train")
        for i in range(4)
    ] + [
        Task(f"val{i}", LABELS, tuple(sentiment_examples(30, 1000 + 100 * i)),
             tuple(sentiment_examples(12, 1050 + 100 * i)), split="validation")
        for i in range(2)
    ]  # fmt: skip
    return write_corpus(tmp_path / "corpus", tasks)


def small_config(corpus: Path, **overrides: object) -> TuneConfig:
    settings = {"corpus": str(corpus), "generator": "fake:gen", "follower": "fake:fol", "budget": 80, "n": 4, "m": 4,
                "pareto_tasks": 1, "minibatch": 1, "finalists": 2}  # fmt: skip
    return TuneConfig(**(settings | overrides))


def search_calls(*backends: FakeBackend) -> int:
    """Calls a search made to score candidates (reflection prompts excluded)."""
    return sum(not is_reflection(chat) for b in backends for chat, _ in b.calls)


# ------------------------------------------------------------------ the adapter


def test_adapter_evaluates_one_task_per_instance_with_its_macro_f1() -> None:
    generator, follower = make_generator(), make_follower()
    adapter = MetaPromptAdapter(ledger(generator, follower))
    batch = [tune_task("a"), tune_task("b", 10), tune_task("c", 20)]
    result = adapter.evaluate(batch, {COMPONENT: TUNED}, capture_traces=True)
    assert len(result.outputs) == len(result.scores) == len(result.trajectories) == len(batch)
    assert result.scores == [1.0, 1.0, 1.0]  # HINT makes the follower right
    assert [o["task"] for o in result.outputs] == ["a", "b", "c"] and result.outputs[0]["instruction"] == HINT
    assert adapter.ledger.used == 3 * (1 + 4) == len(generator.calls) + len(follower.calls)

    plain = adapter.evaluate(batch[:1], {COMPONENT: prompts.meta_template("terse")}, capture_traces=False)
    # without the hint the follower says "positive" to all: F1 2/3 on positive, 0 on negative
    assert plain.scores == [pytest.approx(1 / 3)] and plain.trajectories is None


def test_reflective_dataset_shows_instruction_mistakes_and_score() -> None:
    adapter = MetaPromptAdapter(ledger(make_generator(), make_follower()))
    candidate = {COMPONENT: prompts.meta_template("terse")}
    result = adapter.evaluate([tune_task("a")], candidate, capture_traces=True)
    [record] = adapter.make_reflective_dataset(candidate, result, [COMPONENT])[COMPONENT]
    assert record["Generated instruction"] == "Sort the texts."
    assert "Correct label: negative; follower answered: positive" in record["Follower mistakes"]
    assert record["Feedback"] == "Follower macro-F1 0.333."
    assert record["Task"] == "labels: negative, positive"


def test_an_instruction_cut_off_at_the_token_limit_is_named_and_shown_shortened() -> None:
    loop = " ".join(["Label the sentiment."] * 600)  # 1,800 whitespace tokens: the fake counts words
    generator = FakeBackend("fake-generator", rule=lambda chat: loop)
    led = TuneLedger(generator, make_follower(), generator, 1000, InduceConfig(max_tokens=1800))
    adapter = MetaPromptAdapter(led)
    result = adapter.evaluate([tune_task("a")], {COMPONENT: TUNED}, capture_traces=True)
    [score] = result.trajectories
    assert score.cut_off and "ran to its token limit and was cut off" in task_feedback(score)
    [record] = adapter.make_reflective_dataset({COMPONENT: TUNED}, result, [COMPONENT])[COMPONENT]
    assert record["Generated instruction"].endswith(f"... [{len(loop) - INSTRUCTION_SHOWN} more characters]")
    led.induce_config = InduceConfig(max_tokens=1801)  # one token to spare: not cut off
    assert not led.score(TUNED, tune_task("b")).cut_off


@pytest.mark.parametrize(
    ("text", "missing"),
    [("Write an instruction.\n\n{examples}", "{labels}"), ("Labels: {labels}", "{examples}"), ("Hi.", "{labels} and")],
)
def test_a_candidate_without_placeholders_scores_zero_without_calls(text: str, missing: str) -> None:
    generator, follower = make_generator(), make_follower()
    adapter = MetaPromptAdapter(ledger(generator, follower))
    result = adapter.evaluate([tune_task("a"), tune_task("b")], {COMPONENT: text}, capture_traces=True)
    assert result.scores == [0.0, 0.0] and len(result.outputs) == 2
    assert generator.calls == [] and follower.calls == [] and adapter.ledger.used == 0
    feedback = task_feedback(result.trajectories[0])
    assert missing in feedback and "score 0" in feedback


def reflection_prompt(meta_prompt: str) -> str:
    """REFLECTION_PROMPT as gepa renders it for one candidate."""
    return REFLECTION_PROMPT.replace("<curr_param>", meta_prompt).replace("<side_info>", "(scores)")


def test_an_echoed_meta_prompt_is_asked_again_sampled_until_something_new_comes() -> None:
    shown = prompts.meta_template("terse")
    replies = iter([f"```\n{shown.strip()}\n```", f"### Meta-prompt\n\n{shown}", f"```\n{TUNED}\n```"])
    gen = FakeBackend("fake-generator", rule=lambda chat: next(replies))
    reflection = TuneReflection(ledger(gen, make_follower()), 256, seed=0)
    assert TUNED in reflection(reflection_prompt(shown))
    assert reflection.echoes == 2 and reflection.ledger.reflection_calls == 3
    temperatures = [params.temperature for _, params in gen.calls]
    assert temperatures[0] == 0.0 and all(t > 0 for t in temperatures[1:])
    assert len({params.seed for _, params in gen.calls}) == 3  # a new seed each time, so the journal cannot replay


def test_an_edit_of_the_shown_meta_prompt_is_not_an_echo() -> None:
    shown = prompts.meta_template("terse")
    assert is_echo(shown.strip(), shown) and is_echo(f"### Meta-prompt\n\n{shown}", shown)
    assert not is_echo(shown + "\n- names the most frequent label, for texts that fit no other.", shown)
    assert not is_echo(shown.replace("with no explanation", "nothing else"), shown)


def test_a_reflection_lm_that_only_echoes_is_given_up_on_after_the_retries() -> None:
    shown = prompts.meta_template("terse")
    gen = FakeBackend("fake-generator", rule=lambda chat: f"```\n{shown}\n```")
    reflection = TuneReflection(ledger(gen, make_follower()), 256, seed=0)
    reflection(reflection_prompt(shown))
    assert reflection.echoes == ECHO_RETRIES and len(gen.calls) == 1 + ECHO_RETRIES


def test_a_proposal_without_placeholders_is_answered_in_the_same_chat_with_what_it_lacks() -> None:
    shown = prompts.meta_template("terse")
    dropped = "Write a short instruction for the task.\n1. Name the labels.\n2. Name the labels."
    replies = iter([f"```\n{dropped}\n```", f"```\n{TUNED}\n```"])
    gen = FakeBackend("fake-generator", rule=lambda chat: next(replies))
    reflection = TuneReflection(ledger(gen, make_follower()), 256, seed=0)
    assert TUNED in reflection(reflection_prompt(shown))
    assert reflection.placeholder_misses == 1 and reflection.echoes == 0
    (first, _), (retry, params) = gen.calls
    assert [m["role"] for m in retry] == ["user", "assistant", "user"] and retry[0] == first[0]
    assert dropped in retry[1]["content"] and "lacks the placeholders {labels} and {examples}" in retry[2]["content"]
    assert params.temperature == 0.0


def test_a_reflection_lm_that_keeps_dropping_placeholders_is_given_up_on_after_the_retries() -> None:
    gen = FakeBackend("fake-generator", rule=lambda chat: "```\nLabels: {labels}\n```")
    reflection = TuneReflection(ledger(gen, make_follower()), 256, seed=0)
    assert "{examples}" not in reflection(reflection_prompt(prompts.meta_template("terse")))
    assert reflection.placeholder_misses == PLACEHOLDER_RETRIES and len(gen.calls) == 1 + PLACEHOLDER_RETRIES
    assert "lacks the placeholder {examples}: without it" in user_text(gen.calls[-1][0])


def test_candidates_that_differ_only_in_surrounding_whitespace_are_scored_as_one() -> None:
    gen, fol = make_generator(), make_follower()
    led = ledger(gen, fol)
    first = led.score(TUNED, tune_task("a"))
    second = led.score("\n" + TUNED + "\n\n", tune_task("a"))
    assert first == second and normalized(TUNED) == TUNED + "\n"
    [(chat_a, _), (chat_b, _)] = gen.calls
    assert chat_a == chat_b  # the generator saw the same meta-prompt both times


def test_a_failed_generator_call_scores_zero_and_three_in_a_row_stop() -> None:
    generator = FakeBackend("fake-generator", rule=generator_rule, fail_when=lambda chat: True)
    adapter = MetaPromptAdapter(ledger(generator, make_follower()))
    result = adapter.evaluate([tune_task("a")], {COMPONENT: TUNED}, capture_traces=True)
    assert result.scores == [0.0] and "generator call failed" in task_feedback(result.trajectories[0])
    with pytest.raises(PromptMIIError, match="generator failed 3 times in a row"):
        adapter.evaluate([tune_task("b"), tune_task("c")], {COMPONENT: TUNED})


def test_the_ledger_refuses_a_task_it_cannot_afford() -> None:
    from promptmii.search import BudgetExhausted

    follower = make_follower()
    book = ledger(make_generator(), follower, budget=7)
    book.score(TUNED, tune_task("a"))  # 5 calls
    with pytest.raises(BudgetExhausted):
        book.score(TUNED, tune_task("b"))
    assert book.used == 5 and len(follower.calls) == 4 and book.exhausted


# ------------------------------------------------------------------ headers and selection


def test_header_round_trip_keeps_the_body_byte_for_byte() -> None:
    body = "---\nA body that opens like a header.\n{labels}\n{examples}\n"
    header = {"generator": "qwen@http://h:1/v1", "validation_macro_f1": 0.5123, "budget": 3000}
    text = metaprompts.with_header(header, body)
    parsed, parsed_body = metaprompts.split_header(text)
    assert parsed_body == body
    assert parsed == {"generator": "qwen@http://h:1/v1", "validation_macro_f1": "0.5123", "budget": "3000"}
    assert metaprompts.split_header(body) == ({}, body)  # no closing fence after the first: no header
    with pytest.raises(PromptMIIError, match="header key"):
        metaprompts.with_header({"bad key": 1}, body)


def test_builtin_templates_are_listed_from_the_directory() -> None:
    assert {"structured", "terse"} <= set(prompts.template_names())
    assert prompts.DEFAULT_TEMPLATE in prompts.template_names()


def register(home: Path, name: str, generator: str, body: str = TUNED, **header: object) -> Path:
    folder = home / "templates"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.txt"
    path.write_text(metaprompts.with_header({"generator": generator, **header}, body))
    return path


def test_auto_selection_by_model_id_and_template_override(promptmii_home: Path, tmp_path: Path) -> None:
    generator = make_generator()
    assert metaprompts.for_generator("fake-generator").name == prompts.DEFAULT_TEMPLATE
    register(promptmii_home, "other", "another-model", body="{labels} {examples} other")
    register(promptmii_home, "mine", "fake-generator", validation_macro_f1="0.6")
    register(promptmii_home, "mine-worse", "fake-generator", body="{labels}{examples}", validation_macro_f1="0.4")
    chosen = metaprompts.for_backend(None, generator)
    assert (chosen.name, chosen.text) == ("home/mine", TUNED)
    assert metaprompts.for_backend("terse", generator).text == prompts.meta_template("terse")
    assert metaprompts.for_backend("home/mine-worse", generator).text == "{labels}{examples}"
    with pytest.raises(PromptMIIError, match="did you mean 'terse'"):
        metaprompts.for_backend("terce", generator)
    bad = tmp_path / "bad.txt"
    bad.write_text("no placeholders")
    with pytest.raises(PromptMIIError, match="lacks \\{labels\\} and \\{examples\\}"):
        metaprompts.for_backend(str(bad), generator)


def test_a_trained_generator_gets_the_template_it_was_trained_with(promptmii_home: Path) -> None:
    register(promptmii_home, "mine", "fake-generator", validation_macro_f1="0.6")
    trained = make_generator()
    trained.trained_template = "criteria"  # what a backend loaded from a training run carries
    assert metaprompts.for_backend(None, trained).name == "criteria"  # not the base's tuned template
    assert metaprompts.for_backend("terse", trained).name == "terse"  # --template still wins
    made = induce(sentiment_examples(4), LABELS, trained, InduceConfig())
    assert made.template == "criteria" and made.template_sha256 == metaprompts.builtin("criteria").sha256


def test_eval_rows_record_the_template_and_it_is_in_the_fingerprint(
    promptmii_home: Path, tmp_path: Path, register_backend
) -> None:
    generator, follower = make_generator(), make_follower()
    register_backend("fake:gen", generator)
    register_backend("fake:fol", follower)
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f'"{e.text}",{e.label}\n' for e in sentiment_examples(40)))
    args = ["induce", str(data), "--n", "8", "--m", "12", "--methods", "promptmii-zero"]
    args += ["--base-generator", "fake:gen", "--follower", "fake:fol", "--no-cache", "-o", str(tmp_path / "out")]

    def run_once(*extra: str):
        result = CliRunner().invoke(main, [*args, *extra, "--format", "jsonl"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout.splitlines()[-1])

    default = run_once()
    assert default["template"] == "terse" and default["macro_f1"] < 0.5  # the follower says "positive" to all
    assert default["template_sha256"] == metaprompts.builtin("terse").sha256
    register(promptmii_home, "fake", "fake-generator")
    tuned = run_once()  # same command, now a tuned template is registered for the generator
    assert tuned["template"] == "home/fake" and tuned["macro_f1"] == 1.0
    assert tuned["fingerprint"] != default["fingerprint"]
    assert "Write sentiment guidelines" in user_text(generator.calls[-1][0])
    overridden = run_once("--template", "terse")
    assert overridden["template"] == "terse" and overridden["fingerprint"] == default["fingerprint"]
    rows = read_results(tmp_path / "out" / "results.jsonl")
    assert [r.template for r in rows] == ["terse", "home/fake"]  # the override was already done: not re-run


# ------------------------------------------------------------------ the tuning run


def test_tune_finds_the_better_meta_prompt_and_selects_it_on_validation(
    corpus: Path, tmp_path: Path, promptmii_home: Path, register_backend
) -> None:
    gen, fol = make_generator(), make_follower()
    register_backend("fake:gen", gen)
    register_backend("fake:fol", fol)
    summary = tune(small_config(corpus), tmp_path / "run", quiet=True)
    assert summary["search_llm_calls"] <= 80
    assert summary["validation_macro_f1"] == "1.0000" and float(summary["start_validation_macro_f1"]) < 0.5
    assert summary["reflection_calls"] >= 1 and summary["candidates"] >= 2
    # the journal answers repeats, so the models saw at most what the ledgers charged
    assert search_calls(gen, fol) <= summary["search_llm_calls"] + summary["selection_llm_calls"]
    header, body = metaprompts.split_header((tmp_path / "run" / "template.txt").read_text())
    assert body == TUNED + "\n" and header["generator"] == "fake-generator" and header["follower"] == "fake-follower"
    assert header["budget"] == "80" and header["validation_tasks"] == "2" and "git_commit" in header
    selection = [json.loads(line) for line in (tmp_path / "run" / "selection.jsonl").read_text().splitlines()]
    assert (
        selection[0]["index"] == 0
        and selection[1]["validation_macro_f1"] == 1.0
        and set(selection[0]["per_task"]) == {"val0", "val1"}
    )
    # registered: induce now picks it for this generator
    assert metaprompts.for_generator("fake-generator").text == TUNED + "\n"
    assert Path(summary["registered"]) == promptmii_home / "templates" / "fake-generator.txt"


def test_proposals_without_placeholders_do_not_end_the_search_before_the_call_budget(
    corpus: Path, tmp_path: Path, register_backend
) -> None:
    def forgets_placeholders(chat) -> str:  # what every proposal of the 0.5B reflection LM did
        return "Sort texts by sentiment." if is_reflection(chat) else generator_rule(chat)

    register_backend("fake:gen", FakeBackend("fake-generator", rule=forgets_placeholders))
    register_backend("fake:fol", make_follower())
    summary = tune(small_config(corpus), tmp_path / "run", register=False, quiet=True)
    per_iteration = (2 * 1 + 1) * (1 + 4)  # parent and child on the 1-task minibatch, then 1 pareto task; m=4
    assert 80 - per_iteration < summary["search_llm_calls"] <= 80  # the free children did not stop it early
    assert summary["candidates"] == 1 and summary["candidate"] == 0


def test_a_killed_tune_run_resumes_without_repeating_finished_calls(
    corpus: Path, tmp_path: Path, register_backend
) -> None:
    config = small_config(corpus)
    gen, fol = make_generator(), make_follower()
    register_backend("fake:gen", gen)
    register_backend("fake:fol", fol)
    whole = tune(config, tmp_path / "whole", register=False, quiet=True)

    killed_gen, killed_fol = make_generator(), make_follower()
    generate, done = killed_fol.generate, [0]

    def dies(prompts_, params: GenParams):
        if done[0] == 6:
            raise KeyboardInterrupt
        done[0] += 1
        return generate(prompts_, params)

    killed_fol.generate = dies
    register_backend("fake:gen", killed_gen)
    register_backend("fake:fol", killed_fol)
    with pytest.raises(KeyboardInterrupt):
        tune(config, tmp_path / "run", register=False, quiet=True)
    first_prompts = {json.dumps(chat) for chat, _ in killed_fol.calls}

    again_gen, again_fol = make_generator(), make_follower()
    register_backend("fake:gen", again_gen)
    register_backend("fake:fol", again_fol)
    resumed = tune(config, tmp_path / "run", register=False, quiet=True)
    repeated = [c for c, _ in again_fol.calls if json.dumps(c) in first_prompts]
    assert repeated == []  # the journal answered every call the killed run had finished
    for key in ("validation_macro_f1", "search_llm_calls", "selection_llm_calls", "candidates", "candidate"):
        assert resumed[key] == whole[key]
    assert (tmp_path / "run" / "template.txt").read_text().split("created_at")[0] == (
        (tmp_path / "whole" / "template.txt").read_text().split("created_at")[0]
    )


def test_resuming_with_other_settings_is_refused(corpus: Path, tmp_path: Path, register_backend) -> None:
    register_backend("fake:gen", make_generator())
    register_backend("fake:fol", make_follower())
    tune(small_config(corpus), tmp_path / "run", register=False, quiet=True)
    more = tune(small_config(corpus, budget=120), tmp_path / "run", register=False, quiet=True)  # budget may grow
    assert more["budget"] == 120
    with pytest.raises(PromptMIIError, match="holds a tuning run with other settings \\(m\\)"):
        tune(small_config(corpus, m=5), tmp_path / "run", register=False, quiet=True)


# ------------------------------------------------------------------ the CLI


def error_line(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 1, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and result.stdout == ""
    return last


def test_tune_cli_prints_the_summary_and_errors_are_one_line(corpus: Path, tmp_path: Path, register_backend) -> None:
    register_backend("fake:gen", make_generator())
    register_backend("fake:fol", make_follower())
    base = ["tune", "--corpus", str(corpus), "--generator", "fake:gen", "--follower", "fake:fol", "--n", "4"]
    base += ["--m", "4", "--pareto-tasks", "1", "--minibatch", "1", "-q"]
    assert "budget 10 is too small" in error_line(*base, "--budget", "10", "-o", str(tmp_path / "a"))
    assert "did you mean 'terse'" in error_line(*base, "--start", "terce", "-o", str(tmp_path / "b"))
    assert "train_tasks=1 leaves no task" in error_line(*base, "--train-tasks", "1", "-o", str(tmp_path / "c"))
    assert "no tasks in split 'validation'" in error_line(
        "tune", "--corpus", str(write_corpus(tmp_path / "c2", [
            Task("t0", LABELS, tuple(sentiment_examples(30)), tuple(sentiment_examples(12, 50)), split="train"),
            Task("t1", LABELS, tuple(sentiment_examples(30, 9)), tuple(sentiment_examples(12, 59)), split="train"),
        ])), "--generator", "fake:gen", "--follower", "fake:fol", "--pareto-tasks", "1", "-o", str(tmp_path / "d"),
    )  # fmt: skip
    result = CliRunner().invoke(main, [*base, "--budget", "60", "-o", str(tmp_path / "ok")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["template"] == str(tmp_path / "ok" / "template.txt") and summary["llm_calls"] > 0


def test_eval_template_errors_are_one_line(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f'"{e.text}",{e.label}\n' for e in sentiment_examples(40)))
    assert "unknown meta-prompt template 'terce' (did you mean 'terse'?)" in error_line(
        "induce", str(data), "--m", "5", "--template", "terce"
    )
    (tmp_path / "t.txt").write_text("Only {labels}.")
    assert "lacks {examples}" in error_line("induce", str(data), "--m", "5", "--template", str(tmp_path / "t.txt"))
