"""The one Result record, its JSONL files, done-keys for resume, and means over rows.

results.jsonl holds one Result per (task, method, n, seed, models, data), appended and fsynced as soon
as it is done; samples.jsonl holds the per-example rows. A result row is written after its samples, so
a row's presence means its samples are complete: on resume, samples without a result row are dropped.
Tables, plots, bench/ and reports read these files and nothing else.

A row is `done` or `failed`. A failure is never a result: a failed generator call, an empty
instruction or a failed follower call makes a failed row, which keeps the error, is shown as failed,
is left out of every mean and is tried again by the next run (only done rows are done-keys).

One process writes a directory at a time (`ResultsDir.lock`, an fcntl lock naming its pid). A line
cut short by a crash or a full disk is moved aside to results.jsonl.corrupt-<time> with a warning,
and its row is computed again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, fields, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from promptmii.errors import PromptMIIError
from promptmii.metrics import mean

log = logging.getLogger(__name__)

# 2 added the search fields and generator_follower, 3 added model_seconds, 4 added status, error and
# data_hash (a row may be failed; the fingerprint covers the task's data). Older rows read with defaults,
# their status derived from the warnings they carry (LEGACY_FAILURES).
SCHEMA_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
DONE, FAILED = "done", "failed"
# Before schema 4 a failure was written as a done row with one of these warnings; reading such a row
# marks it failed, so means leave it out and the next run computes it again.
LEGACY_FAILURES = ("generator call failed", "follower calls failed", "the generator wrote an empty instruction")
LOCK_FILE = ".lock"


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
    # method+check (promptmii.check): the induced instruction, its and Naive's macro-F1 on the n shown examples,
    # and whether it was kept; `instruction` holds the prefix the follower was given (Naive's if it was not).
    check: dict[str, Any] | None = None
    # done | failed. A failed row's numbers are not results: `error` says why, means leave it out and
    # the next run computes it again (schema 4; older rows get theirs from their warnings when read).
    status: str = DONE
    error: str | None = None
    # sha256 (16 hex) of the task's labels and rows, also inside `fingerprint` (None before schema 4).
    data_hash: str | None = None
    run_id: str = ""
    promptmii_version: str = ""
    git_sha: str | None = None
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.task, self.method, self.fingerprint)

    @property
    def failed(self) -> bool:
        return self.status != DONE

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
    """results.jsonl + samples.jsonl in one directory, appended as work finishes, resumable.

    Reading needs nothing; writing happens inside `with out.lock():`, which holds the directory
    against a second writer and first repairs what a crash left (a cut-off last line, orphan samples).
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.results_path = directory / "results.jsonl"
        self.samples_path = directory / "samples.jsonl"
        directory.mkdir(parents=True, exist_ok=True)
        self._locked = False

    @contextlib.contextmanager
    def lock(self) -> Iterator[ResultsDir]:
        """Hold the directory for writing (fcntl lock on .lock); a second writer gets a one-line error."""
        with (self.directory / LOCK_FILE).open("a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                pid = handle.read().strip() or "unknown"
                raise PromptMIIError(
                    f"{self.directory} is being written by another promptmii process (pid {pid}); "
                    "wait for it to finish or give another output directory"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            self._locked = True
            try:
                set_aside_partial_line(self.results_path)
                self._drop_orphan_samples()  # also drops a cut-off samples line: its row never landed
                yield self
            finally:
                self._locked = False
                fcntl.flock(handle, fcntl.LOCK_UN)

    def rows(self) -> list[Result]:
        return read_results(self.results_path) if self.results_path.exists() else []

    def done_keys(self) -> set[tuple]:
        """Keys of the done rows: failed rows are not done, so a run computes them again."""
        return {r.key for r in self.rows() if not r.failed}

    def samples_of(self, keys: set[tuple]) -> dict[tuple, list[tuple[str, str]]]:
        """(text, gold) of the scored rows of each key, in order (checks rows written before data hashes)."""
        found: dict[tuple, list[tuple[int, str, str]]] = {}
        if keys and self.samples_path.exists():
            for row in read_jsonl(self.samples_path):
                key = (row.get("task"), row.get("method"), row.get("fingerprint"))
                if key in keys:
                    found.setdefault(key, []).append((row["index"], row["text"], row["gold"]))
        return {key: [(text, gold) for _, text, gold in sorted(rows)] for key, rows in found.items()}

    def append(self, result: Result, samples: list[Sample]) -> None:
        if not self._locked:
            raise PromptMIIError(f"{self.directory}: rows are written only inside `with results_dir.lock():`")
        try:
            append_lines(self.samples_path, [asdict(s) for s in samples])
            append_lines(self.results_path, [asdict(result)])
        except OSError as e:  # a full disk, a lost mount: what is written stays, the next run repairs and resumes
            raise PromptMIIError(
                f"{self.directory}: cannot write results ({e.strerror or e}); free space or fix the disk, then run "
                "the same command again to resume"
            ) from None

    def _drop_orphan_samples(self) -> None:
        """Samples of a task whose result row never landed (the process died) would double on resume."""
        if not self.samples_path.exists():
            return
        written = {r.key for r in self.rows()}
        lines = self.samples_path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (row["task"], row["method"], row["fingerprint"]) in written:
                kept.append(line if line.endswith("\n") else line + "\n")
        if len(kept) != len(lines):
            atomic_write(self.samples_path, "".join(kept))


def set_aside_partial_line(path: Path) -> Path | None:
    """Move a last line cut short (no newline, or not JSON) to PATH.corrupt-<time>, warn, keep the rest.

    A kill or a full disk mid-write leaves such a line; appending after it would glue the next row to
    it. Returns where the line went, or None when the file ends cleanly.
    """
    data = path.read_bytes() if path.exists() else b""
    if not data:
        return None
    if data.endswith(b"\n"):
        head, sep, last = data[:-1].rpartition(b"\n")
        if not last.strip():
            return None
        try:
            json.loads(last)
            return None
        except ValueError:  # a whole line of garbage (a full disk can leave zeros)
            pass
    else:
        head, sep, last = data.rpartition(b"\n")
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    aside.write_bytes(last)
    atomic_write_bytes(path, head + sep)
    log.warning(
        "%s: its last line was cut short (a crash or a full disk); moved it to %s, its row is redone", path, aside
    )
    return aside


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file; a cut-off last line is skipped with a warning, a bad line elsewhere is an error."""
    return [row for _, row in _numbered_rows(path)]


def _numbered_rows(path: Path) -> list[tuple[int, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError:
            if number == len(lines):
                log.warning("%s: its last line is cut short (a crash mid-write?); reading without it", path)
                continue
            raise PromptMIIError(f"{path}: line {number} is not valid JSON") from None
    return rows


def read_results(path: Path) -> list[Result]:
    """Rows of a results.jsonl; a cut-off last line (a crash mid-write) is skipped with a warning."""
    if not path.exists():
        raise PromptMIIError(f"{path}: no such results file")
    known = {f.name for f in fields(Result)}
    required = {f.name for f in fields(Result) if f.default is MISSING and f.default_factory is MISSING}
    rows = []
    for number, row in _numbered_rows(path):
        if not isinstance(row, dict) or row.get("schema_version") not in READABLE_VERSIONS:
            version = row.get("schema_version") if isinstance(row, dict) else None
            raise PromptMIIError(
                f"{path}: line {number} has schema_version {version}, this promptmii reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
            )
        missing = required - set(row)
        if missing:
            raise PromptMIIError(f"{path}: line {number} lacks fields {sorted(missing)}")
        rows.append(legacy_status(Result(**{k: v for k, v in row.items() if k in known})))
    return rows


def setting(row: Result) -> tuple:
    """What makes two rows the same measurement, whatever their fingerprints (a redo since schema 4 hashes the
    data, the failed row before it did not): task, method, shots, m, seed and models."""
    return (row.task, row.method, row.n_shots, row.m, row.seed, row.follower, row.generator)


def open_failures(rows: list[Result]) -> list[Result]:
    """Failed rows that no later row of the same setting redid: what still has to be computed again."""
    latest = {setting(row): row for row in rows}
    return [row for row in latest.values() if row.failed]


def read_done(path: Path) -> list[Result]:
    """The done rows of a results.jsonl: what summaries average (a failed row's numbers are not results)."""
    return [r for r in read_results(path) if not r.failed]


def legacy_status(result: Result) -> Result:
    """A row from before schema 4 that hides a failure in its warnings, marked failed with that warning."""
    if result.schema_version >= 4:
        return result
    problem = next((w for w in result.warnings if any(f in w for f in LEGACY_FAILURES)), None)
    if problem is None and result.generator is not None and not result.instruction.strip():
        problem = "the generator wrote an empty instruction"
    return replace(result, status=FAILED, error=problem) if problem else result


MEAN_FIELDS = ("macro_f1", "accuracy", "invalid_rate", "prompt_tokens_per_query", "llm_calls", "seconds")


def mean_by_method(results: list[Result]) -> list[dict[str, Any]]:
    """One row per method spec: means over tasks of the headline numbers, in first-seen order.

    Failed rows are counted (`failed`) but left out of the means: their numbers are not results. A
    method whose rows all failed has no means (None).
    """
    groups: dict[str, list[Result]] = {}
    failed: dict[str, int] = {}
    for r in results:
        groups.setdefault(r.method, [])
        failed[r.method] = failed.get(r.method, 0) + r.failed
        if not r.failed:
            groups[r.method].append(r)
    return [
        {
            "method": method,
            "tasks": len(group),
            "failed": failed[method],
            **{f: mean(getattr(r, f) for r in group) if group else None for f in MEAN_FIELDS},
        }
        for method, group in groups.items()
    ]


def append_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append JSON lines and fsync, so a line that was written survives a crash."""
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: Path, text: str) -> None:
    """Write via a temp file and os.replace, so readers never see half a file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """A uniquely named temp file beside `path`, fsynced, then os.replace: whole file or old file, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
