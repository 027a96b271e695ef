"""The methods compared on one follower: Naive, ICL(k), Prompt-MII-Zero and Prompt-MII.

Each method only decides the prefix the follower sees (as in the reference, millix19/promptmii `baseline_eval_v3_modular.py`);
`evaluate` does the rest.
- naive:           "Classify the input." (labels only, via the format constraint)
- icl[:k]:         k shots in context (k defaults to the run's n)
- promptmii-zero:  an instruction from the untrained base generator, one greedy call
- promptmii:       an instruction from the given (trained) generator, one greedy call
- ape, gepa:       an instruction found by test-time search with the base generator (promptmii.search),
                   hundreds to thousands of calls; what the one call above is measured against
- promptmii+check, promptmii-zero+check: the same instruction, kept only if it beats Naive on the n shown
                   examples (promptmii.check; 2n follower calls), else Naive
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from promptmii import prompts
from promptmii.backends import Backend
from promptmii.check import CheckOutcome, check_against_naive
from promptmii.data import Example
from promptmii.errors import PromptMIIError
from promptmii.evaluate import FOLLOWER_MAX_TOKENS, Spend
from promptmii.induce import InduceConfig, Instruction, induce
from promptmii.metaprompts import Template
from promptmii.search import SEARCH_METHODS, SearchConfig, SearchOutcome, run_search

log = logging.getLogger(__name__)

METHODS = ("naive", "icl", "promptmii-zero", "promptmii", *SEARCH_METHODS)
CHECK_SUFFIX = "+check"  # after promptmii or promptmii-zero: check the instruction against Naive (promptmii.check)
CHECKABLE = ("promptmii-zero", "promptmii")
METHOD_HELP = ", ".join(f"{m}[:K]" if m == "icl" else f"{m}[{CHECK_SUFFIX}]" if m in CHECKABLE else m for m in METHODS)


@dataclass(frozen=True)
class Method:
    name: str  # one of METHODS
    shots: int | None = None  # icl:k; None = the run's n
    check: bool = False  # promptmii(-zero)+check

    @property
    def spec(self) -> str:
        if self.check:
            return self.name + CHECK_SUFFIX
        return f"{self.name}:{self.shots}" if self.shots is not None else self.name

    def n_shots(self, n: int) -> int:
        """Examples this method sees: k for icl:k, else the run's n (Naive sees none but is run at n)."""
        return self.shots if self.shots is not None else n


