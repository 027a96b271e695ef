"""Build a classification corpus (tasks.jsonl + instances/) from hub or local datasets.

The paper meta-trains on ~3,800 hub datasets gathered by the reference's `prompt_gen_preprocess.py`
(millix19/promptmii). We keep its discovery, streaming sample and filters, and fix what it gets wrong:
no hard-coded resume slice; columns found by rules first and by an LLM only when the rules cannot
decide; both sides of a sentence pair; labels in a stable order; texts de-duplicated so the two sides
of a task never share one; and the train/validation/test split made by dataset *family* (every config
of a dataset, and datasets sharing any text) instead of by config, so no meta-test text is seen in
meta-training. Each (dataset, config) is decided once and appended to out/build_log.jsonl at once, so a
killed build resumes where it stopped; tasks.jsonl is written last, so its presence means a build ended.
A load that fails for a reason that may pass (no network, a timeout, the hub answering 5xx or 429) or
a failed labeler call is not a decision: it is left out of the log and tried again by the next run.

Local sources, and what a "config" is there:
- a data file (.parquet .csv .tsv .jsonl .json) or a `save_to_disk` directory is one dataset;
- a data file's name up to its first dot names the dataset and the rest its config: `tweets.csv` is
  dataset `tweets`, `tweets.hate.csv` and `tweets.irony.csv` are its configs `hate` and `irony`;
- in a directory of several, a plain sub-directory `NAME/` is one dataset whose configs are the data
  files and saved datasets inside it, each named by its stem.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from itertools import chain, islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from promptmii.backends import Backend, Chat, GenParams
from promptmii.data import (
    SCALAR,
    ColumnError,
    Columns,
    Example,
    all_of,
    clashing_labels,
    detect_columns,
    is_saved_hf_dataset,
    join_fields,
)
from promptmii.errors import DataError, first_line, require
from promptmii.results import append_lines, atomic_write

log = logging.getLogger(__name__)

SHUFFLE_BUFFER = 5000  # the reference's streaming shuffle buffer
# Rows drawn beyond train_size + test_size, so a few duplicates or empty texts don't sink a dataset.
ROW_MARGIN = 0.2
LABELER_ROWS = 3  # example rows shown to the LLM labeler (the reference's 3)
LABELER_VALUE_CHARS = 200  # each value in those rows cut to this length (the reference's 200)
LABELER_PARAMS = GenParams(max_tokens=64, temperature=0.0)
MAX_ID_CHARS = 120  # task ids become file names; longer ones keep a hash suffix
DATA_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json"}
SPLITS = ("train", "validation", "test")
LOG_FILE = "build_log.jsonl"
SETTINGS_FILE = "build_config.json"
# Settings that shape a task's rows: a resumed build must use the same ones, or the corpus mixes two.
RESUME_FIELDS = ("train_size", "test_size", "min_labels", "max_labels", "max_text_chars", "seed")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


@dataclass(frozen=True)
class BuildConfig:
    """Corpus build settings, saved next to the corpus; RESUME_FIELDS must match when a build resumes."""

    train_size: int = field(default=1000, metadata={"help": "rows on each task's train side (the reference's 1000)"})
    test_size: int = field(default=200, metadata={"help": "rows on each task's test side (the reference's 200)"})
    min_labels: int = field(default=2, metadata={"help": "skip a dataset with fewer distinct labels in its sample"})
    max_labels: int = field(
        default=50, metadata={"help": "skip a dataset with more labels (also when labels exceed half the rows)"}
    )
    max_configs: int = field(default=10, metadata={"help": "configs tried per dataset (the reference keeps 10)"})
    hub_limit: int = field(
        default=7000, metadata={"help": "datasets listed from the hub, most trending first (the reference's 7000)"}
    )
    validation_share: float = field(default=0.1, metadata={"help": "share of dataset families in validation"})
    test_share: float = field(default=0.1, metadata={"help": "share of dataset families in test"})
    seed: int = field(default=0, metadata={"help": "row sampling and the family split"})
    max_text_chars: int = field(
        default=4000, metadata={"help": "cut longer texts to this many characters (the task's note says so)"}
    )

    def __post_init__(self) -> None:
        if self.train_size < 1 or self.test_size < 1:
            raise DataError(f"train_size and test_size must be at least 1 (got {self.train_size}, {self.test_size})")
        if not 2 <= self.min_labels <= self.max_labels:
            raise DataError(f"need 2 <= min_labels <= max_labels (got {self.min_labels}, {self.max_labels})")
        if self.max_configs < 1 or self.hub_limit < 1 or self.max_text_chars < 1:
            raise DataError("max_configs, hub_limit and max_text_chars must be at least 1")
        shares = (self.validation_share, self.test_share)
        if min(shares) < 0 or sum(shares) >= 1:
            raise DataError(f"validation_share + test_share must be in [0, 1) (got {shares}); lower one of them")


@dataclass(frozen=True)
class Source:
    """One (dataset, config) to try, and where to load it from."""

    dataset: str  # the build log's key: a hub name, or a local path (DIR/NAME for a group of files)
    config: str | None
    name: str  # readable name; the task id is made from it
    location: str  # what the loader opens: a hub name, a data file or a save_to_disk directory
    kind: str  # "hub", "disk", or the `datasets` file builder: "parquet", "csv", "json"
    license: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class HubEntry:
    """One dataset of the hub listing, with what its tags say."""

    name: str
    license: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class Sample:
    """Shuffled rows of one (dataset, config), with the ClassLabel names its features declare."""

    rows: list[dict[str, Any]]
    class_labels: dict[str, tuple[str, ...]]  # column -> names in id order
    split: str
    license: str | None = None


# What a transient fault looks like, on an exception or in its chain (requests, httpx, urllib3, the hub).
TRANSIENT_ERRORS = {
    "ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "ProxyError", "RemoteDisconnected",
    "ChunkedEncodingError", "ProtocolError", "ConnectError", "ReadError", "RemoteProtocolError", "NewConnectionError",
    "MaxRetryError",
}  # fmt: skip
# The same in a "load failed" reason an older build logged as a skip: such entries are tried again.
TRANSIENT_REASON = re.compile(
    r"ConnectionError|ConnectTimeout|ReadTimeout|timed out|Max retries exceeded|Temporary failure in name resolution"
    r"|\b(?:429|50[0234])\b.*(?:Error|error)|Too Many Requests|Service Unavailable|Bad Gateway"
)


class Deferred(Exception):  # noqa: N818 (a decision put off, not an error: it never leaves build_corpus)
    """A (dataset, config) that could not be decided for a reason that may pass: not logged, tried again."""


def transient(error: BaseException) -> bool:
    """A fault of the network or the server, not of the dataset (so skipping it for good would be wrong)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | TimeoutError) or type(current).__name__ in TRANSIENT_ERRORS:
            return True
        status = getattr(getattr(current, "response", None), "status_code", None)
        if isinstance(status, int) and (status >= 500 or status == 429):
            return True
        current = current.__cause__ or current.__context__
    return False


