"""APE and GEPA with FakeBackend at the model boundary: budgets, the winner, resume, failures, rows."""

from __future__ import annotations

import json
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import SENTIMENT_WORDS, sentiment_examples
from fakes import FakeBackend, keyword_rule, query_input, user_text
from promptmii import prompts
from promptmii.baselines import parse_method
from promptmii.data import Task
from promptmii.errors import BackendError, DataError, PromptMIIError
from promptmii.experiment import Backends, EvalConfig, run_eval
from promptmii.metrics import accuracy, macro_f1
from promptmii.parse import INVALID
from promptmii.results import ResultsDir, read_results
from promptmii.search import SearchConfig, clean_proposal, feedback, run_search, split_ape, split_gepa

LABELS = ("negative", "positive")
GOOD = "Decide the sentiment from the words love, great, hate and awful."


def smart_follower() -> FakeBackend:
    """Right only when the instruction mentions sentiment; otherwise always 'positive'."""
    return FakeBackend("fake-follower", rule=keyword_rule(SENTIMENT_WORDS, "positive", needs="sentiment"))


def numbered_generator() -> FakeBackend:
    """A new, distinct instruction on every call (none of them helps the follower)."""
    count = iter(range(10**6))
    return FakeBackend("fake-generator", rule=lambda chat: f"Instruction number {next(count)}.")


def prompt_keyed_generator() -> FakeBackend:
    """A proposal fixed by the prompt alone, so a fresh instance answers like the killed one did."""
    return FakeBackend("fake-generator", rule=lambda chat: f"Instruction {zlib.crc32(user_text(chat).encode())}.")


def reflecting_generator() -> FakeBackend:
    """Reflection that finds the helpful instruction, in gepa's fenced format."""
    return FakeBackend("fake-generator", rule=lambda chat: f"```\n{GOOD}\n```")


def search(method: str, examples, follower, generator, run_dir: Path, **config) -> object:
    return run_search(
        method, examples, LABELS, follower=follower, generator=generator, config=SearchConfig(**config), run_dir=run_dir
    )


def follower_prompts(backend: FakeBackend) -> list[str]:
    return [user_text(chat) for chat, _ in backend.calls]


def dies_after(backend: FakeBackend, batches: int) -> FakeBackend:
    """The process is killed (KeyboardInterrupt) when the backend is asked for batch number `batches` + 1."""
    generate, done = backend.generate, [0]

    def killed(prompts_, params):
        if done[0] == batches:
            raise KeyboardInterrupt
        done[0] += 1
        return generate(prompts_, params)

    backend.generate = killed
    return backend


# ------------------------------------------------------------------ pure parts


def test_splits_follow_the_reference() -> None:
    examples = sentiment_examples(20)
    train, val = split_gepa(examples)
    assert (train, val) == (examples[:6], examples[6:])  # first n//3, the rest
    pool, held_out = split_ape(examples)
    assert (pool, held_out) == (examples[:10], examples[10:])
    with pytest.raises(DataError, match="gepa needs at least 3 examples"):
        split_gepa(examples[:2])
    with pytest.raises(DataError, match="ape needs at least 2 examples"):
        split_ape(examples[:1])


def test_clean_proposal_keeps_the_instruction_only() -> None:
    assert clean_proposal("The instruction was to label each review by its sentiment.") == (
        "Label each review by its sentiment."
    )
    assert clean_proposal('Instruction: "Sort the texts."\n\nThis works because...') == "Sort the texts."


def test_feedback_names_the_gold_label() -> None:
    assert feedback("positive", "positive") == "The answer 'positive' is correct."
    assert "correct answer is 'negative'" in feedback("negative", "positive")
    assert "not one of the allowed labels" in feedback("negative", "<INVALID>")


