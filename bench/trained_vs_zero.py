"""Does meta-training help? The trained generator against its own untrained base, on the 23 test tasks.

Arms, all scored by the bundled Qwen2.5-Coder-1.5B follower with n=20 shown rows and m=100 scored rows,
at shot-draw seeds 0 and 1: naive, icl:20, icl:100, promptmii-zero (the adapter's base model with the
meta-prompt template the adapter was trained with) and promptmii (the base plus the adapter). Both
generator arms get the same 512-token instruction limit, so their difference is the training's alone.

The generator is the adapter `promptmii induce` uses by default (the one shipped in the package), or
--generator for a run that is not shipped yet. Seed 0's naive and icl rows come from bench/runs/spine
(same follower, tasks, n, m and seed); everything else runs here into bench/runs/trained_vs_zero/ and
resumes. The summary goes to bench/results/trained_vs_zero.json: per-arm means over tasks and seeds,
means per seed, paired 95% bootstrap CIs over tasks (each task's mean over the seeds), and how varied
each arm's instructions are (a collapsed generator writes one sentence everywhere).
Goal: trained >= zero + 0.03 and >= naive + 0.02 macro-F1, at no more than 1/10 of icl:100's tokens.

    python bench/trained_vs_zero.py                                      # the shipped adapter
    python bench/trained_vs_zero.py --generator bench/runs/expert_iteration   # a run not shipped yet
    python bench/trained_vs_zero.py --summarize-only
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from _common import CORPUS, REPO, ROOT, instruction_stats, machine, mean, paired_ci, rows, write_json
from promptmii import models
from promptmii.data import load_tasks
from promptmii.errors import PromptMIIError
from promptmii.experiment import EvalConfig, run_eval
from promptmii.expert_iteration import GATE_INSTRUCTION_TOKENS
from promptmii.export import export_adapter
from promptmii.results import Result, ResultsDir

FOLLOWER = f"llamacpp:{models.DEFAULT_MODEL}"
N, M = 20, 100
SEEDS = (0, 1)
ARMS = ("naive", "icl:20", "icl:100", "promptmii-zero", "promptmii")
FROM_SPINE = ("naive", "icl:20", "icl:100")  # seed 0 only: bench/spine.py ran them with these settings
# What runs here, in order: the comparison the benchmark is for first, the costly ICL arms last.
PLAN = ((0, ("promptmii-zero", "promptmii")), (1, ("naive", "promptmii-zero", "promptmii")), (1, ("icl:20", "icl:100")))
GOAL_OVER_ZERO, GOAL_OVER_NAIVE, GOAL_TOKEN_RATIO = 0.03, 0.02, 0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--generator", default=None, help="the trained generator [the shipped one]")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "trained_vs_zero"))
    parser.add_argument("--out", default=str(ROOT / "results" / "trained_vs_zero.json"))
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args()

    run = trained_run(args.generator)
    if not (run / models.EXPORTED_ADAPTER).is_file() and not args.summarize_only:
        export_adapter(run)
    arm = TrainedArm.of(run)
    tasks = load_tasks(args.corpus, split="test")
    out = ResultsDir(Path(args.runs))
    if not args.summarize_only:
        for seed, methods in PLAN:
            run_eval(tasks, trained_config(methods, N, seed, arm), out, quiet=False)
    found = rows(out.results_path) + [
        r for r in rows(ROOT / "runs" / "spine" / "results.jsonl") if r.method in FROM_SPINE and r.seed == 0
    ]
    summary = summarize([t.id for t in tasks], pick(found, arm), arm)
    if args.summarize_only:  # rewritten from saved rows: the rows' timings were taken on the recorded machine
        summary["machine"] = machine(Path(args.out))
    write_json(Path(args.out), summary)
    print(json.dumps({"mean": summary["mean"], "paired_macro_f1": summary["paired_macro_f1"]}, indent=2))


def trained_run(spec: str | None = None) -> Path:
    """The training run of the generator measured: --generator's, else the adapter shipped as the default."""
    spec = spec or models.default_generator()
    run = models.training_run(spec)
    if run is None:
        raise PromptMIIError(
            f"{spec or 'no shipped adapter'}: not a training run; give --generator RUN_DIR (e.g. bench/runs/expert_iteration)"
        )
    return run


