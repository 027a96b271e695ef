"""Run methods x tasks into a results directory: one Result row per (task, method), resumable.

This is `promptmii eval` and the scoring half of `promptmii induce`. For each task it draws the n
shown examples and m test examples once (seeded), so every method sees the same rows, then asks each
method for its prefix and the follower for its answers. Rows already in results.jsonl are skipped,
so a killed run loses at most the (task, method) it was on.

A row is keyed by its task, method and fingerprint: the settings that decide its numbers and a hash
of the task's data, so a changed file is computed again and an unchanged one reused. A failed row (a
generator or follower call that failed, an empty instruction) is written as failed and computed
again by the next run. Any failed follower call fails the row: INVALID must only ever mean that the
follower answered something that is not a label, never that it could not be asked.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from promptmii import metaprompts, models, prompts
from promptmii.backends import Backend, get_backend, redact
from promptmii.baselines import METHOD_HELP, Method, build_prefix, parse_method
from promptmii.cache import CachedBackend
from promptmii.data import Task, draw, task_hash
from promptmii.errors import PromptMIIError
from promptmii.evaluate import DECODING, FollowerRun, check_inputs_fit, run_follower
from promptmii.induce import InduceConfig
from promptmii.metrics import Scores
from promptmii.results import (
    DONE,
    FAILED,
    Result,
    ResultsDir,
    Sample,
    fingerprint,
    git_sha,
    new_run_id,
    promptmii_version,
)
from promptmii.search import SEARCH_METHODS, SearchConfig, require_gepa

log = logging.getLogger(__name__)

DEFAULT_BACKEND = f"llamacpp:{models.DEFAULT_MODEL}"
# A trained generator shipped in the package (promptmii/adapters/) is the default one, and then the default
# methods score it instead of the untrained generator; without one they are Naive, ICL and Zero.
DEFAULT_GENERATOR = models.default_generator()
DEFAULT_METHODS_UNTRAINED = ("naive", "icl", "promptmii-zero")
DEFAULT_METHODS = ("naive", "icl", "promptmii") if DEFAULT_GENERATOR else DEFAULT_METHODS_UNTRAINED
# The searches propose (APE) and reflect (GEPA) with the untrained generator, as in the reference.
GENERATOR_ROLE = {
    "promptmii-zero": "base_generator",
    "promptmii": "generator",
    "ape": "base_generator",
    "gepa": "base_generator",
}


@dataclass(frozen=True)
class EvalConfig:
    """What `promptmii eval` runs. `generator` (method promptmii) and `base_generator` (promptmii-zero, APE, GEPA)
    are separate fields: setting base_generator here does not change the trained generator, unlike the CLI's
    lone --base-generator, which also drops the shipped adapter (a LoRA for the bundled 1.5B only)."""

    methods: tuple[str, ...] = field(default=DEFAULT_METHODS, metadata={"help": f"Comma-separated: {METHOD_HELP}."})
    n: int = field(default=20, metadata={"help": "Labelled examples shown to the generator (icl's default K)."})
    m: int = field(default=100, metadata={"help": "Held-out examples scored per task."})
    follower: str = field(default=DEFAULT_BACKEND, metadata={"help": "Backend spec of the frozen follower."})
    base_generator: str = field(default=DEFAULT_BACKEND, metadata={"help": "Untrained generator (promptmii-zero)."})
    generator: str | None = field(
        default=DEFAULT_GENERATOR, metadata={"help": "Trained generator (method promptmii); a shipped one by default."}
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "Meta-prompt: a built-in name, tuned/NAME or a template file "
            f"[auto: the tuned template registered for the generator, else {prompts.DEFAULT_TEMPLATE}]."
        },
    )
    max_instruction_tokens: int = field(default=1024, metadata={"help": "Generator token limit."})
    decoding: str = field(
        default="generate",
        metadata={
            "help": "Follower decoding: free generation + parsing (the paper's), label scoring, or a label grammar.",
            "choices": DECODING,
        },
    )
    ape_budget: int = field(default=SearchConfig.ape_budget, metadata={"help": "APE's follower calls per task."})
    gepa_budget: int = field(default=SearchConfig.gepa_budget, metadata={"help": "GEPA's metric calls per task."})
    seed: int = field(default=0, metadata={"help": "Draws the shown and scored examples."})
    cache: bool = field(default=True, metadata={"help": "Reuse LLM calls from $PROMPTMII_HOME/cache.sqlite."})

    def __post_init__(self) -> None:
        parsed = [parse_method(m) for m in self.methods]  # raises on unknown methods
        if not parsed:
            raise PromptMIIError("no methods given (e.g. --methods naive,icl:20,promptmii-zero)")
        if self.decoding not in DECODING:
            raise PromptMIIError(f"unknown decoding '{self.decoding}'; choose one of: {', '.join(DECODING)}")
        if self.n < 1 or self.m < 1:
            raise PromptMIIError(f"n and m must be at least 1 (got n={self.n}, m={self.m})")
        if any(m.name == "promptmii" for m in parsed) and not self.generator:
            raise PromptMIIError(
                "method promptmii needs --generator (a trained generator); use promptmii-zero for the untrained model"
            )
        if any(m.name == "gepa" for m in parsed):
            require_gepa()  # before any task runs, not when the first GEPA search starts
        self.induce_config  # noqa: B018 (building it validates template and max_instruction_tokens)
        self.search_config  # noqa: B018 (and this the search budgets)

    @property
    def parsed_methods(self) -> list[Method]:
        return [parse_method(m) for m in self.methods]

    @property
    def induce_config(self) -> InduceConfig:
        return InduceConfig(template=self.template, max_tokens=self.max_instruction_tokens, seed=self.seed)

    @property
    def search_config(self) -> SearchConfig:
        return SearchConfig(
            ape_budget=self.ape_budget,
            gepa_budget=self.gepa_budget,
            reflection_max_tokens=self.max_instruction_tokens,
            decoding=self.decoding,
            seed=self.seed,
        )

    @property
    def max_shots(self) -> int:
        return max(m.n_shots(self.n) for m in self.parsed_methods)


@dataclass
class Backends:
    """The models of a run, loaded on first use: loading a generator nobody asked for costs seconds."""

    config: EvalConfig
    overrides: dict[str, Backend] = field(default_factory=dict)
    _loaded: dict[str, Backend] = field(default_factory=dict)

    def get(self, role: str) -> Backend:
        """role: 'follower', 'base_generator' or 'generator'."""
        spec = getattr(self.config, role)
        if role in self.overrides:
            return self.overrides[role]
        if spec not in self._loaded:
            backend = get_backend(spec)
            if self.config.cache:
                backend = CachedBackend(backend, models.promptmii_home() / "cache.sqlite")
            self._loaded[spec] = backend
        return self._loaded[spec]

    def template(self, role: str) -> metaprompts.Template:
        """The meta-prompt of a generator role: --template, else the trained generator's, else the tuned one."""
        return metaprompts.for_backend(self.config.template, self.get(role), self.get("follower").model_id)


