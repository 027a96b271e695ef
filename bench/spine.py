"""Spine benchmark: Naive, ICL n=20, ICL n=100 and Prompt-MII-Zero on the corpus's 23 test tasks.

n=20 shown examples, m=100 scored examples per task; the bundled Qwen2.5-Coder-1.5B is both generator
and follower (the paper uses one model for both). Rows go to bench/runs/spine/ as they finish, so a
killed run resumes (run the same command again); the summary goes to bench/results/spine.json.

    python bench/spine.py                      # run (resumes), then summarize
    python bench/spine.py --summarize-only     # rewrite spine.json from the rows so far
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import CORPUS, ROOT, instruction_stats, machine, rows, write_json
from promptmii import models
from promptmii.data import load_tasks
from promptmii.experiment import EvalConfig, run_eval
from promptmii.results import ResultsDir, mean_by_method

METHODS = ("naive", "icl:20", "icl:100", "promptmii-zero")
MODEL = f"llamacpp:{models.DEFAULT_MODEL}"
PAPER = {  # the paper's main table (arXiv 2510.16932): Llama-3.1-8B / Qwen2.5-7B, 90 tasks, macro-F1, n=20 (icl:100 n=100)
    "naive": {"llama-3.1-8b": 0.253, "qwen2.5-7b": 0.303},
    "icl:20": {"llama-3.1-8b": 0.406, "qwen2.5-7b": 0.431},
    "icl:100": {"llama-3.1-8b": 0.430, "qwen2.5-7b": 0.482},
    "promptmii-zero": {"llama-3.1-8b": 0.343, "qwen2.5-7b": 0.383},
}
PER_TASK_FIELDS = (
    "task", "method", "macro_f1", "accuracy", "invalid_rate", "prompt_tokens_per_query", "llm_calls",
    "seconds", "m", "n_shots_used", "warnings",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "spine"))
    parser.add_argument("--out", default=str(ROOT / "results" / "spine.json"))
    parser.add_argument("--model", default=MODEL, help="generator and follower backend spec")
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args()

    # the measured pipeline's template, pinned: auto-selection would switch to a tuned one once shipped
    config = EvalConfig(
        methods=METHODS, n=20, m=100, follower=args.model, base_generator=args.model, template="terse", seed=0
    )
    tasks = load_tasks(args.corpus, split="test")
    out = ResultsDir(Path(args.runs))
    if not args.summarize_only:
        start = time.time()
        run_eval(tasks, config, out)
        print(f"ran for {time.time() - start:.0f} s")
    summary = summarize([t.id for t in tasks], rows(out.results_path), config)
    if args.summarize_only:  # rewritten from saved rows: the rows' timings were taken on the recorded machine
        summary["machine"] = machine(Path(args.out))
    write_json(Path(args.out), summary)
    print(json.dumps(summary["mean"], indent=2))


def summarize(task_ids: list[str], found: list, config: EvalConfig) -> dict:
    rows = [r for r in found if r.task in task_ids and r.method in METHODS and r.config.get("m") == config.m]
    # rows made with another meta-prompt template are stale; the latest row per (task, method) wins
    rows = [r for r in rows if r.generator is None or r.config.get("template") == config.template]
    rows = list({(r.task, r.method): r for r in rows}.values())
    done_tasks = [t for t in task_ids if {r.method for r in rows if r.task == t} >= set(METHODS)]
    complete_rows = [r for r in rows if r.task in done_tasks]  # means only over tasks with every method
    return {
        "benchmark": "spine",
        "config": {
            "methods": list(METHODS),
            "n": config.n,
            "m": config.m,
            "seed": config.seed,
            "model": config.follower,
            "template": config.template,
        },
        "machine": machine(),
        "tasks_total": len(task_ids),
        "tasks_complete": len(done_tasks),
        "complete": len(done_tasks) == len(task_ids),
        "mean": {row["method"]: row for row in mean_by_method(complete_rows)},
        "instructions": {m: instruction_stats([r for r in complete_rows if r.method == m]) for m in METHODS},
        "paper": PAPER,
        "per_task": [{k: getattr(r, k) for k in PER_TASK_FIELDS} for r in complete_rows],
    }


if __name__ == "__main__":
    main()
