"""GEPA through the real `gepa` library: our follower as the task model, our generator as reflection LM.

As in the reference (REFERENCE.md A7): the n examples split into GEPA's trainset (the first n//3,
minibatches for reflection) and valset (the rest, scores for selection); the seed candidate is the
Naive instruction; the per-example score is exact match (1.0 if the follower's label is the gold
one); minibatches of min(3, |trainset|); gepa's defaults otherwise. Unlike the reference, the format
constraint is added once, by the follower prompt, and is not part of the candidate.

gepa pickles its state to run_dir at every iteration and resumes from it; the adapter's state (the
calls spent) travels with it, so a resumed search reports what the whole search cost.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import gepa
from gepa.core.adapter import EvaluationBatch
from gepa.core.result import GEPAResult
from gepa.core.state import GEPAState

from promptmii import prompts
from promptmii.backends import Chat, GenParams
from promptmii.data import Example
from promptmii.errors import BackendError, DataError
from promptmii.evaluate import Spend
from promptmii.parse import INVALID
from promptmii.search.ledger import BudgetExhausted, Candidate, Ledger

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
        chat = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        generation = self.ledger.ask_generator(chat, self.params)
        if generation.error:
            self.error = generation.error
            raise BackendError(f"gepa: the reflection LM failed ({generation.error})")
        return generation.text

    def stop(self, _state: object) -> bool:
        return self.error is not None


def gepa_search(
    examples: list[Example], ledger: Ledger, *, minibatch: int, max_tokens: int, seed: int, run_dir: Path
) -> list[Candidate]:
    """Every candidate GEPA accepted, with its valset accuracy; the first is the seed (Naive)."""
    train, val = split_gepa(examples)
    needed = len(val) + 2 * min(minibatch, len(train))
    if ledger.budget < needed:
        raise DataError(
            f"gepa budget {ledger.budget} is too small for n={len(examples)}: the seed's validation and one "
            f"proposal take {needed} follower calls"
        )
    reflection = ReflectionLM(ledger, max_tokens, seed)
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
