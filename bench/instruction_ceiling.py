"""Can any instruction beat Naive with this follower? Instructions a person wrote, scored like a generator's.

The 1.5B generator's instructions (default or tuned template) have not beaten Naive's "Classify the
input." with the bundled 1.5B follower. This asks whether that is the generator's fault or the
follower's: bench/data/human_instructions.json holds, per task, an instruction a person wrote from the
task's labels and its 20 shown examples (seed 0), as a generator would, in two kinds:

- `described`: what the input is, one criterion per label, the frequent label where the examples show one;
- `one_line`: the task named in one sentence.

Each is scored by the follower on the same examples as the committed Naive rows and the 1.5B generator's
Zero rows (default template; same seed and m, so the pairs are exact; the gold labels are checked against
their samples): the 8 validation tasks at m=50, seed 0 (bench/runs/templates/naive and terse) and the 23 test
tasks at m=100, seed 0 (bench/runs/spine) and seed 1 (bench/runs/metaprompt_tuning). The instructions stay
those written from the seed-0 examples; seed 1 draws other scored examples. No template or checkpoint is
selected with these figures.

    python bench/instruction_ceiling.py                 # run (resumes), then summarize
    python bench/instruction_ceiling.py --seeds 1 --kinds described   # test: a second draw of scored examples
    python bench/instruction_ceiling.py --summarize-only --seeds 0,1
    python bench/instruction_ceiling.py --summarize-only

Rows go to bench/runs/instruction_ceiling/rows.jsonl; the summary to bench/results/instruction_ceiling.json.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import cache
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _common import CORPUS, ROOT, machine, paired_test, write_json
from promptmii import models
from promptmii.backends import Backend
from promptmii.classify import load_follower
from promptmii.data import Example, Task, draw, load_tasks
from promptmii.evaluate import run_follower
from promptmii.metrics import label_collapsed, mean, score
from promptmii.results import read_jsonl

FOLLOWER = f"llamacpp:{models.DEFAULT_MODEL}"
INSTRUCTIONS = ROOT / "data" / "human_instructions.json"
KINDS = ("described", "one_line")
RUNS = ROOT / "runs"
# split -> (m, seed -> the run holding the committed rows of that seed at this m)
SPLITS = {
    "validation": (50, {0: {"naive": RUNS / "templates" / "naive", "zero": RUNS / "templates" / "terse"}}),
    "test": (
        100,
        {
            0: {"naive": RUNS / "spine", "zero": RUNS / "spine"},
            1: {"naive": RUNS / "metaprompt_tuning", "zero": RUNS / "metaprompt_tuning"},
        },
    ),
}
# the committed arms: method, template, generator; Zero = the bundled 1.5B generator with the default template
COMMITTED = {"naive": ("naive", None, None), "zero": ("promptmii-zero", "terse", models.DEFAULT_MODEL)}
Cell = tuple[str, str, int]  # split, task, seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--rows", default=str(RUNS / "instruction_ceiling" / "rows.jsonl"))
    parser.add_argument("--out", default=str(ROOT / "results" / "instruction_ceiling.json"))
    parser.add_argument("--seeds", default="0", help="scored-example seeds, comma-separated (test has 0 and 1)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="instruction kinds to run, comma-separated")
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args()

    written = json.loads(INSTRUCTIONS.read_text(encoding="utf-8"))
    seeds = [int(s) for s in args.seeds.split(",")]
    rows_path = Path(args.rows)
    found = read_jsonl(rows_path) if rows_path.exists() else []
    done = {(r["split"], r["task"], r["seed"], r["kind"]) for r in found}
    follower = None if args.summarize_only else load_follower(FOLLOWER, cache=True)
    committed: dict[Cell, dict[str, dict]] = {}
    for seed in seeds:
        for split, (m, by_seed) in SPLITS.items():
            if seed not in by_seed:
                continue
            for task in load_tasks(args.corpus, split=split):
                kinds = [k for k in args.kinds.split(",") if task.id in written[k]]
                if not kinds:
                    continue
                _, test = draw(task, 20, m, seed)
                gold = [e.label for e in test]
                committed[split, task.id, seed] = {
                    arm: committed_row(by_seed[seed][arm], task.id, *COMMITTED[arm], seed, m, gold) for arm in COMMITTED
                }
                for kind in kinds:
                    if follower is not None and (split, task.id, seed, kind) not in done:
                        row = scored_row(
                            follower, task, written[kind][task.id], test, split=split, kind=kind, seed=seed
                        )
                        if row is not None:
                            rows_path.parent.mkdir(parents=True, exist_ok=True)
                            with rows_path.open("a", encoding="utf-8") as f:
                                f.write(json.dumps(row) + "\n")
                            found.append(row)
    summary = summarize(found, committed, seeds)
    summary["machine"] = machine()
    write_json(Path(args.out), summary)
    for split in SPLITS:
        for view, figures in summary.get(split, {}).items():
            if isinstance(figures, dict) and "mean" in figures:
                print(split, view, {a: v["macro_f1"] for a, v in figures["mean"].items()})


def scored_row(
    follower: Backend, task: Task, instruction: str, test: list[Example], *, split: str, kind: str, seed: int
) -> dict | None:
    """The follower's labels for `test` behind `instruction`, as a row; None when a call failed (not a result)."""
    run = run_follower(follower, instruction, task.labels, test, desc=f"{task.id} {kind} seed {seed}")
    if failed := [e for e in run.errors if e]:  # no row, so a rerun asks again
        print(f"{task.id} {kind}: {len(failed)} follower calls failed (first: {failed[0]}); not stored")
        return None
    gold = [e.label for e in test]
    return {"split": split, "task": task.id, "kind": kind, "seed": seed, "m": len(test),
            "follower": follower.model_id, "instruction": instruction,
            "macro_f1": run.scores.macro_f1, "accuracy": run.scores.accuracy, "invalid_rate": run.scores.invalid_rate,
            "prompt_tokens_per_query": run.prompt_tokens_per_query,
            "collapsed": label_collapsed(gold, run.predictions), "predictions": run.predictions}  # fmt: skip


