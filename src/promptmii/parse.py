"""Pure parsers: a generator's reply -> instruction, a follower's reply -> label or INVALID.

Every macro-F1 we publish goes through `parse_label`, so it is strict and symmetric: it forgives
only formatting (case, surrounding whitespace, quotes or markdown emphasis, trailing punctuation, a
'Label:' prefix, text after the first line) and never guesses. A reply naming two labels, or a label
inside a sentence, is INVALID. INVALID is its own outcome and is never folded into a real label (the
reference's training reward maps it to label 0 and so can score it correct by chance).
"""

from __future__ import annotations

import re

INVALID = "<INVALID>"

_PREFIX = re.compile(r"^(?:label|answer|category|class|output)\s*[:=-]\s*", re.IGNORECASE)
_WRAPPERS = "\"'`*_\u201c\u201d\u2018\u2019\u300c\u300d[]()<> \t"  # quotes (curly too), markdown, brackets
_TRAILING = ".,;:!?"
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^```[a-zA-Z]*\n(.*?)\n?```$", re.DOTALL)
# "Instruction:", "**Guidelines:**", "## Instructions" (own line) ahead of the text itself
_HEADER = re.compile(
    r"^(?:#+\s*)?(?:\*\*)?(?:instructions?|guidelines)(?:\*\*)?(?:\s*:\s*(?:\*\*)?\s*|\s*\n)", re.IGNORECASE
)


def normalize(text: str) -> str:
    """Casefold and strip the formatting a follower may wrap a label in."""
    text = text.strip()
    previous = None
    while text != previous:
        previous = text
        text = _PREFIX.sub("", text).strip(_WRAPPERS).rstrip(_TRAILING).strip(_WRAPPERS)
    return " ".join(text.split()).casefold()


def parse_label(reply: str, labels: tuple[str, ...] | list[str]) -> str:
    """The label a follower's reply names, or INVALID.

    >>> parse_label('  "Positive."', ["negative", "positive"])
    'positive'
    >>> parse_label("positive or negative", ["negative", "positive"])
    '<INVALID>'
    """
    lines = [line for line in reply.splitlines() if line.strip()]
    if not lines:
        return INVALID
    exact = {_exact(label): label for label in labels}
    forms: dict[str, list[str]] = {}
    for label in labels:
        forms.setdefault(normalize(label), []).append(label)
    # A form two labels share (":)" and ":(" both lose their punctuation) names neither: only an exact
    # reply picks one of them. An empty form (a label of punctuation only) would match any bare punctuation.
    by_form = {form: same[0] for form, same in forms.items() if len(same) == 1 and form}
    for candidate in (reply, lines[0]):
        label = exact.get(_exact(candidate)) or by_form.get(normalize(candidate))
        if label is not None:
            return label
    return INVALID


def _exact(text: str) -> str:
    """The reply as written, up to case and whitespace: what tells apart labels that differ in punctuation."""
    return " ".join(text.split()).casefold()


def extract_instruction(reply: str) -> str:
    """The instruction inside a generator's reply: drop think blocks, a code fence, an 'Instruction:' header."""
    text = _THINK.sub("", reply).strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    return strip_quotes(_HEADER.sub("", text, count=1).strip())


def strip_quotes(text: str) -> str:
    """`text` without one pair of matching quotes around all of it."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1].strip()
    return text


def pick_label(scores: dict[str, float], baseline: dict[str, float] | None = None) -> str:
    """The label with the highest log-probability, optionally calibrated (Zhao et al. 2021).

    Calibration subtracts each label's score on a content-free input ("N/A") behind the same prompt,
    which removes the follower's prior for a label (such as the 0.5B's first-label bias). Ties go
    to the label listed first, so the choice is deterministic.
    """
    if not scores:
        return INVALID
    calibrated = {label: s - (baseline or {}).get(label, 0.0) for label, s in scores.items()}
    return max(calibrated, key=lambda label: calibrated[label])