class Skip(Exception):  # noqa: N818 (a decision, not an error: it never leaves build_corpus)
    """Why a (dataset, config) is left out; `kind` groups reasons in the summary."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class BuildSummary:
    """What a build kept and skipped (earlier runs of a resumed build included)."""

    out: Path
    kept: int
    skipped: int
    decided_now: int  # (dataset, config) pairs decided by this call; the rest came from the build log
    skip_kinds: dict[str, int]
    splits: dict[str, int]  # split -> tasks
    families: dict[str, int]  # split -> families
    deferred: int = 0  # (dataset, config) pairs a transient fault kept undecided: the next run tries them

    def __str__(self) -> str:
        lines = [
            f"{self.out}: {self.kept} tasks kept, {self.skipped} skipped ({self.decided_now} decided in this run)",
            f"{'split':<12}{'tasks':>7}{'families':>10}",
        ]
        lines += [f"{s:<12}{self.splits.get(s, 0):>7}{self.families.get(s, 0):>10}" for s in SPLITS]
        if self.skip_kinds:
            width = max(len(kind) for kind in self.skip_kinds) + 2
            lines.append("skipped because")
            lines += [f"  {kind:<{width}}{n:>5}" for kind, n in sorted(self.skip_kinds.items(), key=lambda kv: -kv[1])]
        if self.deferred:
            lines.append(
                f"{self.deferred} not decided: a transient fault (network, server); run the same command again to retry"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------- entry point


def build_corpus(
    sources: list[str],
    out: Path,
    config: BuildConfig = BuildConfig(),
    *,
    labeler: Backend | None = None,
    quiet: bool = True,
) -> BuildSummary:
    """Build (or resume) a corpus in `out` from "hub" and/or local paths; see the module docstring.

    `labeler` is asked for the columns only when the rules cannot decide; without one those datasets
    are skipped. Every kept task recorded in out's build log, from any earlier run, is in tasks.jsonl.
    """
    if not sources:
        raise DataError("no sources: give 'hub' and/or paths to data files or dataset directories")
    require("datasets", "hub", "corpus build")  # here, or every dataset would be skipped as "load failed"
    local = [source for item in sources if item != "hub" for source in local_sources(Path(item), config.max_configs)]
    (out / "instances").mkdir(parents=True, exist_ok=True)
    _check_settings(out, config)
    decided = {key: line for key, line in _read_log(out / LOG_FILE).items() if not _logged_transient(line)}
    taken = {line["task_id"] for line in decided.values() if line["task_id"]}
    candidates: Iterable[Source] = local
    if "hub" in sources:
        candidates = chain(local, hub_sources(config.hub_limit, config.max_configs))
    decided_now = deferred = 0
    for source in tqdm(candidates, desc="corpus", unit="config", disable=quiet):
        key = (source.dataset, source.config)
        if key in decided:
            continue
        try:
            line = decide(source, out, config, labeler, taken)
        except Deferred as e:
            deferred += 1
            log.warning("%s %s: not decided (%s); the next run tries it again", source.dataset, source.config or "", e)
            continue
        append_lines(out / LOG_FILE, [line])
        decided[key] = line
        decided_now += 1
        if line["status"] == "skip":
            log.info("skip %s %s: %s", source.dataset, source.config or "", line["reason"])
    records = [line["task"] for line in decided.values() if line["status"] == "ok"]
    records = assign_splits(records, out, config)
    atomic_write(out / SETTINGS_FILE, json.dumps(asdict(config), indent=2) + "\n")
    atomic_write(out / "tasks.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return replace(_summarize(out, list(decided.values()), records, decided_now), deferred=deferred)


def decide(source: Source, out: Path, config: BuildConfig, labeler: Backend | None, taken: set[str]) -> dict:
    """Keep one (dataset, config) as a task (instances written, its id added to `taken`) or skip it.

    Returns the build-log line. Only Skip is caught past loading: anything else is a bug or a
    systemic fault (a full disk, a dead labeler server) and stops the build, which can then resume.
    """
    line: dict[str, Any] = {"dataset": source.dataset, "config": source.config}
    try:
        draw = math.ceil((config.train_size + config.test_size) * (1 + ROW_MARGIN))
        try:
            sample = load_sample(source, draw, config.seed)
        except Exception as e:  # anything a hub dataset throws skips it (as in the reference); the log keeps why
            if transient(e):  # unless it is the network's or the server's fault: then the next run tries again
                raise Deferred(f"load failed: {first_line(e)[:300]}") from None
            raise Skip("load failed", f"load failed: {first_line(e)[:300]}") from None
        columns = _find_columns(source, sample, config, labeler)
        task = unique_id(task_id(source.name, source.config), taken)
        record, train, test = make_task(task, source, sample, columns, config)
    except Skip as skip:
        return {**line, "status": "skip", "kind": skip.kind, "reason": skip.reason, "task_id": None}
    for side, examples in (("train", train), ("test", test)):
        rows = (json.dumps({"text": e.text, "label": e.label}, ensure_ascii=False) + "\n" for e in examples)
        atomic_write(out / "instances" / f"{task}.{side}.jsonl", "".join(rows))
    taken.add(task)
    return {**line, "status": "ok", "kind": None, "reason": None, "task_id": task, "task": record}


# ---------------------------------------------------------------- discovery


def local_sources(path: Path, max_configs: int) -> list[Source]:
    """The (dataset, config) pairs a local path holds (the rule is in the module docstring)."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory (give 'hub', a data file or a directory of datasets)")
    path = path.resolve()
    if path.is_file() and not _loadable(path):
        raise DataError(f"{path}: not a dataset file; give one of: {', '.join(DATA_SUFFIXES)}")
    groups: dict[Path, list[tuple[str | None, Path]]] = {}
    for entry in [path] if _loadable(path) else sorted(path.iterdir()):
        if _loadable(entry):
            name, _, config = _stem(entry).partition(".") if entry.is_file() else (entry.name, "", "")
            groups.setdefault(entry.parent / name, []).append((config or None, entry))
        elif entry.is_dir() and not (entry / LOG_FILE).exists():  # a corpus built here is not a dataset
            inner = [(_stem(e), e) for e in sorted(entry.iterdir()) if _loadable(e)]
            groups.setdefault(entry, []).extend(inner)
    sources = [
        Source(str(dataset), config, dataset.name, str(entry), _kind(entry))
        for dataset, members in groups.items()
        for config, entry in members[:max_configs]
    ]
    if not sources:
        raise DataError(f"{path}: no datasets here ({', '.join(DATA_SUFFIXES)} files or save_to_disk directories)")
    return sources


