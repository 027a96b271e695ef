"""Label unlabelled rows with an instruction file: streamed in chunks, resumable, failures marked, never guessed.

This is `promptmii classify` and the prediction half of `PromptMIIClassifier`. Rows are read lazily and
sent to the follower a chunk at a time, as one batch behind the same instruction prefix (so llama.cpp
keeps the prefix's KV cache and an HTTP server gets `concurrency` requests in flight), and each chunk
is appended, flushed and fsynced before the next is asked: memory stays flat whatever the file size,
and a killed run loses at most the chunk it was on. Re-running the same command counts the complete
rows already in the output (a half-written last row is cut off and redone) and carries on after them.

A call that fails after the backend's retries is written as failed, with its error and no label; a
reply that names no label is written as invalid. Neither is ever given a label. A chunk in which every
call failed means the backend is down: nothing of it is written and the run stops, to be resumed.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from promptmii import models
from promptmii.backends import Backend, Chat, get_backend
from promptmii.cache import CachedBackend
from promptmii.data import LABEL_COLUMNS, _require_columns, join_fields, text_columns
from promptmii.errors import BackendError, DataError, PromptMIIError
from promptmii.evaluate import CONTENT_FREE_INPUT, DECODING, FOLLOWER_PARAMS
from promptmii.instruction_file import InstructionFile
from promptmii.parse import INVALID, parse_label, pick_label

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("csv", "tsv", "jsonl")
SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
OUTPUT_COLUMNS = ("prediction", "invalid", "failed", "error")
# Rows per follower batch and per flush. A batch is one llama.cpp pass behind a shared prefix; for an
# HTTP server it is CHUNKS_IN_FLIGHT x concurrency, so the server stays busy while a chunk's slowest
# request finishes.
DEFAULT_CHUNK = 50
CHUNKS_IN_FLIGHT = 4


@dataclass(frozen=True)
class ClassifyConfig:
    follower: str | None = field(default=None, metadata={"help": "backend spec [the instruction file's follower]"})
    decoding: str | None = field(default=None, metadata={"help": "follower decoding [the instruction file's]"})
    text_col: str | None = field(default=None, metadata={"help": "text column(s), comma-separated for pairs [auto]"})
    output_format: str | None = field(default=None, metadata={"help": "csv | tsv | jsonl [from -o, else the input's]"})
    chunk_size: int = field(default=0, metadata={"help": "rows per follower batch and per flush [0 = auto]"})
    cache: bool = field(default=True, metadata={"help": "reuse LLM calls from $PROMPTMII_HOME/cache.sqlite"})

    def __post_init__(self) -> None:
        if self.decoding is not None and self.decoding not in DECODING:
            raise PromptMIIError(f"unknown decoding '{self.decoding}'; choose one of: {', '.join(DECODING)}")
        if self.output_format is not None and self.output_format not in OUTPUT_FORMATS:
            raise PromptMIIError(f"unknown format '{self.output_format}'; choose one of: {', '.join(OUTPUT_FORMATS)}")
        if self.chunk_size < 0:
            raise PromptMIIError(f"chunk_size must be 0 (auto) or more, got {self.chunk_size}")


@dataclass(frozen=True)
class Prediction:
    """The follower's answer to one row. `label` is None when the reply was invalid or the call failed."""

    label: str | None
    reply: str = ""
    error: str | None = None
    probabilities: dict[str, float] | None = None  # score decodings: softmax over the labels

    @property
    def invalid(self) -> bool:
        return self.label is None and self.error is None


@dataclass
class Summary:
    rows: int = 0  # rows in the output when the run ended
    resumed: int = 0  # of which were already there
    invalid: int = 0  # of the rows labelled in this run
    failed: int = 0
    first_error: str | None = None
    seconds: float = 0.0
    output: str = ""


def load_follower(spec: str, *, cache: bool) -> Backend:
    """The follower a spec names, behind the call cache when asked."""
    backend = get_backend(spec)
    return CachedBackend(backend, models.promptmii_home() / "cache.sqlite") if cache else backend