@dataclass(frozen=True)
class TrainedArm:
    """The measured generator as its rows name it, read once from its run (the adapter must be exported)."""

    run: Path
    base_generator: str  # the run's policy as a llama.cpp spec: the Zero arm's generator
    template: str | None  # the meta-prompt it was trained with: both generator arms use it
    adapter_sha256: str  # the adapter's identity: its rows record it (first 12 digits) in their generator id

    @classmethod
    def of(cls, run: Path) -> TrainedArm:
        config = models.run_config(run)
        sha256 = models.file_sha256(run / models.EXPORTED_ADAPTER)
        return cls(run, f"llamacpp:{config['policy']}", config.get("template"), sha256)

    @property
    def description(self) -> str:
        return f"{self.base_generator} + LoRA adapter {self.run.name} (template {self.template})"


def trained_config(methods: tuple[str, ...], n: int, seed: int, arm: TrainedArm) -> EvalConfig:
    """The arms as this benchmark runs them: the run's base and template for Zero, base + adapter for promptmii."""
    return EvalConfig(
        methods=methods,
        n=n,
        m=M,
        follower=FOLLOWER,
        base_generator=arm.base_generator,
        generator=f"llamacpp:{arm.run.resolve()}",
        template=arm.template,
        max_instruction_tokens=GATE_INSTRUCTION_TOKENS,
        seed=seed,
    )


def is_arm_row(r: Result, arm: TrainedArm, n: int = N) -> bool:
    """Whether a row was made with this benchmark's settings for its arm (other runs share the directories)."""
    # the m asked for: a small task (cb has 56 test-side rows) records fewer scored rows in r.m
    if r.config.get("m", r.m) != M or r.config.get("n") != n or r.config.get("follower") != FOLLOWER:
        return False
    if r.method == "promptmii":  # the adapter is its bytes: rows made under the training run's name count too
        return r.generator.endswith(f"-lora@{arm.adapter_sha256[:12]}")
    if r.method == "promptmii-zero":
        return r.config.get("base_generator") == arm.base_generator and r.template == arm.template
    return True


def pick(found: list[Result], arm: TrainedArm) -> dict[tuple[str, int, str], Result]:
    """(task, seed, arm) -> the latest row of the benchmark's settings."""
    return {(r.task, r.seed, r.method): r for r in found if r.method in ARMS and r.seed in SEEDS and is_arm_row(r, arm)}


def summarize(task_ids: list[str], latest: dict[tuple[str, int, str], Result], arm: TrainedArm) -> dict:
    done = [t for t in task_ids if all((t, s, a) in latest for s in SEEDS for a in ARMS)]
    picked = {arm: [latest[(t, s, arm)] for t in done for s in SEEDS] for arm in ARMS}
    means = {arm: arm_mean(picked[arm]) for arm in ARMS}
    by_seed = {
        str(s): {arm: mean([latest[(t, s, arm)].macro_f1 for t in done]) for arm in ARMS} for s in SEEDS
    }  # fmt: skip
    task_f1 = {arm: [seed_mean_f1(latest, t, arm) for t in done] for arm in ARMS}
    pairs = [("promptmii", other) for other in ARMS if other != "promptmii"] + [("promptmii-zero", "naive")]
    paired = {f"{a} - {b}": paired_ci(task_f1[a], task_f1[b]) for a, b in pairs} if done else {}
    trained, zero, naive = (means[a]["macro_f1"] for a in ("promptmii", "promptmii-zero", "naive"))
    icl_tokens = means["icl:100"]["prompt_tokens_per_query"]
    token_ratio = round(means["promptmii"]["prompt_tokens_per_query"] / icl_tokens, 4) if done else None
    goals = {
        "trained_minus_zero": round(trained - zero, 4) if done else None,
        "trained_minus_naive": round(trained - naive, 4) if done else None,
        "token_ratio_vs_icl100": token_ratio,
    }
    met = bool(done) and (
        goals["trained_minus_zero"] >= GOAL_OVER_ZERO
        and goals["trained_minus_naive"] >= GOAL_OVER_NAIVE
        and token_ratio <= GOAL_TOKEN_RATIO
    )
    run = arm.run
    return {
        "benchmark": "trained_vs_zero",
        "generator": arm.description,
        "base_generator": arm.base_generator,
        "adapter": _relative(run / models.EXPORTED_ADAPTER),
        "adapter_sha256": arm.adapter_sha256,
        "template": arm.template,
        "follower": FOLLOWER,
        "n": N,
        "m": M,
        "seeds": list(SEEDS),
        "max_instruction_tokens": GATE_INSTRUCTION_TOKENS,
        "tasks_complete": len(done),
        "tasks_total": len(task_ids),
        "complete": len(done) == len(task_ids),
        "mean": means,
        "by_seed": by_seed,
        "paired_macro_f1": paired,
        "delta_trained_minus_zero": goals["trained_minus_zero"],
        "goals": goals,
        "goal": f"trained >= zero + {GOAL_OVER_ZERO} and >= naive + {GOAL_OVER_NAIVE} macro-F1, at <= "
        f"{GOAL_TOKEN_RATIO} x icl:100's prompt tokens/query",
        "goal_met": met,
        "instruction_stats": {
            arm: {str(s): instruction_stats([latest[(t, s, arm)] for t in done]) for s in SEEDS}
            for arm in ("promptmii-zero", "promptmii")
        },
        "so_far": so_far(task_ids, latest),
        "machine": machine(),
        "per_task": [
            {"task": t, **{f"{arm} seed {s}": round(latest[(t, s, arm)].macro_f1, 4) for arm in ARMS for s in SEEDS}}
            for t in done
        ],
    }


