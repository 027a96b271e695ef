"""Test-time search vs one call: APE and GEPA against Naive, ICL and Prompt-MII on the same follower.

The tasks are 8 of the corpus's 23 test tasks, drawn before any run with random.Random(0).sample over
the sorted test ids: banking77, fnc1_stance, go_emotions, mr, mrpc, politeness_wikipedia, sms_spam,
tweet_eval_emotion (all have the 100 train rows n=100 needs). n=20 shown examples, then n=100; m=100
scored, seed 0; the bundled Qwen2.5-Coder-1.5B is
follower, generator and reflection LM, as in bench/spine.py, whose naive, icl:20, icl:100 and
promptmii-zero rows are reused (same follower, tasks, n, m, seed). promptmii is the shipped trained
generator with bench/trained_vs_zero.py's settings (its base, its training template, 512 instruction
tokens): its n=20 rows come from that benchmark when it has them, its n=100 rows are run here. APE runs with its default budget (2,000 follower
calls) and GEPA with the reference's (150 metric calls).

GEPA runs on every task first (minutes a task), then APE (about an hour a task on 2 cores); then the
same at n=100, with promptmii-zero and promptmii at n=100 as the one-call arms there. Rows go
to bench/runs/search_vs_one_call/ as they finish and every search journals its calls, so a killed
run resumes; the summary goes to bench/results/search_vs_one_call.json.

    python bench/search_vs_one_call.py                  # run (resumes), then summarize
    python bench/search_vs_one_call.py --summarize-only
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from _common import CORPUS, ROOT, machine, mean, paired_ci, rows, write_json
from promptmii import models
from promptmii.data import Task, load_tasks
from promptmii.errors import ModelFileError, PromptMIIError
from promptmii.experiment import EvalConfig, run_eval
from promptmii.results import Result, ResultsDir
from trained_vs_zero import TrainedArm, is_arm_row, trained_config, trained_run  # the trained generator, its settings

MODEL = f"llamacpp:{models.DEFAULT_MODEL}"
TASK_DRAW_SEED, TASK_COUNT = 0, 8
SEARCHES = ("gepa", "ape")
OPTIONAL = ("promptmii",)  # the trained generator's arm: left out of the means while it has no rows
# What runs here, in order: GEPA (minutes a task) before APE (about an hour a task), n=20 before n=100.
PLAN = ((20, "gepa"), (20, "ape"), (100, "promptmii-zero"), (100, "promptmii"), (100, "gepa"), (100, "ape"))
# The arms compared at each n, as (method, n_shots). Naive ignores the examples, so its n=20 row serves
# both; icl:20, icl:100 and promptmii-zero n=20 come from bench/runs/spine, promptmii (trained) from
# bench/runs/trained_vs_zero.
ARMS = {
    20: (("naive", 20), ("icl:20", 20), ("icl:100", 100), ("promptmii-zero", 20), ("promptmii", 20), ("gepa", 20),
         ("ape", 20)),
    100: (("naive", 20), ("icl:100", 100), ("promptmii-zero", 100), ("promptmii", 100), ("gepa", 100),
          ("ape", 100)),
}  # fmt: skip


def drawn_tasks(corpus: str) -> list[str]:
    test_ids = sorted(t.id for t in load_tasks(corpus, split="test"))
    return sorted(random.Random(TASK_DRAW_SEED).sample(test_ids, TASK_COUNT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "search_vs_one_call"))
    parser.add_argument("--out", default=str(ROOT / "results" / "search_vs_one_call.json"))
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args()

    task_ids = drawn_tasks(args.corpus)
    trained = _trained()
    out = ResultsDir(Path(args.runs))
    if not args.summarize_only:
        # Shortest texts first: a search's time grows with them (fnc1_stance's news bodies make its APE
        # ~9 hours), so the tasks that finish soonest land first. The order changes no result.
        tasks = sorted(load_tasks(args.corpus, split="test", task_ids=task_ids), key=text_chars)
        for n, method in PLAN:
            try:
                run_eval(tasks, plan_config(n, method, trained), out, quiet=False)
            except (ModelFileError, PromptMIIError) as error:
                # No trained generator is shipped yet (or its file is broken): the searches go on without it.
                if method != "promptmii":
                    raise
                print(f"skip promptmii n={n}: {error}")
    found = _rows(out.results_path, trained)
    found += _rows(ROOT / "runs" / "spine" / "results.jsonl", trained)
    found += [r for r in _rows(ROOT / "runs" / "trained_vs_zero" / "results.jsonl", trained) if r.method == "promptmii"]
    summary = summarize(task_ids, found, trained)
    if args.summarize_only:  # rewritten from saved rows: the rows' timings were taken on the recorded machine
        summary["machine"] = machine(Path(args.out))
    write_json(Path(args.out), summary)
    for n, part in summary["by_n"].items():
        print(f"n={n}: {part['tasks_complete']}/{len(task_ids)} tasks complete")
        for search, partial in part["so_far"].items():
            means = {arm: m.get("macro_f1") for arm, m in partial["mean"].items()}
            print(f"  {search} so far, {len(partial['tasks'])} tasks, macro-F1: {json.dumps(means)}")


def text_chars(task: Task) -> int:
    return sum(len(e.text) for e in task.train + task.test)


def plan_config(n: int, method: str, trained: TrainedArm | None) -> EvalConfig:
    """The 1.5B as follower and generator; the trained arm as bench/trained_vs_zero.py runs it."""
    if method == "promptmii":
        if trained is None:
            raise PromptMIIError("no trained generator is shipped")
        return trained_config((method,), n, 0, trained)
    return EvalConfig(methods=(method,), n=n, m=100, follower=MODEL, base_generator=MODEL, template="terse", seed=0)


def _rows(path: Path, trained: TrainedArm | None) -> list[Result]:
    """Rows of the benchmark's settings: m=100, seed 0, the terse template for Zero, the shipped trained generator."""
    return [
        r
        for r in rows(path)
        if r.m == 100
        and r.seed == 0
        and (r.method != "promptmii-zero" or (r.template or r.config.get("template")) == "terse")
        and (r.method != "promptmii" or (trained is not None and is_arm_row(r, trained, n=r.config.get("n"))))
    ]


