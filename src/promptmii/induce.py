"""The method itself: n labelled examples -> meta-prompt -> one generator call -> an instruction."""

from __future__ import annotations

from dataclasses import dataclass, field

from promptmii import metaprompts, prompts
from promptmii.backends import Backend, GenParams
from promptmii.data import Example
from promptmii.errors import DataError, PromptMIIError
from promptmii.parse import extract_instruction


@dataclass(frozen=True)
class InduceConfig:
    template: str | None = field(
        default=None,
        metadata={
            "help": "meta-prompt: a built-in name, tuned/NAME or a template file; None = the generator's tuned "
            f"template, else {prompts.DEFAULT_TEMPLATE}"
        },
    )
    max_tokens: int = field(default=1024, metadata={"help": "generator token limit (the paper's training limit)"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy, as the paper evaluates"})
    seed: int = field(default=0, metadata={"help": "sampling seed (matters only when temperature > 0)"})

    def __post_init__(self) -> None:
        if self.template:
            metaprompts.named(self.template)  # raises with "did you mean"
        if self.max_tokens < 1:
            raise PromptMIIError(f"max_tokens must be at least 1, got {self.max_tokens}")


@dataclass(frozen=True)
class Instruction:
    """A generated instruction and what it cost. `error` is set when the generator call failed."""

    text: str
    raw: str
    generator: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    cached: bool = False
    error: str | None = None
    template: str = ""  # the meta-prompt's name and the sha256 of its text
    template_sha256: str = ""
    n_examples: int = 0  # examples the meta-prompt showed: fewer than given when they did not fit the context


def induce(
    examples: list[Example],
    labels: tuple[str, ...] | list[str],
    generator: Backend,
    config: InduceConfig = InduceConfig(),
    *,
    template: metaprompts.Template | None = None,
) -> Instruction:
    """Write a task instruction from labelled examples with exactly one generator call.

    The meta-prompt is `template` when given (a caller that already resolved it, or a tuning
    candidate), else config.template, else a trained generator's own template, else the tuned template
    registered for the generator. When the meta-prompt and `max_tokens` exceed the generator's
    context, the longest examples are left out until it fits (`n_examples` says how many were shown);
    when not even one fits, it refuses.
    """
    if not examples:
        raise PromptMIIError("induce needs at least one labelled example")
    template = template or metaprompts.for_backend(config.template, generator)
    limit = generator.context_length - config.max_tokens

    def fits(shown: list[Example]) -> bool:
        return generator.count_tokens(prompts.meta_prompt(template.text, shown, labels)) <= limit

    shown = prompts.fit_examples(examples, fits)
    if not shown:
        raise DataError(
            f"the meta-prompt with even one example does not fit the generator's context of "
            f"{generator.context_length} tokens with {config.max_tokens} to generate; shorten the texts or "
            "lower --max-instruction-tokens"
        )
    chat = prompts.meta_prompt(template.text, shown, labels)
    params = GenParams(max_tokens=config.max_tokens, temperature=config.temperature, seed=config.seed)
    [generation] = generator.generate([chat], params)
    return Instruction(
        text=extract_instruction(generation.text),
        raw=generation.text,
        generator=generator.model_id,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        seconds=generation.seconds,
        cached=generation.cached,
        error=generation.error,
        template=template.name,
        template_sha256=template.sha256,
        n_examples=len(shown),
    )