def hub_sources(limit: int, max_configs: int) -> Iterator[Source]:
    """Every (dataset, config) of the hub listing, lazily: config names are asked one dataset at a time."""
    for entry in list_hub_datasets(limit):
        for config in hub_config_names(entry.name)[:max_configs]:
            yield Source(entry.name, config, entry.name, entry.name, "hub", entry.license, entry.language)


def list_hub_datasets(limit: int) -> list[HubEntry]:
    """Text-classification datasets on the hub, most trending first (the reference's listing)."""
    hub = require("huggingface_hub", "hub", "corpus build hub")  # network, only when "hub" is a source

    listing = hub.HfApi().list_datasets(
        filter="task_categories:text-classification", sort="trending_score", limit=limit
    )
    return [HubEntry(info.id, _tag(info.tags, "license"), _tag(info.tags, "language")) for info in listing]


def hub_config_names(name: str) -> list[str | None]:
    """A hub dataset's configs, or [None] (the reference's fallback); a listing failure shows again on load."""
    datasets = require("datasets", "hub", "corpus build")

    try:
        return list(datasets.get_dataset_config_names(name)) or [None]
    except Exception:  # the load that follows fails too, and its message goes to the build log
        return [None]


def load_sample(source: Source, n_rows: int, seed: int) -> Sample:
    """Up to `n_rows` shuffled rows of the train split, else of the first split.

    Hub datasets and data files stream (`shuffle(seed, buffer_size=5000)`, as the reference), so
    nothing is downloaded beyond the rows taken; a saved dataset is shuffled exactly, in memory, so
    nothing is written next to it. We load without `split=` so one call also gives the split names.
    """
    datasets = require("datasets", "hub", "corpus build")  # heavy import, only when a dataset is loaded

    if source.kind == "disk":
        loaded = datasets.load_from_disk(source.location)
    elif source.kind == "hub":
        loaded = datasets.load_dataset(source.location, source.config, streaming=True)
    else:
        sep = {"sep": "\t"} if source.location.lower().endswith(".tsv") else {}
        loaded = datasets.load_dataset(source.kind, data_files=source.location, streaming=True, **sep)
    split = str(getattr(loaded, "split", None) or "train")
    if isinstance(loaded, datasets.DatasetDict | datasets.IterableDatasetDict):
        split = "train" if "train" in loaded else next(iter(loaded))
        loaded = loaded[split]
    if isinstance(loaded, datasets.Dataset):
        rows: Iterable[dict] = loaded.shuffle(seed=seed, keep_in_memory=True).select(range(min(n_rows, len(loaded))))
    else:
        rows = islice(loaded.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER), n_rows)
    features = loaded.features or {}
    class_labels = {c: tuple(f.names) for c, f in features.items() if isinstance(f, datasets.ClassLabel)}
    return Sample([dict(row) for row in rows], class_labels, split, loaded.info.license or None)


