"""Which meta-prompt a generator gets: built-in templates, tuned templates and their headers.

A template is text with the placeholders {labels} and {examples}. The built-ins are the files in
promptmii/templates/*.txt. A tuned template (written by `promptmii tune`) opens with a front-matter
header between two `---` lines that names the generator and follower it was tuned for, its
validation score, the calls it cost and the commit; the header is stripped before rendering, so only
the body reaches the generator and only the body's sha256 identifies it in results.

Tuned templates live in promptmii/templates/tuned/ (shipped) and $PROMPTMII_HOME/templates/ (made on
this machine). With no --template, a generator gets the tuned template whose header names its
model_id, else the default built-in. The header is the registry: there is no mapping file to drift.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from promptmii import models, prompts
from promptmii.errors import PromptMIIError

if TYPE_CHECKING:
    from promptmii.backends import Backend

log = logging.getLogger(__name__)

PLACEHOLDERS = ("{labels}", "{examples}")
FENCE = "---"
TUNED_PREFIX = "tuned/"  # shipped with the package
HOME_PREFIX = "home/"  # written by `promptmii tune` into $PROMPTMII_HOME/templates


@dataclass(frozen=True)
class Template:
    """A meta-prompt ready to render: its name, body text and (tuned templates only) header."""

    name: str
    text: str
    header: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def sha256(self) -> str:
        """What identifies the template in result rows and fingerprints: the rendered body, not the header."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def generator(self) -> str | None:
        return self.header.get("generator")


# ---------------------------------------------------------------- headers (pure)


def missing_placeholders(text: str) -> list[str]:
    """The placeholders a meta-prompt lacks; without them the generator never sees the labels or examples."""
    return [p for p in PLACEHOLDERS if p not in text]


def split_header(text: str) -> tuple[dict[str, str], str]:
    """(header, body) of a template file; a file without a leading `---` block has an empty header.

    >>> split_header("---\\ngenerator: m\\n---\\nLabels: {labels}\\n")
    ({'generator': 'm'}, 'Labels: {labels}\\n')
    >>> split_header("Labels: {labels}")
    ({}, 'Labels: {labels}')
    """
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].rstrip("\r\n") != FENCE:
        return {}, text
    for end in range(1, len(lines)):
        if lines[end].rstrip("\r\n") == FENCE:
            header = {}
            for line in lines[1:end]:
                key, sep, value = line.rstrip("\r\n").partition(":")
                if sep and key.strip():
                    header[key.strip()] = value.strip()
            return header, "".join(lines[end + 1 :])
    return {}, text  # no closing fence: not a header


def with_header(header: dict[str, object], body: str) -> str:
    """A template file: the header as `key: value` lines between `---` fences, then the body verbatim.

    Values are written on one line each, so split_header(with_header(h, b)) == (h as strings, b).
    """
    lines = [FENCE]
    for key, value in header.items():
        flat = " ".join(str(value).split())
        if not re.fullmatch(r"[A-Za-z0-9_]+", key):
            raise PromptMIIError(f"template header key '{key}' must be letters, digits and underscores")
        lines.append(f"{key}: {flat}")
    lines.append(FENCE)
    return "\n".join(lines) + "\n" + body


# ---------------------------------------------------------------- the registry


def tuned_dirs() -> list[tuple[str, Path]]:
    """(name prefix, folder) of tuned templates: this machine's first, then the shipped ones."""
    shipped = Path(str(resources.files("promptmii").joinpath("templates", "tuned")))
    return [(HOME_PREFIX, models.promptmii_home() / "templates"), (TUNED_PREFIX, shipped)]


def tuned_templates() -> list[Template]:
    """Every tuned template on this machine, home ones first, each folder in name order."""
    found = []
    for prefix, folder in tuned_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.txt")):
            header, body = split_header(path.read_text(encoding="utf-8"))
            if header.get("generator"):
                found.append(Template(prefix + path.stem, body, header))
            else:
                log.warning("%s has no 'generator' in its header: not used for auto-selection", path)
    return found


def builtin(name: str) -> Template:
    return Template(name, prompts.meta_template(name))


def named(spec: str) -> Template:
    """The template a --template value names: a built-in, tuned/NAME, home/NAME, or a template file."""
    if spec in prompts.template_names():
        return builtin(spec)
    if spec.startswith((TUNED_PREFIX, HOME_PREFIX)):
        for template in tuned_templates():
            if template.name == spec:
                return template
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            header, body = split_header(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise PromptMIIError(f"template file {spec} is not UTF-8 text") from None
        if missing_placeholders(body):
            raise PromptMIIError(
                f"template file {spec} lacks {' and '.join(missing_placeholders(body))}; a meta-prompt needs both "
                "placeholders"
            )
        return Template(spec, body, header)
    choices = [*prompts.template_names(), *(t.name for t in tuned_templates())]
    close = difflib.get_close_matches(spec, choices, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise PromptMIIError(
        f"unknown meta-prompt template '{spec}'{hint}; give a template file or one of: {', '.join(choices)}"
    )


def for_generator(model_id: str, follower: str | None = None) -> Template:
    """Auto-selection: the tuned template registered for `model_id`, else the default built-in.

    When several are registered, the one tuned with this follower wins, then the best validation score.
    """
    matches = [t for t in tuned_templates() if t.generator == model_id]
    if not matches:
        return builtin(prompts.DEFAULT_TEMPLATE)
    if follower is not None and any(t.header.get("follower") == follower for t in matches):
        matches = [t for t in matches if t.header.get("follower") == follower]
    return max(matches, key=lambda t: _float(t.header.get("validation_macro_f1")))  # first of equals


def for_backend(spec: str | None, generator: Backend, follower: str | None = None) -> Template:
    """--template SPEC if given, else the template a trained generator was trained with, else auto-selection.

    A trained generator writes good instructions only inside the meta-prompt it was trained on, so its
    run's template (the backend's `trained_template`) beats any tuned template registered for the base.
    """
    if spec:
        return named(spec)
    trained = getattr(generator, "trained_template", None)
    return named(trained) if trained else for_generator(generator.model_id, follower)


def slug(model_id: str) -> str:
    """A file name for a model id (an openai: id holds '@', ':' and '/')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-.") or "model"


def _float(value: str | None) -> float:
    try:
        return float(value) if value is not None else float("-inf")
    except ValueError:
        return float("-inf")
