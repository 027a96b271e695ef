"""Real serving components started by the tests: llama.cpp's OpenAI-compatible server and transformers.

The server runs the bundled 0.5B on 127.0.0.1; `eval` through `openai:` must give the same greedy
predictions as the in-process `llamacpp:` backend. The hf: backend loads the same model dequantized
and must agree with llama.cpp on the tokenizer, the chat template and the obvious answers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_corpus
from promptmii import models, prompts
from promptmii.backends import GenParams, get_backend
from promptmii.cli import main
from test_e2e_real import MODEL, NEGATIVE, POSITIVE, REVIEW, tiny_task

pytestmark = pytest.mark.real
SERVED_NAME = "qwen2.5-coder-0.5b-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(module_home: Path):
    """`python -m llama_cpp.server` on the bundled 0.5B (the [server] extra), stopped after the module."""
    pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server]")
    gguf = models.ensure_bundled(SERVED_NAME)
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", SERVED_NAME]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2"]
    log = (module_home / "llama_server.log").open("wb")  # a file, not a pipe: llama.cpp logs a lot
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama_cpp.server exited: {(module_home / 'llama_server.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        pytest.fail("llama_cpp.server did not open its port within 120 s")
    yield url
    process.terminate()
    process.wait(timeout=30)
    log.close()


def test_eval_through_the_server_matches_in_process_llama_cpp(tmp_path: Path, llama_server: str) -> None:
    corpus = write_corpus(tmp_path / "corpus", [tiny_task("reviews", ("positive", POSITIVE), ("negative", NEGATIVE))])
    predictions = {}
    for name, follower in (("local", MODEL), ("server", f"openai:{SERVED_NAME}@{llama_server}")):
        out = tmp_path / name
        args = ["eval", "--tasks", str(corpus), "--methods", "naive,icl:3", "--n", "3", "--m", "6"]
        result = CliRunner().invoke(main, [*args, "--follower", follower, "-o", str(out), "-q", "--no-cache"])
        assert result.exit_code == 0, result.output
        samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        predictions[name] = [(s["method"], s["index"], s["reply"], s["prediction"]) for s in samples]
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        tokens = {r["method"]: r["follower_prompt_tokens"] for r in rows}
        predictions[name + " tokens"] = tokens
    assert predictions["server"] == predictions["local"]
    assert predictions["server tokens"] == predictions["local tokens"]  # the server's usage == our count


def test_constrained_decoding_through_the_server(llama_server: str) -> None:
    backend = get_backend(f"openai:{SERVED_NAME}@{llama_server}")
    chats = [prompts.follower_prompt("Sentiment of the review?", ("bad", "good"), t) for t in POSITIVE[:3]]
    out = backend.generate(chats, GenParams(max_tokens=8, choices=("bad", "good")))
    assert all(g.error is None for g in out) and {g.text for g in out} <= {"bad", "good"}


@pytest.fixture(scope="module")
def hf_backend(module_home: Path):
    pytest.importorskip("transformers")
    return get_backend(f"hf:{SERVED_NAME}")


def test_hf_backend_agrees_with_llama_cpp(hf_backend) -> None:
    import torch

    llama = get_backend(MODEL)
    chats = [
        prompts.follower_prompt("Is the review positive or negative?", ("negative", "positive"), t)
        for t in POSITIVE[:2] + NEGATIVE[:2]
    ]
    assert [hf_backend.count_tokens(c) for c in chats] == [llama.count_tokens(c) for c in chats]
    greedy = hf_backend.generate(chats, GenParams(max_tokens=6))
    assert [g.text.strip().lower() for g in greedy] == ["positive", "positive", "negative", "negative"]
    hf_scores = hf_backend.label_logprobs(REVIEW, ["positive", "negative", "not sure"])
    llama_scores = llama.label_logprobs(REVIEW, ["positive", "negative", "not sure"])
    assert max(hf_scores, key=hf_scores.get) == max(llama_scores, key=llama_scores.get) == "positive"
    assert all(abs(hf_scores[k] - llama_scores[k]) < 1.0 for k in hf_scores)  # Q4 vs dequantized float32
    constrained = hf_backend.generate(chats, GenParams(max_tokens=6, choices=("bad review", "good review")))
    assert {g.text for g in constrained} <= {"bad review", "good review"}
    state = torch.random.get_rng_state()
    sampled = [hf_backend.generate(chats[:1], GenParams(max_tokens=8, temperature=1.0, seed=s))[0].text for s in (1, 1)]
    assert sampled[0] == sampled[1]
    assert torch.equal(state, torch.random.get_rng_state())  # seeded per call, global RNG untouched
