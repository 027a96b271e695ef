"""parse_label decides every F1 we publish: exhaustive cases plus hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from promptmii.parse import INVALID, extract_instruction, normalize, parse_label

LABELS = ["negative", "positive", "not hate", "hate", "Science/Tech"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("positive", "positive"),
        ("Positive", "positive"),
        ("  POSITIVE \n", "positive"),
        ('"positive"', "positive"),
        ("'positive'.", "positive"),
        ("**positive**", "positive"),
        ("positive.", "positive"),
        ("Label: positive", "positive"),
        ("label:positive", "positive"),
        ('Answer: "negative"', "negative"),
        ("positive\nBecause the reviewer liked it.", "positive"),
        ("not hate", "not hate"),
        ("hate", "hate"),
        ("Not  Hate", "not hate"),
        ("science/tech", "Science/Tech"),
        # INVALID: two labels, a label inside a sentence, nothing, a partial label
        ("positive or negative", INVALID),
        ("positive, negative", INVALID),
        ("The sentiment is positive.", INVALID),
        ("", INVALID),
        ("   \n  ", INVALID),
        ("pos", INVALID),
        ("Science", INVALID),
    ],
)
def test_parse_label_table(reply: str, expected: str) -> None:
    assert parse_label(reply, LABELS) == expected


@given(st.text())
def test_parse_label_never_raises_and_stays_in_labels(reply: str) -> None:
    assert parse_label(reply, LABELS) in [*LABELS, INVALID]


noise = st.sampled_from(["", " ", "\n", "  \t"])
wrap = st.sampled_from([("", ""), ('"', '"'), ("'", "'"), ("**", "**"), ("`", "`"), ("Label: ", ""), ("Answer: ", "")])
trail = st.sampled_from(["", ".", "!", ";"])


@given(st.sampled_from(LABELS), noise, wrap, trail, noise, st.sampled_from([str.lower, str.upper, str.title, str]))
def test_label_wrapped_in_noise_is_recovered(label, lead, wrapper, punct, tail, case) -> None:
    reply = f"{lead}{wrapper[0]}{case(label)}{wrapper[1]}{punct}{tail}"
    assert parse_label(reply, LABELS) == label


@given(st.sampled_from(LABELS), st.sampled_from(LABELS))
def test_reply_naming_two_labels_is_invalid(first: str, second: str) -> None:
    if first != second:
        assert parse_label(f"{first} or {second}", LABELS) == INVALID


def test_invalid_is_never_a_real_label() -> None:
    assert INVALID not in LABELS and normalize(INVALID) not in {normalize(label) for label in LABELS}


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Classify the review.", "Classify the review."),
        ("Instruction:\nClassify the review.", "Classify the review."),
        ("**Instructions:**\nClassify it.", "Classify it."),
        ("```\nClassify it.\n```", "Classify it."),
        ("Instruction: Classify it.", "Classify it."),
        ("## Guidelines\nClassify it.", "Classify it."),
        ("Instructions for the model are below.", "Instructions for the model are below."),
        ("<think>hmm</think>\nClassify it.", "Classify it."),
        ('"Classify it."', "Classify it."),
        ("  \n", ""),
    ],
)
def test_extract_instruction(reply: str, expected: str) -> None:
    assert extract_instruction(reply) == expected


@given(st.text())
def test_extract_instruction_never_raises(reply: str) -> None:
    assert isinstance(extract_instruction(reply), str)


EMOTICONS = [":)", ":(", "yes", "yes!"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (":)", ":)"),
        (":(", ":("),
        ("  :(\n", ":("),
        ("yes", "yes"),
        ("YES!", "yes!"),
        ("**:)**", INVALID),  # both emoticons lose everything to the formatting strip: not guessed
        ("Yes.", INVALID),  # "yes" or "yes!"? only an exact reply tells
    ],
)
def test_labels_that_differ_only_in_punctuation_stay_distinct(reply: str, expected: str) -> None:
    assert parse_label(reply, EMOTICONS) == expected


@given(
    st.lists(
        st.text(min_size=1).filter(str.strip),
        min_size=2,
        max_size=6,
        unique_by=lambda t: " ".join(t.split()).casefold(),
    )
)
def test_every_label_written_exactly_is_itself(labels: list[str]) -> None:
    for label in labels:
        assert parse_label(label, labels) == label
