"""Does a tuned meta-prompt help a generator we cannot train? Default vs tuned template on the 23 test tasks.

Arms: naive, icl:20, and promptmii-zero with the default template and with the tuned template, for
each bundled generator (1.5B, 0.5B); the follower is the bundled 1.5B; n=20, m=100, seed 0 (--seeds adds
shot-draw seeds: an arm's per-task score is then its mean over the seeds, and a task counts once every arm
has every seed). The tuned
template is the one auto-selection picks for the generator (shipped in promptmii/templates/tuned/ or
registered by `promptmii tune` in $PROMPTMII_HOME/templates/), so tune first (docs/tuning.md):

    promptmii tune --corpus ../shared/corpus --generator llamacpp:qwen2.5-coder-1.5b-instruct --budget 2500 --m 20 -o runs/tune-1.5b
    promptmii tune --corpus ../shared/corpus --generator llamacpp:qwen2.5-coder-0.5b-instruct --budget 1000 --m 20 -o runs/tune-0.5b
    python bench/metaprompt_tuning.py                    # run (resumes), then summarize
    python bench/metaprompt_tuning.py --summarize-only
    python bench/metaprompt_tuning.py --seeds 0,1 --out bench/results/metaprompt_tuning_seeds.json \
        --arms promptmii-zero/tuned/0.5b,naive,promptmii-zero/default/1.5b,promptmii-zero/default/0.5b
                                                         # a second shot-draw seed, for the arms named
    python bench/metaprompt_tuning.py --generators 1.5b --candidates balanced --out bench/results/metaprompt_candidates.json \
        --arms naive,promptmii-zero/default/1.5b,promptmii-zero/balanced/1.5b
                                                         # a built-in template that validation rejected, on test

Goal (1.5B generator): tuned >= naive + 0.02 and >= default + 0.03 mean macro-F1, at <= 300 prompt
tokens/query. Rows go to bench/runs/metaprompt_tuning/ (resumable); the summary to
bench/results/metaprompt_tuning.json. Naive, icl:20 and the 1.5B's default-template Zero arm are read from
bench/runs/spine (same settings, run once) where it has them; --no-reuse runs them here too.
A tuned template with the default's text (the search kept its start template) makes one arm, run once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _common import CORPUS, ROOT, collapsed_rows, machine, paired_test, rows, write_json
from promptmii import metaprompts, models, prompts
from promptmii.data import load_tasks
from promptmii.experiment import Backends, EvalConfig, run_eval
from promptmii.metrics import mean
from promptmii.results import Result, ResultsDir

FOLLOWER = f"llamacpp:{models.DEFAULT_MODEL}"
GENERATORS = {"1.5b": f"llamacpp:{models.DEFAULT_MODEL}", "0.5b": f"llamacpp:{models.FAST_MODEL}"}
SHARED_ARMS = ("naive", "icl:20")
# bench/spine.py ran these arms with this benchmark's settings (test split, seed 0, n=20, m=100, follower 1.5B;
# the 1.5B generator with the default template and 1,024 tokens): their rows are read, not run again.
SPINE_ROWS = ROOT / "runs" / "spine" / "results.jsonl"
REUSABLE = (*SHARED_ARMS, "promptmii-zero/default/1.5b")
GOAL = {"generator": "1.5b", "over_naive": 0.02, "over_default": 0.03, "max_prompt_tokens_per_query": 300}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "metaprompt_tuning"))
    parser.add_argument("--out", default=str(ROOT / "results" / "metaprompt_tuning.json"))
    parser.add_argument("--generators", default=",".join(GENERATORS), help="short names: 1.5b,0.5b")
    parser.add_argument("--follower", default=FOLLOWER)
    parser.add_argument("--m", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=0, help="first K test tasks only (a smoke run) [0 = all]")
    parser.add_argument("--seeds", default="0", help="shot-draw seeds, comma-separated")
    parser.add_argument("--arms", default="", help="run and summarize only these arms, comma-separated [all]")
    parser.add_argument("--summarize-only", action="store_true")
    parser.add_argument("--no-reuse", action="store_true", help="run every arm here, none read from the spine run")
    parser.add_argument(
        "--candidates", default="", help="built-in templates scored as extra arms promptmii-zero/NAME/GEN [none]"
    )
    args = parser.parse_args()

    tasks = load_tasks(args.corpus, split="test")[: args.tasks or None]
    task_ids = [t.id for t in tasks]
    base = EvalConfig(methods=SHARED_ARMS, n=20, m=args.m, follower=args.follower, base_generator=args.follower)
    out = ResultsDir(Path(args.runs))
    start = time.time()
    configs = {arm: replace(base, methods=(arm,)) for arm in SHARED_ARMS}
    candidates = [c for c in args.candidates.split(",") if c]
    # the default's rows are the default arm's (arm_of matches the default's sha256 first)
    if bad := [c for c in candidates if c not in prompts.template_names() or c == prompts.DEFAULT_TEMPLATE]:
        sys.exit(
            f"--candidates must name built-in templates other than the default {prompts.DEFAULT_TEMPLATE} (got {bad})"
        )
    generators = {}
    for short in args.generators.split(","):
        spec = GENERATORS[short]
        default = replace(base, methods=("promptmii-zero",), base_generator=spec, template=prompts.DEFAULT_TEMPLATE)
        tuned_config = replace(default, template=None)  # auto-selection: what a user gets without --template
        tuned = Backends(tuned_config).template("base_generator")
        if not tuned.header:
            sys.exit(f"no tuned template registered for {spec}: run `promptmii tune --generator {spec} ...` first")
        default_sha = metaprompts.builtin(default.template).sha256
        configs[f"promptmii-zero/default/{short}"] = default
        if tuned.sha256 != default_sha:  # a search whose winner is the start template: the same arm, run once
            configs[f"promptmii-zero/tuned/{short}"] = tuned_config
        generators[short] = {
            "spec": spec,
            "model_id": Backends(default).get("base_generator").model_id,
            "default_template": {"name": default.template, "sha256": default_sha},
            "tuned_template": {"name": tuned.name, "sha256": tuned.sha256, "header": tuned.header},
            "tuned_is_default": tuned.sha256 == default_sha,
            "candidate_templates": {name: metaprompts.builtin(name).sha256 for name in candidates},
        }
        for name in candidates:
            configs[f"promptmii-zero/{name}/{short}"] = replace(default, template=name)
    reused = [] if args.no_reuse else [r for r in rows(SPINE_ROWS) if arm_of(r, generators) in REUSABLE]
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = args.arms.split(",") if args.arms else list(configs)  # run in the order given
    if unknown := set(arms) - set(configs):
        sys.exit(f"unknown arms {sorted(unknown)}: choose from {sorted(configs)}")
    if not args.summarize_only:
        for seed in seeds:
            for arm in arms:  # by default the shared arms first, then each generator's default and tuned
                have = {r.task for r in reused if arm_of(r, generators) == arm and counts(r, args.m, (seed,))}
                if missing := [t for t in tasks if t.id not in have]:
                    run_eval(missing, replace(configs[arm], seed=seed), out)
    all_rows = reused + rows(out.results_path)
    collapse = collapsed_rows(all_rows, [SPINE_ROWS.with_name("samples.jsonl"), out.samples_path])
    summary = summarize(task_ids, all_rows, generators, args, seeds, arms if args.arms else None, collapse)
    summary["reused_from"] = {
        "rows": str(SPINE_ROWS.relative_to(ROOT.parent)),
        "arms": sorted({arm_of(r, generators) for r in reused if counts(r, args.m, (0,))}),
    }
    summary["seconds_this_invocation"] = round(time.time() - start, 1)
    write_json(Path(args.out), summary)
    print(json.dumps(summary["mean"], indent=2))


def counts(row: Result, m: int, seeds: Collection[int]) -> bool:
    """A row of this benchmark's settings: one of the seeds, n=20 and the m asked for."""
    return row.config.get("m") == m and row.seed in seeds and row.n_shots == 20


