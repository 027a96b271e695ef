"""The method itself: n labelled examples -> meta-prompt -> one generator call -> an instruction."""

from __future__ import annotations

from dataclasses import dataclass, field

from promptmii import prompts
from promptmii.backends import Backend, GenParams
from promptmii.data import Example
from promptmii.errors import PromptMIIError
from promptmii.parse import extract_instruction


@dataclass(frozen=True)
class InduceConfig:
    template: str = field(
        default=prompts.DEFAULT_TEMPLATE, metadata={"help": "meta-prompt template: " + " | ".join(prompts.TEMPLATES)}
    )
    max_tokens: int = field(default=1024, metadata={"help": "generator token limit (the paper's training limit)"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy, as the paper evaluates"})
    seed: int = field(default=0, metadata={"help": "sampling seed (matters only when temperature > 0)"})

    def __post_init__(self) -> None:
        if self.template not in prompts.TEMPLATES:
            prompts.meta_template(self.template)  # raises with "did you mean"
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


def induce(
    examples: list[Example],
    labels: tuple[str, ...] | list[str],
    generator: Backend,
    config: InduceConfig = InduceConfig(),
) -> Instruction:
    """Write a task instruction from labelled examples with exactly one generator call."""
    if not examples:
        raise PromptMIIError("induce needs at least one labelled example")
    chat = prompts.meta_prompt(prompts.meta_template(config.template), examples, labels)
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
    )
