"""Check an induced instruction against Naive on the examples the generator saw; keep the better one.

With the bundled 1.5B follower, an instruction from the 1.5B generator (trained or not) scores below
Naive's "Classify the input." on about half the tasks and above it on the rest, so on average it is
level with Naive. The user's n labelled examples can tell the two cases apart: the follower labels them
once behind the instruction and once behind Naive (2n calls, once per task), and the instruction is kept
only if it scores strictly higher. At n=20 this lifted both generators from level with Naive to about
.02 above it on the 23 test tasks, and left them level with Naive on the 8 validation tasks
(bench/results/shot_check.json).
"""

from __future__ import annotations

from dataclasses import dataclass

from promptmii import prompts
from promptmii.backends import Backend
from promptmii.data import Example
from promptmii.evaluate import Spend, run_follower


@dataclass(frozen=True)
class CheckOutcome:
    """The check's verdict on one instruction, and the follower calls it made."""

    instruction: str  # the induced instruction that was checked
    instruction_macro_f1: float  # on the shown examples
    naive_macro_f1: float
    n: int  # shown examples labelled behind each prefix
    spend: Spend
    error: str | None = None  # a follower call failed: no verdict

    @property
    def kept(self) -> bool:
        return self.error is None and keeps_instruction(self.instruction_macro_f1, self.naive_macro_f1)

    @property
    def prefix(self) -> str:
        """What the follower is given: the instruction if it won, else Naive's."""
        return self.instruction if self.kept else prompts.NAIVE_INSTRUCTION

    def as_record(self) -> dict[str, object]:
        """For a result row: enough to see why the instruction was kept or dropped."""
        return {
            "instruction": self.instruction,
            "instruction_macro_f1": round(self.instruction_macro_f1, 4),
            "naive_macro_f1": round(self.naive_macro_f1, 4),
            "n": self.n,
            "kept": self.kept,
        }


def keeps_instruction(instruction_macro_f1: float, naive_macro_f1: float) -> bool:
    """Keep the instruction only if it beats Naive on the shown examples; a tie goes to Naive, the shorter prompt."""
    return instruction_macro_f1 > naive_macro_f1


def check_against_naive(
    instruction: str,
    examples: list[Example],
    labels: tuple[str, ...],
    follower: Backend,
    *,
    decoding: str = "generate",
) -> CheckOutcome:
    """Label `examples` behind the instruction and behind Naive, and compare their macro-F1."""
    spend = Spend()
    scores = {}
    for name, prefix in (("instruction", instruction), ("naive", prompts.NAIVE_INSTRUCTION)):
        run = run_follower(follower, prefix, labels, examples, decoding=decoding)
        spend.add_run(run)
        spend.seconds += run.seconds
        if failed := [e for e in run.errors if e]:
            error = f"{len(failed)} of {len(examples)} follower calls of the check failed (first: {failed[0]})"
            return CheckOutcome(instruction, 0.0, 0.0, len(examples), spend, error=error)
        scores[name] = run.scores.macro_f1
    return CheckOutcome(instruction, scores["instruction"], scores["naive"], len(examples), spend)
