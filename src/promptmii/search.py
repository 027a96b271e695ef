"""Test-time prompt search under a call budget: APE and GEPA, the baselines one generator call replaces.

Both search over instructions by scoring candidates with the follower on the n shown examples, and
hand the winner to `evaluate` like any other prefix, so it is scored on the same m test examples as
every method. Every call goes through a Ledger (counted, budgeted) and a journal: a CachedBackend in
the search's own directory, always on. A killed search that is run again replays its finished calls
from the journal (no new calls for work already done) and then goes on where it stopped.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from promptmii import prompts
from promptmii.backends import Backend, Chat, Generation, GenParams
from promptmii.cache import CachedBackend
from promptmii.data import Example
from promptmii.errors import BackendError, DataError, PromptMIIError, require
from promptmii.evaluate import FollowerRun, Spend, run_follower
from promptmii.parse import INVALID, extract_instruction, strip_quotes

if TYPE_CHECKING:  # gepa is imported where GEPA runs: it is an extra, and slow to import
    from gepa.core.adapter import EvaluationBatch

SEARCH_METHODS = ("ape", "gepa")


@dataclass(frozen=True)
class SearchConfig:
    """Search settings; every field is part of a search row's fingerprint."""

    ape_budget: int = field(default=2000, metadata={"help": "APE's follower calls (the paper's ~2,000)"})
    gepa_budget: int = field(default=150, metadata={"help": "GEPA's max_metric_calls (the reference's 150)"})
    ape_candidates: int = 50  # round-one proposals; round two spends the rest of the budget
    ape_demos: int = 5  # demos per proposal (APE: 5)
    ape_top_k: int = 5  # round two paraphrases these best candidates
    ape_temperature: float = 0.9  # APE's proposal temperature
    ape_max_tokens: int = 64  # APE: 50 tokens of completion; a chat model needs a few more
    gepa_minibatch: int = 3  # the reference's reflection_minibatch_size
    reflection_max_tokens: int = 1024  # gepa's reflection LM writes a whole instruction
    decoding: str = "generate"  # how the follower answers while candidates are scored (the run's mode)
    seed: int = 0  # demo draws, proposal sampling, gepa's minibatches

    def __post_init__(self) -> None:
        if self.ape_budget < 1 or self.gepa_budget < 1:
            raise PromptMIIError(f"search budgets must be at least 1 (ape {self.ape_budget}, gepa {self.gepa_budget})")

    def budget(self, method: str) -> int:
        return self.ape_budget if method == "ape" else self.gepa_budget

    def settings(self, method: str) -> dict[str, object]:
        """The fields that decide `method`'s result (APE's budget does not touch a GEPA row)."""
        other = "gepa_" if method == "ape" else "ape_"
        skip = {"reflection_max_tokens"} if method == "ape" else set()
        return {k: v for k, v in asdict(self).items() if not k.startswith(other) and k not in skip}


@dataclass(frozen=True)
class SearchOutcome:
    """The winning instruction, every candidate, and what the search spent."""

    instruction: str
    candidates: list[Candidate]
    spend: Spend
    budget: int
    budget_used: int
    budget_exhausted: bool


