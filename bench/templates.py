"""Choose the default meta-prompt template on the corpus's validation tasks (never on test).

Prompt-MII-Zero with each built-in template, plus Naive for reference, on the 8 validation tasks: n=20,
m=50, the bundled 1.5B as generator and follower, at each shot-draw seed asked for. The greedy generator
writes one instruction per task and draw, and one task's instruction moves an 8-task mean a lot (at
seed 0 terse scores .559 on ii_word_in_context where every other arm scores .359, .025 of its mean), so
templates are compared on the mean over two draws. Rows go to
bench/runs/templates/<template>/ (resumable, every seed in one folder); the summary goes to --out.

    python bench/templates.py                                   # seed 0, every template
    python bench/templates.py --seeds 0,1 --templates terse,balanced,terse_exact \
        --out bench/results/template_selection_seeds.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from _common import CORPUS, ROOT, mean, paired_ci, rows, write_json
from promptmii import models
from promptmii.data import load_tasks
from promptmii.experiment import EvalConfig, run_eval
from promptmii.prompts import template_names
from promptmii.results import ResultsDir

MODEL = f"llamacpp:{models.DEFAULT_MODEL}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "templates"))
    parser.add_argument("--out", default=str(ROOT / "results" / "template_selection.json"))
    parser.add_argument("--m", type=int, default=50)
    parser.add_argument("--seeds", default="0", help="comma-separated shot-draw seeds")
    parser.add_argument("--templates", default=",".join(template_names()), help="comma-separated built-in names")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    templates = args.templates.split(",")
    unknown = sorted(set(templates) - set(template_names()))
    if unknown:
        parser.error(f"unknown templates {unknown}; built-ins are {list(template_names())}")

    tasks = load_tasks(args.corpus, split="validation")
    task_ids = [t.id for t in tasks]
    base = EvalConfig(methods=("naive",), n=20, m=args.m, follower=MODEL, base_generator=MODEL)
    summary: dict = {"split": "validation", "tasks": task_ids, "n": base.n, "m": base.m, "seeds": seeds, "model": MODEL}
    for arm in ("naive", *templates):
        config = base if arm == "naive" else replace(base, methods=("promptmii-zero",), template=arm)
        out = ResultsDir(Path(args.runs) / arm)
        for seed in seeds:
            run_eval(tasks, replace(config, seed=seed), out)
        done = [r for r in rows(out.results_path) if r.m == args.m and r.task in task_ids]
        per_seed = {seed: {r.task: r for r in done if r.seed == seed} for seed in seeds}  # a rerun's row wins
        summary[arm] = summarize(per_seed, task_ids)
    summary["chosen"] = max(templates, key=lambda t: summary[t]["mean_macro_f1"])
    summary["paired_vs_naive"] = {t: paired(summary[t], summary["naive"], task_ids) for t in templates}
    if "terse" in templates:
        summary["paired_vs_terse"] = {
            t: paired(summary[t], summary["terse"], task_ids) for t in templates if t != "terse"
        }
    write_json(Path(args.out), summary)
    print(json.dumps({arm: summary[arm]["mean_macro_f1"] for arm in ("naive", *templates)}, indent=2))


def summarize(per_seed: dict[int, dict], task_ids: list[str]) -> dict:
    """One arm: means over every (task, seed) row, each seed's mean, and each task's mean over the seeds."""
    done = [r for by_task in per_seed.values() for r in by_task.values()]
    return {
        "mean_macro_f1": mean([r.macro_f1 for r in done]),
        "per_seed_macro_f1": {
            str(seed): mean([r.macro_f1 for r in by_task.values()]) for seed, by_task in per_seed.items()
        },
        "mean_invalid_rate": mean([r.invalid_rate for r in done]),
        "mean_prompt_tokens_per_query": mean([r.prompt_tokens_per_query for r in done]),
        "rows": len(done),
        "per_task": {
            task: mean([by_task[task].macro_f1 for by_task in per_seed.values() if task in by_task])
            for task in task_ids
        },
    }


def paired(arm: dict, other: dict, task_ids: list[str]) -> dict:
    """arm - other over the tasks both have, each task's score its mean over the seeds."""
    both = [t for t in task_ids if arm["per_task"][t] is not None and other["per_task"][t] is not None]
    return paired_ci([arm["per_task"][t] for t in both], [other["per_task"][t] for t in both]) | {"tasks": len(both)}


if __name__ == "__main__":
    main()