# ---------------------------------------------------------------- columns


def labeler_prompt(dataset: str, config: str | None, rows: list[dict[str, Any]]) -> Chat:
    """The reference's column question: name, config, columns and 3 rows with values cut to 200 chars."""
    examples = [
        json.dumps({k: str(v)[:LABELER_VALUE_CHARS] for k, v in row.items()}, ensure_ascii=False)
        for row in rows[:LABELER_ROWS]
    ]
    content = (
        f"Dataset: {dataset}\nConfig: {config or 'default'}\nColumns: {', '.join(rows[0])}\n"
        "Example rows:\n" + "\n".join(examples) + "\n\n"
        "This is a text-classification dataset. Which column holds the input text, and which the class label? "
        "For a sentence pair, give both input columns separated by a comma. "
        "Answer with exactly two lines and nothing else:\ninput_column: <column>\nlabel_column: <column>"
    )
    return [{"role": "user", "content": content}]


def parse_labeler_reply(reply: str, columns: list[str]) -> tuple[tuple[str, ...], str]:
    """The (input columns, label column) a labeler's reply names; raises Skip unless both are known columns."""
    found: dict[str, str] = {}
    for line in reply.splitlines():
        key, sep, value = line.strip().strip("*`-# ").partition(":")
        key = key.strip("*` ").lower()
        if sep and key in ("input_column", "label_column"):
            found.setdefault(key, value.strip().strip("*`'\" "))
    missing = [k for k in ("input_column", "label_column") if not found.get(k)]
    if missing:
        raise Skip("labeler reply", f"the labeler's reply has no {missing[0]} line: {reply.strip()[:80]!r}")
    lookup = {c.lower(): c for c in columns}
    named = [c.strip().strip("`'\" ") for c in found["input_column"].split(",")] + [found["label_column"]]
    unknown = [c for c in named if c.lower() not in lookup]
    if unknown:
        raise Skip(
            "labeler reply", f"the labeler named unknown column '{unknown[0]}'; columns are: {', '.join(columns)}"
        )
    *text, label = [lookup[c.lower()] for c in named]
    if label in text:
        raise Skip("labeler reply", f"the labeler named '{label}' as both input and label")
    return tuple(text), label


