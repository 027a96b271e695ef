"""Run the frozen follower over a test set for any prompt prefix: predictions, scores, tokens, calls.

Every method (Naive, ICL, an induced instruction) is just a different prefix in front of the same
format constraint and input, so one function scores them all. The m queries of one prefix go to the
backend as one batch, in order, so llama.cpp reuses the prefix's KV cache and a server can batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm import tqdm

from promptmii import prompts
from promptmii.backends import Backend, GenParams
from promptmii.data import Example
from promptmii.errors import BackendError, DataError
from promptmii.metrics import Scores, score
from promptmii.parse import INVALID, parse_label

# The paper's follower reply limit is 10 tokens at evaluation (90 in training, REFERENCE.md A3). A label
# needs at most ~8 tokens in our corpus; 16 leaves room for "Label:" or quotes, which we forgive.
FOLLOWER_MAX_TOKENS = 16
FOLLOWER_PARAMS = GenParams(max_tokens=FOLLOWER_MAX_TOKENS, temperature=0.0)
BATCH = 25  # queries per backend call: big enough to batch, small enough for a live progress bar


@dataclass(frozen=True)
class FollowerRun:
    """The follower's answers to one prefix over one test set, with what they cost."""

    replies: list[str]
    predictions: list[str]
    errors: list[str | None]
    scores: Scores
    prompt_tokens_per_query: int  # the shared prefix, chat template included, without the input
    prompt_tokens: int  # all follower prompt tokens actually sent
    completion_tokens: int
    calls: int
    cache_hits: int
    seconds: float


def prefix_tokens(follower: Backend, prefix: str, labels: tuple[str, ...]) -> int:
    """Tokens every query shares: the follower prompt with an empty input, chat template included."""
    return follower.count_tokens(prompts.follower_prompt(prefix, labels, ""))


def check_inputs_fit(follower: Backend, task_id: str, labels: tuple[str, ...], test: list[Example]) -> None:
    """Refuse a test text that cannot fit the follower's context even with the shortest (Naive) prefix."""
    limit = follower.context_length - FOLLOWER_MAX_TOKENS
    for i, example in enumerate(test):
        size = follower.count_tokens(prompts.follower_prompt(prompts.NAIVE_INSTRUCTION, labels, example.text))
        if size > limit:
            raise DataError(
                f"{task_id}: test text {i} is {size} tokens with the prompt, longer than the follower's context "
                f"of {follower.context_length} tokens; shorten or drop it"
            )


def run_follower(
    follower: Backend, prefix: str, labels: tuple[str, ...], test: list[Example], *, desc: str = "", quiet: bool = True
) -> FollowerRun:
    """Ask the follower to label every test input behind `prefix`; failed calls score INVALID."""
    chats = [prompts.follower_prompt(prefix, labels, e.text) for e in test]
    generations = []
    with tqdm(total=len(chats), desc=desc, disable=quiet, leave=False, unit="q") as bar:
        for start in range(0, len(chats), BATCH):
            batch = follower.generate(chats[start : start + BATCH], FOLLOWER_PARAMS)
            generations.extend(batch)
            bar.update(len(batch))
    errors = [g.error for g in generations]
    if test and all(errors):
        raise BackendError(f"the follower failed on all {len(test)} inputs ({errors[0]})")
    predictions = [INVALID if g.error else parse_label(g.text, labels) for g in generations]
    return FollowerRun(
        replies=[g.text for g in generations],
        predictions=predictions,
        errors=errors,
        scores=score([e.label for e in test], predictions),
        prompt_tokens_per_query=prefix_tokens(follower, prefix, labels),
        prompt_tokens=sum(g.prompt_tokens for g in generations),
        completion_tokens=sum(g.completion_tokens for g in generations),
        calls=len(generations),
        cache_hits=sum(g.cached for g in generations),
        seconds=sum(g.seconds for g in generations),
    )
