"""The paper's tables and figures, computed from results.jsonl files alone.

Nothing here runs a model: every number in report.md traces back to rows of the input files,
and the report carries no date, so the same files give a byte-identical report.md. An arm is what gets
compared: (follower, method spec, n_shots, generator, decoding, meta-prompt template). Rows of one arm on one task (several seeds,
say) are averaged before anything else; the report's header counts such cells and names the config keys
that differ between their rows.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptmii.errors import PromptMIIError, require
from promptmii.metrics import bootstrap_ci, mean, wilcoxon_p
from promptmii.results import Result, atomic_write, open_failures, read_results

RESAMPLES = 10_000  # bootstrap resamples of tasks in the significance table
SEED = 0  # the bootstrap's seed: fixed, so a report is reproducible from its files
LEVEL = 0.95
BIN_ORDER = (">0.85", "0.5-0.85", "<0.5", "unknown")  # `promptmii corpus check`'s bins, most similar first
MAIN_FIELDS = (
    "macro_f1",
    "accuracy",
    "invalid_rate",
    "prompt_tokens_per_query",
    "llm_calls",
    "generator_calls",
    "follower_calls",
    "cost_seconds",
)
TEMPLATED_METHODS = ("promptmii", "promptmii-zero")  # their instruction comes from a meta-prompt template
TRAINED_METHOD = "promptmii"  # the method whose generator was meta-trained (the transfer section)


@dataclass(frozen=True)
class Arm:
    """What the report compares; decoding and template are part of it, so runs that differ in them are not averaged."""

    follower: str
    method: str
    n_shots: int
    generator: str | None
    decoding: str
    template: str | None = None  # the meta-prompt, for methods that write an instruction from one


Groups = dict[Arm, dict[str, list[Result]]]  # arm -> task -> rows


@dataclass(frozen=True)
class Table:
    """A section's numbers: markdown shows 3 decimals, the CSV keeps 4, None is a blank cell."""

    columns: list[str]
    rows: list[list[Any]]

    def markdown(self) -> str:
        lines = [_md_row(self.columns), "|" + "---|" * len(self.columns)]
        return "\n".join(lines + [_md_row([_fmt(v, 3) for v in row]) for row in self.rows])

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows([_fmt(v, 4) for v in row] for row in self.rows)
        return buffer.getvalue()


def write_report(results: list[Path], out: Path, *, bins: Path | None = None) -> Path:
    """Read results.jsonl files (or directories holding one), write report.md + CSVs + PNGs into `out`; return report.md."""
    rows, repeats = load_rows(results)
    for module in ("matplotlib", "scipy"):  # before writing anything, so a missing extra leaves no half report
        require(module, "report", "promptmii report")
    failed = open_failures(rows)  # listed until redone
    rows = [row for row in rows if not row.failed]  # a failed row's numbers are not results: never averaged
    bin_of = read_bins(bins) if bins is not None else None  # before writing anything: bad input fails cleanly
    out.mkdir(parents=True, exist_ok=True)
    groups = group(rows)
    followers = list(dict.fromkeys(row.follower for row in rows))
    names = {}  # named per follower, as the sections are: a suffix only tells apart arms that share a follower
    for follower in followers:
        names.update(arm_names([arm for arm in groups if arm.follower == follower]))
    parts = [_header(results, rows, repeats, groups, names, followers)]
    if failed:
        parts.append(_failed_section(failed))
    for follower in followers:
        mine = {arm: by_task for arm, by_task in groups.items() if arm.follower == follower}
        if len(followers) == 1:
            parts += _follower_sections(mine, names, follower, out, "", "##", bins, bin_of)
        else:
            parts.append(f"## Follower `{follower}`")
            parts += _follower_sections(mine, names, follower, out, "_" + _slug(follower), "###", bins, bin_of)
    parts.append(_transfer_section(rows, out))
    report = out / "report.md"
    atomic_write(report, "\n\n".join(parts) + "\n")
    return report


# ---------------------------------------------------------------- reading