def _find_columns(source: Source, sample: Sample, config: BuildConfig, labeler: Backend | None) -> Columns:
    if not sample.rows:
        raise Skip("too few rows", f"no rows in split '{sample.split}'")
    try:
        return detect_columns(sample.rows, class_labels=sample.class_labels, max_labels=config.max_labels)
    except ColumnError as e:
        if labeler is None:
            raise Skip(e.kind, e.reason) from None
    [generation] = labeler.generate([labeler_prompt(source.name, source.config, sample.rows)], LABELER_PARAMS)
    if generation.error:  # the labeler's server, not the dataset: decided by the next run
        raise Deferred(f"labeler failed: {generation.error}")
    text, label = parse_labeler_reply(generation.text, list(sample.rows[0]))
    return Columns(text, label, f"llm:{labeler.model_id}")


# ---------------------------------------------------------------- tasks


def make_task(
    task: str, source: Source, sample: Sample, columns: Columns, config: BuildConfig
) -> tuple[dict[str, Any], list[Example], list[Example]]:
    """A task record and its two sides from detected columns, or Skip when a filter fails."""
    if not all_of(sample.rows, columns.label, SCALAR):
        raise Skip("no label column", f"label column '{columns.label}' holds lists or records, not one label a row")
    names = sample.class_labels.get(columns.label)
    usable = [p for p in (_example(row, columns, names, config.max_text_chars) for row in sample.rows) if p]
    keep = first_occurrences([example.text for example, _ in usable])
    need = config.train_size + config.test_size
    if len(keep) < need:
        dropped = " after dropping duplicates and empty texts" if len(keep) < len(sample.rows) else ""
        raise Skip("too few rows", f"only {len(keep)} rows{dropped}, need {need}")
    keep = keep[:need]  # already shuffled: the first train_size are the train side, the rest the test side
    kept = [usable[i][0] for i in keep]
    present = Counter(e.label for e in kept)
    labels = names or tuple(sort_labels(present))
    check_labels(labels, present, config)
    numeric = all(_NUMBER.fullmatch(label) for label in labels)
    cut = sum(usable[i][1] for i in keep)
    record = {
        "id": task,
        "name": f"{source.name} ({source.config})" if source.config else source.name,
        "family": None,  # set when the build ends: it depends on every kept dataset
        "split": None,
        "language": source.language,
        "labels": list(labels),
        "label_descriptions": None,
        "definition": None,
        "n_train": config.train_size,
        "n_test": config.test_size,
        "origin": {
            "dataset": source.dataset,
            "config": source.config,
            "split": sample.split,
            "source": source.kind,
            "text_columns": list(columns.text),
            "label_column": columns.label,
            "detected_by": columns.how,
            "numeric_labels": numeric,
        },
        "license": source.license or sample.license,
        "note": _note(labels, numeric, cut, columns, config),
    }
    return record, kept[: config.train_size], kept[config.train_size :]