def parse_method(spec: str) -> Method:
    """'naive', 'icl', 'icl:100', 'promptmii-zero', 'promptmii+check', 'ape', ... -> Method (did-you-mean on typos)."""
    spec = spec.strip()
    if spec.endswith(CHECK_SUFFIX):
        method = parse_method(spec.removesuffix(CHECK_SUFFIX))
        if method.name not in CHECKABLE or method.shots is not None:
            raise PromptMIIError(f"method '{spec}': only {' and '.join(CHECKABLE)} take {CHECK_SUFFIX}")
        return Method(method.name, check=True)
    name, _, arg = spec.partition(":")
    if name not in METHODS:
        close = difflib.get_close_matches(name, METHODS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PromptMIIError(f"unknown method '{spec}'{hint}; methods are: {METHOD_HELP}")
    if not arg:
        return Method(name)
    if name != "icl" or not arg.isdigit() or int(arg) < 1:
        raise PromptMIIError(f"method '{spec}': only icl takes a shot count, as icl:K with K >= 1")
    return Method(name, int(arg))


@dataclass(frozen=True)
class Prefix:
    """What a method puts in front of the format constraint, and what producing it cost."""

    text: str
    n_shots_used: int
    instruction: Instruction | None = None
    warnings: tuple[str, ...] = field(default=())
    spend: Spend = field(default_factory=Spend)  # LLM calls made to write the prefix (none for naive and icl)
    search: SearchOutcome | None = None
    failure: str | None = None  # why there is no usable prefix (a failed or empty generator reply): a failed row
    check: CheckOutcome | None = None  # method+check: the instruction's and Naive's scores on the shown examples


def build_prefix(
    method: Method,
    shots: list[Example],
    labels: tuple[str, ...],
    *,
    follower: Backend,
    longest_input: str,
    generator: Backend | None = None,
    induce_config: InduceConfig | None = None,
    template: Template | None = None,
    search_config: SearchConfig | None = None,
    search_dir: Path | None = None,
    decoding: str = "generate",
    quiet: bool = True,
) -> Prefix:
    """The prefix of `method`, given the run's shots (`shots` holds the first n_shots examples).

    A search needs `search_dir`: its journal and state live there, so it resumes. `template` is the
    meta-prompt of promptmii(-zero), already resolved for the generator (else induce resolves it).
    """
    if method.name == "naive":
        return Prefix(prompts.NAIVE_INSTRUCTION, 0)
    if method.name == "icl":
        return _icl_prefix(shots, labels, follower, longest_input)
    if generator is None:
        raise PromptMIIError(f"method {method.spec} needs a generator backend")
    if method.name in SEARCH_METHODS:
        if search_dir is None:
            raise PromptMIIError(f"method {method.spec} needs a directory for its search state")
        outcome = run_search(
            method.name,
            shots,
            labels,
            follower=follower,
            generator=generator,
            config=search_config or SearchConfig(),
            run_dir=search_dir,
            quiet=quiet,
        )
        failure = None if outcome.instruction.strip() else "the search found no non-empty instruction"
        return Prefix(outcome.instruction, len(shots), spend=outcome.spend, search=outcome, failure=failure)
    instruction = induce(shots, labels, generator, induce_config or InduceConfig(), template=template)
    warnings = []
    if instruction.n_examples < len(shots):
        warnings.append(
            f"the meta-prompt with {len(shots)} examples does not fit the generator's context of "
            f"{generator.context_length} tokens; showed {instruction.n_examples} (the longest left out)"
        )
    failure = (
        f"generator call failed: {instruction.error}"
        if instruction.error
        else "the generator wrote an empty instruction"
        if not instruction.text.strip()
        else None
    )
    spend = Spend(
        generator_calls=1,
        generator_prompt_tokens=instruction.prompt_tokens,
        generator_completion_tokens=instruction.completion_tokens,
        cache_hits=int(instruction.cached),
        seconds=instruction.seconds,
    )
    if not method.check or failure:
        return Prefix(instruction.text, instruction.n_examples, instruction, tuple(warnings), spend, failure=failure)
    # the check labels all the shown examples, also any the meta-prompt had to leave out: they are the user's data
    check = check_against_naive(instruction.text, shots, labels, follower, decoding=decoding)
    spend.add(check.spend)
    return Prefix(
        check.prefix, instruction.n_examples, instruction, tuple(warnings), spend, failure=check.error, check=check
    )


def _icl_prefix(shots: list[Example], labels: tuple[str, ...], follower: Backend, longest_input: str) -> Prefix:
    """ICL shots, leaving out the longest (and saying so) until the longest query fits the context.

    The reference lowers n the same way and records `actual_n` (its `ContextLengthManager`); we drop the
    longest shots first, the rule the meta-prompt uses too (prompts.fit_examples), and warn.
    """

    def fits(kept: list[Example]) -> bool:
        chat = prompts.follower_prompt(prompts.icl_prefix(kept), labels, longest_input)
        return follower.count_tokens(chat) + FOLLOWER_MAX_TOKENS <= follower.context_length

    kept = prompts.fit_examples(shots, fits)  # no shots always fits: the inputs were checked against the context
    if len(kept) == len(shots):
        return Prefix(prompts.icl_prefix(shots), len(shots))
    warning = (
        f"icl:{len(shots)} does not fit the follower's context of {follower.context_length} tokens; "
        f"used {len(kept)} shots (the longest left out)"
    )
    log.warning(warning)
    return Prefix(prompts.icl_prefix(kept), len(kept), warnings=(warning,))