class Labeller:
    """One instruction file on one follower: chunks of texts in, Predictions out.

    The instruction's prompt prefix is identical for every text, and each chunk goes to the backend
    as one batch, exactly as `evaluate.run_follower` sends a test set, so both run at the same speed.
    """

    def __init__(self, instruction: InstructionFile, follower: Backend, decoding: str = "generate"):
        if decoding not in DECODING:
            raise PromptMIIError(f"unknown decoding '{decoding}'; choose one of: {', '.join(DECODING)}")
        self.instruction = instruction
        self.follower = follower
        self.decoding = decoding
        self.labels = instruction.labels
        self._baseline: dict[str, float] | None = None
        if decoding == "score-calibrated":  # one content-free call, shared by every row
            self._baseline = follower.label_logprobs(instruction.follower_prompt(CONTENT_FREE_INPUT), list(self.labels))

    @property
    def concurrency(self) -> int:
        """Requests the backend keeps in flight (an HTTP server's `concurrency`; 1 in-process)."""
        inner = getattr(self.follower, "backend", self.follower)  # through a CachedBackend
        return int(getattr(inner, "concurrency", 1))

    def label(self, texts: list[str]) -> list[Prediction]:
        """One batch: a Prediction per text, in order. A failed call is a Prediction with `error`, never a raise."""
        chats = [self.instruction.follower_prompt(text) for text in texts]
        if self.decoding.startswith("score"):
            return [self._scored(chat) for chat in chats]
        params = FOLLOWER_PARAMS if self.decoding == "generate" else replace(FOLLOWER_PARAMS, choices=self.labels)
        predictions = []
        for g in self.follower.generate(chats, params):
            if g.error:
                predictions.append(Prediction(None, error=g.error))
            else:
                label = parse_label(g.text, self.labels)
                predictions.append(Prediction(None if label == INVALID else label, g.text))
        return predictions

    def _scored(self, chat: Chat) -> Prediction:
        try:
            scores = self.follower.label_logprobs(chat, list(self.labels))
        except (ValueError, RuntimeError) as e:  # one input failed; a BackendError (cannot score at all) stops
            return Prediction(None, error=str(e) or type(e).__name__)
        label = pick_label(scores, self._baseline)
        if label == INVALID:  # the backend scored no label
            return Prediction(None, error="the follower returned no label scores")
        calibrated = {k: v - (self._baseline or {}).get(k, 0.0) for k, v in scores.items()}
        return Prediction(label, label, probabilities=softmax(calibrated, self.labels))


def softmax(scores: dict[str, float], labels: tuple[str, ...]) -> dict[str, float]:
    """Label log-probabilities -> probabilities over the label set (they need not sum to 1 before)."""
    top = max(scores[label] for label in labels)
    weights = {label: math.exp(scores[label] - top) for label in labels}
    total = sum(weights.values())
    return {label: weights[label] / total for label in labels}


def check_follower(instruction: InstructionFile, spec: str, follower: Backend) -> None:
    """Warn once when the follower is not the one the instruction was validated with."""
    if spec != instruction.follower:
        log.warning(
            "the instruction was validated on %s; labelling with %s (its scores may not carry over)",
            instruction.follower,
            spec,
        )
    elif instruction.follower_model_id and follower.model_id != instruction.follower_model_id:
        log.warning(
            "the instruction was validated on model %s; %s is now %s",
            instruction.follower_model_id,
            spec,
            follower.model_id,
        )


# ---------------------------------------------------------------- the command