def _example(row: dict, columns: Columns, names: tuple[str, ...] | None, max_chars: int) -> tuple[Example, bool] | None:
    """The row as an Example and whether its text was cut; None when its label or a text is missing."""
    value = row.get(columns.label)
    if names is not None:  # a ClassLabel id; -1 (or None) marks an unlabelled row
        label = names[value] if isinstance(value, int) and 0 <= value < len(names) else ""
    else:
        label = "" if value is None else str(value).strip()
    sides = ["" if row.get(c) is None else str(row[c]).strip() for c in columns.text]
    if not label or not all(sides):
        return None
    text = sides[0] if len(sides) == 1 else join_fields(list(zip(columns.text, sides, strict=True)))
    return Example(text[:max_chars], label), len(text) > max_chars


def _note(labels: tuple[str, ...], numeric: bool, cut: int, columns: Columns, config: BuildConfig) -> str | None:
    notes = []
    if numeric:
        shown = ", ".join(labels[:4]) + (", ..." if len(labels) > 4 else "")
        notes.append(f"labels are numeric ids ({shown}) with no names in the source")
    if cut:
        notes.append(f"{cut} texts cut to {config.max_text_chars} characters")
    if columns.how.startswith("llm:"):
        notes.append(f"columns chosen by {columns.how[4:]}")
    return "; ".join(notes) or None


def sort_labels(labels: Iterable[str]) -> list[str]:
    """Sorted label names (numbers by value); never set order, which changes with PYTHONHASHSEED."""
    labels = set(labels)
    if all(_NUMBER.fullmatch(label) for label in labels):
        return sorted(labels, key=lambda label: (float(label), label))
    return sorted(labels)


def check_labels(labels: tuple[str, ...], present: Counter, config: BuildConfig) -> None:
    """The reference's label filters, plus labels a reply could not tell apart; raises Skip."""
    rows = sum(present.values())
    if len(present) < config.min_labels:
        if len(present) == 1:
            raise Skip("too few labels", f"one label ('{next(iter(present))}') in {rows} rows")
        raise Skip("too few labels", f"{len(present)} labels in {rows} rows, need at least {config.min_labels}")
    if len(labels) > rows / 2:
        raise Skip("too many labels", f"{len(labels)} distinct labels in {rows} rows: not a label column")
    if len(labels) > config.max_labels:
        raise Skip("too many labels", f"{len(labels)} labels, more than max_labels={config.max_labels}")
    clash = clashing_labels(labels)
    if clash:
        raise Skip("labels clash", f"labels '{clash[0]}' and '{clash[1]}' differ only in case or spaces")


def first_occurrences(texts: list[str]) -> list[int]:
    """Indices of the first of each normalised text: de-duplication, so no text lands on both sides of a task."""
    seen: set[str] = set()
    keep = []
    for i, text in enumerate(texts):
        key = normalize_text(text)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


def normalize_text(text: str) -> str:
    """Whitespace collapsed and case folded: the form texts are compared in."""
    return " ".join(text.split()).casefold()


def text_hash(text: str) -> int:
    """64 bits of the MD5 of the normalised text (the paper compares texts by MD5)."""
    return int.from_bytes(hashlib.md5(normalize_text(text).encode()).digest()[:8], "big")


def task_id(name: str, config: str | None) -> str:
    """A filesystem-safe id, `owner__name[__config]`; the config 'default' is left out."""
    parts = name.strip("/").split("/")[-2:] + ([config] if config and config != "default" else [])
    raw = "__".join(re.sub(r"[^A-Za-z0-9._-]+", "_", part) for part in parts).lstrip(".")
    if len(raw) > MAX_ID_CHARS:
        raw = raw[: MAX_ID_CHARS - 9] + "_" + hashlib.sha1(raw.encode()).hexdigest()[:8]
    return raw


def unique_id(base: str, taken: set[str]) -> str:
    """`base`, or `base__2`, `base__3`... when another dataset already has that id."""
    number = 2
    candidate = base
    while candidate in taken:
        candidate, number = f"{base}__{number}", number + 1
    return candidate


# ---------------------------------------------------------------- families and splits