def run_eval(
    tasks: list[Task], config: EvalConfig, out: ResultsDir, *, backends: Backends | None = None, quiet: bool = False
) -> list[Result]:
    """Evaluate every method on every task; return the rows written in this call (failed ones included)."""
    backends = backends or Backends(config)
    run_id = new_run_id()
    sha = git_sha()
    written = []
    with out.lock():
        keys = result_keys(tasks, config, backends, out)
        done = out.done_keys()
        skipped = sum(key in done for key in keys)
        with tqdm(total=len(keys), initial=skipped, desc="tasks x methods", disable=quiet, unit="run") as bar:
            for i, task in enumerate(tasks):
                mine = keys[i * len(config.parsed_methods) : (i + 1) * len(config.parsed_methods)]
                for result, samples in _evaluate_task(task, config, backends, mine, done, out.directory, quiet):
                    result = _stamp(result, run_id, sha)
                    out.append(result, [_stamp_sample(s, run_id) for s in samples])
                    written.append(result)
                    bar.update(1)
                    shown = "FAILED" if result.failed else f"F1={result.macro_f1:.3f}"
                    bar.set_postfix_str(f"{task.id} {result.method} {shown}")
    failed = [r for r in written if r.failed]
    if failed:
        log.warning(
            "%d of %d rows failed (first: %s %s: %s); run the same command again to retry them",
            len(failed),
            len(written),
            failed[0].task,
            failed[0].method,
            failed[0].error,
        )
    return written


