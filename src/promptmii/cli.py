"""The `promptmii` command: induce, eval, models, train, export. The only place logging and output formats live.

Results go to stdout (a table on a terminal, JSON lines otherwise), progress bars and logs to stderr,
so `promptmii eval ... | jq` works. Every PromptMIIError becomes one `Error:` line and exit 1.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before llama.cpp or torch load (RUNTIME.md)

import csv
import io
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from promptmii import models
from promptmii.backends import redact
from promptmii.baselines import METHOD_HELP
from promptmii.corpus import BuildConfig
from promptmii.data import draw, load_tasks
from promptmii.errors import PromptMIIError, first_line
from promptmii.evaluate import DECODING
from promptmii.experiment import DEFAULT_BACKEND, Backends, EvalConfig, result_keys, run_eval
from promptmii.induce import induce
from promptmii.prompts import DEFAULT_TEMPLATE, TEMPLATES
from promptmii.results import Result, ResultsDir, mean_by_method, read_results
from promptmii.search import SearchConfig
from promptmii.train import TrainConfig

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
FORMATS = ("table", "json", "jsonl", "csv")
TABLE_COLUMNS = (
    ("task", "task", "{}"),
    ("method", "method", "{}"),
    ("macro_f1", "macro-F1", "{:.3f}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("invalid_rate", "invalid", "{:.3f}"),
    ("prompt_tokens_per_query", "tokens/query", "{:.0f}"),
    ("llm_calls", "LLM calls", "{:.0f}"),
    ("seconds", "seconds", "{:.1f}"),
    ("status", "status", "{}"),
)


class Failure(click.ClickException):
    """One `Error: ...` line, exit 1."""


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="promptmii")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def main(verbose: bool) -> None:
    """Write an LLM classifier's task instruction from a few labelled examples, in one model call.

    Quick start (bundled CPU models, no hub needed):

        promptmii induce examples/support_tickets.csv
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def _common_model_options(f: Any) -> Any:
    options = [
        click.option(
            "--follower", default=DEFAULT_BACKEND, show_default=True, help="Backend spec of the frozen follower."
        ),
        click.option(
            "--base-generator", default=DEFAULT_BACKEND, show_default=True, help="Untrained generator (promptmii-zero)."
        ),
        click.option("--generator", default=None, help="Trained generator (method promptmii)."),
        click.option(
            "--template", type=click.Choice(TEMPLATES), default=DEFAULT_TEMPLATE, show_default=True, help="Meta-prompt."
        ),
        click.option("--max-instruction-tokens", default=1024, show_default=True, help="Generator token limit."),
        click.option(
            "--decoding",
            type=click.Choice(DECODING),
            default="generate",
            show_default=True,
            help="Follower decoding: free generation + parsing (the paper's), label scoring, or a label grammar.",
        ),
        click.option(
            "--ape-budget", default=SearchConfig.ape_budget, show_default=True, help="APE's follower calls per task."
        ),
        click.option(
            "--gepa-budget", default=SearchConfig.gepa_budget, show_default=True, help="GEPA's metric calls per task."
        ),
        click.option("--seed", default=0, show_default=True, help="Draws the shown and scored examples."),
        click.option("--no-cache", is_flag=True, help="Do not reuse LLM calls from $PROMPTMII_HOME/cache.sqlite."),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(FORMATS),
            default=None,
            help="Output format [table on a terminal, else jsonl].",
        ),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@main.command(name="induce", context_settings=CONTEXT)
