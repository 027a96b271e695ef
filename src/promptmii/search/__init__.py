"""Test-time prompt search, the baselines one generator call replaces: APE and GEPA.

Both search over instructions by scoring candidates with the follower on the n shown examples, and
hand the winner to `evaluate` like any other prefix, so it is scored on the same m test examples as
every method. Every call goes through a Ledger (counted, budgeted) and a journal: a CachedBackend in
the search's own directory, always on. A killed search that is run again replays its finished calls
from the journal (no new calls for work already done) and then goes on where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from promptmii.backends import Backend
from promptmii.cache import CachedBackend
from promptmii.data import Example
from promptmii.errors import PromptMIIError
from promptmii.evaluate import Spend
from promptmii.search.ape import ape_search
from promptmii.search.gepa_search import gepa_search
from promptmii.search.ledger import BudgetExhausted, Candidate, Ledger

SEARCH_METHODS = ("ape", "gepa")
__all__ = ["SEARCH_METHODS", "BudgetExhausted", "Candidate", "SearchConfig", "SearchOutcome", "run_search"]


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
    run_dir.mkdir(parents=True, exist_ok=True)
    journal = run_dir / "calls.sqlite"
    budget = config.budget(method)
    with tqdm(total=budget, desc=f"{method} search", disable=quiet, leave=False, unit="call") as bar:
        ledger = Ledger(
            CachedBackend(follower, journal),
            CachedBackend(generator, journal),
            labels,
            budget,
            config.decoding,
            progress=bar,
        )
        if method == "ape":
            candidates = ape_search(
                examples,
                ledger,
                candidates=config.ape_candidates,
                demos=config.ape_demos,
                top_k=config.ape_top_k,
                temperature=config.ape_temperature,
                max_tokens=config.ape_max_tokens,
                seed=config.seed,
            )
        elif method == "gepa":
            candidates = gepa_search(
                examples,
                ledger,
                minibatch=config.gepa_minibatch,
                max_tokens=config.reflection_max_tokens,
                seed=config.seed,
                run_dir=run_dir,
            )
        else:
            raise PromptMIIError(f"unknown search method '{method}'; searches are: {', '.join(SEARCH_METHODS)}")
    with (run_dir / "candidates.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(asdict(c), ensure_ascii=False) + "\n" for c in candidates)
    best = max(candidates, key=lambda c: c.score)  # the first of equals: the earliest scored
    return SearchOutcome(best.instruction, candidates, ledger.spend, budget, ledger.used, ledger.exhausted)