def test_search_methods_parse() -> None:
    assert parse_method("ape").name == "ape" and parse_method("gepa").spec == "gepa"
    with pytest.raises(PromptMIIError, match="did you mean 'gepa'"):
        parse_method("gepa2")
    with pytest.raises(PromptMIIError, match="only icl takes a shot count"):
        parse_method("ape:10")


# ------------------------------------------------------------------ budgets


@pytest.mark.parametrize("budget", [10, 45, 60])
def test_ape_never_exceeds_its_budget(tmp_path: Path, budget: int) -> None:
    follower = smart_follower()
    outcome = search("ape", sentiment_examples(20), follower, numbered_generator(), tmp_path, ape_budget=budget)
    # held-out half = 10 examples per candidate: the budget buys budget // 10 candidates, no more
    assert len(follower.calls) == outcome.budget_used == 10 * (budget // 10) <= budget
    assert outcome.spend.follower_calls == len(follower.calls) and outcome.budget_exhausted
    assert len(outcome.candidates) == budget // 10


@pytest.mark.parametrize("budget", [16, 23, 40])
def test_gepa_never_exceeds_its_budget(tmp_path: Path, budget: int) -> None:
    follower = smart_follower()
    # a reflection that never helps: every proposal is rejected on the minibatch, so gepa keeps going
    generator = FakeBackend("fake-generator", rule=lambda chat: "```\nGuess.\n```")
    outcome = search("gepa", sentiment_examples(15), follower, generator, tmp_path, gepa_budget=budget)
    # trainset 5, valset 10: the seed's validation costs 10, each iteration 3 on the parent (+ 3 on the child)
    assert outcome.spend.follower_calls == outcome.budget_used <= budget
    assert budget - outcome.budget_used < 3 and outcome.budget_exhausted  # stopped only when nothing fits
    assert (
        len(follower.calls) <= outcome.budget_used
    )  # repeats (the same minibatch, the same child) come from the journal


def test_gepa_refuses_a_budget_that_buys_no_proposal(tmp_path: Path) -> None:
    follower = smart_follower()
    with pytest.raises(DataError, match=r"gepa budget 12 is too small for n=15: .* take 16 follower calls"):
        search("gepa", sentiment_examples(15), follower, reflecting_generator(), tmp_path, gepa_budget=12)
    assert follower.calls == []


# ------------------------------------------------------------------ the winner


def test_ape_keeps_the_best_scoring_candidate(tmp_path: Path) -> None:
    proposals = iter(["Label the text.", GOOD, "Guess a label.", "Sort the reviews."])
    generator = FakeBackend("fake-generator", rule=lambda chat: next(proposals, "Say something."))
    outcome = search("ape", sentiment_examples(20), smart_follower(), generator, tmp_path, ape_budget=40)
    scores = {c.instruction: c.score for c in outcome.candidates}
    assert outcome.instruction == GOOD and scores[GOOD] == 1.0 == max(scores.values())
    assert scores["Label the text."] < 1.0
    written = [json.loads(line) for line in (tmp_path / "candidates.jsonl").read_text().splitlines()]
    assert [c["instruction"] for c in written] == list(scores)


def test_ape_round_two_paraphrases_the_best_and_skips_duplicates(tmp_path: Path) -> None:
    def rule(chat):
        content = user_text(chat)
        if content.startswith("Generate a variation"):
            return "Judge the sentiment of the review."
        return GOOD if "review 3:" in content else "Label the text."

    generator = FakeBackend("fake-generator", rule=rule)
    outcome = search("ape", sentiment_examples(20), smart_follower(), generator, tmp_path, ape_budget=60)
    origins = {c.instruction: c.origin for c in outcome.candidates}
    assert origins == {
        "Label the text.": "proposal",
        GOOD: "proposal",
        "Judge the sentiment of the review.": "variation",
    }
    # one proposal prompt per round-one draw; the variation prompts quote the best candidates
    variation_prompts = [user_text(c) for c, _ in generator.calls if user_text(c).startswith("Generate a variation")]
    assert variation_prompts and GOOD in variation_prompts[0]
    assert all(p.temperature == 0.9 for _, p in generator.calls)
    assert len({p.seed for _, p in generator.calls}) == len(generator.calls)  # every draw samples anew


def test_gepa_adopts_a_better_reflection_and_adds_the_constraint_once(tmp_path: Path) -> None:
    follower = smart_follower()
    generator = reflecting_generator()
    outcome = search("gepa", sentiment_examples(15), follower, generator, tmp_path, gepa_budget=40)
    assert outcome.instruction == GOOD
    assert [c.origin for c in outcome.candidates][:2] == ["seed", "reflection"]
    assert outcome.candidates[0].instruction == prompts.NAIVE_INSTRUCTION
    assert max(c.score for c in outcome.candidates) == 1.0
    # the reflection LM saw the follower's wrong answers with the gold label, greedily
    reflection, params = generator.calls[0]
    assert "The correct answer is 'negative'" in user_text(reflection) and params.temperature == 0.0
    constraint = prompts.format_constraint(LABELS)
    assert all(text.count(constraint) == 1 for text in follower_prompts(follower))
    assert outcome.spend.generator_calls == len(generator.calls)


# ------------------------------------------------------------------ resume


@pytest.mark.parametrize("method", ["ape", "gepa"])
def test_a_killed_search_resumes_without_repeating_finished_calls(tmp_path: Path, method: str) -> None:
    examples = sentiment_examples(15)
    budgets = {"ape_budget": 50, "gepa_budget": 40}
    generator = reflecting_generator if method == "gepa" else prompt_keyed_generator
    whole = search(method, examples, smart_follower(), generator(), tmp_path / "whole", **budgets)

    first = dies_after(smart_follower(), 3)
    with pytest.raises(KeyboardInterrupt):
        search(method, examples, first, generator(), tmp_path / "killed", **budgets)
    done = set(follower_prompts(first))
    assert done

    second = smart_follower()
    resumed = search(method, examples, second, generator(), tmp_path / "killed", **budgets)
    assert not done & set(follower_prompts(second))  # nothing already answered is asked again
    assert resumed.instruction == whole.instruction
    if method == "ape":  # APE replays exactly: the two halves together cost what the whole run cost
        assert len(first.calls) + len(second.calls) == resumed.budget_used == whole.budget_used
        assert replace(resumed.spend, cache_hits=0) == replace(whole.spend, cache_hits=0)
    assert resumed.budget_used <= budgets[f"{method}_budget"]


# ------------------------------------------------------------------ failures


@pytest.mark.parametrize("method", ["ape", "gepa"])
def test_one_failed_example_scores_as_a_failure_and_the_search_goes_on(tmp_path: Path, method: str) -> None:
    examples = sentiment_examples(15)
    unlucky = examples[7]  # in APE's held-out half and in GEPA's valset
    follower = FakeBackend(
        "fake-follower",
        rule=keyword_rule(SENTIMENT_WORDS, "positive", needs="sentiment"),
        fail_when=lambda chat: query_input(chat) == unlucky.text,
    )
    # Both searches find GOOD (APE as its first proposal), with which the follower is right on every
    # example it answers; then they go on proposing and scoring.
    count = iter(range(10**6))
    proposals = FakeBackend(
        "fake-generator", rule=lambda chat: GOOD if next(count) == 0 else f"Instruction {next(count)}."
    )
    generator = reflecting_generator() if method == "gepa" else proposals
    outcome = search(method, examples, follower, generator, tmp_path, ape_budget=40, gepa_budget=40)
    assert outcome.instruction == GOOD and len(outcome.candidates) > 1 and outcome.budget_used > 10
    assert any(query_input(chat) == unlucky.text for chat, _ in follower.calls)  # it was asked, and failed
    # The failure counts as a wrong (INVALID) answer: not dropped (1.0), not mapped to a label.
    scored = split_ape(examples)[1] if method == "ape" else split_gepa(examples)[1]
    predictions = [INVALID if e == unlucky else e.label for e in scored]
    gold = [e.label for e in scored]
    expected = macro_f1(gold, predictions) if method == "ape" else accuracy(gold, predictions)
    assert max(c.score for c in outcome.candidates) == pytest.approx(expected) and expected < 1.0


@pytest.mark.parametrize("method", ["ape", "gepa"])
def test_a_dead_follower_stops_a_search_with_a_clear_error(tmp_path: Path, method: str) -> None:
    follower = FakeBackend("fake-follower", fail_when=lambda chat: True)
    with pytest.raises(BackendError, match="the follower failed on all"):
        search(method, sentiment_examples(15), follower, numbered_generator(), tmp_path)


@pytest.mark.parametrize("method", ["ape", "gepa"])
def test_a_dead_generator_stops_a_search_with_a_clear_error(tmp_path: Path, method: str) -> None:
    generator = FakeBackend("fake-generator", fail_when=lambda chat: True)
    with pytest.raises(BackendError, match=f"{method}: the .*failed"):
        search(method, sentiment_examples(15), smart_follower(), generator, tmp_path)
    assert len(generator.calls) <= 3  # stopped at once, not after the whole budget


# ------------------------------------------------------------------ through run_eval


def test_search_rows_count_every_call_and_resume(tmp_path: Path, sentiment_task: Task) -> None:
    config = EvalConfig(methods=("naive", "ape", "gepa"), n=15, m=12, ape_budget=30, gepa_budget=40, cache=False)
    follower, generator = smart_follower(), reflecting_generator()
    backends = Backends(config, overrides={"follower": follower, "base_generator": generator})
    out = ResultsDir(tmp_path / "run")
    naive, ape, gepa = run_eval([sentiment_task], config, out, backends=backends, quiet=True)

    assert (naive.search_budget, naive.search_follower_calls, naive.generator_calls) == (None, 0, 0)
    for row, budget in ((ape, 30), (gepa, 40)):
        assert row.search_budget == budget and 0 < row.search_follower_calls <= budget
        assert row.follower_calls == 12 + row.search_follower_calls
        assert row.llm_calls == row.follower_calls + row.generator_calls and row.generator_calls > 0
        assert row.generator == "fake-generator" and row.instruction and row.candidates >= 1
        assert row.follower_prompt_tokens > naive.follower_prompt_tokens
    assert gepa.instruction == GOOD and gepa.macro_f1 == 1.0
    # every call is counted once: made (the fakes logged it) or answered by the search's journal
    assert len(follower.calls) + len(generator.calls) == sum(r.llm_calls - r.cache_hits for r in (naive, ape, gepa))
    # model_seconds counts each distinct call once, at its own time (the fakes take 0.01 s a call)
    distinct = [r.llm_calls - r.cache_hits for r in (naive, ape, gepa)]
    assert [r.model_seconds for r in (naive, ape, gepa)] == [pytest.approx(0.01 * k) for k in distinct]
    assert (tmp_path / "run" / "search" / f"sentiment.gepa.{gepa.fingerprint}" / "gepa" / "gepa_state.bin").exists()

    calls = len(follower.calls) + len(generator.calls)
    assert run_eval([sentiment_task], config, out, backends=backends, quiet=True) == []  # all rows done
    assert len(follower.calls) + len(generator.calls) == calls
    # a different budget is a different row; the other search's row stays done
    bigger = replace(config, gepa_budget=46)
    [row] = run_eval([sentiment_task], bigger, out, backends=Backends(bigger, overrides=backends.overrides), quiet=True)
    assert row.method == "gepa" and len(read_results(out.results_path)) == 4


def test_a_budget_below_one_is_refused_up_front() -> None:
    with pytest.raises(PromptMIIError, match="search budgets must be at least 1"):
        EvalConfig(methods=("ape",), ape_budget=0)
