"""Meta-train the generator by expert iteration: sample instructions, keep the follower-confirmed best, fine-tune.

Why not GRPO on 2 CPU cores: a GRPO step of 2 meta-prompts x 5 rollouts took ~1,000 s, and the reward
of one instruction on m=20 examples carries ~0.10 F1 of noise from the examples alone, so ten such steps
learned only to shorten the instruction (docs/training.md, "The GRPO run on CPU"). Expert iteration (reward-
filtered fine-tuning: Anthony et al. 2017; ReST, Gulcehre et al. 2023; RAFT, Dong et al. 2023) spends
the same follower budget on fewer, better-measured decisions:

1. **Sample** (`collect`): for every train-split task, the generator writes instructions from n shown
   examples with several meta-prompt templates (candidate_plan), greedy and sampled.
2. **Score** each candidate and the Naive instruction with the frozen follower on pool A (m_select
   examples of the task's test side), then **confirm** the best CONFIRMED on pool B (m_confirm other
   examples). A winner must beat Naive on pool B: selecting on A and confirming on B keeps the
   winner's curse of a noisy maximum out of the training data.
3. **Fine-tune** (`fine_tune`, TRL's SFTTrainer, LoRA): the meta-prompt of the adapter's template with the
   task's shots -> the winner. Winners written from other templates teach the adapter's template to
   answer like them (context distillation).
4. **Validate** (`validate`): export the adapter and compare it with Naive and Zero (same base and template)
   on the validation split; `selection.json` promotes it only if it beats both.
5. **Ship** (`ship`): copy a promoted adapter into the package with its sha256 in a manifest.
6. **Repeat** (`--previous RUN`): a later round samples with the previous round's adapter on the same
   pools, carries that round's Naive scores, scored candidates and pool-C rechecks, and so
   fine-tunes the base on the best confirmed instruction of all rounds.

Task hygiene is counted, never silent: a task whose labels the follower cannot emit, or where every
instruction scores the same, or where nothing beats Naive, gives no training row and its reason goes
to the run's collect.jsonl and the summary.

Everything is resumable: collect.jsonl gets one line per finished task (flushed), a failed generator
or follower call leaves its task unwritten so the next run retries it, and the LLM calls are cached.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from promptmii import metaprompts, models, prompts
from promptmii.backends import Backend, get_backend
from promptmii.cache import CachedBackend
from promptmii.data import Example, Task, draw, load_tasks
from promptmii.errors import DataError, PromptMIIError
from promptmii.evaluate import run_follower
from promptmii.experiment import DEFAULT_BACKEND
from promptmii.induce import InduceConfig, induce
from promptmii.results import append_lines, atomic_write, read_jsonl, read_results, set_aside_partial_line

log = logging.getLogger(__name__)

# The candidates written for every task: (template, sample index, temperature); sample 0 is greedy.
# Greedy with the adapter's template is what the untrained generator writes, and a fine-tune on it alone
# teaches nothing; samples near it (T=0.5) and short APE-style "forward" proposals are the candidates that
# can beat it, and greedy terse is the Zero arm of the earlier benchmarks. For the shipped run's template
# (criteria) the plan is criteria greedy, criteria x2 at T=0.5, terse greedy, forward x2 at T=0.7. The first
# 4 tasks of that run were collected with an earlier plan (criteria at T=0.8, terse sampled): their records
# list their own candidates.
OTHER_CANDIDATES = (("terse", 0, 0.0), ("forward", 1, 0.7), ("forward", 2, 0.7))


def candidate_plan(template: str, *, later_round: bool = False) -> tuple[tuple[str, int, float], ...]:
    """The adapter's own template greedy and twice at T=0.5, then the other candidates (without a repeat).

    A later round samples with the previous round's adapter, whose answers vary less than the base's:
    its template greedy and twice at T=0.7, and its answer to `terse` (it never saw that meta-prompt).
    """
    if later_round:
        return ((template, 0, 0.0), (template, 1, 0.7), (template, 2, 0.7)) + (
            (("terse", 0, 0.0),) if template != "terse" else ()
        )
    own = ((template, 0, 0.0), (template, 1, 0.5), (template, 2, 0.5))
    return own + tuple(c for c in OTHER_CANDIDATES if c[0] != template)


CONFIRMED = 2  # candidates (best on pool A) scored again on pool B
COLLECT_LOG = "collect.jsonl"
RECHECK_LOG = "recheck.jsonl"  # one line per task: Naive and the winner on pool C
# paths that may differ between machines without changing the run
MOVABLE = ("corpus", "output", "previous", "collection")
# what a later round must share with the round it continues: the same pools, shots and follower, so
# the Naive scores and the earlier candidates' scores carried over compare with the new ones
SHARED_WITH_PREVIOUS = ("policy", "follower", "template", "n", "m_select", "m_confirm", "max_prompt_tokens", "seed")


@dataclass(frozen=True)
class ExpertIterationConfig:
    """One expert-iteration run. Defaults fit 2 CPU cores (docs/training.md gives the arithmetic)."""

    corpus: str = field(metadata={"help": "corpus directory (tasks.jsonl + instances/); trains on the train split"})
    output: str = field(metadata={"help": "run directory (collect.jsonl, adapter/, adapter.gguf); commit it"})
    policy: str = field(default=models.DEFAULT_MODEL, metadata={"help": "bundled generator model to train"})
    follower: str = field(default=DEFAULT_BACKEND, metadata={"help": "frozen follower backend spec"})
    template: str = field(
        default="criteria",
        metadata={"help": "meta-prompt the adapter answers (Zero uses it too): a built-in, tuned/NAME or a file"},
    )
    n: int = field(default=20, metadata={"help": "examples shown to the generator (fewer if the prompt is too long)"})
    m_select: int = field(default=20, metadata={"help": "pool A: follower examples that rank the candidates"})
    m_confirm: int = field(default=20, metadata={"help": "pool B: other examples that confirm the best against Naive"})
    m_recheck: int = field(
        default=0, metadata={"help": "pool C: more examples on which the winner must beat Naive again (0: no recheck)"}
    )
    max_instruction_tokens: int = field(default=256, metadata={"help": "a candidate cut at this length is dropped"})
    max_prompt_tokens: int = field(default=2048, metadata={"help": "shown examples are halved until the prompt fits"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank of the fine-tune"})
    learning_rate: float = field(default=2e-4, metadata={"help": "fine-tuning learning rate (LoRA)"})
    epochs: int = field(default=2, metadata={"help": "passes over the winners"})
    batch_size: int = field(default=2, metadata={"help": "winners per update (gradient accumulation of single rows)"})
    seed: int = field(default=0, metadata={"help": "shots, pools, sampling and data order"})
    previous: str = field(
        default="",
        metadata={
            "help": "run directory of the previous round: its adapter writes this round's candidates, and its "
            "scored candidates join this round's (expert iteration's repeat)"
        },
    )
    collection: str = field(
        default="",
        metadata={
            "help": "fine-tune on this finished run's collect.jsonl and recheck.jsonl instead of collecting here "
            "(a fine-tune variant of the same collection; the run must share its pools, shots and follower)"
        },
    )
    naive_rows: bool = field(
        default=False,
        metadata={
            "help": "tasks where no instruction beat Naive also give a row, answered with Naive's instruction, "
            "so the adapter learns when to write no more than that"
        },
    )

    def __post_init__(self) -> None:
        metaprompts.named(self.template)  # raises with "did you mean"
        for name in ("n", "m_select", "m_confirm", "max_instruction_tokens", "epochs", "lora_r", "batch_size"):
            if getattr(self, name) < 1:
                raise PromptMIIError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.m_recheck < 0:
            raise PromptMIIError(f"m_recheck must be 0 (no recheck) or more, got {self.m_recheck}")


# ---------------------------------------------------------------- pure: pools and winners


def pools(
    task: Task, n: int, m_select: int, m_confirm: int, seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """The shown examples (train side) and the two disjoint scoring pools A and B (test side)."""
    shots, test = draw(task, min(n, len(task.train)), m_select + m_confirm, seed)
    if len(test) < m_select + m_confirm:
        raise DataError(f"{task.id}: {len(test)} test rows, fewer than m_select + m_confirm = {m_select + m_confirm}")
    return shots, test[:m_select], test[m_select:]


def recheck_pool(task: Task, config: ExpertIterationConfig) -> list[Example]:
    """Pool C: the m_recheck test-side examples after pools A and B (fewer if the test side runs out)."""
    start = config.m_select + config.m_confirm
    _, test = draw(task, min(config.n, len(task.train)), start + config.m_recheck, config.seed)
    return test[start:]


def names_a_label(instruction: str, labels: list[str] | tuple[str, ...]) -> bool:
    """Whether the instruction spells at least one label as a whole word (any case)."""
    text = instruction.lower()
    return any(re.search(rf"(?<!\w){re.escape(label.lower())}(?!\w)", text) for label in labels)


def pick_winner(record: dict[str, Any]) -> tuple[int | None, str]:
    """The candidate to train on, or None with the reason (task hygiene), from one task's collect record.

    A winner is valid (no error, not cut at the length limit), names at least one label, was confirmed on
    pool B, and beats Naive there; among those, the best mean of pools A and B wins. A reply that names no
    label ("Certainly! Please provide the text you would like me to label.") tells the follower nothing
    that Naive's label list does not, so it beats Naive on pool B by noise alone; 8 such replies won in round
    2 before this rule, and the adapter fine-tuned on them wrote nothing else on the validation tasks.

    A record that carries the winner's pool-C scores (`recheck`, written by the recheck stage) keeps it only
    if it beats Naive there too: beating Naive on one pool of 20 after being picked on another still passes
    half the instructions that are no better than Naive.
    """
    candidates = record["candidates"]
    valid = [i for i, c in enumerate(candidates) if c["usable"]]
    if not valid:
        return None, "no usable candidate (every one failed, was empty or was cut at the length limit)"
    naive = record["naive"]
    if naive["invalid_a"] >= 0.5 and all(candidates[i]["invalid_a"] >= 0.5 for i in valid):
        return None, "the follower cannot emit the labels (half or more of its replies are invalid whatever the prompt)"
    scores_a = [candidates[i]["f1_a"] for i in valid] + [naive["f1_a"]]
    if max(scores_a) - min(scores_a) < 1e-9:
        return None, "every instruction scores the same on pool A"
    beating = [i for i in valid if candidates[i].get("f1_b") is not None and candidates[i]["f1_b"] > naive["f1_b"]]
    if not beating:
        return None, "no confirmed instruction beats Naive on pool B"
    beating = [i for i in beating if names_a_label(candidates[i]["instruction"], record["labels"])]
    if not beating:
        return None, "every instruction that beats Naive on pool B names no label"
    best = max(beating, key=lambda i: (candidates[i]["f1_a"] + candidates[i]["f1_b"], -i))
    recheck = record.get("recheck")
    if recheck is not None and recheck["instruction"] == candidates[best]["instruction"]:
        if recheck["f1_c"] <= recheck["naive_f1_c"]:
            return None, "the winner does not beat Naive on pool C"
    return best, "won"


def winner_before_recheck(record: dict[str, Any]) -> int | None:
    """The candidate that pools A and B pick, whatever pool C says: the one the recheck stage scores."""
    winner, _ = pick_winner({k: v for k, v in record.items() if k != "recheck"})
    return winner


def rechecked(record: dict[str, Any]) -> bool:
    """Whether the record's winner (as collected, before pool C) has its pool-C scores."""
    winner = winner_before_recheck(record)
    recheck = record.get("recheck")
    return winner is None or (
        recheck is not None and recheck["instruction"] == record["candidates"][winner]["instruction"]
    )