def load_rows(results: list[Path]) -> tuple[list[Result], int]:
    """All rows, the last one kept when a (task, method, fingerprint) key repeats; and how many repeated."""
    rows: dict[tuple[str, str, str], Result] = {}
    repeats = 0
    for path in results:
        for row in read_results(path / "results.jsonl" if path.is_dir() else path):
            repeats += row.key in rows
            rows[row.key] = row
    if not rows:
        raise PromptMIIError(f"{', '.join(map(str, results))}: no result rows")
    if all(row.failed for row in rows.values()):
        raise PromptMIIError(f"{', '.join(map(str, results))}: every row failed; nothing to report")
    return list(rows.values()), repeats


def read_bins(path: Path) -> dict[str, str]:
    """task -> similarity bin, from the JSONL that `promptmii corpus check` writes."""
    if not path.is_file():
        raise PromptMIIError(f"{path}: no such bins file (`promptmii corpus check` writes it)")
    bins = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise PromptMIIError(f"{path}: line {number} is not valid JSON") from None
        if not isinstance(row, dict) or "task" not in row or "bin" not in row:
            raise PromptMIIError(f'{path}: line {number} lacks "task" or "bin" (`promptmii corpus check` writes both)')
        bins[row["task"]] = row["bin"]
    return bins


# ---------------------------------------------------------------- arms


def arm_of(row: Result) -> Arm:
    template = (row.template or row.config.get("template")) if row.method in TEMPLATED_METHODS else None
    return Arm(row.follower, row.method, row.n_shots, row.generator, row.decoding, template)


def group(rows: list[Result]) -> Groups:
    """Rows by arm, then task; arms in first-seen order of their method, then first-seen order of the arm."""
    groups: Groups = {}
    methods: dict[str, int] = {}
    for row in rows:
        methods.setdefault(row.method, len(methods))
        groups.setdefault(arm_of(row), {}).setdefault(row.task, []).append(row)
    return {arm: groups[arm] for arm in sorted(groups, key=lambda arm: methods[arm.method])}


def arm_names(arms: list[Arm]) -> dict[Arm, str]:
    """The method spec, plus ` n=K`, ` [generator]`, ` (decoding)`, ` <template>` only where needed to tell arms apart."""
    shots = _distinct(arms, lambda a: a.method, lambda a: a.n_shots)
    generators = _distinct(arms, lambda a: (a.method, a.n_shots), lambda a: a.generator)
    decodings = _distinct(arms, lambda a: (a.method, a.n_shots, a.generator), lambda a: a.decoding)
    templates = _distinct(arms, lambda a: (a.method, a.n_shots, a.generator, a.decoding), lambda a: a.template)
    names = {}
    for arm in arms:
        name = arm.method
        if len(shots[arm.method]) > 1:
            name += f" n={arm.n_shots}"
        if len(others := generators[(arm.method, arm.n_shots)]) > 1:
            name += f" [{_model_label(arm.generator, others)}]"
        if len(decodings[(arm.method, arm.n_shots, arm.generator)]) > 1:
            name += f" ({arm.decoding})"
        if len(templates[(arm.method, arm.n_shots, arm.generator, arm.decoding)]) > 1:
            name += f" <{arm.template}>"
        names[arm] = name
    return names


def _model_label(model_id: str | None, others: set[str | None]) -> str:
    """A model id without its @hash, unless another id here differs only in the hash."""
    if model_id is None:
        return "no generator"
    base = model_id.split("@")[0]
    return base if sum((other or "").split("@")[0] == base for other in others) == 1 else model_id


def task_means(by_task: dict[str, list[Result]], field: str = "macro_f1") -> dict[str, float]:
    """One number per task: the mean of `field` over the arm's rows on that task (usually exactly one)."""
    return {task: mean([getattr(row, field) for row in rows]) for task, rows in sorted(by_task.items())}


# ---------------------------------------------------------------- tables (pure)


def main_table(groups: Groups, names: dict[Arm, str]) -> Table:
    rows = []
    for arm, by_task in groups.items():
        rows.append([names[arm], len(by_task)] + [mean(list(task_means(by_task, f).values())) for f in MAIN_FIELDS])
    return Table(["arm", "tasks", *MAIN_FIELDS], rows)


def per_task_table(groups: Groups, names: dict[Arm, str]) -> Table:
    f1 = [task_means(by_task) for by_task in groups.values()]
    tasks = sorted({task for per in f1 for task in per})
    return Table(["task", *(names[arm] for arm in groups)], [[task] + [per.get(task) for per in f1] for task in tasks])


