"""APE, forward mode (Zhou et al. 2023; REFERENCE.md B3), rebuilt on our backends.

The reference code is wired to a retired completions API, so this is our own implementation:
1. The n examples split in half: the first half is the demo pool, the second half is held out.
2. Round one: each candidate is proposed by the generator from its own random subset of demos
   ("I gave a friend an instruction ... what was the instruction?"), at temperature 0.9.
3. Every new candidate is scored by the follower's macro-F1 on the held-out half. Scoring by
   execution replaces APE's gold-output log-likelihood, which needs echo+logprobs (B3).
4. Round two spends the rest of the budget on paraphrases of the best `ape_top_k` candidates
   (APE's iterative Monte Carlo resampling), round robin.
The best-scoring candidate wins; ties go to the one scored first. A duplicate proposal is not
scored again. With the default budget of 2,000 follower calls and n=20, that is 200 candidates.
"""

from __future__ import annotations

import random
import re

from promptmii import prompts
from promptmii.backends import Chat, GenParams
from promptmii.data import Example
from promptmii.errors import BackendError, DataError
from promptmii.parse import extract_instruction
from promptmii.search.ledger import Candidate, Ledger

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
    text = _LEAD_IN.sub("", text).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text[:1].upper() + text[1:]


def ape_search(
    examples: list[Example],
    ledger: Ledger,
    *,
    candidates: int,
    demos: int,
    top_k: int,
    temperature: float,
    max_tokens: int,
    seed: int,
) -> list[Candidate]:
    """Every candidate scored, in scoring order; the best is `max(..., key=score)` (first on ties)."""
    pool, held_out = split_ape(examples)
    if ledger.budget < len(held_out):
        raise DataError(
            f"ape budget {ledger.budget} is too small for n={len(examples)}: one candidate takes {len(held_out)} "
            "follower calls"
        )
    rng = random.Random(f"{seed}/ape")
    scored: dict[str, Candidate] = {}
    failures: list[str] = []  # errors of the current run of failed generator calls
    draws = 0  # every generator call gets its own seed, so repeated prompts still sample anew

    def propose_and_score(chat: Chat, origin: str) -> None:
        nonlocal draws
        params = GenParams(max_tokens=max_tokens, temperature=temperature, seed=seed + draws, sample_index=draws)
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

    for _ in range(candidates):
        if not ledger.can_afford(len(held_out)):
            break
        propose_and_score(prompts.ape_proposal_prompt(rng.sample(pool, min(demos, len(pool)))), "proposal")
    best_first = sorted(scored.values(), key=lambda c: c.score, reverse=True)[:top_k]
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