@click.argument("data")
@click.option("--text-col", default=None, help="Text column(s), comma-separated for sentence pairs [auto].")
@click.option("--label-col", default=None, help="Label column [auto].")
@click.option("--n", default=20, show_default=True, help="Labelled examples shown to the generator.")
@click.option("--m", default=50, show_default=True, help="Held-out rows scored per method.")
@click.option("--methods", default="naive,icl,promptmii-zero", show_default=True, help="Methods to score against.")
@click.option("--no-eval", is_flag=True, help="Only write the instruction (one generator call).")
@click.option("-o", "--output", default=None, help="Results directory [runs/induce-<data name>].")
@_common_model_options
def induce_cmd(
    data: str,
    text_col: str | None,
    label_col: str | None,
    n: int,
    m: int,
    methods: str,
    no_eval: bool,
    output: str | None,
    **opts: Any,
) -> None:
    """Write an instruction for the task in DATA and score it against Naive and ICL on held-out rows.

    DATA is a CSV/JSONL file with a text and a label column, or hf:NAME for a Hugging Face dataset.
    The generator sees n rows; m other rows are scored by the follower for every method.

    Example:

        promptmii induce examples/support_tickets.csv --n 20 --m 50
    """
    with _errors_as_one_line():
        config = _eval_config(opts, methods=methods, n=n, m=m)
        [task] = load_tasks(
            data, text_col=text_col, label_col=label_col, test_size=m, min_train=config.max_shots, seed=config.seed
        )
        backends = Backends(config)
        if no_eval:
            shots, _ = draw(task, n, 0, config.seed)
            role = "generator" if config.generator else "base_generator"
            instruction = induce(shots, task.labels, backends.get(role), config.induce_config)
            if instruction.error:
                raise PromptMIIError(f"the generator call failed: {instruction.error}")
            if not instruction.text.strip():
                raise PromptMIIError("the generator wrote an empty instruction; try another --template or model")
            click.echo(instruction.text)
            return
        out = ResultsDir(Path(output or f"runs/induce-{task.id}"))
        run_eval([task], config, out, backends=backends, quiet=opts["quiet"])
        rows = _requested_rows(out, result_keys([task], config, backends, out))
        fmt = opts["fmt"] or ("table" if sys.stdout.isatty() else "jsonl")
        _emit(rows, fmt, show_task=False)
        instruction = next((r.instruction for r in rows if r.method in ("promptmii", "promptmii-zero")), None)
        if fmt == "table" and instruction is not None:
            click.echo(f"\nInstruction ({redact(config.generator or config.base_generator)}):\n\n{instruction}")
        click.echo(f"\nrows: {out.results_path}  samples: {out.samples_path}", err=True)


@main.command(name="eval", context_settings=CONTEXT)
@click.option("--tasks", "tasks_source", required=True, help="Corpus directory, CSV/JSONL file, or hf:NAME.")
@click.option("--split", default=None, help="Corpus split: train, validation or test.")
@click.option("--task-ids", default=None, help="Comma-separated task ids to keep.")
@click.option("--text-col", default=None, help="Text column(s) for a single file.")
@click.option("--label-col", default=None, help="Label column for a single file.")
@click.option(
    "--methods",
    default="naive,icl,promptmii-zero",
    show_default=True,
    help=f"{METHOD_HELP}.",
)
@click.option("--n", default=20, show_default=True, help="Labelled examples shown to the generator (icl's default K).")
@click.option("--m", default=100, show_default=True, help="Held-out examples scored per task.")
@click.option(
    "-o", "--output", default="runs/eval", show_default=True, help="Results directory (resumed if it exists)."
)
@_common_model_options
def eval_cmd(
    tasks_source: str,
    split: str | None,
    task_ids: str | None,
    text_col: str | None,
    label_col: str | None,
    methods: str,
    n: int,
    m: int,
    output: str,
    **opts: Any,
) -> None:
    """Score methods on many tasks with one follower; rows land in OUTPUT/results.jsonl as they finish.

    A killed run resumes where it stopped: rows already in OUTPUT are skipped.

    Example:

        promptmii eval --tasks ../shared/corpus --split test --methods naive,icl:20,icl:100,promptmii-zero --n 20 --m 100
    """
    with _errors_as_one_line():
        config = _eval_config(opts, methods=methods, n=n, m=m)
        ids = [t.strip() for t in task_ids.split(",")] if task_ids else None
        tasks = load_tasks(
            tasks_source,
            split=split,
            task_ids=ids,
            text_col=text_col,
            label_col=label_col,
            test_size=m,
            min_train=config.max_shots,
            seed=config.seed,
        )
        out = ResultsDir(Path(output))
        backends = Backends(config)
        run_eval(tasks, config, out, backends=backends, quiet=opts["quiet"])
        rows = _requested_rows(out, result_keys(tasks, config, backends, out))
        fmt = opts["fmt"] or ("table" if sys.stdout.isatty() else "jsonl")
        _emit(rows, fmt, show_task=True)
        if fmt == "table" and len(tasks) > 1:
            click.echo("\nMean over tasks:")
            click.echo(
                format_table(
                    mean_by_method(rows),
                    [c for c in TABLE_COLUMNS if c[0] not in ("task", "status")]
                    + [("tasks", "tasks", "{}"), ("failed", "failed", "{}")],
                )
            )