def win_rate(a: dict[str, float], b: dict[str, float]) -> float | None:
    """Share of the tasks both arms have where a beats b, ties counting half; None when none in common."""
    common = sorted(a.keys() & b.keys())
    if not common:
        return None
    return sum(1.0 if a[t] > b[t] else 0.5 if a[t] == b[t] else 0.0 for t in common) / len(common)


def win_rate_table(groups: Groups, names: dict[Arm, str]) -> Table:
    f1 = {arm: task_means(by_task) for arm, by_task in groups.items()}
    rows = [[names[a]] + [None if a == b else win_rate(f1[a], f1[b]) for b in f1] for a in f1]
    return Table(["arm", *(names[arm] for arm in f1)], rows)


def significance_table(groups: Groups, names: dict[Arm, str]) -> Table:
    """Every pair of arms, paired over the tasks both have: mean F1 difference, bootstrap CI, Wilcoxon p."""
    f1 = {arm: task_means(by_task) for arm, by_task in groups.items()}
    arms = list(f1)
    rows = []
    for i, a in enumerate(arms):
        for b in arms[i + 1 :]:
            common = sorted(f1[a].keys() & f1[b].keys())
            diffs = [f1[a][t] - f1[b][t] for t in common]
            if len(diffs) >= 2:
                low, high = bootstrap_ci(diffs, resamples=RESAMPLES, level=LEVEL, seed=SEED)
                test: list[Any] = [low, high, wilcoxon_p(diffs), ""]
            else:
                test = [None, None, None, "no common tasks" if not diffs else "one common task: no CI or test"]
            rows.append([names[a], names[b], len(diffs), mean(diffs) if diffs else None, *test])
    columns = ["arm_a", "arm_b", "tasks", "mean_diff", "ci_low", "ci_high", "wilcoxon_p", "note"]
    return Table(columns, rows)


def bin_table(groups: Groups, names: dict[Arm, str], bins: dict[str, str]) -> Table:
    """Bin x arm mean macro-F1; a cell averages the arm's tasks in that bin, `tasks` counts any arm's."""
    f1 = [task_means(by_task) for by_task in groups.values()]
    tasks = sorted({task for per in f1 for task in per})
    labels = {task: bins.get(task, "unknown") for task in tasks}
    present = set(labels.values())
    order = [b for b in BIN_ORDER if b in present] + sorted(present - set(BIN_ORDER))
    rows = []
    for label in order:
        in_bin = [task for task in tasks if labels[task] == label]
        cells = [[per[task] for task in in_bin if task in per] for per in f1]
        rows.append([label, len(in_bin)] + [mean(cell) if cell else None for cell in cells])
    return Table(["bin", "tasks", *(names[arm] for arm in groups)], rows)


def transfer_status(row: Result) -> str:
    """matched: scored with the follower its generator was meta-trained against; transfer: with another."""
    if row.generator_follower is None:
        return "unknown"
    return "matched" if row.config.get("follower") == row.generator_follower else "transfer"


def transfer_table(rows: list[Result]) -> Table:
    groups: dict[tuple[str, str, str, str], dict[str, list[Result]]] = {}
    for row in rows:
        if row.method == TRAINED_METHOD:
            key = (row.generator or "", row.generator_follower or "", row.follower, transfer_status(row))
            groups.setdefault(key, {}).setdefault(row.task, []).append(row)
    table = [[*key, len(by_task), mean(list(task_means(by_task).values()))] for key, by_task in groups.items()]
    return Table(["generator", "trained_for", "follower", "status", "tasks", "macro_f1"], table)


# ---------------------------------------------------------------- figures


