"""Does meta-training help? The trained generator vs the same model untrained, on the 23 test tasks.

promptmii (the bench/train_curve.py run, served by llama.cpp with its exported LoRA adapter) vs
promptmii-zero (the same bundled 0.5B without the adapter), n=20, m=100, both with a 256-token
instruction limit (the training limit), scored by the bundled 1.5B follower. Naive, icl:20 and icl:100
come from bench/runs/spine/, which used the same follower, tasks, n, m and seed, so they are not re-run.
Goal: trained >= zero + 0.03 macro-F1 on the mean.

    python bench/trained_vs_zero.py                   # export the adapter, run (resumes), summarize
    python bench/trained_vs_zero.py --summarize-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from promptmii import models
from promptmii.data import load_tasks
from promptmii.experiment import EvalConfig, run_eval
from promptmii.export import export_adapter
from promptmii.results import ResultsDir, read_done

ROOT = Path(__file__).resolve().parent
RUN = models.promptmii_home() / "runs" / "bench-grpo-cpu"
FOLLOWER = f"llamacpp:{models.DEFAULT_MODEL}"
POLICY = f"llamacpp:{models.FAST_MODEL}"
METHODS = ("promptmii", "promptmii-zero")
FROM_SPINE = ("naive", "icl:20", "icl:100")
GOAL = 0.03


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(ROOT.parent.parent / "shared" / "corpus"))
    parser.add_argument("--run", default=str(RUN), help="the training run (its adapter/ must exist)")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "trained_vs_zero"))
    parser.add_argument("--out", default=str(ROOT / "results" / "trained_vs_zero.json"))
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args()

    run = Path(args.run)
    config = trained_config(run, METHODS)
    tasks = load_tasks(args.corpus, split="test")
    out = ResultsDir(Path(args.runs))
    if not args.summarize_only:
        export_adapter(run)
        run_eval(tasks, config, out, quiet=False)
    rows = [r for r in read_done(out.results_path) if r.method in METHODS]
    spine = [r for r in read_done(ROOT / "runs" / "spine" / "results.jsonl") if r.method in FROM_SPINE]
    summary = summarize([t.id for t in tasks], rows + spine, run)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["mean"], indent=2))


def trained_config(run: Path, methods: tuple[str, ...], n: int = 20) -> EvalConfig:
    """The trained generator as this benchmark runs it: its base model + the run's adapter, 256-token limit."""
    return EvalConfig(methods=methods, n=n, m=100, follower=FOLLOWER, base_generator=POLICY,
                      generator=f"llamacpp:{run}", max_instruction_tokens=256, seed=0)  # fmt: skip


def summarize(task_ids: list[str], rows: list, run: Path) -> dict:
    latest = {(r.task, r.method): r for r in rows if r.task in task_ids and r.config.get("m") == 100}
    methods = (*METHODS, *FROM_SPINE)
    done = [t for t in task_ids if all((t, m) in latest for m in methods)]
    mean = {}
    for method in methods:
        picked = [latest[(t, method)] for t in done]
        mean[method] = {
            "macro_f1": _mean([r.macro_f1 for r in picked]),
            "accuracy": _mean([r.accuracy for r in picked]),
            "invalid_rate": _mean([r.invalid_rate for r in picked]),
            "prompt_tokens_per_query": _mean([r.prompt_tokens_per_query for r in picked]),
            "llm_calls": _mean([r.llm_calls for r in picked]),
        }
    trained, zero = mean["promptmii"]["macro_f1"], mean["promptmii-zero"]["macro_f1"]
    delta = round(trained - zero, 4) if done else None
    steps = (
        [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        if (run / "metrics.jsonl").is_file()
        else []
    )
    return {
        "benchmark": "trained_vs_zero",
        "generator": f"{models.FAST_MODEL} + LoRA from {run.name} after {max(steps, default=0)} optimizer steps",
        "follower": FOLLOWER,
        "n": 20,
        "m": 100,
        "tasks_complete": len(done),
        "tasks_total": len(task_ids),
        "complete": len(done) == len(task_ids),
        "mean": mean,
        "delta_trained_minus_zero": delta,
        "goal": f"trained >= zero + {GOAL} macro-F1",
        "goal_met": bool(done) and delta is not None and delta >= GOAL,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "per_task": [{"task": t, **{m: round(latest[(t, m)].macro_f1, 4) for m in methods}} for t in done],
    }


def _mean(values: list) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


if __name__ == "__main__":
    main()