@main.command(name="models", context_settings=CONTEXT)
@click.option("--prepare", is_flag=True, help="Assemble and verify the bundled model files now.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None, help="Output format.")
def models_cmd(prepare: bool, fmt: str | None) -> None:
    """List the bundled models: installed parts, assembled GGUF, its path, and the hf: copy if made.

    Example:

        promptmii models --prepare
    """
    with _errors_as_one_line():
        if prepare:
            for row in models.available():
                if row["installed"]:
                    models.ensure_bundled(str(row["name"]))
        rows = models.available()
        fmt = fmt or ("table" if sys.stdout.isatty() else "jsonl")
        columns = [(k, k, "{}") for k in ("name", "installed", "assembled", "size_mb", "path", "hf_copy", "note")]
        click.echo(_render(rows, fmt, columns))


def _config_options(config_class: type) -> Any:
    """One option per field of a config dataclass, so the CLI and the dataclass cannot drift apart."""
    from dataclasses import MISSING, fields

    def decorate(f: Any) -> Any:
        for spec in reversed(fields(config_class)):
            flag = spec.name.replace("_", "-")
            help_text = spec.metadata.get("help", "")
            if spec.default is MISSING:
                f = click.option(f"--{flag}", spec.name, required=True, help=help_text)(f)
            elif isinstance(spec.default, bool):
                f = click.option(
                    f"--{flag}/--no-{flag}", spec.name, default=spec.default, show_default=True, help=help_text
                )(f)
            else:
                f = click.option(
                    f"--{flag}", spec.name, type=type(spec.default), default=spec.default, show_default=True,
                    help=help_text,
                )(f)  # fmt: skip
        return f

    return decorate


@main.command(name="train", context_settings=CONTEXT)
@_config_options(TrainConfig)
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last checkpoint.")
@click.option("--dry-run", is_flag=True, help="Check config and data, print the per-step cost, train nothing.")
def train_cmd(resume: bool, dry_run: bool, **fields: Any) -> None:
    """Meta-train the instruction generator with GRPO (TRL) on the corpus's train split.

    Reward: the frozen follower's macro-F1 on each task's m fixed examples with the generated
    instruction. Validation (greedy, validation split) every --eval-steps; checkpoints every
    --save-steps; a killed run continues with --resume. Defaults are the CPU settings
    (LoRA on the bundled 0.5B); docs/training.md maps every paper setting to its option.

    Example:

        promptmii train --corpus ../shared/corpus --output runs/grpo-cpu --max-steps 50
    """
    from promptmii import train

    with _errors_as_one_line():
        fields["corpus"] = str(Path(fields["corpus"]).resolve())
        config = TrainConfig(**fields)
        if dry_run:
            click.echo(json.dumps(asdict(train.dry_run(config)), indent=2))
            return
        click.echo(json.dumps(train.train(config, resume=resume), indent=2))


@main.command(name="report", context_settings=CONTEXT)
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", default="report", show_default=True, help="Folder for report.md, CSVs and PNGs.")
@click.option("--bins", default=None, type=click.Path(path_type=Path), help="similarity.jsonl of `corpus check`.")
def report_cmd(results: tuple[Path, ...], output: str, bins: Path | None) -> None:
    """Tables, plots and paired tests from RESULTS files or folders alone (no model is run).

    Main table (methods x n), per-task table, F1-vs-tokens plot, win rates, bootstrap CIs and Wilcoxon
    tests between methods, a table by similarity bin (with --bins) and cross-model transfer.

    Example:

        promptmii report bench/runs/spine bench/runs/trained_vs_zero -o report --bins bench/results/corpus_check/similarity.jsonl
    """
    from promptmii.analysis import write_report  # matplotlib loads only for reports

    with _errors_as_one_line():
        click.echo(str(write_report(list(results), Path(output), bins=bins)))


@main.group(name="corpus", context_settings=CONTEXT)
def corpus_group() -> None:
    """Build a classification corpus (hub or local datasets) and check it for overlap with training."""


@corpus_group.command(name="build", context_settings=CONTEXT)
@click.argument("sources", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Corpus folder (resumed).")
@_config_options(BuildConfig)
@click.option("--labeler", default=None, help="Backend spec of an LLM that names columns the rules cannot find.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def corpus_build_cmd(sources: tuple[str, ...], output: Path, labeler: str | None, quiet: bool, **fields: Any) -> None:
    """Build tasks.jsonl + instances/ from SOURCES: `hub` (Hugging Face text-classification datasets) or
    local saved datasets, parquet, CSV and JSONL files or folders of them.

    Every (dataset, config) kept or skipped is logged with its reason in OUTPUT/build_log.jsonl; a killed
    build resumes. The split is by dataset family, so no text is on two sides.

    Example:

        promptmii corpus build hub --hub-limit 200 -o corpus   # or: promptmii corpus build data/ -o corpus
    """
    from promptmii.backends import get_backend
    from promptmii.cache import CachedBackend
    from promptmii.corpus import build_corpus

    with _errors_as_one_line():
        labeler_backend = None
        if labeler:
            labeler_backend = CachedBackend(get_backend(labeler), models.promptmii_home() / "cache.sqlite")
        summary = build_corpus(list(sources), output, BuildConfig(**fields), labeler=labeler_backend, quiet=quiet)
        click.echo(str(summary))


@corpus_group.command(name="check", context_settings=CONTEXT)
@click.argument("corpus", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Folder for the results [CORPUS].")
@click.option(
    "--embedder", default="all-MiniLM-L6-v2", show_default=True, help="Sentence embedder: a name, hub id or folder."
)
@click.option("--no-similarity", is_flag=True, help="Only the contamination check (no embedder needed).")
@click.option("--texts-per-task", default=64, show_default=True, help="Texts embedded per task.")
@click.option(
    "--drop-to", type=click.Path(path_type=Path), default=None, help="Write a copy without contaminated rows."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def corpus_check_cmd(
    corpus: Path,
    output: Path | None,
    embedder: str,
    no_similarity: bool,
    texts_per_task: int,
    drop_to: Path | None,
    quiet: bool,
) -> None:
    """Contamination (held-out texts also in training, by md5) and similarity bins of CORPUS.

    Writes contamination.json and similarity.jsonl (each held-out task's best cosine to a training
    task, binned >0.85 / 0.5-0.85 / <0.5); give the latter to `promptmii report --bins`.

    Example:

        promptmii corpus check ../shared/corpus -o corpus-check
    """
    from promptmii.overlap import check_corpus

    with _errors_as_one_line():
        summary = check_corpus(
            corpus,
            output or corpus,
            embedder=None if no_similarity else embedder,
            texts_per_task=texts_per_task,
            drop_to=drop_to,
            quiet=quiet,
        )
        click.echo(json.dumps(summary, indent=2))


@main.command(name="export", context_settings=CONTEXT)
@click.argument("run", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="GGUF path [RUN/adapter.gguf].")
def export_cmd(run: Path, output: Path | None) -> None:
    """Write a training run's LoRA adapter as a GGUF, so llama.cpp serves the trained generator.

    Afterwards `--generator llamacpp:RUN` uses the bundled GGUF plus this adapter (fast path);
    `--generator RUN` keeps using transformers.

    Example:

        promptmii export runs/grpo-cpu && promptmii induce data.csv --methods promptmii --generator llamacpp:runs/grpo-cpu
    """
    from promptmii.export import export_adapter

    with _errors_as_one_line():
        click.echo(str(export_adapter(run, output)))


# ------------------------------------------------------------------ helpers


def _eval_config(opts: dict[str, Any], *, methods: str, n: int, m: int) -> EvalConfig:
    return EvalConfig(
        methods=tuple(x.strip() for x in methods.split(",") if x.strip()),
        n=n,
        m=m,
        follower=opts["follower"],
        base_generator=opts["base_generator"],
        generator=opts["generator"],
        template=opts["template"],
        max_instruction_tokens=opts["max_instruction_tokens"],
        decoding=opts["decoding"],
        ape_budget=opts["ape_budget"],
        gepa_budget=opts["gepa_budget"],
        seed=opts["seed"],
        cache=not opts["no_cache"],
    )


def _requested_rows(out: ResultsDir, keys: list[tuple[str, str, str]]) -> list[Result]:
    """This command's rows (tasks x methods, same models and settings), computed now or found done.

    Of several rows under one key (a failed row, then its retry) the last is the one that counts.
    """
    by_key = {row.key: row for row in read_results(out.results_path)}
    return [by_key[key] for key in keys if key in by_key]


def _emit(rows: list[Result], fmt: str, *, show_task: bool) -> None:
    """The rows on stdout; in a table a failed row shows FAILED and no numbers, and its error goes to stderr."""
    columns = [c for c in TABLE_COLUMNS if show_task or c[0] != "task"]
    shown = [asdict(r) for r in rows]
    if fmt in ("table", "csv"):
        hidden = ("macro_f1", "accuracy", "invalid_rate")
        shown = [{**row, **dict.fromkeys(hidden)} if row["status"] != "done" else row for row in shown]
        shown = [{**row, "status": row["status"].upper() if row["status"] != "done" else "ok"} for row in shown]
    click.echo(_render(shown, fmt, columns))
    for r in rows:
        if r.failed:
            click.echo(f"failed: {r.task} {r.method}: {r.error} (run the same command again to retry)", err=True)


def _render(rows: list[dict[str, Any]], fmt: str, columns: list[tuple[str, str, str]]) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2, ensure_ascii=False)
    if fmt == "jsonl":
        return "\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[c[0] for c in columns], extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue().rstrip("\n")
    return format_table(rows, columns)


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A plain aligned text table: (key, header, format) per column."""
    cells = [[header for _, header, _ in columns]]
    cells += [
        [fmt.format(row.get(key)) if row.get(key) is not None else "-" for key, _, fmt in columns] for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class _errors_as_one_line:  # noqa: N801 (used like a function: `with _errors_as_one_line():`)
    """PromptMIIError -> `Error: <one line>` and exit 1; Ctrl-C -> exit 130 (rows written so far are kept)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, error: BaseException | None, _tb: object) -> bool:
        if isinstance(error, PromptMIIError):
            raise Failure(first_line(error)) from None
        if isinstance(error, KeyboardInterrupt):
            click.echo("\ninterrupted: finished rows are saved; run the same command again to resume", err=True)
            sys.exit(130)
        return False


if __name__ == "__main__":  # `python -m promptmii.cli`, e.g. under `accelerate launch -m`
    main()
