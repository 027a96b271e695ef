"""Test-time search vs one call: APE and GEPA against Naive, ICL and Prompt-MII on the same follower.

The tasks are 8 of the corpus's 23 test tasks, drawn before any run with random.Random(0).sample over
the sorted test ids: banking77, fnc1_stance, go_emotions, mr, mrpc, politeness_wikipedia, sms_spam,
tweet_eval_emotion. n=20 shown examples, m=100 scored, seed 0; the bundled Qwen2.5-Coder-1.5B is
follower, generator and reflection LM, as in bench/spine.py, whose naive, icl:20, icl:100 and
promptmii-zero rows are reused (same follower, tasks, n, m, seed). promptmii is the trained 0.5B
generator's rows from bench/trained_vs_zero.py. APE runs with its default budget (2,000 follower
calls) and GEPA with the reference's (150 metric calls).

GEPA runs on every task first (minutes a task), then APE (about an hour a task on 2 cores). Rows go
to bench/runs/search_vs_one_call/ as they finish and every search journals its calls, so a killed
run resumes; the summary goes to bench/results/search_vs_one_call.json.

    python bench/search_vs_one_call.py                  # run (resumes), then summarize
    python bench/search_vs_one_call.py --summarize-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from promptmii import models
from promptmii.data import load_tasks
from promptmii.experiment import EvalConfig, run_eval
from promptmii.results import Result, ResultsDir, read_results

ROOT = Path(__file__).resolve().parent
MODEL = f"llamacpp:{models.DEFAULT_MODEL}"
TASK_DRAW_SEED, TASK_COUNT = 0, 8
SEARCHES = ("gepa", "ape")  # in run order: GEPA is the cheap one
FROM_SPINE = ("naive", "icl:20", "icl:100", "promptmii-zero")
FROM_TRAINED = ("promptmii",)
METHODS = (*FROM_SPINE, *FROM_TRAINED, *SEARCHES)


def drawn_tasks(corpus: str) -> list[str]:
    test_ids = sorted(t.id for t in load_tasks(corpus, split="test"))
    return sorted(random.Random(TASK_DRAW_SEED).sample(test_ids, TASK_COUNT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(ROOT.parent.parent / "shared" / "corpus"))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "search_vs_one_call"))
    parser.add_argument("--out", default=str(ROOT / "results" / "search_vs_one_call.json"))
    parser.add_argument("--methods", default=",".join(SEARCHES), help="searches to run, in this order")
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args()

    task_ids = drawn_tasks(args.corpus)
    out = ResultsDir(Path(args.runs))
    if not args.summarize_only:
        tasks = load_tasks(args.corpus, split="test", task_ids=task_ids)
        for method in args.methods.split(","):
            config = EvalConfig(methods=(method,), n=20, m=100, follower=MODEL, base_generator=MODEL, seed=0)
            run_eval(tasks, config, out, quiet=False)
    rows = _rows(out.results_path, SEARCHES)
    rows += _rows(ROOT / "runs" / "spine" / "results.jsonl", FROM_SPINE)
    rows += _rows(ROOT / "runs" / "trained_vs_zero" / "results.jsonl", FROM_TRAINED)
    summary = summarize(task_ids, rows)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["mean"], indent=2))


def _rows(path: Path, methods: tuple[str, ...]) -> list[Result]:
    return [r for r in read_results(path) if r.method in methods] if path.exists() else []


def cost(r: Result) -> dict:
    """What one row cost: calls and tokens of each model, wall seconds."""
    return {
        "macro_f1": round(r.macro_f1, 4),
        "accuracy": round(r.accuracy, 4),
        "invalid_rate": round(r.invalid_rate, 4),
        "prompt_tokens_per_query": r.prompt_tokens_per_query,
        "llm_calls": r.llm_calls,
        "generator_calls": r.generator_calls,
        "follower_calls": r.follower_calls,
        "search_follower_calls": r.search_follower_calls,
        "tokens": r.follower_prompt_tokens
        + r.follower_completion_tokens
        + r.generator_prompt_tokens
        + r.generator_completion_tokens,
        "seconds": round(r.seconds, 1),
        "budget_exhausted": r.budget_exhausted,
        "candidates": r.candidates,
        "instruction": r.instruction[:300],
    }


def summarize(task_ids: list[str], rows: list[Result]) -> dict:
    latest = {(r.task, r.method): r for r in rows if r.task in task_ids and r.m == 100 and r.seed == 0}
    done = [t for t in task_ids if all((t, m) in latest for m in METHODS)]
    mean = {}
    for method in METHODS:
        picked = [cost(latest[(t, method)]) for t in done]
        numeric = [k for k, v in (picked[0].items() if picked else []) if isinstance(v, int | float)]
        mean[method] = {k: _mean([p[k] for p in picked]) for k in numeric if k != "budget_exhausted"}
    return {
        "benchmark": "search_vs_one_call",
        "tasks": task_ids,
        "task_draw": f"random.Random({TASK_DRAW_SEED}).sample(sorted(test task ids), {TASK_COUNT})",
        "follower": MODEL,
        "generator": f"{MODEL} (promptmii-zero, ape proposals, gepa reflection)",
        "trained_generator": "bench/runs/trained_vs_zero (0.5B + LoRA, 10 GRPO steps)",
        "n": 20,
        "m": 100,
        "budgets": {"ape": "2,000 follower calls", "gepa": "150 metric calls (follower calls)"},
        "tasks_complete": len(done),
        "complete": len(done) == len(task_ids),
        "rows_per_method": {m: sum((t, m) in latest for t in task_ids) for m in METHODS},
        "mean": mean,
        "per_task": {t: {m: cost(latest[(t, m)]) for m in METHODS if (t, m) in latest} for t in task_ids},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "note": "seconds of the reused spine rows were measured in their own runs, on the same machine kind",
    }


def _mean(values: list) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


if __name__ == "__main__":
    main()
