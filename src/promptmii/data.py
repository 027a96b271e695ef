"""Labelled examples in, `Task` records out: CSV/JSONL files, corpus directories and HF datasets.

Every source ends up as the same `Task` (labels, a train side to draw the n shown examples from, a
test side to draw the m scored examples from), so the rest of the pipeline never asks where data came
from. Loading is offline first; a Hugging Face dataset goes through the real `datasets` code path and
works from a local path or the local cache.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptmii.errors import DataError, first_line, require

log = logging.getLogger(__name__)

# Column names we accept without being told. Order matters: the first match wins.
TEXT_COLUMNS = ("text", "sentence", "input", "review", "content", "tweet", "utterance", "query", "document")
LABEL_COLUMNS = ("label", "labels", "class", "category", "intent", "target", "sentiment", "aspect", "y")
# Sentence-pair datasets keep both sides, joined the way ../shared/corpus joins them.
PAIR_COLUMNS = (
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("text_a", "text_b"),
    ("sentence_a", "sentence_b"),
)
FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
SCALAR = (str, int, float, bool)  # values a label column may hold (not lists or records)
TEXT_MIN_DISTINCT = 0.5  # a text column found by statistics has at least this share of distinct values
MAX_LABELS = 1000  # a label column found by statistics has at most this many distinct values (and rows/2)


@dataclass(frozen=True)
class Example:
    text: str
    label: str


@dataclass(frozen=True)
class Task:
    """One classification task: its label set and two disjoint pools of labelled examples."""

    id: str
    labels: tuple[str, ...]
    train: tuple[Example, ...]  # the n examples shown to a generator (or as ICL shots) come from here
    test: tuple[Example, ...]  # the m scored examples come from here
    split: str = ""  # meta split in a corpus: train / validation / test ("" for a user's file)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Columns:
    """Which column(s) make the text, which the label, and what decided it."""

    text: tuple[str, ...]  # one column, or both sides of a sentence pair
    label: str
    how: str  # "<label rule>/<text rule>" (given, classlabel, name, statistics) or "llm:<model_id>"


class ColumnError(DataError):
    """The rules cannot tell the text or the label column; `kind` groups the reason in a corpus build log."""

    def __init__(self, kind: str, reason: str, source: str, columns: list[str], flag: str):
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{reason}; columns are: {', '.join(columns)} (use {flag})")
        self.kind = kind
        self.reason = reason


# ---------------------------------------------------------------- entry point


def load_tasks(
    source: str,
    *,
    split: str | None = None,
    task_ids: list[str] | None = None,
    text_col: str | None = None,
    label_col: str | None = None,
    test_size: int = 100,
    min_train: int = 1,
    seed: int = 0,
) -> list[Task]:
    """Load tasks from a corpus directory, a CSV/JSONL file or a Hugging Face dataset.

    `source` is a corpus directory (tasks.jsonl + instances/), a file, a `datasets.save_to_disk`
    directory, or `hf:NAME[:CONFIG]`. A single file or dataset is split (seeded) into `test_size`
    scored rows and the rest; `min_train` rows must remain for the shots.
    """
    path = Path(source)
    if source.startswith("hf:") or (path.is_dir() and is_saved_hf_dataset(path)):
        name = source[3:] if source.startswith("hf:") else source
        return [
            load_hf_task(
                name, text_col=text_col, label_col=label_col, test_size=test_size, min_train=min_train, seed=seed
            )
        ]
    if path.is_dir():
        return load_corpus(path, split=split, task_ids=task_ids)
    if path.suffix.lower() in FILE_SUFFIXES or path.exists():
        return [
            load_file_task(
                path, text_col=text_col, label_col=label_col, test_size=test_size, min_train=min_train, seed=seed
            )
        ]
    raise DataError(f"{source}: no such file or directory (give a CSV/JSONL file, a corpus directory or hf:NAME)")


# ---------------------------------------------------------------- corpus directories


def load_corpus(root: Path, *, split: str | None = None, task_ids: list[str] | None = None) -> list[Task]:
    """Read a corpus in the format of ../shared/corpus: tasks.jsonl plus instances/<id>.{train,test}.jsonl."""
    index = root / "tasks.jsonl"
    if not index.is_file():
        raise DataError(f"{root}: not a corpus directory (no tasks.jsonl) and not a dataset file")
    records = _json_lines(index)
    if split:
        splits = sorted({r.get("split", "") for r in records})
        if split not in splits:
            raise DataError(f"{root}: no tasks in split '{split}'; splits are: {', '.join(splits)}")
        records = [r for r in records if r.get("split") == split]
    if task_ids:
        known = {r["id"] for r in records}
        missing = [t for t in task_ids if t not in known]
        if missing:
            hint = _did_you_mean(missing[0], known)
            raise DataError(f"{root}: unknown task '{missing[0]}'{hint}")
        records = [r for r in records if r["id"] in set(task_ids)]
    tasks = []
    for record in records:
        sides = {}
        for side in ("train", "test"):
            file = root / "instances" / f"{record['id']}.{side}.jsonl"
            if not file.is_file():
                raise DataError(f"{file}: missing instances file for task '{record['id']}'")
            rows = _json_lines(file)
            sides[side] = tuple(
                Example(str(r["text"]), label_text(r["label"], source=str(file), row=i))
                for i, r in enumerate(rows, start=1)
            )
        labels = tuple(label_text(label, source=str(index), row=0) for label in record["labels"])
        source = f"{root.name}/{record['id']}"
        sides["train"] = drop_test_texts(sides["train"], sides["test"], source=source)
        validate_examples(sides["train"] + sides["test"], source=source, labels=labels)
        meta = {k: v for k, v in record.items() if k not in ("id", "labels", "split")}
        tasks.append(Task(record["id"], labels, sides["train"], sides["test"], record.get("split", ""), meta))
    return tasks


# ---------------------------------------------------------------- single files


def load_file_task(
    path: Path,
    *,
    text_col: str | None = None,
    label_col: str | None = None,
    test_size: int = 100,
    min_train: int = 1,
    seed: int = 0,
) -> Task:
    """Load one CSV/TSV/JSONL file as a task, split (seeded) into shown rows and `test_size` scored rows."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    rows = _parse_rows(path, text)
    if not rows:
        raise DataError(f"{path}: no data rows (only a header?)")
    examples = rows_to_examples(rows, source=str(path), text_col=text_col, label_col=label_col)
    return split_task(path.stem, examples, source=str(path), test_size=test_size, min_train=min_train, seed=seed)


