"""instruction.json: an induced instruction as a file you deploy, with what it was made and checked with.

`promptmii induce` writes it; `promptmii classify` and `PromptMIIClassifier` read it. It holds everything
the follower prompt is built from (the instruction, the label set in prompt order, the exact format
constraint), the models and settings that made it, and the evaluation table when there was one, so a
colleague or a server can reproduce the prompt byte for byte and knows what the instruction scored.
Loading checks the schema and the labels and refuses a bad file with one line.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from promptmii import prompts
from promptmii.backends import Chat
from promptmii.data import clashing_labels
from promptmii.errors import PromptMIIError
from promptmii.results import atomic_write

KIND = "promptmii-instruction"
SCHEMA_VERSION = 1
READABLE_VERSIONS = (1,)
FILE_NAME = "instruction.json"
# The evaluation table keeps the headline numbers of each scored method (the full rows are in results.jsonl).
EVALUATION_FIELDS = ("method", "macro_f1", "accuracy", "invalid_rate", "prompt_tokens_per_query", "m", "llm_calls")


class InstructionFileError(PromptMIIError):
    """An instruction.json that cannot be used (missing, not JSON, unknown schema, no labels...)."""


@dataclass(frozen=True)
class InstructionFile:
    instruction: str
    labels: tuple[str, ...]  # in the order the format constraint lists them
    format_constraint: str  # the exact answer-format line the follower saw
    follower: str  # backend spec the instruction was validated with
    generator: str  # backend spec that wrote it
    template: str
    n: int  # labelled examples shown to the generator
    seed: int
    decoding: str = "generate"  # the follower decoding it was validated with
    follower_model_id: str = ""  # the exact model files (spec names can move to other files)
    generator_model_id: str = ""
    task: str = ""
    source: str = ""  # the labelled data it was induced from
    # One row per method scored against it on held-out rows (EVALUATION_FIELDS); empty with --no-eval.
    evaluation: tuple[dict[str, Any], ...] = ()
    # With a +check method: the generator's instruction, its and Naive's macro-F1 on the shown rows, and
    # whether it was kept; when it was not, `instruction` above is Naive's and this says what was dropped.
    check: dict[str, Any] | None = None
    # The original label values when they are not strings (an sklearn y of ints), in `labels` order.
    label_values: tuple[Any, ...] | None = None
    promptmii_version: str = ""
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    schema_version: int = SCHEMA_VERSION

    def follower_prompt(self, text: str) -> Chat:
        """The follower's prompt for one input: this file's instruction and format constraint, then the input."""
        return prompts.follower_prompt(self.instruction, self.labels, text, constraint=self.format_constraint)

    def save(self, path: str | Path) -> Path:
        """Write the file (atomically); a path not ending in .json is a folder that gets `instruction.json`."""
        path = Path(path)
        if path.suffix.lower() != ".json":
            path = path / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"kind": KIND, **asdict(self)}
        atomic_write(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        return path


def evaluation_table(rows: list[Any]) -> tuple[dict[str, Any], ...]:
    """The headline numbers of each Result row, for the file's evaluation table."""
    return tuple({name: getattr(row, name) for name in EVALUATION_FIELDS} for row in rows)


def load_instruction_file(path: str | Path) -> InstructionFile:
    """Read and check an instruction.json (or a directory holding one); every problem is one line."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        raise InstructionFileError(f"{path}: no such instruction file (write one with `promptmii induce`)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InstructionFileError(f"{path}: not valid JSON ({first_words(e)}); is it an instruction.json?") from None
    if not isinstance(record, dict) or record.get("kind") != KIND:
        raise InstructionFileError(f'{path}: not a promptmii instruction file (no "kind": "{KIND}")')
    version = record.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise InstructionFileError(
            f"{path}: schema_version {version}, this promptmii reads {', '.join(map(str, READABLE_VERSIONS))} "
            "(upgrade promptmii or induce the instruction again)"
        )
    known = {f.name for f in fields(InstructionFile)}
    required = ("instruction", "labels", "format_constraint", "follower", "generator", "template", "n", "seed")
    missing = [name for name in required if name not in record]
    if missing:
        raise InstructionFileError(f"{path}: lacks {', '.join(missing)}")
    labels = record["labels"]
    if not isinstance(labels, list) or not all(isinstance(label, str) and label.strip() for label in labels):
        raise InstructionFileError(f"{path}: labels must be a list of non-empty strings, got {labels!r:.80}")
    if len(set(labels)) < 2:
        raise InstructionFileError(f"{path}: {len(set(labels))} distinct label(s); a classifier needs at least two")
    if len(set(labels)) != len(labels) or clashing_labels(labels):
        raise InstructionFileError(f"{path}: labels repeat or differ only in case or spaces: {labels}")
    for name in ("instruction", "format_constraint"):
        if not isinstance(record[name], str) or not record[name].strip():
            raise InstructionFileError(f"{path}: {name} is empty")
    for name in ("n", "seed"):
        if not isinstance(record[name], int) or isinstance(record[name], bool):
            raise InstructionFileError(f"{path}: {name} must be an integer, got {record[name]!r:.40}")
    if record.get("check") is not None and not isinstance(record["check"], dict):
        raise InstructionFileError(f"{path}: check must be an object, got {record['check']!r:.40}")
    values = record.get("label_values")
    if values is not None and (not isinstance(values, list) or len(values) != len(labels)):
        raise InstructionFileError(f"{path}: label_values must list one value per label ({len(labels)})")
    kept = {k: v for k, v in record.items() if k in known}
    kept["labels"] = tuple(labels)
    kept["evaluation"] = tuple(record.get("evaluation") or ())
    kept["label_values"] = tuple(values) if values is not None else None
    return InstructionFile(**kept)


def first_words(error: Exception) -> str:
    return str(error).splitlines()[0][:80]