@cache
def committed_records(path: Path) -> tuple[dict, ...]:
    """A committed results.jsonl or samples.jsonl, read once: every task and seed looks rows up in the same files."""
    return tuple(read_jsonl(path))


def committed_row(
    directory: Path, task_id: str, method: str, template: str | None, generator: str | None, seed: int, m: int,
    gold: list[str],
) -> dict:  # fmt: skip
    """A committed row of this task and arm at this seed and m, rescored from its samples.

    Its samples' gold labels must be this draw's, in order: then both arms scored the same examples.
    """
    results = [
        r
        for r in committed_records(directory / "results.jsonl")
        if (r["task"], r["method"], r["seed"]) == (task_id, method, seed)
        and r["config"]["m"] == m  # the m asked for: a task with fewer test rows scored all of them (cb has 56)
        and (template is None or r["config"].get("template") == template)
        and (generator is None or (r["generator"] or "").startswith(generator.lower()))
        and r.get("error") is None
    ]
    if not results:
        raise SystemExit(f"no {method} row for {task_id} at seed {seed}, m={m} in {directory}")
    fingerprint = results[-1]["fingerprint"]
    samples = {
        s["index"]: s
        for s in committed_records(directory / "samples.jsonl")
        if (s["task"], s["method"], s["fingerprint"]) == (task_id, method, fingerprint)
    }
    pairs = [(samples[i]["gold"], samples[i]["prediction"]) for i in sorted(samples)]
    if [g for g, _ in pairs] != gold:
        raise SystemExit(f"{task_id}: the {method} samples in {directory} scored other examples than this draw")
    predictions = [p for _, p in pairs]
    return {
        "macro_f1": score(gold, predictions).macro_f1,
        "collapsed": label_collapsed(gold, predictions),
        "prompt_tokens_per_query": results[-1]["prompt_tokens_per_query"],
    }


