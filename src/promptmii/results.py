"""The one Result record, its JSONL files, done-keys for resume, and means over rows.

results.jsonl holds one Result per (task, method, n, seed, models), appended and fsynced as soon as it
is done; samples.jsonl holds the per-example rows. A result row is written after its samples, so a
row's presence means its samples are complete: on resume, samples without a result row are dropped.
Tables, plots, bench/ and reports read these files and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import uuid
from dataclasses import MISSING, asdict, dataclass, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from promptmii.errors import PromptMIIError
from promptmii.metrics import mean

# 2 added the search fields and generator_follower, 3 added model_seconds; older rows read with defaults.
SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)


@dataclass(frozen=True)
class Result:
    task: str
    method: str  # method spec: naive, icl:20, promptmii-zero, ...
    n_shots: int  # examples requested (icl:k -> k; others: the run's n)
    n_shots_used: int  # examples actually in the prompt (ICL may drop shots to fit the context)
    seed: int
    m: int  # test examples scored
    follower: str
    generator: str | None
    macro_f1: float
    accuracy: float
    invalid_rate: float
    prompt_tokens_per_query: int  # follower tokens of the shared prefix, chat template included
    follower_prompt_tokens: int
    follower_completion_tokens: int
    generator_prompt_tokens: int
    generator_completion_tokens: int
    generator_calls: int
    follower_calls: int
    llm_calls: int
    cache_hits: int
    seconds: float
    instruction: str
    warnings: list[str]
    config: dict[str, Any]
    fingerprint: str  # hash of everything that decides the numbers; with task and method, the done-key
    decoding: str = "generate"  # how the follower answered: generate | score | score-calibrated | constrained
    token_counter: str = ""  # what counted the follower's tokens (its own tokenizer, a server endpoint, ...)
    # Test-time search (ape, gepa): its budget in follower calls, the calls it made (inside follower_calls),
    # whether it stopped because the next evaluation would have crossed the budget, and candidates scored.
    search_budget: int | None = None
    search_follower_calls: int = 0
    budget_exhausted: bool = False
    candidates: int = 0
    # The follower a trained generator was meta-trained against (None for untrained generators), so a
    # report can tell a transfer (generator trained for one follower, scored with another) from a match.
    generator_follower: str | None = None
    # Seconds the row's model calls took when they were made, each distinct call once (a search's repeats
    # are answered by its journal): what a run from an empty cache costs, where `seconds` is the wall time
    # of the run that wrote the row, short when it replayed a cache or resumed (None before schema 3).
    model_seconds: float | None = None
    # The meta-prompt that wrote the instruction (promptmii, promptmii-zero; None for the other methods):
    # its name (a built-in, tuned/NAME, home/NAME or a file) and the sha256 of the text the generator saw.
    template: str | None = None
    template_sha256: str | None = None
    run_id: str = ""
    promptmii_version: str = ""
    git_sha: str | None = None
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.task, self.method, self.fingerprint)

    @property
    def cost_seconds(self) -> float:
        """What the row costs in model time: `model_seconds`, or the wall `seconds` of rows before schema 3."""
        return self.model_seconds if self.model_seconds is not None else self.seconds


@dataclass(frozen=True)
class Sample:
    task: str
    method: str
    fingerprint: str
    index: int
    text: str
    gold: str
    reply: str
    prediction: str
    error: str | None = None
    run_id: str = ""


def fingerprint(**settings: Any) -> str:
    """Short sha256 of the settings that decide a row's numbers (models, n, m, seed, template...).

    Two runs that differ in any of them never mistake each other's rows for done.
    """
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def git_sha(directory: Path | None = None) -> str:
    """The commit checked out where the run was started (the working directory), or "unknown".

    Not the package's own directory: an installed promptmii lives in site-packages, and the checkout
    that holds the data, the benchmark script and its results is the one a reader must find.
    """
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory or Path.cwd(), capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout.strip() or "unknown") if out.returncode == 0 else "unknown"


def promptmii_version() -> str:
    """The installed package's version, from its metadata (one source of truth: pyproject.toml)."""
    try:
        return version("promptmii")
    except PackageNotFoundError:  # a source tree on sys.path that was never installed
        return "unknown"


class ResultsDir:
    """results.jsonl + samples.jsonl in one directory, appended as work finishes, resumable."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.results_path = directory / "results.jsonl"
        self.samples_path = directory / "samples.jsonl"
        directory.mkdir(parents=True, exist_ok=True)
        self._drop_orphan_samples()

    def done_keys(self) -> set[tuple]:
        return {r.key for r in read_results(self.results_path)} if self.results_path.exists() else set()

    def append(self, result: Result, samples: list[Sample]) -> None:
        append_lines(self.samples_path, [asdict(s) for s in samples])
        append_lines(self.results_path, [asdict(result)])

    def _drop_orphan_samples(self) -> None:
        """Samples of a task whose result row never landed (the process died) would double on resume."""
        if not self.samples_path.exists():
            return
        done = self.done_keys()
        lines = self.samples_path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a half-written last line
            if (row["task"], row["method"], row["fingerprint"]) in done:
                kept.append(line if line.endswith("\n") else line + "\n")
        if len(kept) != len(lines):
            atomic_write(self.samples_path, "".join(kept))


def read_results(path: Path) -> list[Result]:
    """Rows of a results.jsonl; a half-written last line (a crash mid-write) is skipped."""
    if not path.exists():
        raise PromptMIIError(f"{path}: no such results file")
    known = {f.name for f in fields(Result)}
    required = {f.name for f in fields(Result) if f.default is MISSING and f.default_factory is MISSING}
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue
            raise PromptMIIError(f"{path}: line {number} is not valid JSON") from None
        if row.get("schema_version") not in READABLE_VERSIONS:
            raise PromptMIIError(
                f"{path}: line {number} has schema_version {row.get('schema_version')}, this promptmii reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
            )
        missing = required - set(row)
        if missing:
            raise PromptMIIError(f"{path}: line {number} lacks fields {sorted(missing)}")
        rows.append(Result(**{k: v for k, v in row.items() if k in known}))
    return rows


def mean_by_method(results: list[Result]) -> list[dict[str, Any]]:
    """One row per method spec: means over tasks of the headline numbers, in first-seen order."""
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.method, []).append(r)
    rows = []
    for method, group in groups.items():
        rows.append(
            {
                "method": method,
                "tasks": len(group),
                "macro_f1": mean(r.macro_f1 for r in group),
                "accuracy": mean(r.accuracy for r in group),
                "invalid_rate": mean(r.invalid_rate for r in group),
                "prompt_tokens_per_query": mean(r.prompt_tokens_per_query for r in group),
                "llm_calls": mean(r.llm_calls for r in group),
                "seconds": mean(r.seconds for r in group),
            }
        )
    return rows


def append_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append JSON lines and fsync, so a line that was written survives a crash."""
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: Path, text: str) -> None:
    """Write via a .tmp file and os.replace, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
