"""The openai: backend against a local server that misbehaves on cue: retries, clear errors, no key leaks."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SENTIMENT_WORDS, sentiment_examples, write_corpus
from fakes import query_input
from fault_server import FaultServer
from promptmii import prompts
from promptmii.backends import GenParams, get_backend
from promptmii.backends.openai import OpenAIBackend
from promptmii.cli import main
from promptmii.data import Task
from promptmii.errors import BackendError
from promptmii.results import read_results

LABELS = ("negative", "positive")
SECRET = "sk-test-0123456789-secret"


def keyword_answer(messages: list[dict]) -> str:
    text = query_input(messages).lower()
    return next((label for word, label in SENTIMENT_WORDS.items() if word in text), "positive")


@pytest.fixture
def server():
    s = FaultServer(answer=keyword_answer)
    yield s
    s.close()


def backend(server: FaultServer, **options: object) -> OpenAIBackend:
    query = "&".join(f"{k}={v}" for k, v in {"retries": 3, **options}.items())
    return OpenAIBackend.from_spec(f"test-model@{server.url}?{query}")


def chat(text: str = "I love it") -> list[dict[str, str]]:
    return prompts.follower_prompt("Classify the sentiment.", LABELS, text)


@pytest.mark.parametrize(
    "fault",
    [("status", 429, {"Retry-After": "0.3"}), ("status", 500), ("status", 503), ("garbage",)],
    ids=["429-retry-after", "500", "503", "malformed-json"],
)
def test_transient_faults_are_retried_then_answered(server: FaultServer, fault: tuple) -> None:
    server.faults = [fault]
    start = time.perf_counter()
    [generation] = backend(server).generate([chat("I hate it")], GenParams(max_tokens=4))
    assert generation.error is None
    assert generation.text == "negative"
    assert len(server.chat_requests()) == 2
    if fault[0] == "status" and fault[1] == 429:
        assert time.perf_counter() - start >= 0.3  # Retry-After honoured


def test_a_hung_connection_times_out_and_is_retried(server: FaultServer) -> None:
    server.faults = [("hang", 3.0)]
    [generation] = backend(server, timeout=0.5).generate([chat()], GenParams(max_tokens=4))
    assert generation.error is None and generation.text == "positive"


def test_a_fault_that_outlives_the_retries_comes_back_as_that_prompts_error(server: FaultServer) -> None:
    server.faults = [("status", 500), ("status", 500)]
    follower = backend(server, retries=1)
    [failed] = follower.generate([chat()], GenParams(max_tokens=4))
    assert failed.error is not None and "HTTP 500" in failed.error
    [answered] = follower.generate([chat("awful")], GenParams(max_tokens=4))
    assert answered.error is None and answered.text == "negative"


def test_client_errors_are_not_retried(server: FaultServer) -> None:
    server.faults = [("status", 400)]
    [generation] = backend(server).generate([chat()], GenParams(max_tokens=4))
    assert "HTTP 400" in (generation.error or "")
    assert len(server.chat_requests()) == 1


def test_many_prompts_in_flight_keep_their_order(server: FaultServer) -> None:
    texts = [e.text for e in sentiment_examples(40)]
    out = backend(server, concurrency=16).generate([chat(t) for t in texts], GenParams(max_tokens=4))
    assert [g.text for g in out] == [keyword_answer(chat(t)) for t in texts]
    assert all(g.prompt_tokens > 0 for g in out)


def test_wrong_model_name_lists_the_served_models(server: FaultServer) -> None:
    with pytest.raises(BackendError, match=r"model 'nope' is not served at .*; it serves: test-model"):
        OpenAIBackend.from_spec(f"nope@{server.url}")


def test_an_unreachable_server_is_one_clear_error() -> None:
    with pytest.raises(BackendError, match=r"cannot reach the OpenAI-compatible server at http://127.0.0.1:9/v1"):
        get_backend("openai:m@http://127.0.0.1:9/v1")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("openai:just-a-model", "needs MODEL@URL"),
        ("openai:m@http://127.0.0.1:9/v1?colour=red", "unknown option"),
        ("openai:m@http://127.0.0.1:9/v1?concurrency=many", "concurrency=many is not a number"),
    ],
)
def test_bad_specs(spec: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(BackendError, match=message):
        get_backend(spec)


def test_constrained_decoding_sends_the_label_set_in_each_dialect(server: FaultServer) -> None:
    params = GenParams(max_tokens=4, choices=LABELS)
    for style, key in (("grammar", "grammar"), ("vllm", "structured_outputs"), ("sglang", "regex")):
        backend(server, constrain=style).generate([chat()], params)
        assert key in server.chat_requests()[-1]["body"]
    assert 'root ::= "negative" | "positive"' in server.chat_requests()[0]["body"]["grammar"]
    with pytest.raises(BackendError, match="constrain=none"):
        backend(server, constrain="none").generate([chat()], params)


def test_label_scoring_is_refused_with_a_way_out(server: FaultServer) -> None:
    with pytest.raises(BackendError, match="use --decoding generate or constrained"):
        backend(server).label_logprobs(chat(), list(LABELS))


def test_token_counts_come_from_the_server_and_say_how(server: FaultServer) -> None:
    plain = backend(server)
    assert plain.count_tokens(chat()) == len(chat()[0]["content"].split()) + 5
    assert plain.token_counter == "server:usage"
    server.tokenize = True
    with_endpoint = backend(server)
    assert with_endpoint.count_tokens(chat()) == len(chat()[0]["content"].split()) + 5
    assert with_endpoint.token_counter == "server:/tokenize"


def sentiment_corpus(root: Path) -> Path:
    tasks = [
        Task(f"reviews{i}", LABELS, tuple(sentiment_examples(30)), tuple(sentiment_examples(10, 100))) for i in (1, 2)
    ]
    return write_corpus(root, tasks)


def test_a_systemic_fault_midway_stops_with_one_line_and_keeps_finished_rows(
    server: FaultServer, tmp_path: Path
) -> None:
    corpus, out = sentiment_corpus(tmp_path / "corpus"), tmp_path / "out"
    follower = f"openai:test-model@{server.url}?retries=1"

    def answer_then_break(messages: list[dict]) -> str:
        if (out / "results.jsonl").exists():  # the first task's row is written: now the server breaks down
            server.fail_forever = ("status", 503)
        return keyword_answer(messages)

    server.answer = answer_then_break
    args = ["eval", "--tasks", str(corpus), "--methods", "naive", "--n", "4", "--m", "10", "--follower", follower]
    result = CliRunner().invoke(main, [*args, "-o", str(out), "-q"])
    assert result.exit_code == 1
    [error] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "HTTP 503: scripted 503" in error
    [row] = read_results(out / "results.jsonl")
    assert row.task == "reviews1" and row.macro_f1 == 1.0
    assert row.token_counter == "server:usage"


def test_the_api_key_is_sent_but_never_written_or_logged(
    server: FaultServer, tmp_path: Path, promptmii_home: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setenv("MY_SERVER_KEY", SECRET)
    server.faults = [("status", 500)]  # one retry, so the retry log line is exercised too
    corpus, out = sentiment_corpus(tmp_path / "corpus"), tmp_path / "out"
    follower = f"openai:test-model@{server.url}?api_key_env=MY_SERVER_KEY"
    args = ["eval", "--tasks", str(corpus), "--methods", "naive,icl:4", "--n", "4", "--m", "10"]
    with caplog.at_level(logging.DEBUG):
        result = CliRunner().invoke(main, ["-v", *args, "--follower", follower, "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert all(r["headers"].get("Authorization") == f"Bearer {SECRET}" for r in server.requests)
    assert "retry 1/5" in caplog.text
    assert SECRET not in caplog.text and SECRET not in result.output
    for path in [*out.rglob("*"), *promptmii_home.rglob("*")]:
        if path.is_file() and not path.is_symlink() and "models" not in path.parts:
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_dead_server_stops_the_run_in_seconds_with_one_line(server: FaultServer) -> None:
    follower = backend(server, retries=5)
    server.close()  # the server dies mid-run: connections are refused
    start = time.perf_counter()
    with pytest.raises(BackendError, match=r"cannot reach the OpenAI-compatible server at http://127\.0\.0\.1:\d+/v1"):
        follower.generate([chat(), chat("I hate it")], GenParams(max_tokens=4))
    assert time.perf_counter() - start < 10


def test_a_back_off_gives_up_its_concurrency_slot(server: FaultServer) -> None:
    server.faults = [("status", 429, {"Retry-After": "1"})]  # the first request is throttled for a second
    follower = backend(server, concurrency=1)
    generations = follower.generate([chat("I love it"), chat("I hate it")], GenParams(max_tokens=4))
    assert [g.text for g in generations] == ["positive", "negative"]
    order = [query_input(r["body"]["messages"]) for r in server.chat_requests()]
    assert order == ["I love it", "I hate it", "I love it"]  # the second went while the first waited


def test_retry_after_is_honoured_beyond_the_exponential_cap() -> None:
    from promptmii.backends.openai import MAX_RETRY_AFTER, _retry_after

    class Response:
        def __init__(self, value: str) -> None:
            self.headers = {"retry-after": value}

    assert _retry_after(Response("90")) == 90.0
    assert _retry_after(Response("3600")) == MAX_RETRY_AFTER < 3600


def test_the_cache_identity_follows_the_served_weights_not_the_name(
    server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.model_info = {"test-model": {"root": "/weights/a", "created": 1}}
    first = backend(server)
    server.model_info = {"test-model": {"root": "/weights/a", "created": 2}}  # vLLM: the time of the request
    assert backend(server).model_id == first.model_id
    server.model_info = {"test-model": {"root": "/weights/b"}}  # other weights, same name
    assert backend(server).model_id != first.model_id
    server.model_info = {}
    with caplog.at_level(logging.WARNING):
        bare = backend(server)
    assert "add revision=" in caplog.text
    assert backend(server, revision="v2").model_id not in (bare.model_id, first.model_id)


def test_a_key_pasted_into_the_spec_is_redacted_everywhere(server: FaultServer, tmp_path: Path) -> None:
    corpus, out = sentiment_corpus(tmp_path / "corpus"), tmp_path / "out"
    url = server.url.replace("http://", f"http://user:{SECRET}@")
    args = ["eval", "--tasks", str(corpus), "--methods", "naive", "--n", "4", "--m", "10"]
    result = CliRunner().invoke(main, [*args, "--follower", f"openai:test-model@{url}", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    [row, _] = read_results(out / "results.jsonl")
    assert row.config["follower"] == f"openai:test-model@{server.url.replace('http://', 'http://***@')}"
