"""Render every prompt the method sends: meta-prompt, follower prompt, Naive and ICL prefixes.

Pure functions of strings (plus the meta-prompt templates shipped as package data). One example
format is used everywhere, for the generator's examples and for ICL shots alike; the reference used
`Text: "..."` in training and `Input: ...` at evaluation (millix19/promptmii `prompt_gen_v8.py` vs
`baseline_eval_v3_modular.py`), we do not.

Every follower prompt has the same shape (the reference's evaluation prompt), one user message:

    {prefix}                      <- instruction, Naive line, or ICL shots; shared by all queries
    {format constraint}
    Input: {text}                 <- the only part that changes per query
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from importlib import resources

from promptmii.backends import Chat
from promptmii.data import Example
from promptmii.errors import PromptMIIError

# The paper found the structured meta-prompt better for Qwen-7B and the terse one for Llama. With our
# bundled 1.5B as generator and follower, terse won on the validation split (mean macro-F1 0.567 vs
# 0.490, bench/results/template_selection.json), and again over two draws against two later candidates
# (0.569 vs 0.557 and 0.553, bench/results/template_selection_seeds.json), so it is the default.
DEFAULT_TEMPLATE = "terse"
NAIVE_INSTRUCTION = "Classify the input."
ICL_CLOSING = "Now classify the next input."


def template_names() -> tuple[str, ...]:
    """The built-in meta-prompts: every promptmii/templates/*.txt, listed, so a new file needs no code change."""
    root = resources.files("promptmii").joinpath("templates")
    return tuple(sorted(p.name.removesuffix(".txt") for p in root.iterdir() if p.name.endswith(".txt") and p.is_file()))


def meta_template(name: str) -> str:
    """The text of a meta-prompt template shipped in promptmii/templates/<name>.txt."""
    names = template_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise PromptMIIError(f"unknown meta-prompt template '{name}'{hint}; templates are: {', '.join(names)}")
    return resources.files("promptmii").joinpath(f"templates/{name}.txt").read_text(encoding="utf-8")


def label_list(labels: tuple[str, ...] | list[str]) -> str:
    """Labels as one line. A label with a comma would make ', ' ambiguous, so then use '; '."""
    separator = "; " if any("," in label for label in labels) else ", "
    return separator.join(labels)


def format_examples(examples: list[Example]) -> str:
    """The one example format: 'Input: <text>' newline 'Label: <label>', blank line between examples."""
    return "\n\n".join(f"Input: {e.text}\nLabel: {e.label}" for e in examples)


def meta_prompt(template: str, examples: list[Example], labels: tuple[str, ...] | list[str]) -> Chat:
    """The generator's prompt: the template filled with the label list and the n examples.

    One pass over the template, so a label or a text that contains "{examples}" or "{labels}" stays as written.
    """
    values = {"labels": label_list(labels), "examples": format_examples(examples)}
    content = re.sub(r"\{(labels|examples)\}", lambda match: values[match.group(1)], template)
    return [{"role": "user", "content": content}]


def fit_examples(examples: list[Example], fits: Callable[[list[Example]], bool]) -> list[Example]:
    """The most examples that `fits`, dropping the longest first; the rest keep their order.

    The one rule for a prompt that must fit a context (ICL shots, the meta-prompt's examples): dropping
    the longest keeps the most examples, and so the most labels, under the limit. Assumes `fits` is
    monotone (fewer examples never fit worse); returns [] when even one does not fit.
    """
    if fits(examples):
        return list(examples)
    by_length = sorted(range(len(examples)), key=lambda i: len(examples[i].text), reverse=True)

    def without(k: int) -> list[Example]:  # the examples minus the k longest
        dropped = set(by_length[:k])
        return [e for i, e in enumerate(examples) if i not in dropped]

    low, high = 0, len(examples)  # without(low) does not fit; without(high) = [] is taken to fit
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(without(middle)) else (middle, high)
    return without(high)


def format_constraint(labels: tuple[str, ...] | list[str]) -> str:
    """The fixed answer-format line appended after every prefix (the reference's `custom_line`)."""
    return (
        f"Answer with exactly one of these labels: {label_list(labels)}. "
        'Reply with the label only, without explanation and without a "Label:" prefix.'
    )


def follower_prompt(
    prefix: str, labels: tuple[str, ...] | list[str], text: str, *, constraint: str | None = None
) -> Chat:
    """Prefix + format constraint + the input, as one user message (no system message, no 'Label:' cue).

    `constraint` replaces the format line built from `labels`: an instruction file carries the exact
    line its instruction was validated with.
    """
    head = f"{prefix.strip()}\n\n" if prefix.strip() else ""
    line = format_constraint(labels) if constraint is None else constraint
    return [{"role": "user", "content": f"{head}{line}\n\nInput: {text}"}]


def icl_prefix(shots: list[Example]) -> str:
    """The ICL prefix: the shots in the one example format, then a line that asks for the next one."""
    return f"{format_examples(shots)}\n\n{ICL_CLOSING}"


def ape_proposal_prompt(demos: list[Example]) -> Chat:
    """APE's forward-mode template (Zhou et al. 2023, keirp/automatic_prompt_engineer), as a chat turn."""
    pairs = "\n\n".join(f"Input: {e.text}\nOutput: {e.label}" for e in demos)
    content = (
        f"I gave a friend an instruction and {len(demos)} inputs. The friend read the instruction and wrote an "
        f"output for every one of the inputs. Here are the input-output pairs:\n\n{pairs}\n\n"
        "What was the instruction? Reply with the instruction only, in one or two sentences."
    )
    return [{"role": "user", "content": content}]


def ape_variation_prompt(instruction: str) -> Chat:
    """APE's resampling template: a paraphrase of a good instruction, searched around it in round two."""
    content = (
        "Generate a variation of the following instruction while keeping the semantic meaning.\n\n"
        f"Input: {instruction}\n\nReply with the new instruction only."
    )
    return [{"role": "user", "content": content}]