def seed_mean_f1(latest: dict[tuple[str, int, str], Result], task: str, arm: str) -> float:
    """A task's macro-F1 for an arm, averaged over the seeds: the unit the paired CIs compare."""
    return mean([latest[(task, s, arm)].macro_f1 for s in SEEDS], 6)


def arm_mean(picked: list[Result]) -> dict[str, float | None]:
    return {
        "macro_f1": mean([r.macro_f1 for r in picked]),
        "accuracy": mean([r.accuracy for r in picked]),
        "invalid_rate": mean([r.invalid_rate for r in picked]),
        "prompt_tokens_per_query": mean([r.prompt_tokens_per_query for r in picked]),
        "llm_calls": mean([r.llm_calls for r in picked]),
    }


def so_far(task_ids: list[str], latest: dict[tuple[str, int, str], Result]) -> dict:
    """While the run is under way: per seed, the arms' macro-F1 over the tasks where that seed has them all,
    with the trained arm's paired CIs, tokens and instruction variety once that seed has it; then the same
    over all seeds for the arms every seed has."""
    partial = {}
    for s in SEEDS:
        arms = [a for a in ARMS if any((t, s, a) in latest for t in task_ids)]
        tasks = [t for t in task_ids if all((t, s, a) in latest for a in arms)]
        f1 = {a: [latest[(t, s, a)].macro_f1 for t in tasks] for a in arms}
        partial[str(s)] = {"tasks": len(tasks), **{a: mean(f1[a]) for a in arms}}
        if "promptmii" in arms and len(tasks) > 1:
            partial[str(s)]["paired_macro_f1"] = {
                f"promptmii - {a}": paired_ci(f1["promptmii"], f1[a]) for a in arms if a != "promptmii"
            }
            partial[str(s)]["prompt_tokens_per_query"] = {
                a: mean([latest[(t, s, a)].prompt_tokens_per_query for t in tasks], 1) for a in arms
            }
            partial[str(s)]["instruction_stats"] = {
                a: instruction_stats([latest[(t, s, a)] for t in tasks]) for a in ("promptmii-zero", "promptmii")
            }
    # the arms every seed has on the same tasks, each task scored by its mean over the seeds (as `mean` is)
    arms = [a for a in ARMS if all(any((t, s, a) in latest for t in task_ids) for s in SEEDS)]
    tasks = [t for t in task_ids if all((t, s, a) in latest for s in SEEDS for a in arms)]
    if "promptmii" in arms and len(tasks) > 1:
        f1 = {a: [seed_mean_f1(latest, t, a) for t in tasks] for a in arms}
        partial["+".join(map(str, SEEDS))] = {
            "tasks": len(tasks),
            **{a: mean(f1[a]) for a in arms},
            "paired_macro_f1": {
                f"promptmii - {a}": paired_ci(f1["promptmii"], f1[a]) for a in arms if a != "promptmii"
            },
            "prompt_tokens_per_query": {
                a: mean([latest[(t, s, a)].prompt_tokens_per_query for t in tasks for s in SEEDS], 1) for a in arms
            },
        }
    return partial


def _relative(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()