def result_keys(
    tasks: list[Task], config: EvalConfig, backends: Backends, out: ResultsDir | None = None
) -> list[tuple[str, str, str]]:
    """The keys (task, method, fingerprint) of the rows this config asks for, tasks-major order.

    A done row from before schema 4 has a fingerprint without the data hash; given `out`, it keeps its
    old key (and stays done) while the rows it scored, in samples.jsonl, are the rows this data scores.
    """
    keys, old_keys = [], {}
    for task in tasks:
        data = task_hash(task)
        for method in config.parsed_methods:
            keys.append((task.id, method.spec, _fingerprint(method, config, backends, data)))
            old_keys[len(keys) - 1] = (task.id, method.spec, _fingerprint(method, config, backends, None))
    if out is None:
        return keys
    done = out.done_keys()
    legacy = {i: old for i, old in old_keys.items() if keys[i] not in done and old in done}
    if legacy:
        scored = out.samples_of(set(legacy.values()))
        tests = {t.id: [(e.text, e.label) for e in draw(t, 0, config.m, config.seed)[1]] for t in tasks}
        for i, old in legacy.items():
            if scored.get(old) == tests[old[0]]:
                keys[i] = old
            else:
                log.info("%s %s: its row predates data hashes and its scored rows differ: computing it again", *old[:2])
    return keys


def _evaluate_task(
    task: Task,
    config: EvalConfig,
    backends: Backends,
    keys: list[tuple[str, str, str]],
    done: set[tuple],
    directory: Path,
    quiet: bool,
) -> Iterator[tuple[Result, list[Sample]]]:
    follower = backends.get("follower")
    todo = []
    for method, key in zip(config.parsed_methods, keys, strict=True):
        if key in done:
            log.info("skip %s %s: already in results", task.id, method.spec)
        else:
            todo.append((method, key[2]))
    if not todo:
        return
    shots, test = draw(task, config.max_shots, config.m, config.seed)
    warnings_m = (
        [f"test side has {len(test)} rows, fewer than m={config.m}: scored all of them"] if len(test) < config.m else []
    )
    check_inputs_fit(follower, task.id, task.labels, test)
    longest_input = max((e.text for e in test), key=len)
    data = task_hash(task)
    for method, fp in todo:
        start = time.perf_counter()
        role = GENERATOR_ROLE.get(method.name)
        generator = backends.get(role) if role else None
        prefix = build_prefix(
            method,
            shots[: method.n_shots(config.n)],
            task.labels,
            follower=follower,
            longest_input=longest_input,
            generator=generator,
            induce_config=config.induce_config,
            template=backends.template(role) if role and method.name not in SEARCH_METHODS else None,
            search_config=config.search_config,
            search_dir=directory / "search" / f"{task.id}.{method.spec}.{fp}",
            decoding=config.decoding,
            quiet=quiet,
        )
        warnings = list(prefix.warnings) + warnings_m
        error = prefix.failure
        if error:  # nothing to score: the follower is not asked, the row is failed
            run = FollowerRun([], [], [], Scores(0.0, 0.0, 0.0, 0), 0, 0, 0, 0, 0, 0.0)
        else:
            run = run_follower(
                follower,
                prefix.text,
                task.labels,
                test,
                decoding=config.decoding,
                desc=f"{task.id} {method.spec}",
                quiet=quiet,
            )
            failures = [e for e in run.errors if e is not None]
            if failures:
                error = f"{len(failures)} of {len(test)} follower calls failed (first: {failures[0]})"
        if error:
            warnings.append(error)
        spend, search = prefix.spend, prefix.search
        result = Result(
            task=task.id,
            method=method.spec,
            n_shots=method.n_shots(config.n),
            n_shots_used=prefix.n_shots_used,
            seed=config.seed,
            m=len(test),
            follower=follower.model_id,
            generator=generator.model_id if generator else None,
            macro_f1=run.scores.macro_f1,
            accuracy=run.scores.accuracy,
            invalid_rate=run.scores.invalid_rate,
            prompt_tokens_per_query=run.prompt_tokens_per_query,
            follower_prompt_tokens=run.prompt_tokens + spend.follower_prompt_tokens,
            follower_completion_tokens=run.completion_tokens + spend.follower_completion_tokens,
            generator_prompt_tokens=spend.generator_prompt_tokens,
            generator_completion_tokens=spend.generator_completion_tokens,
            generator_calls=spend.generator_calls,
            follower_calls=run.calls + spend.follower_calls,
            llm_calls=spend.generator_calls + spend.follower_calls + run.calls,
            cache_hits=run.cache_hits + spend.cache_hits,
            seconds=round(time.perf_counter() - start, 3),
            instruction=prefix.text if generator else "",
            warnings=warnings,
            config=written_config(config),
            fingerprint=fp,
            decoding=config.decoding,
            token_counter=follower.token_counter,
            search_budget=search.budget if search else None,
            search_follower_calls=spend.follower_calls if search else 0,
            budget_exhausted=search.budget_exhausted if search else False,
            candidates=len(search.candidates) if search else 0,
            generator_follower=_redacted(models.trained_for(config.generator)) if role == "generator" else None,
            model_seconds=round(run.seconds + spend.seconds, 3),
            template=prefix.instruction.template if prefix.instruction else None,
            template_sha256=prefix.instruction.template_sha256 if prefix.instruction else None,
            check=prefix.check.as_record() if prefix.check and not prefix.check.error else None,
            status=FAILED if error else DONE,
            error=error,
            data_hash=data,
        )
        if error:  # a failed row keeps no samples: its retry writes them, once, under the same key
            yield result, []
            continue
        samples = [
            Sample(task.id, method.spec, result.fingerprint, i, e.text, e.label, reply, pred, error)
            for i, (e, reply, pred, error) in enumerate(
                zip(test, run.replies, run.predictions, run.errors, strict=True)
            )
        ]
        yield result, samples


