"""The one Backend protocol every model sits behind, its records, and `get_backend(spec)`.

A backend is whatever turns chat prompts into text: llama.cpp here, HTTP servers and transformers
for bigger machines. Calls take batches so an adapter can reuse the shared prompt prefix (all m
queries of one instruction) or batch on a GPU. Adapters hold no pipeline logic.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from promptmii.errors import BackendError
from promptmii.models import is_training_run

# OpenMP's default spin-wait makes llama.cpp's (and torch's) 2 threads 5-40x slower whenever anything
# else uses a core (measured on 2-core machines). libgomp reads the variable once, when llama.cpp's or
# torch's library loads; every backend module is imported through this package, so this runs first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

Chat = list[dict[str, str]]  # OpenAI-style messages: [{"role": "user", "content": "..."}]


@dataclass(frozen=True)
class GenParams:
    """Decoding settings of one call. Everything here is part of the cache key."""

    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    # Keeps repeated samples at temperature > 0 distinct in the cache while replaying them on
    # re-runs (dspy's rollout_id). Not sent to the model.
    sample_index: int = 0
    # Constrained decoding: the reply must be exactly one of these strings (a grammar over the label
    # set), where the backend supports it. Empty = free generation.
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Generation:
    """One completion. `error` is set (and `text` empty) when this one prompt failed."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    cached: bool = field(default=False, compare=False)


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs from a model. `model_id` goes into every cache key and result row."""

    model_id: str
    context_length: int
    token_counter: str  # what count_tokens uses: "llamacpp", "hf", "server:/tokenize", "local:SPEC", ...

    def generate(self, prompts: list[Chat], params: GenParams) -> list[Generation]:
        """One Generation per prompt, in order. A failure on one prompt sets its `error`, never raises."""
        ...

    def label_logprobs(self, prompt: Chat, labels: list[str]) -> dict[str, float]:
        """Log-probability of each label's tokens as the reply to `prompt`."""
        ...

    def count_tokens(self, prompt: Chat) -> int:
        """Length of `prompt` with the model's own chat template and tokenizer, never a proxy."""
        ...


def choice_grammar(choices: tuple[str, ...] | list[str]) -> str:
    """A GBNF grammar (llama.cpp) whose only sentences are the given strings."""
    alternatives = " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)
    return f"root ::= {alternatives}\n"


def choice_regex(choices: tuple[str, ...] | list[str]) -> str:
    """A regular expression (SGLang, vLLM) matching exactly one of the given strings."""
    return "(" + "|".join(re.escape(c) for c in choices) + ")"


# Query parameters whose value is a credential; `api_key_env` names a variable and is not one.
_SECRET_QUERY = re.compile(r"(?i)([?&](?:api[_-]?key|apikey|key|token|access[_-]?token|secret|password|auth)=)[^&#\s]*")
_USERINFO = re.compile(r"(://)[^/@\s]+@")


def redact(spec: str) -> str:
    """A backend spec (or URL) safe to write anywhere: user:password@ and credential-like query values become ***.

    Keys belong in the environment (api_key_env=); this catches the ones that were pasted into a spec
    anyway, before a results row, a config, a log line or an error message repeats them.

    >>> redact("openai:m@https://user:sk-1@host/v1?api_key=sk-2&concurrency=4")
    'openai:m@https://***@host/v1?api_key=***&concurrency=4'
    """
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1***@", spec))


SCHEMES = ("llamacpp", "openai", "hf")
_LOADED: dict[str, Backend] = {}


def get_backend(spec: str) -> Backend:
    """Build (once per process) the backend a spec names.

    `llamacpp:qwen2.5-coder-1.5b-instruct` or `llamacpp:/path/model.gguf` (in-process llama.cpp),
    `openai:MODEL@http://127.0.0.1:8080/v1[?options]` (any OpenAI-compatible server),
    `hf:qwen2.5-coder-0.5b-instruct` or `hf:/path/to/model_dir` (transformers),
    `runs/NAME` (a trained generator from `promptmii train`, on transformers; after `promptmii export`
    also `llamacpp:runs/NAME`, the base GGUF with the exported LoRA adapter).

    The generator and follower are often the same model: sharing one instance halves memory and load
    time on a laptop.
    """
    if spec in _LOADED:
        return _LOADED[spec]
    scheme, sep, target = spec.partition(":")
    if not sep and is_training_run(Path(spec).expanduser()):  # a trained generator: transformers loads it
        scheme, sep, target = "hf", ":", spec
    if not sep or not target:
        raise BackendError(
            f"backend spec '{redact(spec)}' must look like SCHEME:MODEL, e.g. llamacpp:qwen2.5-coder-1.5b-instruct"
        )
    if scheme == "llamacpp":
        from promptmii.backends.llamacpp import LlamaCppBackend

        backend: Backend = LlamaCppBackend.from_spec(target)
    elif scheme == "openai":
        from promptmii.backends.openai import OpenAIBackend

        backend = OpenAIBackend.from_spec(target)
    elif scheme == "hf":
        from promptmii.backends.hf import HFBackend

        backend = HFBackend.from_spec(target)
    else:
        close = difflib.get_close_matches(scheme, SCHEMES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise BackendError(f"unknown backend '{scheme}'{hint}; backends are: {', '.join(SCHEMES)}")
    _LOADED[spec] = backend
    return backend