def run_search(
    method: str,
    examples: list[Example],
    labels: tuple[str, ...],
    *,
    follower: Backend,
    generator: Backend,
    config: SearchConfig,
    run_dir: Path,
    quiet: bool = True,
) -> SearchOutcome:
    """Run APE or GEPA over `examples`; resumable through `run_dir` (journal, gepa state, candidates)."""
    if method not in SEARCH_METHODS:
        raise PromptMIIError(f"unknown search method '{method}'; searches are: {', '.join(SEARCH_METHODS)}")
    run_dir.mkdir(parents=True, exist_ok=True)
    journal = run_dir / "calls.sqlite"
    budget = config.budget(method)
    journaled_follower = CachedBackend(follower, journal)
    with tqdm(total=budget, desc=f"{method} search", disable=quiet, leave=False, unit="call") as bar:
        ledger = Ledger(
            journaled_follower,
            CachedBackend(generator, journal),
            labels,
            budget,
            config.decoding,
            progress=bar,
        )
        if method == "ape":
            candidates = ape_search(examples, ledger, config)
        else:
            candidates = gepa_search(examples, ledger, config, run_dir)
    with (run_dir / "candidates.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(asdict(c), ensure_ascii=False) + "\n" for c in candidates)
    best = max(candidates, key=lambda c: c.score)  # the first of equals: the earliest scored
    # The search's time is its journal's: every distinct call once, at what it took when it was made. So
    # a resumed or replayed search costs what it did the first time, and a repeat the journal answered
    # costs nothing, as in a cold run. (Label scorings of the score decodings are not timed there.)
    spend = replace(ledger.spend, seconds=journaled_follower.stored_seconds())
    return SearchOutcome(best.instruction, candidates, spend, budget, ledger.used, ledger.exhausted)


# ---------------------------------------------------------------- the ledger
# The one door a search uses to reach its models: it counts every call and holds the budget.
# A search's cost is what the paper compares against one generator call, so no call may escape the
# count. The budget is in follower evaluations of one example (gepa's "metric calls"), and it is never
# exceeded: an evaluation that would cross it is refused before any call is made (BudgetExhausted).


@dataclass(frozen=True)
class Candidate:
    """One instruction a search scored, on the search's own held-out examples (never the m test ones)."""

    instruction: str
    score: float  # APE: macro-F1 on its held-out half; GEPA: accuracy on its valset
    origin: str  # APE: proposal | variation; GEPA: seed | reflection


class BudgetExhausted(Exception):  # noqa: N818 (a stop signal for the search, not an error)
    """The next evaluation would spend more follower calls than the budget allows (none were made)."""


@dataclass
class Ledger:
    follower: Backend
    generator: Backend
    labels: tuple[str, ...]
    budget: int  # follower evaluations of one example
    decoding: str = "generate"
    spend: Spend = field(default_factory=Spend)
    used: int = 0  # evaluations made so far
    exhausted: bool = False  # an evaluation was refused for lack of budget
    progress: tqdm | None = None

    def can_afford(self, examples: int) -> bool:
        return self.used + examples <= self.budget

    def score(self, instruction: str, examples: list[Example]) -> FollowerRun:
        """The follower's answers to `examples` behind `instruction`; refused if over budget."""
        if not self.can_afford(len(examples)):
            self.exhausted = True
            raise BudgetExhausted(f"{self.used} of {self.budget} follower calls used, {len(examples)} more needed")
        run = run_follower(self.follower, instruction, self.labels, examples, decoding=self.decoding)
        self.used += len(examples)
        self.spend.add_run(run)
        if self.progress is not None:
            self.progress.update(len(examples))
        return run

    def ask_generator(self, chat: Chat, params: GenParams) -> Generation:
        """One generator call (a proposal or a reflection), counted; failures come back in `error`."""
        [generation] = self.generator.generate([chat], params)
        self.spend.add_generation(generation)
        return generation


# ---------------------------------------------------------------- APE
# APE, forward mode (Zhou et al. 2023, keirp/automatic_prompt_engineer), rebuilt on our backends.
#
# The reference code is wired to a retired completions API, so this is our own implementation:
# 1. The n examples split in half: the first half is the demo pool, the second half is held out.
# 2. Round one: each candidate is proposed by the generator from its own random subset of demos
#    ("I gave a friend an instruction ... what was the instruction?"), at temperature 0.9.
# 3. Every new candidate is scored by the follower's macro-F1 on the held-out half. Scoring by
#    execution replaces APE's gold-output log-likelihood, which needs echo+logprobs (B3).
# 4. Round two spends the rest of the budget on paraphrases of the best `ape_top_k` candidates
#    (APE's iterative Monte Carlo resampling), round robin.
# The best-scoring candidate wins; ties go to the one scored first. A duplicate proposal is not
# scored again. With the default budget of 2,000 follower calls and n=20, that is 200 candidates.

# Consecutive failed generator calls that mean the generator is down rather than unlucky once.
MAX_CONSECUTIVE_FAILURES = 3
_LEAD_IN = re.compile(r"^(?:the\s+)?instruction\s+(?:was|is)\s*(?:to\b|:)?\s*", re.IGNORECASE)


def split_ape(examples: list[Example]) -> tuple[list[Example], list[Example]]:
    """Demo pool = first half, held-out scoring set = second half."""
    if len(examples) < 2:
        raise DataError(f"ape needs at least 2 examples (a demo and a held-out one), got n={len(examples)}")
    half = len(examples) // 2
    return examples[:half], examples[half:]


def clean_proposal(reply: str) -> str:
    """The instruction in a proposal: no header, quotes or 'The instruction was to' lead-in; first paragraph."""
    text = extract_instruction(reply).split("\n\n")[0].strip()
    text = strip_quotes(_LEAD_IN.sub("", text).strip())
    return text[:1].upper() + text[1:]


def ape_search(examples: list[Example], ledger: Ledger, config: SearchConfig) -> list[Candidate]:
    """Every candidate scored, in scoring order; the best is `max(..., key=score)` (first on ties)."""
    pool, held_out = split_ape(examples)
    if ledger.budget < len(held_out):
        raise DataError(
            f"ape budget {ledger.budget} is too small for n={len(examples)}: one candidate takes {len(held_out)} "
            "follower calls"
        )
    seed = config.seed
    rng = random.Random(f"{seed}/ape")
    scored: dict[str, Candidate] = {}
    failures: list[str] = []  # errors of the current run of failed generator calls
    draws = 0  # every generator call gets its own seed, so repeated prompts still sample anew

    def propose_and_score(chat: Chat, origin: str) -> None:
        nonlocal draws
        params = GenParams(config.ape_max_tokens, config.ape_temperature, seed=seed + draws, sample_index=draws)
        draws += 1
        generation = ledger.ask_generator(chat, params)
        if generation.error:
            failures.append(generation.error)
            if len(failures) >= MAX_CONSECUTIVE_FAILURES:
                raise BackendError(f"ape: the generator failed {len(failures)} times in a row ({failures[-1]})")
            return
        failures.clear()
        text = clean_proposal(generation.text)
        if text and text not in scored:
            f1 = ledger.score(text, held_out).scores.macro_f1
            scored[text] = Candidate(text, f1, origin)

    for _ in range(config.ape_candidates):
        if not ledger.can_afford(len(held_out)):
            break
        demos = rng.sample(pool, min(config.ape_demos, len(pool)))
        propose_and_score(prompts.ape_proposal_prompt(demos), "proposal")
    best_first = sorted(scored.values(), key=lambda c: c.score, reverse=True)[: config.ape_top_k]
    attempts = 0
    max_attempts = 2 * (ledger.budget // len(held_out))  # duplicates cost a generator call, not the budget
    while best_first and ledger.can_afford(len(held_out)) and attempts < max_attempts:
        parent = best_first[attempts % len(best_first)]
        propose_and_score(prompts.ape_variation_prompt(parent.instruction), "variation")
        attempts += 1
    if not ledger.can_afford(len(held_out)):
        ledger.exhausted = True
    if not scored:
        raise BackendError(f"ape: the generator proposed no usable instruction in {draws} calls")
    return list(scored.values())


# ---------------------------------------------------------------- GEPA
# GEPA through the real `gepa` library: our follower as the task model, our generator as reflection LM.
#
# As in the reference (millix19/promptmii `baseline_eval_v3_modular.py`, commit 2722f12): the n examples split into GEPA's trainset (the first n//3,
# minibatches for reflection) and valset (the rest, scores for selection); the seed candidate is the
# Naive instruction; the per-example score is exact match (1.0 if the follower's label is the gold
# one); minibatches of min(3, |trainset|); gepa's defaults otherwise. Unlike the reference, the format
# constraint is added once, by the follower prompt, and is not part of the candidate.
#
# gepa pickles its state to run_dir at every iteration and resumes from it; the adapter's state (the
# calls spent) travels with it, so a resumed search reports what the whole search cost.

COMPONENT = "instruction"  # the one text component GEPA evolves


def split_gepa(examples: list[Example]) -> tuple[list[Example], list[Example]]:
    """Trainset = first n//3 examples, valset = the rest (the reference's split)."""
    cut = len(examples) // 3
    if cut < 1:
        raise DataError(f"gepa needs at least 3 examples (1 to reflect on, 2 to validate), got n={len(examples)}")
    return examples[:cut], examples[cut:]


def feedback(gold: str, prediction: str) -> str:
    """What the reflection LM reads about one answer (gepa's default adapter wording)."""
    if prediction == gold:
        return f"The answer '{prediction}' is correct."
    if prediction == INVALID:
        return f"The reply is not one of the allowed labels. The correct answer is '{gold}'."
    return f"The answer '{prediction}' is incorrect. The correct answer is '{gold}'."


class FollowerAdapter:
    """gepa's GEPAAdapter protocol over our follower; every call goes through the ledger."""

    propose_new_texts = None  # gepa's own reflective proposer, with our reflection LM

    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    def evaluate(
        self, batch: list[Example], candidate: dict[str, str], capture_traces: bool = False
    ) -> EvaluationBatch:
        from gepa.core.adapter import EvaluationBatch

        run = self.ledger.score(candidate[COMPONENT], batch)  # BudgetExhausted stops gepa before any call
        scores = [1.0 if p == e.label else 0.0 for p, e in zip(run.predictions, batch, strict=True)]
        outputs = [{"reply": r, "prediction": p} for r, p in zip(run.replies, run.predictions, strict=True)]
        trajectories = None
        if capture_traces:
            trajectories = [{"input": e.text, "gold": e.label, **o} for e, o in zip(batch, outputs, strict=True)]
        return EvaluationBatch(outputs=outputs, scores=scores, trajectories=trajectories)

    def make_reflective_dataset(
        self, candidate: dict[str, str], eval_batch: EvaluationBatch, components_to_update: list[str]
    ) -> dict[str, list[dict[str, str]]]:
        records = [
            {
                "Inputs": t["input"],
                "Generated Outputs": t["reply"] or "(no reply)",
                "Feedback": feedback(t["gold"], t["prediction"]),
            }
            for t in eval_batch.trajectories or []
        ]
        return dict.fromkeys(components_to_update, records)

    def get_adapter_state(self) -> dict[str, Any]:
        return {"spend": asdict(self.ledger.spend), "used": self.ledger.used}

    def set_adapter_state(self, state: dict[str, Any]) -> None:
        if state:  # empty on a fresh run
            self.ledger.spend = Spend(**state["spend"])
            self.ledger.used = state["used"]


class RunLog:
    """gepa's logger, into run_dir/run_log.txt only: gepa's own Logger tees stdout, where our JSONL goes."""

    def __init__(self, path: Path):
        self.path = path

    def log(self, message: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(message.rstrip("\n") + "\n")


class ReflectionLM:
    """gepa's `reflection_lm` (prompt -> text) on our generator, greedy as in the reference.

    gepa swallows reflection errors and goes on without a proposal, which would spend the budget on
    a dead generator; so a failure is remembered here and stops the search (`stop`).
    """

    def __init__(self, ledger: Ledger, max_tokens: int, seed: int):
        self.ledger = ledger
        self.params = GenParams(max_tokens=max_tokens, temperature=0.0, seed=seed)
        self.error: str | None = None

    def __call__(self, prompt: str | Chat) -> str:
        return self.ask(prompt, self.params)

    def ask(self, prompt: str | Chat, params: GenParams) -> str:
        chat = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        generation = self.ledger.ask_generator(chat, params)
        if generation.error:
            self.error = generation.error
            raise BackendError(f"gepa: the reflection LM failed ({generation.error})")
        return generation.text

    def stop(self, _state: object) -> bool:
        return self.error is not None


def require_gepa() -> Any:
    """The gepa library, or one line naming the extra that installs it."""
    return require("gepa", "search", "method gepa")


def gepa_search(examples: list[Example], ledger: Ledger, config: SearchConfig, run_dir: Path) -> list[Candidate]:
    """Every candidate GEPA accepted, with its valset accuracy; the first is the seed (Naive)."""
    gepa = require_gepa()
    from gepa.core.result import GEPAResult
    from gepa.core.state import GEPAState

    train, val = split_gepa(examples)
    minibatch, seed = config.gepa_minibatch, config.seed
    needed = len(val) + 2 * min(minibatch, len(train))
    if ledger.budget < needed:
        raise DataError(
            f"gepa budget {ledger.budget} is too small for n={len(examples)}: the seed's validation and one "
            f"proposal take {needed} follower calls"
        )
    reflection = ReflectionLM(ledger, config.reflection_max_tokens, seed)
    gepa_dir = run_dir / "gepa"
    gepa_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = gepa.optimize(
            seed_candidate={COMPONENT: prompts.NAIVE_INSTRUCTION},
            trainset=train,
            valset=val,
            adapter=FollowerAdapter(ledger),
            reflection_lm=reflection,
            reflection_minibatch_size=min(minibatch, len(train)),
            max_metric_calls=ledger.budget,
            stop_callbacks=reflection.stop,
            run_dir=str(gepa_dir),
            logger=RunLog(gepa_dir / "run_log.txt"),
            seed=seed,
            raise_on_exception=True,
        )
    except BudgetExhausted:  # the last iteration would have crossed the budget: keep the state before it
        result = GEPAResult.from_state(GEPAState.load(str(gepa_dir)), run_dir=str(gepa_dir), seed=seed)
    if reflection.error:
        raise BackendError(f"gepa: the reflection LM (generator) failed, search stopped ({reflection.error})")
    if result.total_metric_calls is not None and result.total_metric_calls >= ledger.budget:
        ledger.exhausted = True
    return [
        Candidate(candidate[COMPONENT], score, "seed" if i == 0 else "reflection")
        for i, (candidate, score) in enumerate(zip(result.candidates, result.val_aggregate_scores, strict=True))
    ]
