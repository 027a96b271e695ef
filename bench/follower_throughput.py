"""Follower throughput: our path (run_follower -> backend) vs the raw backend on the same prompts.

For instruction prefixes of about 100, 1,000 and 10,000 tokens (ICL-sized: labelled shots of a corpus
task), m queries share the prefix. `raw` calls the engine directly with the same rendered prompts and
settings: llama-cpp-python's `create_completion` for `llamacpp:`, plain HTTP POSTs to the same local
llama.cpp server for `openai:` (one at a time, as that server serialises requests). Each path starts
with a cold KV cache, so both pay the prefix once. Queries per second are reported over all m queries
(prefix included) and over the warm ones (after the first), as the mean of two runs per path in the
order raw, ours, ours, raw (other jobs share these 2 cores). Goal: ours >= 80% of raw.

    python bench/follower_throughput.py            # -> bench/results/follower_throughput.json
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import httpx
import llama_cpp

from _common import CORPUS, ROOT, machine, write_json
from promptmii import models, prompts
from promptmii.backends import get_backend
from promptmii.backends.llamacpp import LlamaCppBackend
from promptmii.backends.openai import DEFAULT_TIMEOUT
from promptmii.data import Example, load_tasks
from promptmii.evaluate import FOLLOWER_MAX_TOKENS, FOLLOWER_PARAMS, prefix_tokens, run_follower

MODEL = models.FAST_MODEL
SIZES = (100, 1_000, 10_000)
BACKENDS = ("llamacpp", "openai")
N_CTX = 16_384  # room for the 10k prefix; the same for every path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--m", type=int, default=20, help="queries per prefix")
    parser.add_argument("--out", default=str(ROOT / "results" / "follower_throughput.json"))
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="prefix sizes to (re)measure")
    parser.add_argument("--backends", default="llamacpp,openai", help="backends to (re)measure")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    wanted = set(args.backends.split(","))

    [task] = [t for t in load_tasks(args.corpus, split="test") if t.id == args.task]
    test = list(task.test[: args.m])
    gguf = models.ensure_bundled(MODEL)
    ours_local = LlamaCppBackend(gguf, f"{MODEL}-bench", n_ctx=N_CTX)
    raw_local = llama_cpp.Llama(model_path=str(gguf), n_ctx=N_CTX, n_threads=2, n_threads_batch=2, verbose=False)
    server, url = start_server(gguf)
    out_path = Path(args.out)
    previous = json.loads(out_path.read_text())["rows"] if out_path.exists() else []
    rows = [r for r in previous if (r["backend"], r["target_tokens"]) not in {(b, s) for b in wanted for s in sizes}]
    try:
        ours_http = get_backend(f"openai:{MODEL}@{url}")
        for size in sizes:
            prefix = icl_prefix(task.train, task.labels, size, ours_local)
            chats = [prompts.follower_prompt(prefix, task.labels, e.text) for e in test]
            common = {
                "target_tokens": size,
                "prefix_tokens": prefix_tokens(ours_local, prefix, task.labels),
                "m": len(test),
            }

            texts = [ours_local._render(c) for c in chats]  # raw gets the rendered prompts for free

            def cold_local(run, items):
                raw_local.reset()  # cold KV cache: each path pays the prefix once
                ours_local._llm.reset()
                return time_calls(run, items)

            def cold_server(run, items):
                flush_server_cache(url)
                return time_calls(run, items)

            if "llamacpp" in wanted:
                raw_run = (partial(raw_llama, raw_local), texts)
                ours_run = (partial(follow, ours_local, prefix, task.labels), test)
                rows.append(compare("llamacpp", common, *abba(cold_local, raw_run, ours_run)))
            if "openai" in wanted:
                raw_run = (partial(raw_http, url), chats)
                ours_run = (partial(follow, ours_http, prefix, task.labels), test)
                rows.append(compare("openai", common, *abba(cold_server, raw_run, ours_run)))
            write_summary(out_path, task.id, rows)
    finally:
        server.terminate()


def write_summary(path: Path, task_id: str, rows: list[dict]) -> None:
    """Rewritten after every prefix size, so a killed run keeps what it measured."""
    rows = sorted(rows, key=lambda r: (r["target_tokens"], r["backend"]))
    summary = {
        "benchmark": "follower_throughput",
        "model": MODEL,
        "task": task_id,
        "n_ctx": N_CTX,
        "max_tokens": FOLLOWER_MAX_TOKENS,
        "goal": "ours >= 0.8 x raw queries per second",
        "goal_met": all(r["ratio_qps"] >= 0.8 for r in rows),
        "complete": {(r["backend"], r["target_tokens"]) for r in rows} >= {(b, s) for b in BACKENDS for s in SIZES},
        "machine": machine(),
        "note": "timed while other benchmarks shared the 2 cores; each path ran twice in the order raw, ours, ours, raw; means shown",
        "rows": rows,
    }
    write_json(path, summary)


def follow(backend, prefix: str, labels: tuple[str, ...], test: list[Example]) -> list[str]:
    return run_follower(backend, prefix, labels, test).replies


def abba(timed, raw_run: tuple, ours_run: tuple) -> tuple[dict, dict]:
    """raw, ours, ours, raw: load that drifts during the run (other jobs share the cores) hits both equally."""
    raw1, ours1, ours2, raw2 = (timed(*run) for run in (raw_run, ours_run, ours_run, raw_run))
    return mean_timing(raw1, raw2), mean_timing(ours1, ours2)


def mean_timing(a: dict, b: dict) -> dict:
    merged = {k: round((a[k] + b[k]) / 2, 3) for k in a if k != "replies"}
    return {**merged, "replies": a["replies"] if a["replies"] == b["replies"] else None}


def compare(backend: str, common: dict, raw: dict, ours: dict) -> dict:
    row = {
        "backend": backend,
        **common,
        "same_replies": raw.pop("replies") == ours.pop("replies"),
        "raw": raw,
        "ours": ours,
        "ratio_qps": round(ours["qps"] / raw["qps"], 3),
        "ratio_warm_qps": round(ours["warm_qps"] / raw["warm_qps"], 3),
    }
    print(json.dumps(row), flush=True)
    return row


def time_calls(run, items: list) -> dict:
    """Time the first query (cold: the prefix is evaluated) apart from the rest (warm: prefix reused)."""
    start = time.perf_counter()
    replies = list(run(items[:1]))
    first = time.perf_counter() - start
    replies += run(items[1:])
    total = time.perf_counter() - start
    return {
        "seconds": round(total, 3),
        "first_query_seconds": round(first, 3),
        "qps": round(len(items) / total, 3),
        "warm_qps": round((len(items) - 1) / (total - first), 3),
        "replies": replies,
    }


def icl_prefix(shots: tuple[Example, ...], labels: tuple[str, ...], target: int, backend: LlamaCppBackend) -> str:
    """An instruction of about 100 tokens, or shots (cycled) until the shared prefix reaches ~`target` tokens."""
    if target <= 150:
        return (
            "Read the sentence and decide the sentiment its writer expresses about the film. Positive means the "
            "writer liked it, enjoyed it or recommends it; negative means the writer disliked it, found it boring "
            "or would not recommend it. Judge the overall tone, not single words: irony and faint praise count as "
            "negative, and criticism of a detail inside an overall recommendation counts as positive."
        )
    count = 10
    while True:
        text = prompts.icl_prefix([shots[i % len(shots)] for i in range(count)])
        size = prefix_tokens(backend, text, labels)
        if size >= 0.95 * target:
            return text
        count = max(count + 1, int(count * target / size))


def raw_llama(llm: llama_cpp.Llama, texts: list[str]) -> list[str]:
    replies = []
    for text in texts:
        out = llm.create_completion(
            prompt=llm.tokenize(text.encode(), add_bos=False, special=True),
            max_tokens=FOLLOWER_PARAMS.max_tokens,
            temperature=0.0,
            top_p=1.0,
            top_k=40,
            min_p=0.0,
            repeat_penalty=1.0,
            seed=0,
        )
        replies.append(out["choices"][0]["text"])
    return replies


def raw_http(url: str, chats: list) -> list[str]:
    replies = []
    with httpx.Client(timeout=DEFAULT_TIMEOUT) as client:
        for chat in chats:
            body = {"model": MODEL, "messages": chat, "max_tokens": FOLLOWER_MAX_TOKENS, "temperature": 0.0, "seed": 0}
            replies.append(client.post(f"{url}/chat/completions", json=body).json()["choices"][0]["message"]["content"])
    return replies


def flush_server_cache(url: str) -> None:
    """Replace the server's cached prefix with an unrelated prompt, so the next path starts cold."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello."}], "max_tokens": 1}
    httpx.post(f"{url}/chat/completions", json=body, timeout=DEFAULT_TIMEOUT)


def start_server(gguf: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (ROOT / "logs").joinpath("throughput_server.log")
    log.parent.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(N_CTX), "--n_threads", "2"]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    process.terminate()
    raise SystemExit("llama_cpp.server did not start")


if __name__ == "__main__":
    main()
