"""Run the frozen follower over a test set for any prompt prefix: predictions, scores, tokens, calls.

Every method (Naive, ICL, an induced instruction) is just a different prefix in front of the same
format constraint and input, so one function scores them all. The m queries of one prefix go to the
backend as one batch, in order, so llama.cpp reuses the prefix's KV cache and a server can batch.

The follower answers in one of three decoding modes (DECODING), chosen per run and recorded:
`generate` is the paper's free generation + parsing; `score` ranks the labels by the log-probability
of their tokens (`score-calibrated` subtracts each label's score on a content-free input), so an
invalid answer is impossible; `constrained` generates under a grammar that admits only the labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace

from tqdm import tqdm

from promptmii import prompts
from promptmii.backends import Backend, Chat, Generation, GenParams
from promptmii.data import Example
from promptmii.errors import BackendError, DataError
from promptmii.metrics import Scores, score
from promptmii.parse import INVALID, parse_label, pick_label

# The reference's follower reply limit is 10 tokens at evaluation and 90 in its training reward
# (millix19/promptmii `baseline_eval_v3_modular.py`, `prompt_gen_batch_sglang_v4_fast_f1.py`). A label
# needs at most ~8 tokens in our corpus; 16 leaves room for "Label:" or quotes, which we forgive.
FOLLOWER_MAX_TOKENS = 16
FOLLOWER_PARAMS = GenParams(max_tokens=FOLLOWER_MAX_TOKENS, temperature=0.0)
BATCH = 25  # queries per backend call: big enough to batch, small enough for a live progress bar
FIT_CHECKS = 3  # longest test texts whose token count is checked against the context
DECODING = ("generate", "score", "score-calibrated", "constrained")
# The content-free input of calibrated scoring (Zhao et al. 2021 use "N/A", "" and "[MASK]"; one suffices
# to remove most of the label prior: on 4-way topic sentences the bundled 0.5B went from .38 to .75 accuracy).
CONTENT_FREE_INPUT = "N/A"


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
    seconds: float  # the calls' own time, cache replays at the time they first took


@dataclass
class Spend:
    """LLM calls and tokens a method spends before the test run: its generator call, or a whole search."""

    generator_calls: int = 0
    generator_prompt_tokens: int = 0
    generator_completion_tokens: int = 0
    follower_calls: int = 0
    follower_prompt_tokens: int = 0
    follower_completion_tokens: int = 0
    cache_hits: int = 0
    # The calls' own time, set by whoever built the spend: the generator call's, or a search's journal sum
    # (each distinct call once; the add_* methods leave it alone because repeats would count again).
    seconds: float = 0.0

    def add_generation(self, generation: Generation) -> None:
        self.generator_calls += 1
        self.generator_prompt_tokens += generation.prompt_tokens
        self.generator_completion_tokens += generation.completion_tokens
        self.cache_hits += generation.cached

    def add(self, other: Spend) -> None:
        """Another step's calls, tokens and time (a check after the generator call)."""
        for spec in fields(self):
            setattr(self, spec.name, getattr(self, spec.name) + getattr(other, spec.name))

    def add_run(self, run: FollowerRun) -> None:
        self.follower_calls += run.calls
        self.follower_prompt_tokens += run.prompt_tokens
        self.follower_completion_tokens += run.completion_tokens
        self.cache_hits += run.cache_hits


def prefix_tokens(follower: Backend, prefix: str, labels: tuple[str, ...]) -> int:
    """Tokens every query shares: the follower prompt with an empty input, chat template included."""
    return follower.count_tokens(prompts.follower_prompt(prefix, labels, ""))


def check_inputs_fit(follower: Backend, task_id: str, labels: tuple[str, ...], test: list[Example]) -> None:
    """Refuse a test text that cannot fit the follower's context even with the shortest (Naive) prefix.

    Only the longest texts (by characters) are counted: token counts follow length closely, and a
    server may count tokens by running a request, which we should not do m times.
    """
    limit = follower.context_length - FOLLOWER_MAX_TOKENS
    longest = sorted(range(len(test)), key=lambda i: len(test[i].text), reverse=True)[:FIT_CHECKS]
    for i in longest:
        size = follower.count_tokens(prompts.follower_prompt(prompts.NAIVE_INSTRUCTION, labels, test[i].text))
        if size > limit:
            raise DataError(
                f"{task_id}: test text {i} is {size} tokens with the prompt, longer than the follower's context "
                f"of {follower.context_length} tokens; shorten or drop it"
            )


def run_follower(
    follower: Backend,
    prefix: str,
    labels: tuple[str, ...],
    test: list[Example],
    *,
    decoding: str = "generate",
    desc: str = "",
    quiet: bool = True,
) -> FollowerRun:
    """Ask the follower to label every test input behind `prefix`; failed calls score INVALID."""
    if decoding not in DECODING:
        raise DataError(f"unknown decoding mode '{decoding}'; modes are: {', '.join(DECODING)}")
    chats = [prompts.follower_prompt(prefix, labels, e.text) for e in test]
    score_hits_before = getattr(follower, "score_hits", 0)  # a CachedBackend counts label scorings it answered
    extra_calls = 0
    if decoding.startswith("score"):
        baseline = None
        if decoding == "score-calibrated":
            content_free = prompts.follower_prompt(prefix, labels, CONTENT_FREE_INPUT)
            baseline = follower.label_logprobs(content_free, list(labels))
            extra_calls = 1

        def ask(chunk: list[Chat]) -> list[Generation]:
            return [_scored(follower, chat, labels, baseline) for chat in chunk]
    else:
        params = FOLLOWER_PARAMS if decoding == "generate" else replace(FOLLOWER_PARAMS, choices=labels)

        def ask(chunk: list[Chat]) -> list[Generation]:
            return follower.generate(chunk, params)

    generations: list[Generation] = []
    with tqdm(total=len(chats), desc=desc, disable=quiet, leave=False, unit="q") as bar:
        for start in range(0, len(chats), BATCH):
            batch = ask(chats[start : start + BATCH])
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
        calls=len(generations) + extra_calls,
        cache_hits=sum(g.cached for g in generations) + getattr(follower, "score_hits", 0) - score_hits_before,
        seconds=sum(g.seconds for g in generations),
    )


def _scored(follower: Backend, chat: Chat, labels: tuple[str, ...], baseline: dict[str, float] | None) -> Generation:
    """One query in score mode, as a Generation whose text is the chosen label (or an error)."""
    start = time.perf_counter()
    try:
        label = pick_label(follower.label_logprobs(chat, list(labels)), baseline)
    except (ValueError, RuntimeError) as e:  # one input failed; a BackendError (cannot score at all) stops the run
        return Generation("", 0, 0, time.perf_counter() - start, error=str(e))
    return Generation(label, follower.count_tokens(chat), 0, time.perf_counter() - start)