def _parse_rows(path: Path, text: str) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        stripped = text.lstrip()
        if suffix == ".json" and stripped.startswith("["):
            try:
                rows = json.loads(stripped)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg})") from None
        else:
            rows = _json_lines(path, text)
        if not all(isinstance(r, dict) for r in rows):
            raise DataError(f'{path}: every JSON line must be an object like {{"text": ..., "label": ...}}')
        return rows
    return _csv_rows(path, text, csv.excel_tab if suffix == ".tsv" else csv.excel)


def _json_lines(path: Path, text: str | None = None) -> list[Any]:
    """The values of a JSONL file, or one line that names the first line that is not JSON."""
    rows = []
    for number, line in enumerate((_read_text(path) if text is None else text).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {number} is not valid JSON ({e.msg})") from None
    return rows


def _csv_rows(path: Path, text: str, dialect: type[csv.Dialect]) -> list[dict[str, Any]]:
    """CSV rows as dicts; an unclosed quote or a row with the wrong number of fields is one clear line.

    Python's csv reader, left lenient, lets an unclosed quote swallow the rest of the file into one
    field; strict mode stops at it, and we say where.
    """
    reader = csv.reader(io.StringIO(text), dialect=dialect, strict=True)
    try:
        header = next(reader, None)
        rows = []
        for record in reader:
            if not record:
                continue
            if len(record) != len(header or []):
                raise DataError(
                    f"{path}: line {reader.line_num} has {len(record)} fields, the header has {len(header or [])} "
                    "(a stray separator or quote?)"
                )
            rows.append(dict(zip(header or [], record, strict=True)))
    except csv.Error as e:
        raise DataError(
            f'{path}: bad CSV at line {reader.line_num} ({e}); an unclosed quote " swallows the lines after it'
        ) from None
    return rows


def rows_to_examples(
    rows: list[dict[str, Any]], *, source: str, text_col: str | None = None, label_col: str | None = None
) -> list[Example]:
    """Pick the text column(s) and the label column, then build Examples (pairs joined into one text)."""
    columns = detect_columns(rows, text=text_col.split(",") if text_col else None, label=label_col, source=source)
    text_cols, label_col = list(columns.text), columns.label
    examples = []
    for number, row in enumerate(rows, start=1):
        label = label_text(row.get(label_col), source=source, row=number, column=label_col)
        values = [str(row.get(c) or "") for c in text_cols]
        text = values[0] if len(values) == 1 else join_fields(list(zip(text_cols, values, strict=True)))
        if not text.strip():
            raise DataError(f"{source}: row {number} has an empty text in column '{', '.join(text_cols)}'")
        examples.append(Example(text, label))
    return examples


def label_text(value: Any, *, source: str, row: int, column: str = "label") -> str:
    """A label as the text the follower must answer with; one rule for every JSON type.

    Labels are strings. A JSON number or boolean becomes its JSON text, with integral floats written
    as integers, so 1, 1.0 and "1" are one label "1" and true and "true" are one label "true". Lists,
    objects and empty values are refused.
    """
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        value = str(int(value))
    elif isinstance(value, int | float):
        value = json.dumps(value)
    elif value is not None and not isinstance(value, str):
        raise DataError(
            f"{source}: row {row} has a {type(value).__name__} as its label in column '{column}'; "
            "a label is one string or number"
        )
    if value is None or value.strip() == "":
        raise DataError(f"{source}: row {row} has an empty label in column '{column}'")
    return value.strip()


def join_fields(fields: list[tuple[str, str]]) -> str:
    """Join a sentence pair as the corpus does: 'Sentence 1: ...' newline 'Sentence 2: ...'."""
    return "\n".join(f"{_pretty_field(name)}: {value}" for name, value in fields)


def _pretty_field(name: str) -> str:
    words = re.sub(r"(\d+)$", r" \1", name.replace("_", " ")).split()
    return " ".join(w.capitalize() for w in words)


# ---------------------------------------------------------------- columns


def detect_columns(
    rows: list[dict[str, Any]],
    *,
    class_labels: dict[str, tuple[str, ...]] | None = None,
    max_labels: int = MAX_LABELS,
    text: list[str] | None = None,
    label: str | None = None,
    source: str = "",
) -> Columns:
    """Text and label columns by rules: what the user named, a ClassLabel feature, common names, statistics.

    The one detector for user files, Hugging Face datasets and `corpus build`. Statistics: the text is
    the string column with mostly distinct values and the longest mean length; the label the one
    column with 2..min(max_labels, rows/2) distinct values. Raises ColumnError when the rules cannot
    decide (corpus build may then ask an LLM); a named column that does not exist is a DataError.
    """
    columns = list(rows[0])
    class_labels = class_labels or {}
    _require_columns(source, columns, [label] if label else [], "--label-col")
    _require_columns(source, columns, text or [], "--text-col")
    label_rule = "given"
    if label is None:
        label = _by_name([c for c in columns if c in class_labels], LABEL_COLUMNS)
        label = label or next((c for c in columns if c in class_labels), None)
        label_rule = "classlabel"
    if label is None:
        label, label_rule = _by_name([c for c in columns if all_of(rows, c, SCALAR)], LABEL_COLUMNS), "name"
    found, text_rule = (tuple(text), "given") if text else text_columns(rows, label=label, source=source)
    if label is None:
        label, label_rule = _label_by_statistics(rows, columns, found, max_labels, source), "statistics"
    return Columns(found, label, f"{label_rule}/{text_rule}")


def text_columns(
    rows: list[dict[str, Any]], *, label: str | None = None, source: str = ""
) -> tuple[tuple[str, ...], str]:
    """The text column(s) and the rule that found them (name, else statistics); also for unlabelled files."""
    columns = list(rows[0])
    strings = [c for c in columns if all_of(rows, c, str)]
    found = _text_by_name(strings, label)
    if found is not None:
        return found, "name"
    return _text_by_statistics(rows, columns, strings, label, source), "statistics"


def _text_by_name(strings: list[str], label: str | None) -> tuple[str, ...] | None:
    candidates = [c for c in strings if c != label]
    for first, second in PAIR_COLUMNS:
        pair = _by_name(candidates, (first,)), _by_name(candidates, (second,))
        if pair[0] and pair[1]:
            return pair
    name = _by_name(candidates, TEXT_COLUMNS)
    return (name,) if name else None


def _text_by_statistics(
    rows: list[dict], columns: list[str], strings: list[str], label: str | None, source: str
) -> tuple[str]:
    candidates = [c for c in strings if c != label and _distinct(rows, c) >= TEXT_MIN_DISTINCT * len(rows)]
    if not candidates:
        others = ", ".join(c for c in columns if c != label)
        raise ColumnError("no text column", f"no text column among: {others}", source, columns, "--text-col")
    return (max(candidates, key=lambda c: sum(len(str(r.get(c) or "")) for r in rows) / len(rows)),)


def _label_by_statistics(
    rows: list[dict], columns: list[str], text: tuple[str, ...], max_labels: int, source: str
) -> str:
    limit = min(max_labels, len(rows) // 2)
    scalars = [c for c in columns if c not in text and all_of(rows, c, SCALAR)]
    candidates = [c for c in scalars if 2 <= _distinct(rows, c) <= limit]
    if len(candidates) > 1:
        reason = f"several possible label columns: {', '.join(candidates)}"
        raise ColumnError("ambiguous columns", reason, source, columns, "--label-col")
    if not candidates:
        others = ", ".join(c for c in columns if c not in text)
        reason = f"no label column among: {others} (none has 2 to {limit} distinct values)"
        raise ColumnError("no label column", reason, source, columns, "--label-col")
    return candidates[0]


def _require_columns(source: str, columns: list[str], wanted: list[str], flag: str) -> None:
    for column in wanted:
        if column not in columns:
            hint = _did_you_mean(column, columns)
            raise DataError(
                f"{source}: column '{column}' not found{hint}; columns are: {', '.join(columns)} (use {flag})"
            )


def _by_name(columns: list[str], names: Iterable[str]) -> str | None:
    lowered = {c.lower(): c for c in columns}
    return next((lowered[n] for n in names if n in lowered), None)


def all_of(rows: list[dict], column: str, types: type | tuple[type, ...]) -> bool:
    """Every value of `column` that is present has one of `types` (and at least one is present)."""
    values = [r.get(column) for r in rows if r.get(column) is not None]
    return bool(values) and all(isinstance(v, types) for v in values)


def _distinct(rows: list[dict], column: str) -> int:
    return len({str(r.get(column)) for r in rows})


# ---------------------------------------------------------------- Hugging Face datasets


def load_hf_task(
    name: str,
    *,
    text_col: str | None = None,
    label_col: str | None = None,
    test_size: int = 100,
    min_train: int = 1,
    seed: int = 0,
) -> Task:
    """Load a Hugging Face dataset (hub name, local path or `save_to_disk` directory) as one task.

    `name` may carry a config as `NAME:CONFIG`. Offline this works from a local directory or the local
    cache (set HF_DATASETS_OFFLINE=1). ClassLabel ids become their names, in ClassLabel order.
    """
    datasets = require("datasets", "hub", "loading a Hugging Face dataset")  # heavy: only when asked for

    path = Path(name)
    try:
        if path.is_dir() and is_saved_hf_dataset(path):
            loaded = datasets.load_from_disk(str(path))
        else:
            dataset_name, _, config = name.partition(":") if not path.exists() else (name, "", "")
            loaded = datasets.load_dataset(dataset_name, config or None)
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        raise DataError(f"{name}: cannot load dataset ({first_line(e)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        split_name = "train" if "train" in loaded else next(iter(loaded))
        loaded = loaded[split_name]
    rows = list(loaded)
    if not rows:
        raise DataError(f"{name}: the dataset has no rows")
    class_labels = {c: tuple(f.names) for c, f in loaded.features.items() if isinstance(f, datasets.ClassLabel)}
    label_col = detect_columns(
        rows, class_labels=class_labels, text=text_col.split(",") if text_col else None, label=label_col, source=name
    ).label
    feature = loaded.features.get(label_col)
    if isinstance(feature, datasets.ClassLabel):
        unlabelled = [i for i, r in enumerate(rows, start=1) if r[label_col] is None or r[label_col] < 0]
        if unlabelled:
            raise DataError(
                f"{name}: {len(unlabelled)} of {len(rows)} rows are unlabelled (ClassLabel -1, first: row "
                f"{unlabelled[0]}), as in a benchmark's hidden test split; use a labelled split or drop them"
            )
        rows = [{**r, label_col: feature.int2str(r[label_col])} for r in rows]
    examples = rows_to_examples(rows, source=name, text_col=text_col, label_col=label_col)
    task_id = path.name if path.exists() else name.replace("/", "__").replace(":", "__")
    labels = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    return split_task(
        task_id, examples, source=name, test_size=test_size, min_train=min_train, seed=seed, labels=labels
    )


def is_saved_hf_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


# ---------------------------------------------------------------- splitting, sampling, validation


def split_task(
    task_id: str,
    examples: list[Example],
    *,
    source: str,
    test_size: int,
    min_train: int,
    seed: int,
    labels: tuple[str, ...] | None = None,
) -> Task:
    """Seeded split of one pool of rows into a train side and `test_size` held-out rows.

    A text that occurs more than once is kept once (its first row), so no text is both shown and scored.
    """
    examples = unique_texts(examples, source=source)
    if len(examples) < test_size + min_train:
        raise DataError(
            f"{source}: {len(examples)} rows, but n={min_train} shown examples + m={test_size} held-out rows "
            f"need {test_size + min_train} (lower --n or --m)"
        )
    labels = labels or tuple(sorted({e.label for e in examples}))
    validate_examples(examples, source=source, labels=labels)
    shuffled = list(examples)
    random.Random(f"{seed}/{task_id}/split").shuffle(shuffled)
    return Task(task_id, labels, tuple(shuffled[test_size:]), tuple(shuffled[:test_size]), meta={"source": source})


def unique_texts(examples: list[Example], *, source: str) -> list[Example]:
    """The first row of each distinct text; a warning counts the repeats dropped."""
    seen: dict[str, str] = {}
    kept = []
    for e in examples:
        if e.text not in seen:
            seen[e.text] = e.label
            kept.append(e)
    dropped = len(examples) - len(kept)
    if dropped:
        conflicting = sum(seen[e.text] != e.label for e in examples)
        log.warning(
            "%s: dropped %d rows whose text repeats an earlier row (%d of them with another label), so no text is "
            "both shown and scored",
            source,
            dropped,
            conflicting,
        )
    return kept


def drop_test_texts(train: tuple[Example, ...], test: tuple[Example, ...], *, source: str) -> tuple[Example, ...]:
    """The train side without rows whose text is also a test row (a shot must never be a scored row)."""
    scored = {e.text for e in test}
    kept = tuple(e for e in train if e.text not in scored)
    if len(kept) != len(train):
        log.warning(
            "%s: dropped %d train rows whose text is also a test row, so no text is both shown and scored",
            source,
            len(train) - len(kept),
        )
    return kept


def task_hash(task: Task) -> str:
    """sha256 (16 hex) of a task's labels and its rows, both sides, in order: changed data, new hash."""
    payload = [list(task.labels), [[e.text, e.label] for e in task.train], [[e.text, e.label] for e in task.test]]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:16]


def clashing_labels(labels: tuple[str, ...] | list[str]) -> list[str]:
    """Labels that differ only in case or spaces: a follower's reply could not tell them apart."""
    folded = Counter(label.strip().casefold() for label in labels)
    return [label for label in labels if folded[label.strip().casefold()] > 1]


def validate_examples(examples: tuple[Example, ...] | list[Example], *, source: str, labels: tuple[str, ...]) -> None:
    """Reject what no classifier can learn from: no rows, one label, labels that collide, unknown labels."""
    if not examples:
        raise DataError(f"{source}: no examples")
    counts = Counter(e.label for e in examples)
    if len(counts) < 2:
        only = next(iter(counts))
        raise DataError(f"{source}: only one label ('{only}') in {len(examples)} rows; a classifier needs at least two")
    clash = clashing_labels(labels)
    if clash:
        raise DataError(f"{source}: labels {clash} differ only in case or spaces; replies could not tell them apart")
    unknown = sorted(set(counts) - set(labels))
    if unknown:
        raise DataError(f"{source}: labels {unknown[:5]} are not in the task's label list {list(labels)}")


def draw(task: Task, n: int, m: int, seed: int) -> tuple[list[Example], list[Example]]:
    """The n shown examples and the m scored examples, seeded per task.

    Shots are prefixes of one seeded shuffle of the train side, so n=20 is a subset of n=100 (the
    reference's nested subsets, millix19/promptmii `baseline_eval_v3_modular.py`) and icl:20 sees the same rows as promptmii n=20.
    The test side is capped at its size: callers record the m actually used.
    """
    if n > len(task.train):
        raise DataError(
            f"{task.id}: n={n} shown examples requested but the train side has {len(task.train)} (lower --n)"
        )
    train = list(task.train)
    random.Random(f"{seed}/{task.id}/shots").shuffle(train)
    test = list(task.test)
    random.Random(f"{seed}/{task.id}/test").shuffle(test)
    return train[:n], test[:m]


# ---------------------------------------------------------------- helpers


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); re-save the file as UTF-8"
        ) from None


def _did_you_mean(name: str, choices: Any) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