def plot_f1_vs_tokens(main: Table, title: str, path: Path) -> Path:
    """One labelled point per arm: mean macro-F1 against mean follower prompt tokens per query (log x)."""
    plt = _pyplot()
    x_at, y_at = main.columns.index("prompt_tokens_per_query"), main.columns.index("macro_f1")
    tasks_at = main.columns.index("tasks")
    most = max((row[tasks_at] for row in main.rows), default=0)
    markers = "osD^v<>pP*Xh"
    fig, ax = plt.subplots(figsize=(10, 5))
    for i, row in enumerate(main.rows):
        # an arm with fewer tasks than the others is a mean over other tasks: say so on the point
        label = row[0] if row[tasks_at] == most else f"{row[0]} ({row[tasks_at]} of {most} tasks)"
        # points carry a number, the legend the full name: long arm names would overlap on the axes
        ax.scatter(
            [row[x_at]], [row[y_at]], marker=markers[i % len(markers)], s=50, label=f"{i + 1}  {label}", zorder=3
        )
        ax.annotate(str(i + 1), (row[x_at], row[y_at]), textcoords="offset points", xytext=(5, 5), fontsize=9)
    ax.set_xscale("log")
    ax.margins(x=0.2, y=0.1)  # room for the point labels inside the axes
    ax.set_xlabel("prompt tokens per query (log scale)")
    ax.set_ylabel("mean macro-F1")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))  # outside: never over a point
    return _save(plt, fig, path)


def plot_win_rate(table: Table, title: str, path: Path) -> Path:
    """The win-rate matrix as an annotated heatmap; blank cells (diagonal, no common task) are grey."""
    import numpy as np

    plt = _pyplot()
    names = table.columns[1:]
    values = np.array([[np.nan if v is None else v for v in row[1:]] for row in table.rows], dtype=float)
    size = 2.5 + 0.8 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            text = "" if np.isnan(values[i, j]) else f"{values[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(names)), labels=names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), labels=names, fontsize=8)
    ax.set_xlabel("column arm")
    ax.set_ylabel("row arm")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="share of common tasks the row arm wins")
    return _save(plt, fig, path)


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "report", "promptmii report's plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- report.md


def _failed_section(failed: list[Result]) -> str:
    """The rows whose calls failed: named with their error, left out of every table below."""
    table = Table(
        ["task", "method", "n_shots", "follower", "error"],
        [[r.task, r.method, r.n_shots, r.follower, r.error] for r in failed],
    )
    return (
        f"## Failed rows\n\n{len(failed)} rows failed and are left out of every table and mean below; run their "
        f"command again to compute them.\n\n{table.markdown()}"
    )


def _header(
    results: list[Path], rows: list[Result], repeats: int, groups: Groups, names: dict[Arm, str], followers: list[str]
) -> str:
    averaged = [task_rows for by_task in groups.values() for task_rows in by_task.values() if len(task_rows) > 1]
    lines = [
        "# promptmii report",
        "",
        "Computed from the result files below alone; the same files give this same report.",
        "",
        f"- Inputs: {', '.join(f'`{p}`' for p in results)}",
        f"- Rows: {len(rows)}"
        + (f" ({repeats} repeated (task, method, fingerprint) keys: the last kept)" if repeats else ""),
        f"- Followers: {', '.join(f'`{f}`' for f in followers)}",
        f"- Arms: {len(groups)}, named in the tables as below",
    ]
    if averaged:
        differ = ", ".join(sorted({key for task_rows in averaged for key in _differing_config(task_rows)})) or "none"
        lines.append(
            f"- {len(averaged)} (arm, task) cells hold several rows, whose mean is used; config keys that differ "
            f"between them: {differ}"
        )
    arms = Table(
        ["arm", "follower", "method", "n_shots", "generator", "decoding", "template", "tasks", "rows"],
        [
            [
                names[arm],
                arm.follower,
                arm.method,
                arm.n_shots,
                arm.generator,
                arm.decoding,
                arm.template,
                len(by_task),
                sum(map(len, by_task.values())),
            ]
            for arm, by_task in groups.items()
        ],
    )
    return "\n".join(lines) + "\n\n" + arms.markdown()