def arm_of(row, generators: dict) -> str | None:
    """The arm a row belongs to; None for rows of other settings (another template, generator...)."""
    if row.method in SHARED_ARMS:
        return row.method
    for short, g in generators.items():
        if row.method == "promptmii-zero" and row.generator == g["model_id"]:
            for kind in ("default", "tuned"):
                if row.template_sha256 == g[f"{kind}_template"]["sha256"]:
                    return f"promptmii-zero/{kind}/{short}"
            for name, sha in g.get("candidate_templates", {}).items():
                if row.template_sha256 == sha:
                    return f"promptmii-zero/{name}/{short}"
            # rows from before schema 4 named their template but did not hash it; the default's text is
            # unchanged since then (git log src/promptmii/templates/terse.txt)
            if row.template_sha256 is None and row.config.get("template") == g["default_template"]["name"]:
                return f"promptmii-zero/default/{short}"
    return None


def summarize(
    task_ids: list[str],
    rows: list,
    generators: dict,
    args: argparse.Namespace,
    seeds: list[int] | tuple[int, ...] = (0,),
    only: list[str] | None = None,
    collapse: dict[tuple, bool] | None = None,
) -> dict:
    """Means, paired differences and the goal over the tasks every arm has at every seed.

    `collapse` (row key -> bool, from the runs' samples) adds `label_collapse`: per arm, the (task, seed)
    cells where the follower gave one label to >= 90% of the inputs, the main way these arms lose macro-F1.
    """
    follower_ids = {r.follower for r in rows if r.method in SHARED_ARMS}
    by_arm: dict[str, dict[tuple[str, int], object]] = {}
    for r in rows:  # the latest row per (arm, task, seed) wins: this run's rows come after the reused ones
        arm = arm_of(r, generators)
        if arm and r.task in task_ids and counts(r, args.m, seeds):
            by_arm.setdefault(arm, {})[r.task, r.seed] = r
    for short, g in generators.items():
        if g.get("tuned_is_default"):  # same text, same seed: the default arm's rows are the tuned arm's
            by_arm[f"promptmii-zero/tuned/{short}"] = by_arm.get(f"promptmii-zero/default/{short}", {})
    arms = [*SHARED_ARMS, *(f"promptmii-zero/{k}/{s}" for s in generators for k in ("default", "tuned"))]
    arms += [f"promptmii-zero/{n}/{s}" for s, g in generators.items() for n in g.get("candidate_templates", {})]
    arms = [a for a in arms if only is None or a in only]
    complete = [t for t in task_ids if all((t, s) in by_arm.get(a, {}) for a in arms for s in seeds)]

    def score(arm: str, task: str, field: str = "macro_f1") -> float:
        return mean(getattr(by_arm[arm][task, s], field) for s in seeds)

    mean_table = {
        a: {
            "macro_f1": round(mean(score(a, t) for t in complete), 4),
            "prompt_tokens_per_query": round(mean(score(a, t, "prompt_tokens_per_query") for t in complete), 1),
            "invalid_rate": round(mean(score(a, t, "invalid_rate") for t in complete), 4),
        }
        for a in arms
        if complete
    }
    by_seed = {
        str(s): {a: round(mean(by_arm[a][t, s].macro_f1 for t in complete), 4) for a in arms} for s in seeds if complete
    }
    pairs = {}
    for short in generators:
        tuned, default = f"promptmii-zero/tuned/{short}", f"promptmii-zero/default/{short}"
        pairs |= {
            f"tuned-naive/{short}": (tuned, "naive"),
            f"tuned-default/{short}": (tuned, default),
            f"tuned-icl:20/{short}": (tuned, "icl:20"),
            f"default-naive/{short}": (default, "naive"),
        }
        for name in generators[short].get("candidate_templates", {}):
            candidate = f"promptmii-zero/{name}/{short}"
            pairs |= {f"{name}-naive/{short}": (candidate, "naive"), f"{name}-default/{short}": (candidate, default)}
        # a tuned generator against another one's default: which generator should users run?
        pairs |= {
            f"tuned/{short}-default/{o}": (tuned, f"promptmii-zero/default/{o}") for o in generators if o != short
        }
    paired = {}
    for name, (a, b) in pairs.items():
        if a in arms and b in arms and complete:
            diffs = [score(a, t) - score(b, t) for t in complete]
            paired[name] = paired_test(diffs) | {"tasks": len(diffs)}

    def collapse_count(arm: str) -> dict:
        cells = {(t, s): collapse.get(by_arm[arm][t, s].key) for t in complete for s in seeds}
        return {
            "collapsed_cells": sum(bool(c) for c in cells.values()),
            "cells": len(cells),
            "cells_without_samples": sum(c is None for c in cells.values()),
            "tasks": sorted({t for (t, _), c in cells.items() if c}),
        }

    label_collapse = {a: collapse_count(a) for a in arms} if complete and collapse is not None else {}
    goal_short = GOAL["generator"]
    goal = None
    goal_arms = {"naive", f"promptmii-zero/tuned/{goal_short}", f"promptmii-zero/default/{goal_short}"}
    if complete and goal_short in generators and goal_arms <= set(arms):
        tuned = mean_table[f"promptmii-zero/tuned/{goal_short}"]
        goal = GOAL | {
            "met_over_naive": tuned["macro_f1"] >= mean_table["naive"]["macro_f1"] + GOAL["over_naive"],
            "met_over_default": tuned["macro_f1"]
            >= mean_table[f"promptmii-zero/default/{goal_short}"]["macro_f1"] + GOAL["over_default"],
            "met_tokens": tuned["prompt_tokens_per_query"] <= GOAL["max_prompt_tokens_per_query"],
        }
    return {
        "benchmark": "metaprompt_tuning",
        "mean": mean_table,
        "mean_by_seed": by_seed,
        "seeds": list(seeds),
        "tuning_llm_calls": {s: _int(g["tuned_template"]["header"].get("llm_calls")) for s, g in generators.items()},
        "tuning_model_seconds": {
            s: _float(g["tuned_template"]["header"].get("model_seconds")) for s, g in generators.items()
        },
        "generators": generators,
        "paired": paired,
        "label_collapse": label_collapse,
        "goal": goal,
        "config": {
            "n": 20,
            "m": args.m,
            "seeds": list(seeds),
            "follower": args.follower,
            "follower_ids": sorted(follower_ids),
        },
        "tasks_total": len(task_ids),
        "tasks_complete": len(complete),
        "complete": len(complete) == len(task_ids),
        "per_task": {a: {t: round(score(a, t), 4) for t in complete} for a in arms if complete},
        "machine": machine(),
    }


def _int(value: str | None) -> int | None:
    return int(value) if value is not None else None


def _float(value: str | None) -> float | None:
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
