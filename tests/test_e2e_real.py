"""End to end on the real bundled GGUF model (Qwen2.5-Coder-0.5B via llama.cpp), through the CLI.

These catch what fakes cannot: the chat template, tokenization, the portable llama.cpp build (the
native one segfaults on multi-token prompts on AMX hosts), prefix reuse and the bundled model files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import REPO, write_corpus
from promptmii import prompts
from promptmii.backends import GenParams, get_backend
from promptmii.cli import main
from promptmii.data import Example, Task
from promptmii.metrics import score
from promptmii.results import read_results

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.real

MODEL = "llamacpp:qwen2.5-coder-0.5b-instruct"
REVIEW = [
    {
        "role": "user",
        "content": "Is this review positive or negative? Answer with one word.\n\nInput: I loved every minute of it.",
    }
]

POSITIVE = [
    "A wonderful, moving film.",
    "I loved the acting.",
    "Brilliant and funny.",
    "Great fun from start to end.",
    "A joy to watch.",
    "Superb storytelling.",
]
NEGATIVE = [
    "A dull, boring mess.",
    "I hated every minute.",
    "Terrible script.",
    "Awful acting throughout.",
    "A waste of time.",
    "Painfully bad.",
]
SPORT = [
    "The striker scored twice in the final.",
    "The team won the league title.",
    "She broke the marathon record.",
    "The coach was sacked after the defeat.",
    "A late goal sealed the match.",
    "He won the tennis open.",
]
MONEY = [
    "Shares fell after the earnings report.",
    "The central bank raised interest rates.",
    "Inflation rose to five percent.",
    "The company reported record profits.",
    "Oil prices dropped sharply.",
    "The merger was valued at two billion.",
]


def tiny_task(task_id: str, first: tuple[str, list[str]], second: tuple[str, list[str]]) -> Task:
    rows = [Example(t, first[0]) for t in first[1]] + [Example(t, second[0]) for t in second[1]]
    train = tuple(rows[0:3] + rows[6:9])
    test = tuple(rows[3:6] + rows[9:12])
    return Task(task_id, tuple(sorted((first[0], second[0]))), train, test, "test")


@pytest.fixture(scope="module")
def backend():
    return get_backend(MODEL)


def test_multi_token_prompt_generates_and_counts_tokens(backend) -> None:
    [generation] = backend.generate([REVIEW], GenParams(max_tokens=8))
    assert generation.error is None and generation.text.strip()
    assert generation.prompt_tokens == backend.count_tokens(REVIEW) > 20


def test_greedy_is_deterministic_and_prefix_reuse_gives_the_same_answers(backend) -> None:
    other = [{"role": "user", "content": "Say hello."}]
    first = backend.generate([REVIEW, other, REVIEW], GenParams(max_tokens=8))
    assert first[0].text == first[2].text == backend.generate([REVIEW], GenParams(max_tokens=8))[0].text


def test_label_logprobs_rank_the_obvious_label_first(backend) -> None:
    scores = backend.label_logprobs(REVIEW, ["positive", "negative"])
    assert scores["positive"] > scores["negative"] and all(v < 0 for v in scores.values())


def test_eval_cli_end_to_end(tmp_path: Path) -> None:
    corpus = write_corpus(
        tmp_path / "corpus",
        [
            tiny_task("review_sentiment", ("positive", POSITIVE), ("negative", NEGATIVE)),
            tiny_task("news_topic", ("sport", SPORT), ("finance", MONEY)),
        ],
    )
    out = tmp_path / "out"
    args = [
        "eval", "--tasks", str(corpus), "--split", "test", "--methods", "naive,icl:4,promptmii-zero", "--n", "4", "--m", "6",
        "--follower", MODEL, "--base-generator", MODEL, "--max-instruction-tokens", "48", "-o", str(out), "-q",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    rows = read_results(out / "results.jsonl")
    assert printed == [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r.task, r.method) for r in rows] == [
        (t, m) for t in ("review_sentiment", "news_topic") for m in ("naive", "icl:4", "promptmii-zero")
    ]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    backend = get_backend(MODEL)
    for row in rows:
        mine = [s for s in samples if (s["task"], s["method"]) == (row.task, row.method)]
        recomputed = score([s["gold"] for s in mine], [s["prediction"] for s in mine])
        assert (row.macro_f1, row.accuracy, row.invalid_rate, row.m) == (
            recomputed.macro_f1,
            recomputed.accuracy,
            recomputed.invalid_rate,
            6,
        )
        assert row.llm_calls == 6 + (row.method == "promptmii-zero")
        assert row.follower.startswith("qwen2.5-coder-0.5b-instruct-q4_k_m@")
    naive = rows[0]
    assert naive.prompt_tokens_per_query == backend.count_tokens(
        prompts.follower_prompt(prompts.NAIVE_INSTRUCTION, ("negative", "positive"), "")
    )
    zero = next(r for r in rows if r.method == "promptmii-zero")
    assert zero.instruction and zero.generator_completion_tokens <= 48
    # The 0.5B reads plain sentiment well with shots in context; a broken pipeline would not.
    assert next(r for r in rows if r.method == "icl:4" and r.task == "review_sentiment").accuracy >= 0.5

    again = CliRunner().invoke(main, [*args[:-1], "--format", "json"], catch_exceptions=False)  # resumed: no new rows
    assert len(read_results(out / "results.jsonl")) == 6 and len(json.loads(again.stdout)) == 6


def test_induce_cli_on_the_readme_example(tmp_path: Path) -> None:
    data = REPO / "examples" / "support_tickets.csv"
    args = [
        "induce", str(data), "--n", "4", "--m", "6", "--methods", "naive,promptmii-zero", "--follower", MODEL,
        "--base-generator", MODEL, "--max-instruction-tokens", "48", "-o", str(tmp_path / "out"), "--format", "table", "-q",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = {r.method: r for r in read_results(tmp_path / "out" / "results.jsonl")}
    for method, row in rows.items():
        [line] = [line for line in result.stdout.splitlines() if line.startswith(method + " ")]
        assert line.split()[1:3] == [f"{row.macro_f1:.3f}", f"{row.accuracy:.3f}"]
    assert rows["promptmii-zero"].instruction in result.stdout


def test_induce_with_check_on_the_real_model(tmp_path: Path) -> None:
    data = REPO / "examples" / "support_tickets.csv"
    args = [
        "induce", str(data), "--n", "4", "--m", "6", "--methods", "promptmii-zero+check", "--follower", MODEL,
        "--base-generator", MODEL, "--max-instruction-tokens", "48", "-o", str(tmp_path / "out"), "-q",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [row] = read_results(tmp_path / "out" / "results.jsonl")
    check = row.check
    assert row.method == "promptmii-zero+check" and check["n"] == 4 and check["instruction"]
    assert check["kept"] == (check["instruction_macro_f1"] > check["naive_macro_f1"])
    assert row.instruction == (check["instruction"] if check["kept"] else prompts.NAIVE_INSTRUCTION)
    assert (row.generator_calls, row.follower_calls) == (1, 6 + 2 * 4)
    assert f"check on the 4 shown rows: instruction {check['instruction_macro_f1']:.3f}" in result.stderr


def sentiment_chats(prefix: str) -> list[list[dict[str, str]]]:
    return [prompts.follower_prompt(prefix, ("negative", "positive"), text) for text in POSITIVE + NEGATIVE]


def test_constrained_and_scored_decoding_answer_only_labels(backend) -> None:
    chats = sentiment_chats("Decide whether the movie review is positive or negative.")
    constrained = backend.generate(chats, GenParams(max_tokens=8, choices=("negative", "positive")))
    assert {g.text for g in constrained} <= {"negative", "positive"}
    for chat, generation in zip(chats, constrained, strict=True):
        scores = backend.label_logprobs(chat, ["negative", "positive"])
        assert all(v < 0 for v in scores.values())
        assert generation.text == max(scores, key=scores.get)  # greedy under the grammar = the top label
    # under the grammar the reply is the model's most likely label
    assert sum(g.text == "positive" for g in constrained[: len(POSITIVE)]) >= 4
    assert sum(g.text == "negative" for g in constrained[len(POSITIVE) :]) >= 4


def test_the_shared_prefix_is_tokenized_once_without_changing_any_token(backend) -> None:
    shots = "\n\n".join(f"Input: {t}\nLabel: positive" for t in POSITIVE * 5)
    chats = sentiment_chats(shots)
    backend.generate(chats[:3], GenParams(max_tokens=2))  # remembers the batch's shared prefix
    for chat in chats:
        rendered = backend._render(chat)
        assert backend._tokens(rendered) == backend._llm.tokenize(rendered.text.encode(), add_bos=False, special=True)
    assert len(backend._prefix[0]) > 1000


def test_batched_label_scores_match_token_by_token_scoring(backend) -> None:
    from promptmii.backends.llamacpp import _log_softmax

    labels = ["card_payment_fee_charged", "card_arrival", "top_up_failed"]
    chat = prompts.follower_prompt("Classify the banking query.", tuple(labels), "My card has not arrived yet.")
    batched = backend.label_logprobs(chat, labels)
    base = backend._tokens(backend._render(chat))
    for label in labels:
        ids = backend._llm.tokenize(label.encode(), add_bos=False, special=False)
        one_by_one = sum(float(_log_softmax(backend._next_token_logits(base + ids[:i]))[t]) for i, t in enumerate(ids))
        assert abs(batched[label] - one_by_one) < 0.5  # batch and single-token kernels round differently
    assert max(batched, key=batched.get) == "card_arrival"


def test_ape_and_gepa_search_on_the_real_model(tmp_path: Path) -> None:
    corpus = write_corpus(
        tmp_path / "corpus", [tiny_task("review_sentiment", ("positive", POSITIVE), ("negative", NEGATIVE))]
    )
    out = tmp_path / "out"
    args = [
        "eval", "--tasks", str(corpus), "--methods", "ape,gepa", "--n", "6", "--m", "6", "--ape-budget", "8",
        "--gepa-budget", "12", "--follower", MODEL, "--base-generator", MODEL, "--max-instruction-tokens", "48",
        "-o", str(out), "-q",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.stdout.splitlines()]  # gepa's log stays out of stdout
    ape, gepa = read_results(out / "results.jsonl")
    assert [p["method"] for p in printed] == ["ape", "gepa"]
    # APE: demo pool 3, held-out 3, so 8 calls buy two candidates; GEPA: trainset 2, valset 4
    assert ape.search_budget == 8 and 3 <= ape.search_follower_calls <= 8 and ape.generator_calls >= 1
    assert gepa.search_budget == 12 and 4 <= gepa.search_follower_calls <= 12
    for row in (ape, gepa):
        assert row.instruction and row.candidates >= 1 and row.m == 6
        assert row.follower_calls == 6 + row.search_follower_calls
        assert row.llm_calls == row.follower_calls + row.generator_calls
        search_dir = out / "search" / f"review_sentiment.{row.method}.{row.fingerprint}"
        candidates = [json.loads(line) for line in (search_dir / "candidates.jsonl").read_text().splitlines()]
        assert row.instruction in [c["instruction"] for c in candidates]
    assert (out / "search" / f"review_sentiment.gepa.{gepa.fingerprint}" / "gepa" / "gepa_state.bin").exists()