def assign_splits(records: list[dict], out: Path, config: BuildConfig) -> list[dict]:
    """Records with `family` and `split` set, sorted by id: a seeded shuffle of families, cut by the shares."""
    records = sorted(records, key=lambda r: r["id"])
    hashes = ((text_hash(t) for t in _instance_texts(out, r["id"])) for r in records)  # lazily: one task at a time
    roots = group_families([r["origin"]["dataset"] for r in records], hashes)
    family: dict[int, str] = {}
    for record, root in zip(records, roots, strict=True):
        family.setdefault(root, record["id"])  # records are sorted, so a family is named by its smallest task id
    names = sorted(set(family.values()))
    random.Random(f"{config.seed}/families").shuffle(names)
    n_test = round(config.test_share * len(names))
    n_validation = round(config.validation_share * len(names))
    split = {
        name: "test" if i < n_test else "validation" if i < n_test + n_validation else "train"
        for i, name in enumerate(names)
    }
    return [{**r, "family": family[root], "split": split[family[root]]} for r, root in zip(records, roots, strict=True)]


def group_families(datasets: list[str], hashes: Iterable[Iterable[int]]) -> list[int]:
    """Union-find over tasks: the same dataset, or any shared text hash, puts two in one family.

    One shared text is enough: a meta-test task must not hold a text seen in meta-training. Returns
    each task's family root (an index into the inputs).
    """
    parent = list(range(len(datasets)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)

    owner: dict[Any, int] = {}
    for i, (dataset, task_hashes) in enumerate(zip(datasets, hashes, strict=True)):
        union(owner.setdefault(("dataset", dataset), i), i)
        for h in task_hashes:
            union(owner.setdefault(h, i), i)
    return [find(i) for i in range(len(datasets))]


# ---------------------------------------------------------------- build log, settings, summary


def _read_log(path: Path) -> dict[tuple[str, str | None], dict]:
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):  # killed mid-line: drop it, that config is tried again
        lines = lines[:-1]
        atomic_write(path, "".join(lines))
    decided = {}
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {number} is not valid JSON ({e.msg}); delete that line to resume") from None
        decided[(row["dataset"], row["config"])] = row
    return decided


def _check_settings(out: Path, config: BuildConfig) -> None:
    path = out / SETTINGS_FILE
    if not path.is_file():
        atomic_write(path, json.dumps(asdict(config), indent=2) + "\n")
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    changed = [
        f"{k}={saved.get(k)} (now {getattr(config, k)})" for k in RESUME_FIELDS if saved.get(k) != getattr(config, k)
    ]
    if changed:
        raise DataError(
            f"{out}: was built with {', '.join(changed)}; resume with the same settings or use a new output directory"
        )


def _logged_transient(line: dict) -> bool:
    """A "load failed" skip an older build logged for what was a transient fault: undecided after all."""
    return (
        line["status"] == "skip" and line.get("kind") == "load failed" and bool(TRANSIENT_REASON.search(line["reason"]))
    )


def _summarize(out: Path, lines: list[dict], records: list[dict], decided_now: int) -> BuildSummary:
    skipped = [line for line in lines if line["status"] == "skip"]
    families = {s: len({r["family"] for r in records if r["split"] == s}) for s in SPLITS}
    return BuildSummary(
        out=out,
        kept=len(records),
        skipped=len(skipped),
        decided_now=decided_now,
        skip_kinds=dict(Counter(line["kind"] for line in skipped)),
        splits={s: sum(r["split"] == s for r in records) for s in SPLITS},
        families=families,
    )


# ---------------------------------------------------------------- helpers


def _instance_texts(out: Path, task: str) -> list[str]:
    texts = []
    for side in ("train", "test"):
        with (out / "instances" / f"{task}.{side}.jsonl").open(encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    return texts


def _loadable(path: Path) -> bool:
    if path.is_dir():
        return is_saved_hf_dataset(path)
    return path.is_file() and path.suffix.lower() in DATA_SUFFIXES


def _kind(path: Path) -> str:
    return "disk" if path.is_dir() else DATA_SUFFIXES[path.suffix.lower()]


def _stem(path: Path) -> str:
    return path.name if path.is_dir() else path.name[: -len(path.suffix)]


def _tag(tags: list[str] | None, key: str) -> str | None:
    values = [t.split(":", 1)[1] for t in tags or [] if t.startswith(f"{key}:")]
    return values[0] if len(values) == 1 else None