def classify(
    instruction: InstructionFile,
    source: str,
    output: str | None,
    config: ClassifyConfig = ClassifyConfig(),
    *,
    follower: Backend | None = None,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    quiet: bool = False,
) -> Summary:
    """Label every row of `source` (a CSV/TSV/JSONL file, or '-' for stdin) into `output` (None: stdout)."""
    start = time.perf_counter()
    spec = config.follower or instruction.follower
    if follower is None:
        follower = load_follower(spec, cache=config.cache)
    check_follower(instruction, spec, follower)
    labeller = Labeller(instruction, follower, config.decoding or instruction.decoding)
    chunk = config.chunk_size or max(DEFAULT_CHUNK, CHUNKS_IN_FLIGHT * labeller.concurrency)

    reader = open_input(source, stdin)
    try:
        summary = _label_rows(reader, labeller, output, config, chunk, stdout=stdout, quiet=quiet)
    finally:
        reader.close()
    summary.seconds = round(time.perf_counter() - start, 3)
    return summary


def _label_rows(
    reader: InputRows,
    labeller: Labeller,
    output: str | None,
    config: ClassifyConfig,
    chunk: int,
    *,
    stdout: IO[str] | None,
    quiet: bool,
) -> Summary:
    text_cols = pick_text_columns(reader.columns, reader.first, config.text_col, reader.name)
    fmt = config.output_format or (SUFFIX_FORMATS.get(Path(output).suffix.lower()) if output else None) or reader.fmt
    extra = [f"p({label})" for label in labeller.labels] if labeller.decoding.startswith("score") else []
    clash = [c for c in (*OUTPUT_COLUMNS, *extra) if c in reader.columns]
    if clash:
        raise DataError(f"{reader.name}: already has a column '{clash[0]}', which classify writes; rename it")
    columns = [*reader.columns, *OUTPUT_COLUMNS, *extra]

    summary = Summary(output=output or "<stdout>")
    rows = iter(reader)
    if output:
        done, last = resume_point(Path(output), fmt, columns)
        seen, last_input = 0, None
        for row in itertools.islice(rows, done):  # skipped one by one: memory stays flat
            seen, last_input = seen + 1, row
        if seen < done:
            raise DataError(f"{output}: holds {done} rows but {reader.name} has only {seen}; use another -o")
        if done and last is not None and _texts(last_input or {}, text_cols) != _texts(last, text_cols):
            raise DataError(
                f"{output}: row {done} was labelled from another text than {reader.name} row {done}; "
                "it was written from another input (use another -o)"
            )
        summary.resumed = done
        if done:
            log.warning("%s: resuming after the %d rows already there", output, done)
        sink: IO[str] = Path(output).open("a", encoding="utf-8", newline="")
    else:
        sink = stdout or sys.stdout
    try:
        writer = RowWriter(sink, fmt, columns, header=not output or (summary.resumed == 0 and sink.tell() == 0))
        with tqdm(
            total=reader.count(), initial=summary.resumed, desc="classify", unit="row", disable=quiet, file=sys.stderr
        ) as bar:
            for rows_chunk in _chunks(rows, chunk):
                texts = [row_text(row, text_cols) for row in rows_chunk]
                predictions = labeller.label(texts)
                errors = [p.error for p in predictions]
                if all(errors):
                    raise BackendError(
                        f"the follower failed on all {len(texts)} rows from row {summary.resumed + summary.rows + 1} "
                        f"on ({errors[0]}); the rows before are saved: run the same command again to resume"
                    )
                writer.write([output_row(row, p, extra) for row, p in zip(rows_chunk, predictions, strict=True)])
                summary.rows += len(predictions)
                summary.invalid += sum(p.invalid for p in predictions)
                failures = [e for e in errors if e]
                summary.failed += len(failures)
                summary.first_error = summary.first_error or (failures[0] if failures else None)
                bar.update(len(predictions))
    finally:
        if output:
            sink.close()
    summary.rows += summary.resumed
    return summary


def output_row(row: dict[str, Any], prediction: Prediction, extra: list[str]) -> dict[str, Any]:
    out = {
        **row,
        "prediction": prediction.label,
        "invalid": prediction.invalid,
        "failed": prediction.error is not None,
        "error": " ".join(prediction.error.split()) if prediction.error else None,  # one line: a CSV row stays a line
    }
    for column in extra:
        out[column] = prediction.probabilities[column[2:-1]] if prediction.probabilities else None
    return out


