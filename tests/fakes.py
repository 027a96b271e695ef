"""The only fake in the test suite: a scripted Backend with a call log (llm's MockModel)."""

from __future__ import annotations

import random
from collections.abc import Callable

from promptmii.backends import Chat, Generation, GenParams


def user_text(chat: Chat) -> str:
    return "\n".join(message["content"] for message in chat)


def query_input(chat: Chat) -> str:
    """The text after the last 'Input: ' of a follower prompt."""
    return user_text(chat).rsplit("Input: ", 1)[-1]


class FakeBackend:
    """Replies come from a queue (enqueue) first, then from `rule(chat)`, else "".

    Label scores come from `scorer(chat, labels)`, else shorter labels score higher.
    Tokens are whitespace words, so token counts are easy to compute by hand. `fail_when(chat)`
    makes single calls fail the way a real backend reports it (Generation.error); `fail_rate` makes
    that many of all calls fail, drawn from random.Random(seed) (a flaky server).
    """

    def __init__(
        self,
        model_id: str = "fake-model",
        rule: Callable[[Chat], str] | None = None,
        context_length: int = 4096,
        fail_when: Callable[[Chat], bool] | None = None,
        scorer: Callable[[Chat, list[str]], dict[str, float]] | None = None,
        fail_rate: float = 0.0,
        seed: int = 0,
    ):
        self.model_id = model_id
        self.context_length = context_length
        self.token_counter = "fake-whitespace"
        self.rule = rule
        self.fail_when = fail_when
        self.scorer = scorer
        self.fail_rate = fail_rate
        self._rng = random.Random(seed)
        self.scored: list[Chat] = []
        self.calls: list[tuple[Chat, GenParams]] = []
        self.batches: list[int] = []  # prompts per generate() call: shows how a caller batches
        self._queue: list[str] = []

    def enqueue(self, *replies: str) -> None:
        self._queue.extend(replies)

    def generate(self, prompts: list[Chat], params: GenParams) -> list[Generation]:
        out = []
        self.batches.append(len(prompts))
        for chat in prompts:
            self.calls.append((chat, params))
            flaky = self.fail_rate and self._rng.random() < self.fail_rate
            if flaky or (self.fail_when and self.fail_when(chat)):
                out.append(Generation("", self.count_tokens(chat), 0, 0.0, error="fake failure"))
                continue
            text = self._queue.pop(0) if self._queue else (self.rule(chat) if self.rule else "")
            out.append(Generation(text, self.count_tokens(chat), len(text.split()), 0.01))
        return out

    def label_logprobs(self, prompt: Chat, labels: list[str]) -> dict[str, float]:
        self.scored.append(prompt)
        if self.scorer:
            return self.scorer(prompt, labels)
        return {label: -float(len(label)) for label in labels}

    def count_tokens(self, prompt: Chat) -> int:
        return len(user_text(prompt).split()) + 3  # +3: a pretend chat template


def keyword_rule(keywords: dict[str, str], default: str, *, needs: str | None = None) -> Callable[[Chat], str]:
    """A follower that labels by keyword; with `needs`, only when the prompt contains that phrase.

    This makes the fake respond to the instruction, the way a real follower should: an instruction
    that mentions `needs` lifts its accuracy, others leave it at `default`.
    """

    def rule(chat: Chat) -> str:
        if needs is not None and needs not in user_text(chat):
            return default
        text = query_input(chat).lower()
        return next((label for word, label in keywords.items() if word in text), default)

    return rule
