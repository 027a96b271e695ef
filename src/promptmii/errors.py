"""Error types: every bad input becomes one readable line that names the problem and the fix.

The CLI turns any `PromptMIIError` into a single `Error: ...` line and exit code 1.
Failures of a single example are not errors: they score as INVALID and the run goes on.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def first_line(error: BaseException) -> str:
    """An exception as one line: its message's first line, or its type when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class PromptMIIError(Exception):
    """Base class for every error a user can fix by changing their input or setup."""


class DataError(PromptMIIError):
    """The labelled examples cannot be used (empty, one label, missing column, bad encoding...)."""


class BackendError(PromptMIIError):
    """A model backend cannot be built or has stopped answering (systemic: the run stops)."""


class ModelFileError(BackendError):
    """A model file is missing, partial or corrupt."""


class MissingExtraError(PromptMIIError):
    """An optional dependency is not installed; the message names the `pip install` that adds it."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module`, or fail in one line naming the extra that installs it (the core install stays lean)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise MissingExtraError(
            f"{feature} needs {top}, which is not installed: pip install 'promptmii[{extra}]'"
        ) from None