def candidate_kind(candidate: dict[str, Any]) -> str:
    """'criteria:greedy', 'forward:sampled', ...; a later round's candidate adds ':round2' and so on."""
    kind = f"{candidate['template']}:{'greedy' if candidate['sample'] == 0 else 'sampled'}"
    return kind if candidate.get("round", 1) == 1 else f"{kind}:round{candidate['round']}"


def template_means(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean pool-A macro-F1 and length per (template, greedy|sampled), over the tasks collected: which writes best."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault("naive", []).append(record["naive"])
        for c in record["candidates"]:
            if c["usable"]:
                groups.setdefault(candidate_kind(c), []).append(c)
    return {
        name: {
            "f1_a": round(statistics.fmean(r["f1_a"] for r in rows), 4),
            "tokens": round(statistics.fmean(r.get("completion_tokens", 0) for r in rows)),
            "count": len(rows),
        }
        for name, rows in sorted(groups.items())
    }


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What collection found: winners per template, why the other tasks give no training row, template means."""
    reasons: dict[str, int] = {}
    winners: dict[str, int] = {}
    for record in records:
        reasons[record["reason"]] = reasons.get(record["reason"], 0) + 1
        if record["winner"] is not None:
            key = candidate_kind(record["candidates"][record["winner"]])
            winners[key] = winners.get(key, 0) + 1
    return {
        "tasks": len(records),
        "winners": sum(winners.values()),
        "winners_by_candidate": dict(sorted(winners.items())),
        "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "pool_a_means": template_means(records),
    }


# ---------------------------------------------------------------- stage 1: sample, score, confirm


def collect(config: ExpertIterationConfig, *, task_ids: list[str] | None = None, quiet: bool = False) -> list[dict]:
    """Write one collect.jsonl line per train task (skipping tasks already there); returns all records."""
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    _write_config(out, config)
    earlier = previous_records(config)
    tasks = load_tasks(config.corpus, split="train")
    if task_ids:
        tasks = [t for t in tasks if t.id in set(task_ids)]
    if not tasks:
        raise DataError(f"{config.corpus}: no train-split tasks to collect from")
    path = out / COLLECT_LOG
    set_aside_partial_line(path)  # a killed write: its task is redone, and the next line is not glued to it
    done = {r["task"]: r for r in read_records(path)}
    todo = [t for t in tasks if t.id not in done]
    if todo:
        cache = models.promptmii_home() / "cache.sqlite"
        sampler = f"llamacpp:{Path(config.previous).resolve()}" if config.previous else f"llamacpp:{config.policy}"
        generator = CachedBackend(get_backend(sampler), cache)
        follower = CachedBackend(get_backend(config.follower), cache)
        for task in tqdm(todo, desc="collect", unit="task", disable=quiet):
            record = collect_task(task, config, generator, follower, previous=earlier.get(task.id))
            if record is None:
                continue  # a failed call: nothing written, so the next run retries this task
            append_lines(path, [record])
            done[task.id] = record
    return [done[t.id] for t in tasks if t.id in done]


def collect_task(
    task: Task,
    config: ExpertIterationConfig,
    generator: Backend,
    follower: Backend,
    *,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Candidates for one task, scored on pool A, the best confirmed on pool B; None if a call failed.

    With the previous round's record of the task, its Naive scores and its candidates are carried over
    (same pools, see SHARED_WITH_PREVIOUS) and the winner is the best confirmed candidate of all rounds.
    """
    started = time.time()
    shots, pool_a, pool_b = pools(task, config.n, config.m_select, config.m_confirm, config.seed)
    if previous is not None:  # the shots the earlier candidates were written from, so every row has one prompt
        shots = shots[: previous["n_shown"]]
        naive = previous["naive"]
    else:
        shots = fit_shots(shots, task.labels, generator, config)
        naive_a = run_follower(follower, prompts.NAIVE_INSTRUCTION, task.labels, pool_a)
        if any(naive_a.errors):
            log.warning(
                "%s: follower failed on the Naive prefix (%s); retried next run", task.id, _first(naive_a.errors)
            )
            return None
        naive = {"f1_a": round(naive_a.scores.macro_f1, 4), "invalid_a": round(naive_a.scores.invalid_rate, 4)}
    this_round = run_round(config)
    candidates = []
    for template, sample, temperature in candidate_plan(config.template, later_round=this_round > 1):
        induce_config = InduceConfig(
            template=template,
            max_tokens=config.max_instruction_tokens,
            temperature=temperature,
            seed=config.seed * 1000 + sample,
        )
        instruction = induce(shots, task.labels, generator, induce_config)
        if instruction.error:
            log.warning("%s: generator failed (%s); retried next run", task.id, instruction.error)
            return None
        truncated = instruction.completion_tokens >= config.max_instruction_tokens
        candidate = {
            "template": template,
            "sample": sample,
            "temperature": temperature,
            "instruction": instruction.text,
            "completion_tokens": instruction.completion_tokens,
            "truncated": truncated,
            "usable": bool(instruction.text.strip()) and not truncated,
        }
        if this_round > 1:
            candidate["round"] = this_round
        if candidate["usable"]:
            run = run_follower(follower, instruction.text, task.labels, pool_a)
            if any(run.errors):
                log.warning("%s: follower failed (%s); retried next run", task.id, _first(run.errors))
                return None
            candidate |= {"f1_a": round(run.scores.macro_f1, 4), "invalid_a": round(run.scores.invalid_rate, 4)}
        candidates.append(candidate)
    usable = [i for i, c in enumerate(candidates) if c["usable"]]
    if "f1_b" not in naive:
        naive_b = run_follower(follower, prompts.NAIVE_INSTRUCTION, task.labels, pool_b)
        if any(naive_b.errors):
            return None
        naive = naive | {"f1_b": round(naive_b.scores.macro_f1, 4)}
    for i in sorted(usable, key=lambda i: (-candidates[i]["f1_a"], i))[:CONFIRMED]:
        run = run_follower(follower, candidates[i]["instruction"], task.labels, pool_b)
        if any(run.errors):
            return None
        candidates[i] |= {"f1_b": round(run.scores.macro_f1, 4), "invalid_b": round(run.scores.invalid_rate, 4)}
    carried = [{"round": 1} | c for c in previous["candidates"]] if previous is not None else []
    record = {
        "task": task.id,
        "labels": list(task.labels),
        "n_shown": len(shots),
        "naive": naive,
        "candidates": carried + candidates,
        "seconds": round(time.time() - started, 1),
    }
    winner, reason = pick_winner(record)
    return record | {"winner": winner, "reason": reason}


def fit_shots(
    shots: list[Example], labels: tuple[str, ...], generator: Backend, config: ExpertIterationConfig
) -> list[Example]:
    """Halve the shown examples until the longest meta-prompt of the plan fits max_prompt_tokens.

    Halving keeps a prefix of the seeded shots, so `sft_rows` rebuilds them from `n_shown` alone; the
    limit is a fine-tuning cost, not the generator's context, which induce fits on its own.
    """
    templates = {t for t, _, _ in candidate_plan(config.template, later_round=run_round(config) > 1)}
    while True:
        longest = max(
            generator.count_tokens(prompts.meta_prompt(metaprompts.named(t).text, shots, labels)) for t in templates
        )
        if longest <= config.max_prompt_tokens or len(shots) == 1:
            return shots
        shots = shots[: len(shots) // 2]


# ---------------------------------------------------------------- stage 1b: recheck the winners on pool C


def recheck(config: ExpertIterationConfig, records: list[dict[str, Any]], *, quiet: bool = False) -> list[dict]:
    """Score each winner and Naive on pool C (m_recheck more examples); returns the records with their rechecks.

    One recheck.jsonl line per task (flushed); a winner already rechecked is skipped, a failed follower call
    leaves its task for the next run. A winner that loses to Naive on pool C gives no training row, and the
    task's next-best candidate is not tried: it has no pool-C score.

    A later round scores on the previous round's pool C (same pools, same m_recheck), so it carries that
    round's pool-C scores instead of asking the follower again: the whole line when the winner is the same
    instruction, Naive's score when only the winner changed.
    """
    if config.m_recheck < 1:
        raise PromptMIIError("the recheck stage needs --m-recheck (examples in pool C), e.g. 40")
    out = Path(config.output)
    _write_config(out, config)
    path = out / RECHECK_LOG
    set_aside_partial_line(path)
    tasks = {t.id: t for t in load_tasks(config.corpus, split="train")}
    todo = [r for r in records if not rechecked(r)]
    if todo:
        carried = previous_rechecks(config)
        follower = CachedBackend(get_backend(config.follower), models.promptmii_home() / "cache.sqlite")
        for record in tqdm(todo, desc="recheck", unit="task", disable=quiet):
            instruction = record["candidates"][winner_before_recheck(record)]["instruction"]
            before = carried.get(record["task"])
            if before is not None and before["instruction"] == instruction:
                line: dict | None = before | {"carried_from": config.previous}
            else:
                naive_f1_c = before["naive_f1_c"] if before is not None else None
                line = recheck_task(tasks[record["task"]], instruction, config, follower, naive_f1_c=naive_f1_c)
            if line is not None:
                append_lines(path, [line])
    return read_records(out / COLLECT_LOG)


def recheck_task(
    task: Task,
    instruction: str,
    config: ExpertIterationConfig,
    follower: Backend,
    *,
    naive_f1_c: float | None = None,
) -> dict | None:
    """Naive's and the instruction's macro-F1 on the task's pool C; None if some follower call failed.

    naive_f1_c: Naive's pool-C score when a previous round already has it (Naive is not run again).
    Every call failing raises BackendError and stops the stage, as in collect: the backend is down.
    """
    pool_c = recheck_pool(task, config)
    naive = None if naive_f1_c is not None else run_follower(follower, prompts.NAIVE_INSTRUCTION, task.labels, pool_c)
    winner = run_follower(follower, instruction, task.labels, pool_c)
    errors = (naive.errors if naive else []) + winner.errors
    if any(errors):
        log.warning("%s: follower failed on pool C (%s); retried next run", task.id, _first(errors))
        return None
    return {
        "task": task.id,
        "instruction": instruction,
        "m": len(pool_c),
        "naive_f1_c": round(naive.scores.macro_f1, 4) if naive else naive_f1_c,
        "f1_c": round(winner.scores.macro_f1, 4),
        "invalid_c": round(winner.scores.invalid_rate, 4),
    }


# ---------------------------------------------------------------- files


def read_records(path: Path) -> list[dict[str, Any]]:
    """collect.jsonl rows with their winner picked again by today's `pick_winner`.

    The stored winner is what the rule said when the task was collected; picking again lets a stricter
    rule apply to a finished collection without new follower calls. A half-written last line (a kill
    mid-write) is dropped so its task is redone. The task's line in recheck.jsonl beside it, if any, joins
    the record as `recheck` (the last line of a task counts).
    """
    rechecks = read_rechecks(path.parent)
    records = []
    for record in read_jsonl(path) if path.is_file() else []:
        if record["task"] in rechecks:
            record = record | {"recheck": rechecks[record["task"]]}
        winner, reason = pick_winner(record)
        records.append(record | {"winner": winner, "reason": reason})
    return records


def collection_dir(config: ExpertIterationConfig) -> Path:
    """Where the run's collect.jsonl and recheck.jsonl live: its own directory, or --collection's.

    A fine-tune variant (--collection RUN) must read RUN's pools, shots and pool-C scores as they were
    drawn, so RUN must share them (SHARED_WITH_PREVIOUS and m_recheck).
    """
    if not config.collection:
        return Path(config.output)
    run = Path(config.collection)
    differ = _differences(run, config, (*SHARED_WITH_PREVIOUS, "m_recheck"))
    if differ:
        raise PromptMIIError(f"{run}: the collection differs ({'; '.join(differ)}); pass the same options")
    return run


def previous_records(config: ExpertIterationConfig) -> dict[str, dict[str, Any]]:
    """Task -> the previous round's record, after checking that round scored on the same pools; {} in round 1."""
    if not config.previous:
        return {}
    run = _previous_run(config)
    if not (run / models.EXPORTED_ADAPTER).is_file():
        raise PromptMIIError(f"{run}: no {models.EXPORTED_ADAPTER} to sample with; run its validate stage first")
    return {r["task"]: r for r in read_records(run / COLLECT_LOG)}


def previous_rechecks(config: ExpertIterationConfig) -> dict[str, dict[str, Any]]:
    """Task -> the previous round's pool-C line (the last one of a task); {} in round 1 or if pool C differs.

    Pool C is the m_recheck examples after pools A and B, so it is the same pool when the pools and
    m_recheck are.
    """
    if not config.previous:
        return {}
    run = _previous_run(config)
    return read_rechecks(run) if _stored_config(run).get("m_recheck") == config.m_recheck else {}


def read_rechecks(run: Path) -> dict[str, dict[str, Any]]:
    """Task -> its pool-C line in the run's recheck.jsonl (the last line of a task counts); {} without one."""
    path = run / RECHECK_LOG
    return {line["task"]: line for line in read_jsonl(path)} if path.is_file() else {}


def _previous_run(config: ExpertIterationConfig) -> Path:
    """The --previous run directory, after checking that it scored on the same pools (SHARED_WITH_PREVIOUS)."""
    run = Path(config.previous or "")
    differ = _differences(run, config, SHARED_WITH_PREVIOUS)
    if differ:
        raise PromptMIIError(f"{run}: the previous round differs ({'; '.join(differ)}); its scores would not compare")
    return run


def _differences(run: Path, config: ExpertIterationConfig, keys: tuple[str, ...]) -> list[str]:
    """'key X there, Y here' for each of `keys` where the run's stored config and `config` differ."""
    stored = _stored_config(run)
    return [
        f"{k} {stored.get(k)!r} there, {getattr(config, k)!r} here" for k in keys if stored.get(k) != getattr(config, k)
    ]


def run_round(config: ExpertIterationConfig) -> int:
    """1 for a run that samples with the base model, else one more than the round it continues.

    A fine-tune variant (--collection RUN) is of RUN's round.
    """
    rounds, previous = 1, config.previous
    if config.collection:  # count from the collection's own --previous
        previous = _stored_config(Path(config.collection)).get("previous", "")
    while previous and rounds < 100:  # the cap only guards against a cycle of run directories
        rounds += 1
        previous = _stored_config(Path(previous)).get("previous", "")
    return rounds


def _stored_config(run: Path) -> dict[str, Any]:
    path = run / models.RUN_CONFIG
    if not path.is_file():
        raise PromptMIIError(f"{run}: not an expert-iteration run directory (no {models.RUN_CONFIG})")
    return json.loads(path.read_text(encoding="utf-8"))


def _write_config(out: Path, config: ExpertIterationConfig) -> None:
    """The run's config; a different stored config means a different run (change --output)."""
    path = out / models.RUN_CONFIG
    # as JSON reads it back (tuples become lists), so a stored config compares equal to the same config
    current = json.loads(
        json.dumps(
            asdict(config)
            | {
                "recipe": "expert-iteration",
                "candidate_plan": candidate_plan(config.template, later_round=run_round(config) > 1),
            }
        )
    )
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        # a field missing from an older stored config counts as its default there, except m_recheck, which
        # a finished collection may gain (its recheck stage runs after collect)
        defaults = {f.name: f.default for f in fields(ExpertIterationConfig) if f.default is not MISSING}
        changed = [
            f"{k}: {stored.get(k, defaults.get(k))!r} -> {v!r}"
            for k, v in current.items()
            if k not in MOVABLE and k != "m_recheck" and stored.get(k, defaults.get(k, v)) != v
        ]
        if "m_recheck" in stored and stored["m_recheck"] != current["m_recheck"]:
            changed.append(f"m_recheck: {stored['m_recheck']!r} -> {current['m_recheck']!r}")
        if changed:
            raise PromptMIIError(f"{out} holds a run with another config ({'; '.join(changed)}); use a new --output")
        if set(current) <= set(stored):
            return
        # a field added after the run was collected: recorded from the first run that sets it
        current = current | {k: stored[k] for k in MOVABLE if k in stored}
    atomic_write(path, json.dumps(current, indent=2) + "\n")


def _first(errors: list[str | None]) -> str:
    return next((e for e in errors if e), "")


# ---------------------------------------------------------------- stage 2: fine-tune on the winners


# `pick_winner` reasons that mean the collection tried and found no instruction better than Naive's (the
# others mean the task cannot tell instructions apart, so it teaches nothing either way)
NO_GAIN_REASONS = (
    "no confirmed instruction beats Naive on pool B",
    "every instruction that beats Naive on pool B names no label",
    "the winner does not beat Naive on pool C",
)


def training_answer(record: dict[str, Any], naive_rows: bool) -> str | None:
    """What the adapter learns to write for this task: the winner, Naive's instruction (with naive_rows,
    where nothing beat it), or None for no row."""
    if record.get("winner") is not None:
        return record["candidates"][record["winner"]]["instruction"]
    if naive_rows and record.get("reason") in NO_GAIN_REASONS:
        return prompts.NAIVE_INSTRUCTION
    return None


def sft_rows(records: list[dict[str, Any]], tasks: dict[str, Task], config: ExpertIterationConfig) -> list[dict]:
    """One conversational prompt-completion row per winner: the adapter's meta-prompt -> the winning instruction.

    The prompt is rebuilt from the task's shots with `config.template`, whatever template wrote the winner,
    so the adapter learns to answer its own meta-prompt the way the best instruction did. With
    `config.naive_rows` a task where no instruction beat Naive is answered with Naive's instruction: on
    about half the tasks every instruction the 1.5B writes loses to "Classify the input.", and without such
    rows the adapter never sees that writing less is an answer.
    """
    template = metaprompts.named(config.template).text
    rows = []
    for record in records:
        answer = training_answer(record, config.naive_rows)
        if answer is None:
            continue
        task = tasks[record["task"]]
        shots, _, _ = pools(task, config.n, config.m_select, config.m_confirm, config.seed)
        shots = shots[: record["n_shown"]]
        rows.append(
            {
                "prompt": prompts.meta_prompt(template, shots, task.labels),
                "completion": [{"role": "assistant", "content": answer}],
                "task": task.id,
            }
        )
    return rows


def fine_tune(config: ExpertIterationConfig, records: list[dict[str, Any]], *, resume: bool = True) -> Path:
    """LoRA-fine-tune the policy on the winners with TRL's SFTTrainer; returns the adapter directory.

    Checkpoints every epoch's steps under the run directory; a killed fine-tune resumes from the last one.
    The loss covers the completion only (TRL's default for prompt-completion data).
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTConfig, SFTTrainer

    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    _write_config(out, config)  # a fine-tune variant (--collection) collected nothing here to write it
    tasks = {t.id: t for t in load_tasks(config.corpus, split="train")}
    train_ids = set(tasks)
    missing = train_ids - {r["task"] for r in records}
    if missing:  # a fine-tune on part of the winners would be resumed later on a different dataset
        raise PromptMIIError(
            f"{out}: collection covers {len(train_ids) - len(missing)} of {len(train_ids)} train tasks "
            f"(missing e.g. {sorted(missing)[0]}); run --stage collect until it finishes"
        )
    unchecked = [r["task"] for r in records if not rechecked(r)] if config.m_recheck else []
    if unchecked:
        raise PromptMIIError(
            f"{out}: {len(unchecked)} winners have no pool-C score (e.g. {unchecked[0]}); run --stage recheck"
        )
    rows = sft_rows(records, tasks, config)
    if not rows:
        raise DataError(f"{out}: no winners to fine-tune on (see the reasons in {COLLECT_LOG})")
    policy_dir = models.policy_path(config.policy)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32, attn_implementation="sdpa")
    args = SFTConfig(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=config.batch_size,
        learning_rate=config.learning_rate,
        # constant, no warm-up: a run is tens of updates, and a warm-up's first update runs at learning rate 0
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_length=config.max_prompt_tokens + config.max_instruction_tokens,
        # One 2,300-token row of the 1.5B (the longest a row gets) without recomputation peaked at 21 GB with
        # SDPA and was killed at 24 GB with eager attention; recomputing each layer's activations in the
        # backward pass: 14 GB and 89 s (SDPA) against 15 GB and 125 s (eager)
        activation_checkpointing=True,
        activation_checkpointing_kwargs={"use_reentrant": False},
        # bfloat16 autocast (float32 weights and LoRA): a forward+backward of the 0.5B with LoRA on 768 tokens took
        # 48-55 s against 106-123 s in float32 on 2 AVX512-BF16 cores, the same loss to 3 digits
        bf16=True,
        use_cpu=not torch.cuda.is_available(),  # transformers refuses bf16 without a GPU unless told it is on CPU
        logging_steps=1,
        save_strategy="steps",
        save_steps=5,
        save_total_limit=1,
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=config.lora_r,
            lora_alpha=2 * config.lora_r,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    last = get_last_checkpoint(str(out / "checkpoints")) if resume and (out / "checkpoints").is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    adapter_dir = out / models.ADAPTER_DIR
    trainer.save_model(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    history = [r for r in trainer.state.log_history if "loss" in r]
    atomic_write(out / "fine_tune_log.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    return adapter_dir


# ---------------------------------------------------------------- stage 3: the validation gate

GATE_METHODS = ("naive", "promptmii-zero", "promptmii")
GATE_INSTRUCTION_TOKENS = 512  # the same limit for the Zero and trained arms, well above either's instructions
SELECTION = "selection.json"


def gate_config(config: ExpertIterationConfig, m: int = 100) -> Any:
    """The EvalConfig of the validation gate: Naive, Zero (base + the adapter's template) and trained, n=20."""
    from promptmii.experiment import EvalConfig

    return EvalConfig(
        methods=GATE_METHODS,
        n=config.n,
        m=m,
        follower=config.follower,
        base_generator=f"llamacpp:{config.policy}",
        generator=f"llamacpp:{Path(config.output).resolve()}",
        template=config.template,
        max_instruction_tokens=GATE_INSTRUCTION_TOKENS,
        seed=config.seed,
    )


def selection_table(rows: list[Any]) -> dict[str, Any]:
    """Per-task and mean macro-F1 of the gate's arms, and the verdict: promote only if trained beats Naive and Zero."""
    per_task: dict[str, dict[str, float]] = {}
    for row in rows:
        per_task.setdefault(row.task, {})[row.method] = round(row.macro_f1, 4)
    complete = {task: arms for task, arms in per_task.items() if set(GATE_METHODS) <= set(arms)}
    means = {
        arm: round(statistics.fmean(arms[arm] for arms in complete.values()), 4) if complete else None
        for arm in GATE_METHODS
    }
    promoted = bool(complete) and means["promptmii"] > max(means["naive"], means["promptmii-zero"])
    return {"tasks": len(complete), "mean_macro_f1": means, "per_task": complete, "promoted": promoted}


def validate(config: ExpertIterationConfig, *, m: int = 100, quiet: bool = False) -> dict[str, Any]:
    """Export the adapter, run the gate on the validation split, write selection.json; returns the table."""
    from promptmii.experiment import results_dir, run_eval
    from promptmii.export import export_adapter

    out = Path(config.output)
    if not (out / models.EXPORTED_ADAPTER).is_file():
        export_adapter(out)
    tasks = load_tasks(config.corpus, split="validation")
    results = results_dir(out / "validation")
    carried_from = config.collection or config.previous  # a run with the same base, template, n and seed
    if carried_from and not results.results_path.exists():
        carry_gate_rows(Path(carried_from) / "validation", results.directory, m=m, seed=config.seed)
    run_eval(tasks, gate_config(config, m), results, quiet=quiet)
    table = selection_table(read_results(results.results_path))
    table["adapter_sha256"] = models.file_sha256(out / models.EXPORTED_ADAPTER)
    atomic_write(out / SELECTION, json.dumps(table, indent=2) + "\n")
    return table


def carry_gate_rows(previous: Path, target: Path, *, m: int, seed: int) -> int:
    """Copy the previous round's Naive and Zero gate rows, and their samples, into a new gate; returns the rows.

    Neither arm's fingerprint names the adapter, and a later round shares the base, template, follower,
    n and seed (SHARED_WITH_PREVIOUS), so the gate finds them done and runs only the new adapter's arm:
    about 1,600 follower calls saved on the 8 validation tasks.
    """
    results, samples = previous / "results.jsonl", previous / "samples.jsonl"
    if not results.is_file() or not samples.is_file():
        return 0
    arms = ("naive", "promptmii-zero")
    carried = [r for r in read_jsonl(results) if r["method"] in arms and r["m"] == m and r["seed"] == seed]
    keys = {(r["task"], r["method"], r["fingerprint"]) for r in carried}
    kept = [s for s in read_jsonl(samples) if (s["task"], s["method"], s["fingerprint"]) in keys]
    # whole files, samples first: a crash between the two leaves no results.jsonl, so the next run copies again
    atomic_write(target / "samples.jsonl", "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in kept))
    atomic_write(target / "results.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in carried))
    return len(carried)


# ---------------------------------------------------------------- stage 4: ship a promoted adapter


def ship(config: ExpertIterationConfig, name: str, *, commit: str | None = None) -> Path:
    """Copy a promoted run's adapter into the package (promptmii/adapters/NAME/) with its manifest.

    Refuses an adapter the gate did not promote, or one that changed since the gate measured it.
    """
    import shutil

    out = Path(config.output)
    selection_path = out / SELECTION
    if not selection_path.is_file():
        raise PromptMIIError(f"{out}: no {SELECTION}; run the validate stage first")
    selection = json.loads(selection_path.read_text(encoding="utf-8"))
    if not selection["promoted"]:
        means = selection["mean_macro_f1"]
        raise PromptMIIError(f"{out}: not promoted (validation macro-F1 {means}); the adapter must beat Naive and Zero")
    adapter = out / models.EXPORTED_ADAPTER
    sha256 = models.file_sha256(adapter)
    if sha256 != selection["adapter_sha256"]:
        raise PromptMIIError(f"{adapter}: changed since validation (sha256 {sha256[:12]}); validate it again")
    stored = _stored_config(out)  # what the adapter was trained with, whatever flags the caller passed
    target = models.adapters_root() / name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(adapter, target / models.EXPORTED_ADAPTER)
    shutil.copy(out / models.RUN_CONFIG, target / models.RUN_CONFIG)
    manifest = {
        "name": name,
        "base": stored["policy"],
        "template": stored["template"],
        "follower": stored["follower"],
        "adapter_sha256": sha256,
        "validation": {k: selection[k] for k in ("tasks", "mean_macro_f1")},
        "training_run": str(out),
        "commit": commit,
        "note": f"expert iteration, meta-prompt template '{stored['template']}'",
    }
    atomic_write(target / models.MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return target
