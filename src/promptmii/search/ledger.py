"""The one door a search uses to reach its models: it counts every call and holds the budget.

A search's cost is what the paper compares against one generator call, so no call may escape the
count. The budget is in follower evaluations of one example (gepa's "metric calls"), and it is never
exceeded: an evaluation that would cross it is refused before any call is made (BudgetExhausted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tqdm import tqdm

from promptmii.backends import Backend, Chat, Generation, GenParams
from promptmii.data import Example
from promptmii.evaluate import FollowerRun, Spend, run_follower


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