def summarize(found: list[dict], committed: dict[Cell, dict[str, dict]], seeds: list[int]) -> dict:
    """Per split and instruction kind: Naive, Zero and the kind on the same tasks, each task's mean over the seeds.

    A task counts once every arm has every seed of that split. On test, `described` covers all 23 tasks and
    `one_line` the 7 where Naive collapses; `described` is also given on the tasks where the committed Naive
    rows collapse at every seed (`described_on_collapsed`; the same 7), where an instruction has the most to fix.
    """
    summary: dict = {"benchmark": "instruction_ceiling", "follower": FOLLOWER, "n_shown": 20, "seeds": seeds}
    by_key = {(r["split"], r["task"], r["seed"], r["kind"]): r for r in found}
    for split, (m, by_seed) in SPLITS.items():
        split_seeds = [s for s in seeds if s in by_seed]
        if not split_seeds:
            continue
        tasks = sorted({t for s, t, _ in committed if s == split})
        summary[split] = {
            "m": m,
            "seeds": split_seeds,
            "committed_rows": {str(seed): {a: str(d.relative_to(ROOT.parent)) for a, d in runs.items()}
                               for seed, runs in by_seed.items() if seed in split_seeds},
        }  # fmt: skip
        # a kind is summarized over the seeds it has rows for (one_line: seed 0), on the tasks that have them all
        kind_seeds = {k: [s for s in split_seeds if any((split, t, s, k) in by_key for t in tasks)] for k in KINDS}
        views = {
            kind: (
                kind,
                [t for t in tasks if kind_seeds[kind] and all((split, t, s, kind) in by_key for s in kind_seeds[kind])],
            )
            for kind in KINDS
        }
        if split == "test":  # the tasks where Naive gives one label to >= 90% of inputs at every seed
            seeds_described = kind_seeds["described"]
            naive_collapsed = [
                t
                for t in views["described"][1]
                if all(committed[split, t, s]["naive"]["collapsed"] for s in seeds_described)
            ]
            views["described_on_collapsed"] = ("described", naive_collapsed)
        for view, (kind, view_tasks) in views.items():
            if view_tasks:
                view_seeds = kind_seeds[kind]
                cells = {
                    arm: {t: [committed[split, t, s][arm] for s in view_seeds] for t in view_tasks} for arm in COMMITTED
                }
                cells[kind] = {t: [by_key[split, t, s, kind] for s in view_seeds] for t in view_tasks}
                summary[split][view] = {"seeds": view_seeds} | compare(
                    cells, [(kind, "naive"), (kind, "zero"), ("zero", "naive")]
                )
    return summary


def compare(cells: dict[str, dict[str, list[dict]]], pairs: list[tuple[str, str]]) -> dict:
    """Means per arm over the same tasks (a task's score: its mean over the seeds), and paired differences."""
    tasks = list(next(iter(cells.values())))

    def f1(arm: str, task: str) -> float:
        return mean(r["macro_f1"] for r in cells[arm][task])

    out: dict = {"tasks": len(tasks), "mean": {}, "paired": {}}
    for arm, per_task in cells.items():
        out["mean"][arm] = {
            "macro_f1": round(mean(f1(arm, t) for t in tasks), 4),
            "prompt_tokens_per_query": round(
                mean(r["prompt_tokens_per_query"] for rs in per_task.values() for r in rs), 1
            ),
            "collapsed_cells": sum(r["collapsed"] for rs in per_task.values() for r in rs),
            "cells": sum(len(rs) for rs in per_task.values()),
            "collapsed_tasks": sorted(t for t, rs in per_task.items() if any(r["collapsed"] for r in rs)),
        }
    for a, b in pairs:
        out["paired"][f"{a}-{b}"] = paired_test([f1(a, t) - f1(b, t) for t in tasks])
    out["per_task"] = {arm: {t: round(f1(arm, t), 4) for t in tasks} for arm in cells}
    return out


if __name__ == "__main__":
    main()
