"""Real GRPO meta-training on CPU, as many steps as fit, resumable across sittings.

The CPU defaults of `promptmii train` (docs/training.md): LoRA on the bundled Qwen2.5-Coder-0.5B,
the bundled 1.5B in llama.cpp as follower, 2 meta-prompts x 5 rollouts per step, m=20, validation on
all validation-split tasks every 10 steps, a checkpoint every step. The run directory (checkpoints, ~100 MB each) lives in
$PROMPTMII_HOME/runs/bench-grpo-cpu, beside the model cache, so that it outlives a fresh checkout of the repository;
its logs, the plot and the summary are copied to bench/results/.

    python bench/train_curve.py --max-steps 10        # start, or continue to step 10 (the committed run)
    python bench/train_curve.py --max-steps 20        # continue the same run further; it resumes
    python bench/train_curve.py --summarize-only      # rewrite train_curve.json from the logs so far
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from _common import CORPUS, ROOT, machine, mean, write_json
from promptmii import models
from promptmii.train import TrainConfig, train

RUN = models.promptmii_home() / "runs" / "bench-grpo-cpu"
LOG_FILES = ("metrics.jsonl", "validation.jsonl", "run_log.jsonl", "rollouts.jsonl", models.RUN_CONFIG)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(CORPUS.resolve()))
    parser.add_argument("--run", default=str(RUN))
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args()

    run = Path(args.run)
    if not args.summarize_only:
        # a checkpoint every step: a CPU step takes ~15 min, and a sitting can end at any moment
        config = TrainConfig(corpus=args.corpus, output=str(run), max_steps=args.max_steps, save_steps=1)
        train(config, resume=(run / models.RUN_CONFIG).is_file())
    results = ROOT / "results"
    logs = results / "train_curve_logs"
    logs.mkdir(parents=True, exist_ok=True)
    for name in LOG_FILES:
        if (run / name).is_file():
            shutil.copy(run / name, logs / name)
    if (run / "training.png").is_file():
        shutil.copy(run / "training.png", results / "train_curve.png")
    summary = summarize(run)
    if args.summarize_only:  # rewritten from saved logs: their timings were taken on the recorded machine
        summary["machine"] = machine(results / "train_curve.json")
    write_json(results / "train_curve.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "steps"}, indent=2))


def summarize(run: Path) -> dict:
    metrics = _read(run / "metrics.jsonl")
    validation = {r["step"]: r for r in _read(run / "validation.jsonl")}
    steps = [
        {
            "step": r["step"],
            "train_reward": r.get("reward"),
            "train_reward_std": r.get("reward_std"),
            "frac_reward_zero_std": r.get("frac_reward_zero_std"),
            "loss": r.get("loss"),
            "validation_f1": validation.get(r["step"], {}).get("validation_f1"),
            "seconds_per_step": r.get("seconds_per_step"),
            "peak_rss_mb": r.get("peak_rss_mb"),
        }
        for r in metrics
    ]
    rewards = [s["train_reward"] for s in steps if s["train_reward"] is not None]
    window = max(1, min(10, len(rewards) // 2))
    config = models.run_config(run) if models.is_training_run(run) else {}
    return {
        "benchmark": "train_curve",
        "config": {k: v for k, v in config.items() if k not in ("corpus", "output")},
        "steps_done": len(steps),
        "validation": [{"step": s, "validation_f1": r["validation_f1"]} for s, r in sorted(validation.items())],
        "train_reward_first_window": mean(rewards[:window]),
        "train_reward_last_window": mean(rewards[-window:]),
        "window": window,
        "mean_seconds_per_step": mean([s["seconds_per_step"] for s in steps if s["seconds_per_step"]]),
        "peak_rss_mb": max((s["peak_rss_mb"] or 0 for s in steps), default=None),
        "machine": machine(),
        "note": "seconds per step include validation on eval steps and other benchmarks sharing the 2 cores",
        "steps": steps,
    }


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    main()