def row_text(row: dict[str, Any], text_cols: list[str]) -> str:
    """The text a row is classified by: one column, or a sentence pair joined as in the corpus."""
    values = [str(row.get(c) if row.get(c) is not None else "") for c in text_cols]
    return values[0] if len(values) == 1 else join_fields(list(zip(text_cols, values, strict=True)))


def _texts(row: dict[str, Any], text_cols: list[str]) -> list[str]:
    return [str(row.get(c) if row.get(c) is not None else "") for c in text_cols]


def pick_text_columns(columns: list[str], first: dict[str, Any], text_col: str | None, source: str) -> list[str]:
    """The text column(s): as given, else the same detection as labelled files (a label column is skipped)."""
    if text_col:
        wanted = [c.strip() for c in text_col.split(",")]
        _require_columns(source, columns, wanted, "--text-col")
        return wanted
    label_col = next((c for c in columns if c.lower() in LABEL_COLUMNS), "")
    return list(text_columns([first], label=label_col or None, source=source)[0])


def _chunks(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    while True:
        chunk = list(itertools.islice(rows, size))
        if not chunk:
            return
        yield chunk


# ---------------------------------------------------------------- reading


class InputRows:
    """A CSV/TSV/JSONL source read one row at a time; its columns come from the header or the first row."""

    def __init__(self, name: str, fmt: str, lines: Iterable[str], path: Path | None, handle: IO[str] | None = None):
        self.name, self.fmt, self.path, self._handle = name, fmt, path, handle
        self._lines = _numbered(name, lines)
        if fmt == "jsonl":
            self._rows: Iterator[dict[str, Any]] = self._json_rows()
        else:
            self._rows = csv.DictReader(self._lines, dialect=csv.excel_tab if fmt == "tsv" else csv.excel)
        try:
            self.first = next(self._rows)
        except StopIteration:
            raise DataError(f"{name}: no rows to classify") from None
        self.columns = list(self.first.keys())
        if fmt != "jsonl" and None in self.first:
            raise DataError(f"{name}: row 1 has more fields than the header")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield self.first
        yield from self._rows

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def count(self) -> int | None:
        """Rows in a file (one cheap pass without the model, for the progress bar); None for stdin."""
        if self.path is None:
            return None
        with self.path.open(encoding="utf-8-sig", errors="replace", newline="") as f:
            if self.fmt == "jsonl":
                return sum(1 for line in f if line.strip())
            return sum(1 for _ in csv.reader(f, dialect=csv.excel_tab if self.fmt == "tsv" else csv.excel)) - 1

    def _json_rows(self) -> Iterator[dict[str, Any]]:
        for number, line in enumerate(self._lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{self.name}: line {number} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f'{self.name}: line {number} is not an object like {{"text": ...}}')
            yield row


def _numbered(name: str, lines: Iterable[str]) -> Iterator[str]:
    """Lines, with a decoding error turned into one line that names where it happened."""
    iterator = iter(lines)
    number = 0
    while True:
        try:
            line = next(iterator)
        except StopIteration:
            return
        except UnicodeDecodeError:
            raise DataError(f"{name}: not valid UTF-8 after line {number}; re-save the file as UTF-8") from None
        number += 1
        yield line


def open_input(source: str, stdin: IO[str] | None = None) -> InputRows:
    """Open a CSV/TSV/JSONL file, or '-' for stdin (JSONL when the first line starts with '{', else CSV)."""
    if source == "-":
        stream = stdin or sys.stdin
        first = stream.readline()
        if not first.strip():
            raise DataError("<stdin>: no rows to classify")
        fmt = "jsonl" if first.lstrip().startswith("{") else "csv"
        return InputRows("<stdin>", fmt, itertools.chain([first], stream), None)
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{source}: no such file (give a CSV/TSV/JSONL file, or - for stdin)")
    fmt = SUFFIX_FORMATS.get(path.suffix.lower(), "csv")
    handle = path.open(encoding="utf-8-sig", newline="")
    if fmt == "jsonl" and path.suffix.lower() == ".json" and handle.read(1) == "[":
        raise DataError(f"{source}: a JSON array; classify streams JSON lines (one object per line), convert it")
    handle.seek(0)
    return InputRows(source, fmt, handle, path, handle)


# ---------------------------------------------------------------- writing and resuming


class RowWriter:
    """CSV/TSV/JSONL rows appended to a stream, flushed (and fsynced for a file) after every chunk."""

    def __init__(self, sink: IO[str], fmt: str, columns: list[str], *, header: bool):
        self.sink, self.fmt, self.columns = sink, fmt, columns
        self._csv = None
        if fmt != "jsonl":
            dialect = csv.excel_tab if fmt == "tsv" else csv.excel
            self._csv = csv.DictWriter(sink, fieldnames=columns, dialect=dialect, lineterminator="\n")
            if header:
                self._csv.writeheader()
                sink.flush()

    def write(self, rows: list[dict[str, Any]]) -> None:
        if self._csv is not None:
            self._csv.writerows([{k: _cell(v) for k, v in row.items() if k in self.columns} for row in rows])
        else:
            self.sink.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self.sink.flush()
        try:
            os.fsync(self.sink.fileno())
        except (OSError, io.UnsupportedOperation, AttributeError):  # a pipe or a terminal: flushed is all we can do
            pass


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


def resume_point(path: Path, fmt: str, columns: list[str]) -> tuple[int, dict[str, Any] | None]:
    """Complete rows already in `path` and the last of them; a half-written last row is cut off (and redone)."""
    if not path.exists() or path.stat().st_size == 0:
        return 0, None
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8, so not a classify output; use another -o") from None
    if "\n" not in text:  # not even one complete line (a header cut off): start afresh
        done, last, end = 0, None, 0
    elif fmt == "jsonl":
        done, last, end = _jsonl_rows(path, text)
    else:
        done, last, end = _csv_rows(path, text, fmt, columns)
    kept = len(text[:end].encode("utf-8"))
    if kept < len(data):
        log.warning("%s: set aside a half-written last row (%d bytes); it is labelled again", path, len(data) - kept)
        with path.open("r+b") as f:
            f.truncate(kept)
    return done, last


def _jsonl_rows(path: Path, text: str) -> tuple[int, dict[str, Any] | None, int]:
    done, last, end = 0, None, 0
    lines = text.splitlines(keepends=True)
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line) if line.endswith("\n") else None
        except json.JSONDecodeError:
            row = None
        if row is None:
            if number == len(lines):
                break  # the half-written last line
            raise DataError(f"{path}: line {number} is not valid JSON, so not a classify output; use another -o")
        if not isinstance(row, dict) or not {"prediction", "failed"} <= set(row):
            raise DataError(f"{path}: line {number} is not a classify row (no prediction); use another -o")
        done, last, end = done + 1, row, end + len(line)
    return done, last, end


def _csv_rows(path: Path, text: str, fmt: str, columns: list[str]) -> tuple[int, dict[str, Any] | None, int]:
    consumed = [0]

    def lines() -> Iterator[str]:
        for line in text.splitlines(keepends=True):
            consumed[0] += len(line)
            yield line

    reader = csv.reader(lines(), dialect=csv.excel_tab if fmt == "tsv" else csv.excel, strict=True)
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        header = []
    if header != columns or not text[: consumed[0]].endswith("\n"):
        raise DataError(
            f"{path}: its columns are not the ones this run writes ({', '.join(columns)}); "
            "it was written with other settings or is not a classify output (use another -o)"
        )
    done, last, end = 0, None, consumed[0]
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error:  # a quoted field cut off mid-way
            break
        if len(record) != len(columns) or not text[: consumed[0]].endswith("\n"):
            break
        done, last, end = done + 1, dict(zip(columns, record, strict=True)), consumed[0]
    return done, last, end