def _follower_sections(
    groups: Groups,
    names: dict[Arm, str],
    follower: str,
    out: Path,
    suffix: str,
    level: str,
    bins: Path | None,
    bin_of: dict[str, str] | None,
) -> list[str]:
    tasks = len({task for by_task in groups.values() for task in by_task})
    main = main_table(groups, names)
    win = win_rate_table(groups, names)
    plot = plot_f1_vs_tokens(main, f"{follower} ({tasks} tasks)", out / f"f1_vs_tokens{suffix}.png")
    heatmap = plot_win_rate(win, f"{follower}: win rate ({tasks} tasks)", out / f"win_rate{suffix}.png")
    sections = [
        _section(
            f"{level} Main table",
            f"One row per arm, over {tasks} tasks: each column is the mean over the arm's tasks of that number in "
            "its result rows (tokens: follower prompt tokens per query; calls and seconds: per task; cost_seconds: "
            "the time the row's calls took when made, each once, so cache replays and resumed runs do not shrink "
            "it; rows before schema 3 give their wall seconds).",
            main,
            out / f"main{suffix}.csv",
        ),
        _section(
            f"{level} Per-task macro-F1",
            "Macro-F1 of each arm on each task, as recorded in the result rows; blank where the arm has no row.",
            per_task_table(groups, names),
            out / f"per_task{suffix}.csv",
        ),
        f"{level} Macro-F1 vs prompt tokens\n\nOne point per arm: its mean macro-F1 against its mean follower "
        f"prompt tokens per query (log scale), both from the main table.\n\n![macro-F1 vs tokens]({plot.name})",
        _section(
            f"{level} Win rate",
            "Cell (row, column) is the share of the tasks both arms have on which the row arm's macro-F1 is higher, "
            "ties counting half. The denominator is only the tasks both arms have (the reference divides by all "
            "tasks, missing ones included; we do not); blank means no common task.",
            win,
            out / f"win_rate{suffix}.csv",
        )
        + f"\n\n![win rate]({heatmap.name})",
        _section(
            f"{level} Paired significance",
            "Each pair of arms over the tasks both have: the mean macro-F1 difference (arm_a minus arm_b), its "
            f"{LEVEL:.0%} percentile bootstrap CI ({RESAMPLES:,} resamples of tasks, seed {SEED}) and the two-sided "
            "Wilcoxon signed-rank p-value (scipy; zero differences dropped, p = 1 when all are zero).",
            significance_table(groups, names),
            out / f"significance{suffix}.csv",
        ),
    ]
    if bin_of is None:
        sections.append(
            f"{level} By similarity bin\n\nNot computed: no bins file was given. `promptmii corpus check` writes "
            "one (each test task's similarity to its nearest meta-training task, binned); pass it with `promptmii report --bins`."
        )
    else:
        sections.append(
            _section(
                f"{level} By similarity bin",
                f"Mean macro-F1 by how similar each test task is to its nearest meta-training task (bins from `{bins}`):"
                " a cell averages the arm's tasks in that bin, `tasks` counts the bin's tasks any arm has; tasks "
                'missing from the bins file are in "unknown".',
                bin_table(groups, names, bin_of),
                out / f"by_bin{suffix}.csv",
            )
        )
    return sections


def _transfer_section(rows: list[Result], out: Path) -> str:
    table = transfer_table(rows)
    if not table.rows:
        return (
            f"## Cross-model transfer\n\nNo rows of method `{TRAINED_METHOD}` (a meta-trained generator) in the inputs."
        )
    return _section(
        "## Cross-model transfer",
        f"Rows of method `{TRAINED_METHOD}` by generator and the follower that scored them, mean macro-F1 over tasks: "
        '"matched" when the run\'s follower spec is the one the generator was meta-trained against (`trained_for`), '
        '"transfer" when it differs, "unknown" when the row does not record it.',
        table,
        out / "transfer.csv",
    )


def _section(title: str, sentence: str, table: Table, path: Path) -> str:
    path.write_text(table.csv(), encoding="utf-8")
    return f"{title}\n\n{sentence} (`{path.name}`)\n\n{table.markdown()}"


# ---------------------------------------------------------------- small helpers


def _distinct(arms: list[Arm], key: Callable[[Arm], Hashable], value: Callable[[Arm], Any]) -> dict[Any, set[Any]]:
    seen: dict[Any, set[Any]] = {}
    for arm in arms:
        seen.setdefault(key(arm), set()).add(value(arm))
    return seen


def _differing_config(rows: list[Result]) -> set[str]:
    """The config keys whose values are not the same in all these rows (why one arm has several rows)."""
    keys = {key for row in rows for key in row.config}
    return {k for k in keys if len({json.dumps(row.config.get(k), sort_keys=True) for row in rows}) > 1}


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.000"
    return str(value)


def _md_row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)