def _fingerprint(method: Method, config: EvalConfig, backends: Backends, data: str | None) -> str:
    """What decides this method's numbers on a task, its data included; a done row with the same one is done.

    `data` is the task's hash (data.task_hash); None gives the fingerprint of rows from before schema 4.
    """
    role = GENERATOR_ROLE.get(method.name)
    settings: dict[str, Any] = {
        "n_shots": method.n_shots(config.n),
        "m": config.m,
        "seed": config.seed,
        "follower": backends.get("follower").model_id,
    }
    if config.decoding != "generate":  # only when set, so rows made before decoding modes existed stay done
        settings["decoding"] = config.decoding
    if role:
        settings["generator"] = backends.get(role).model_id
    if method.name in SEARCH_METHODS:
        settings["search"] = config.search_config.settings(method.name)
    elif role:
        template = backends.template(role)
        settings |= {"template": template.name, "max_tokens": config.max_instruction_tokens}
        if method.check:  # only when set, so rows of the plain methods keep their fingerprints
            settings["check"] = True
        if data is not None:  # rows from before schema 4 named their template but did not hash it
            settings["template_sha256"] = template.sha256
    if data is not None:
        settings["data"] = data
    return fingerprint(**settings)


def written_config(config: EvalConfig) -> dict[str, Any]:
    """The config as a row stores it: JSON types, as a reader of results.jsonl sees it, and specs redacted."""
    return {k: _redacted(v) for k, v in json.loads(json.dumps(asdict(config))).items()}


def _redacted(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def _stamp(result: Result, run_id: str, sha: str) -> Result:
    return replace(
        result,
        run_id=run_id,
        git_sha=sha,
        promptmii_version=promptmii_version(),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def _stamp_sample(sample: Sample, run_id: str) -> Sample:
    return replace(sample, run_id=run_id)


def results_dir(path: str | Path) -> ResultsDir:
    return ResultsDir(Path(path))
