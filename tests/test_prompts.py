"""Prompt rendering: the exact strings the generator and follower see."""

from __future__ import annotations

import pytest

from promptmii import prompts
from promptmii.data import Example
from promptmii.errors import PromptMIIError

SHOTS = [Example("I love it", "positive"), Example("Awful.", "negative")]


def test_follower_prompt_is_one_user_message_with_prefix_constraint_and_input() -> None:
    [message] = prompts.follower_prompt("Decide the sentiment.", ("negative", "positive"), "Great film")
    assert message["role"] == "user"
    assert message["content"] == (
        "Decide the sentiment.\n\n"
        "Answer with exactly one of these labels: negative, positive. "
        'Reply with the label only, without explanation and without a "Label:" prefix.\n\n'
        "Input: Great film"
    )


def test_empty_prefix_leaves_no_blank_lines_on_top() -> None:
    [message] = prompts.follower_prompt("  ", ("a", "b"), "x")
    assert message["content"].startswith("Answer with exactly one of these labels: a, b.")


def test_icl_uses_the_same_example_format_as_the_meta_prompt() -> None:
    block = "Input: I love it\nLabel: positive\n\nInput: Awful.\nLabel: negative"
    assert prompts.icl_prefix(SHOTS) == block + "\n\nNow classify the next input."
    for name in prompts.template_names():
        [message] = prompts.meta_prompt(prompts.meta_template(name), SHOTS, ("negative", "positive"))
        assert block in message["content"]
        assert "negative, positive" in message["content"]
        assert "{" not in message["content"]  # every placeholder filled


def test_labels_with_commas_are_listed_unambiguously() -> None:
    assert prompts.label_list(["yes, surely", "no"]) == "yes, surely; no"


def test_unknown_template_suggests_the_close_one() -> None:
    with pytest.raises(PromptMIIError, match="did you mean 'terse'"):
        prompts.meta_template("terce")


def test_texts_with_braces_survive_the_template() -> None:
    [message] = prompts.meta_prompt(prompts.meta_template("terse"), [Example("a {labels} b", "x")], ("x", "y"))
    assert "Input: a {labels} b" in message["content"]


def test_a_label_naming_a_placeholder_is_not_expanded() -> None:
    examples = [Example("great film", "{examples}"), Example("dull film", "{labels}")]
    [message] = prompts.meta_prompt(prompts.meta_template("terse"), examples, ("{examples}", "{labels}"))
    assert message["content"].count("Input: great film") == 1
    assert "{examples}, {labels}" in message["content"] and "Label: {examples}" in message["content"]


def test_fit_examples_drops_the_longest_first_and_keeps_the_order() -> None:
    examples = [Example("a " * n, str(n)) for n in (3, 9, 1, 7, 2)]
    words = lambda kept: sum(len(e.text.split()) for e in kept)  # noqa: E731
    assert [e.label for e in prompts.fit_examples(examples, lambda kept: words(kept) <= 13)] == ["3", "1", "7", "2"]
    assert [e.label for e in prompts.fit_examples(examples, lambda kept: words(kept) <= 6)] == ["3", "1", "2"]
    assert prompts.fit_examples(examples, lambda kept: words(kept) <= 0) == []
