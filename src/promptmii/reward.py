"""The meta-training reward: how well the frozen follower classifies a task with a generated instruction.

reward = the follower's macro-F1 on the task's m fixed scoring examples, with the instruction + the fixed
format constraint as prefix (exactly what evaluation measures). An INVALID reply counts as an error; the
reference mapped it to label 0, which rewards a follower that answers nonsense on tasks whose label 0 is
common (millix19/promptmii `prompt_gen_batch_sglang_v4_fast_f1.py`). No length, format or KL terms, as in the paper.

`FollowerReward` is the callable TRL's GRPOTrainer calls with the completions of one generation batch and
the dataset's extra columns (labels, test_texts, test_labels) as aligned keyword lists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from promptmii.backends import Backend
from promptmii.data import Example
from promptmii.evaluate import run_follower
from promptmii.metrics import macro_f1
from promptmii.parse import extract_instruction


def reward_from_predictions(gold: list[str], predictions: list[str]) -> float:
    """Macro-F1 over the gold classes present; INVALID and wrong labels are errors, never a class."""
    return macro_f1(gold, predictions)


def completion_text(completion: str | list[dict[str, str]]) -> str:
    """A TRL completion is plain text, or a list of chat messages when the prompt was a chat."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content", "") for message in completion)


class FollowerReward:
    """Scores each generated instruction with the frozen follower (batched per instruction, cached)."""

    __name__ = "follower_macro_f1"  # TRL names the logged metric rewards/<name>/mean after it

    def __init__(self, follower: Backend, *, decoding: str = "generate", rollouts_path: Path | None = None):
        self.follower = follower
        self.decoding = decoding
        self.rollouts_path = rollouts_path  # one JSON line per rollout: what the policy wrote and what it scored

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        labels: list[list[str]],
        test_texts: list[list[str]],
        test_labels: list[list[str]],
        task: list[str] | None = None,
        n: list[int] | None = None,
        trainer_state: Any = None,
        **_: Any,
    ) -> list[float]:
        rewards, rollouts = [], []
        for i, completion in enumerate(completions):
            instruction = extract_instruction(completion_text(completion))
            test = [Example(t, y) for t, y in zip(test_texts[i], test_labels[i], strict=True)]
            run = run_follower(self.follower, instruction, tuple(labels[i]), test, decoding=self.decoding)
            rewards.append(reward_from_predictions(test_labels[i], run.predictions))
            rollouts.append(
                {
                    # the optimizer step these rollouts feed (steps done + 1), as metrics.jsonl numbers it
                    "step": trainer_state.global_step + 1 if trainer_state is not None else None,
                    "task": task[i] if task else None,
                    "n": n[i] if n else None,
                    "reward": round(rewards[-1], 4),
                    "invalid_rate": run.scores.invalid_rate,
                    "instruction": instruction,
                }
            )
        if self.rollouts_path is not None:
            with self.rollouts_path.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rollouts)
        return rewards
