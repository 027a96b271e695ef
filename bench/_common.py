"""What every benchmark script shares: paths, reading rows, means, paired CIs, machine and provenance.

Each script in bench/ backs one claim and writes one JSON under bench/results/. `write_json` stamps
that file with its provenance (the commit of the checkout that ran, whether it had uncommitted
changes, the command line, the package versions), so a figure in the README can be traced to the
code and the command that made it, and rerun.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from promptmii.metrics import bootstrap_ci, label_collapsed, wilcoxon_p
from promptmii.results import Result, atomic_write, git_sha, read_done, read_jsonl

ROOT = Path(__file__).resolve().parent  # bench/
REPO = ROOT.parent
CORPUS = REPO.parent / "shared" / "corpus"  # the project's shared corpus, beside the checkout
# Recorded when installed: the engine, the numerics, and the libraries of the extras some benchmarks use.
PACKAGES = (
    "promptmii",
    "llama-cpp-python",
    "numpy",
    "gepa",
    "datasets",
    "scipy",
    "torch",
    "transformers",
    "trl",
    "peft",
    "sentence-transformers",
)


def rows(path: Path) -> list[Result]:
    """The done rows of a results.jsonl (failed rows are not results), or none if the run has not started."""
    return read_done(path) if path.exists() else []


def mean(values: list[float], digits: int = 4) -> float | None:
    """A rounded mean for a summary; None (a blank cell) for no values."""
    return round(sum(values) / len(values), digits) if values else None


def instruction_stats(rows: list[Result]) -> dict[str, Any]:
    """How varied a generator's instructions are across tasks: a collapsed one writes one sentence everywhere.

    distinct = different instruction texts (whitespace-trimmed) over the rows; mean_tokens = the generator's
    completion tokens per row (the instruction's length). None for arms that write no instruction.
    """
    texts = [r.instruction.strip() for r in rows if r.generator]
    if not texts:
        return {"distinct_instructions": None, "rows": len(rows), "mean_instruction_tokens": None}
    tokens = [r.generator_completion_tokens for r in rows if r.generator]
    return {"distinct_instructions": len(set(texts)), "rows": len(texts), "mean_instruction_tokens": mean(tokens, 1)}


def collapsed_rows(rows: list[Result], samples_paths: list[Path]) -> dict[tuple, bool]:
    """Row key -> whether the follower answered one label to >= 90% of that row's inputs (metrics.label_collapsed).

    Read from the samples.jsonl files of the runs the rows came from; a row whose samples are not there
    has no entry.
    """
    wanted = {r.key: r for r in rows}
    found: dict[tuple, list[tuple[int, str, str]]] = {}
    for path in samples_paths:
        for sample in read_jsonl(path) if path.exists() else []:
            key = (sample["task"], sample["method"], sample["fingerprint"])
            if key in wanted:
                found.setdefault(key, []).append((sample["index"], sample["gold"], sample["prediction"]))
    out = {}
    for key, samples in found.items():
        by_index = {index: (gold, pred) for index, gold, pred in samples}  # a rerun's duplicates count once
        if len(by_index) == wanted[key].m:
            pairs = [by_index[i] for i in sorted(by_index)]
            out[key] = label_collapsed([g for g, _ in pairs], [p for _, p in pairs])
    return out


def paired_ci(a: list[float], b: list[float], *, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of the per-task differences a - b with its bootstrap CI over tasks (paired: same tasks, same order)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_ci needs two equally long, non-empty lists (got {len(a)} and {len(b)})")
    differences = [x - y for x, y in zip(a, b, strict=True)]
    low, high = bootstrap_ci(differences, level=level, seed=seed)
    return {
        "mean_difference": round(sum(differences) / len(differences), 4),
        "low": round(low, 4),
        "high": round(high, 4),
    }


def paired_test(differences: list[float]) -> dict[str, Any]:
    """Per-task differences of two arms: their mean, 95% bootstrap CI over tasks and Wilcoxon signed-rank p."""
    low, high = bootstrap_ci(differences)
    return {
        "mean": round(sum(differences) / len(differences), 4),
        "ci95": [round(low, 4), round(high, 4)],
        "wilcoxon_p": round(wilcoxon_p(differences), 4),
    }


def machine(previous: Path | None = None) -> dict[str, Any]:
    """Where the timings were taken: core count, platform, the load average when the summary was written.

    With `previous` (a summary being rewritten from saved rows, no model run), its recorded machine is
    kept: the timings in the rows were taken there, not where the summary is rewritten.
    """
    if previous is not None and previous.is_file():
        recorded = json.loads(previous.read_text()).get("machine")
        if recorded:
            return recorded
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "loadavg_at_end": list(os.getloadavg())}


def provenance() -> dict[str, Any]:
    """Commit, uncommitted changes, command line and package versions of the process writing a result."""
    return {
        "git_sha": git_sha(REPO),
        "git_dirty": _git_dirty(),
        "argv": [Path(sys.argv[0]).as_posix(), *sys.argv[1:]] if sys.argv else [],
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_json(path: Path, summary: dict[str, Any]) -> Path:
    """Write a benchmark's summary with its provenance (atomically: a killed write leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({**summary, "provenance": provenance()}, indent=2) + "\n")
    return path


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _git_dirty() -> bool | None:
    """Whether the checkout had uncommitted changes to tracked files other than bench/results (the outputs).

    None outside a git checkout.
    """
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None