def _trained() -> TrainedArm | None:
    """The shipped trained generator, or None while there is none."""
    try:
        return TrainedArm.of(trained_run())
    except PromptMIIError:
        return None


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
        "seconds": round(r.seconds, 1),  # this run's wall time: cache replays and resumes make it short
        # what the row costs cold; rows from before schema 3 (the reused spine rows, all cold) have only `seconds`
        "model_seconds": round(r.cost_seconds, 1),
        "budget_exhausted": r.budget_exhausted,
        "candidates": r.candidates,
        "instruction": r.instruction[:300],
    }


def summarize(task_ids: list[str], found: list[Result], trained: TrainedArm | None) -> dict:
    latest = {(r.task, r.method, r.n_shots): r for r in found if r.task in task_ids}
    by_n = {}
    for n, all_arms in ARMS.items():
        rows_per_arm = {arm: sum((t, *arm) in latest for t in task_ids) for arm in all_arms}
        # The trained arm runs only where a trained generator exists; without one it must not hold back the rest.
        arms = tuple(arm for arm, count in rows_per_arm.items() if count or arm[0] not in OPTIONAL)
        done = [t for t in task_ids if all((t, *arm) in latest for arm in arms)]
        so_far = {}  # while the run is partial: each search against the one-call arms, on the tasks it has done
        for search in SEARCHES:
            compared = [arm for arm in arms if arm[0] not in SEARCHES or arm[0] == search]
            tasks = [t for t in task_ids if all((t, *arm) in latest for arm in compared)]
            so_far[search] = {"tasks": tasks, "mean": arm_means(latest, tasks, compared)}
        by_n[str(n)] = {
            "tasks_complete": len(done),
            "complete": len(done) == len(task_ids),
            "rows_per_arm": {arm_label(*arm): count for arm, count in rows_per_arm.items()},
            "arms_left_out": [arm_label(*arm) for arm in all_arms if arm not in arms],
            "mean": arm_means(latest, done, arms),
            "paired_macro_f1": paired(latest, done, arms),
            "so_far": so_far,
            "per_task": {
                t: {arm_label(*arm): cost(latest[(t, *arm)]) for arm in arms if (t, *arm) in latest} for t in task_ids
            },
        }
    return {
        "benchmark": "search_vs_one_call",
        "tasks": task_ids,
        "task_draw": f"random.Random({TASK_DRAW_SEED}).sample(sorted(test task ids), {TASK_COUNT})",
        "follower": MODEL,
        "generator": f"{MODEL} (promptmii-zero, ape proposals, gepa reflection)",
        "trained_generator": trained.description if trained else None,
        "m": 100,
        "budgets": {"ape": "2,000 follower calls", "gepa": "150 metric calls (follower calls)"},
        "by_n": by_n,
        "machine": machine(),
        "note": "model_seconds is the time every call of a row took when it was made (a cold run's cost; cache "
        "replays and resumed searches count their first time); seconds is the wall time of the run that wrote the "
        "row. The reused spine and trained rows ran cold, on the same machine kind.",
    }


def arm_means(latest: dict, tasks: list[str], arms: tuple) -> dict:
    """The mean of every numeric cost field, per arm, over `tasks`."""
    means = {}
    for method, shots in arms:
        picked = [cost(latest[(t, method, shots)]) for t in tasks]
        numeric = [k for k, v in (picked[0].items() if picked else []) if type(v) in (int, float)]
        means[arm_label(method, shots)] = {k: mean([p[k] for p in picked]) for k in numeric}
    return means


def paired(latest: dict, tasks: list[str], arms: tuple) -> dict:
    """Each one-call arm minus each search, macro-F1 over `tasks`: mean difference and its 95% bootstrap CI."""
    if not tasks:
        return {}
    f1 = {arm: [latest[(t, *arm)].macro_f1 for t in tasks] for arm in arms}
    searches = [arm for arm in arms if arm[0] in SEARCHES]
    return {
        f"{arm_label(*arm)} - {arm_label(*search)}": paired_ci(f1[arm], f1[search])
        for search in searches
        for arm in arms
        if arm[0] not in SEARCHES
    }


def arm_label(method: str, shots: int) -> str:
    """How an arm is named in the summary: the method and the n it was shown, e.g. "ape n=100"."""
    return f"{method} n={shots}"


if __name__ == "__main__":
    main()
