"""Follower decoding modes side by side: generate vs score vs score-calibrated vs constrained.

The corpus's 23 test tasks, n=20, m=100, methods promptmii-zero and icl:20, with the bundled 0.5B as
the follower (the model whose free generation collapses to one label, RUNTIME.md: the case where
scoring or a grammar could matter) and the 1.5B as the generator. Rows go to bench/runs/decoding_modes/
(resumable, task by task across modes); the summary goes to bench/results/decoding_modes.json.

    python bench/decoding_modes.py                     # run (resumes), then summarize
    python bench/decoding_modes.py --summarize-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tqdm import tqdm

from promptmii import models
from promptmii.data import load_tasks
from promptmii.evaluate import DECODING
from promptmii.experiment import EvalConfig, run_eval
from promptmii.results import ResultsDir, read_done

ROOT = Path(__file__).resolve().parent
METHODS = ("promptmii-zero", "icl:20")
FOLLOWER = f"llamacpp:{models.FAST_MODEL}"
GENERATOR = f"llamacpp:{models.DEFAULT_MODEL}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(ROOT.parent.parent / "shared" / "corpus"))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "decoding_modes"))
    parser.add_argument("--out", default=str(ROOT / "results" / "decoding_modes.json"))
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args()

    tasks = load_tasks(args.corpus, split="test")
    out = ResultsDir(Path(args.runs))
    configs = {
        mode: EvalConfig(methods=METHODS, n=20, m=100, follower=FOLLOWER, base_generator=GENERATOR, decoding=mode)
        for mode in DECODING
    }
    if not args.summarize_only:
        for task in tqdm(tasks, desc="tasks", unit="task"):
            for config in configs.values():
                run_eval([task], config, out, quiet=True)
    summary = summarize([t.id for t in tasks], read_done(out.results_path))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["mean"], indent=2))


def summarize(task_ids: list[str], rows: list) -> dict:
    """Means per (decoding, method) over the tasks where every mode and method is done."""
    rows = [r for r in rows if r.task in task_ids and r.method in METHODS and r.m > 0]
    latest = {(r.task, r.method, r.decoding): r for r in rows}
    complete = [t for t in task_ids if all((t, m, d) in latest for m in METHODS for d in DECODING)]
    mean = {}
    for decoding in DECODING:
        for method in METHODS:
            chosen = [latest[(t, method, decoding)] for t in complete]
            if chosen:
                mean[f"{decoding} {method}"] = {
                    "macro_f1": round(sum(r.macro_f1 for r in chosen) / len(chosen), 4),
                    "accuracy": round(sum(r.accuracy for r in chosen) / len(chosen), 4),
                    "invalid_rate": round(sum(r.invalid_rate for r in chosen) / len(chosen), 4),
                    "seconds": round(sum(r.seconds for r in chosen), 1),
                    "llm_calls": sum(r.llm_calls for r in chosen),
                }
    return {
        "benchmark": "decoding_modes",
        "config": {"methods": list(METHODS), "n": 20, "m": 100, "follower": FOLLOWER, "generator": GENERATOR},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "tasks_total": len(task_ids),
        "tasks_complete": len(complete),
        "complete": len(complete) == len(task_ids),
        "mean": mean,
        "note": (
            "seconds are sums over the complete tasks; score-calibrated reuses score's label log-probabilities "
            "from the call cache, so its seconds are mostly the content-free calls; some early tasks shared the "
            "2 cores with other benchmarks"
        ),
        "per_task": [
            {
                "task": r.task,
                "method": r.method,
                "decoding": r.decoding,
                "macro_f1": round(r.macro_f1, 4),
                "invalid_rate": r.invalid_rate,
                "seconds": r.seconds,
            }
            for (t, _, _), r in sorted(latest.items())
            if t in complete
        ],
    }


if __name__ == "__main__":
    main()
