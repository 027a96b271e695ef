"""Tune the meta-prompt once per generator + follower pair: GEPA over train tasks, selection on validation.

For a generator that cannot be trained (an API model, or one we only serve), the lever is the
meta-prompt. Per-task searches (APE, GEPA in promptmii.search) spend hundreds of calls on every new
task; here the *template* is searched once, across many training tasks, and then any new task still
gets its instruction in one call.

The search is the gepa library's optimizer with our adapter. A candidate is {"meta_prompt": text};
one data instance is one train-split task with its seeded n shots and m scoring examples; evaluating
a candidate on a task is induce (one generator call with the candidate filled in) + the follower on
the m examples, scored by macro-F1 (the meta-training reward). gepa reflects on minibatches of
tasks (the instruction each task got, the follower's mistakes, its score) and keeps candidates by
their mean score on a few other train tasks (its valset). Then the best few candidates and the
starting template are scored on the validation split, never on test, and the best is written as a
template file whose header says what it was tuned for (promptmii.metaprompts).

The budget is in LLM calls of the search's evaluations (one generator call + m follower calls per
task) and is never crossed. Reflection calls (one a gepa iteration) and the validation scoring are
counted and reported beside it. Every call goes through a journal in the run directory, and gepa's
state is saved there each iteration, so a killed run that is started again replays and goes on.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tqdm import tqdm

from promptmii import metaprompts, models, prompts
from promptmii.backends import Backend, Chat, Generation, GenParams, get_backend
from promptmii.cache import CachedBackend
from promptmii.data import Example, Task, draw, load_corpus
from promptmii.errors import BackendError, DataError, PromptMIIError
from promptmii.evaluate import DECODING, Spend, run_follower
from promptmii.induce import InduceConfig, induce
from promptmii.results import atomic_write, git_sha
from promptmii.search import MAX_CONSECUTIVE_FAILURES, BudgetExhausted, ReflectionLM, RunLog

log = logging.getLogger(__name__)

DEFAULT_BACKEND = f"llamacpp:{models.DEFAULT_MODEL}"
COMPONENT = "meta_prompt"  # the one text component gepa evolves
MISTAKES_SHOWN = 3  # follower mistakes per task in the reflection prompt: enough to see a pattern, short
TEXT_SHOWN = 300  # characters of each mistaken input shown to the reflection LM
# The bundled 0.5B's terse instructions ran to the 1,024-token limit on 18 of 23 test tasks, looping a numbered
# list; the reflection LM sees the start of such an instruction and is told it was cut off.
INSTRUCTION_SHOWN = 1500  # characters of each generated instruction shown to the reflection LM
# The bundled 1.5B, reflecting greedily, handed back the meta-prompt it was shown (unchanged but for the
# final newline) in 5 of 5 iterations of a first run, and gepa spent 2 x minibatch tasks of the budget on
# scoring each copy. An echo is asked again, sampled, with a new seed each time.
ECHO_RETRIES = 3
ECHO_TEMPERATURE = 0.8
ECHO_WRAPPING_CHARS = 40  # a heading or a label around an unchanged template is still an echo
# Each of the bundled 0.5B's 7 proposals in its first run lacked {labels} or {examples} (a loop of numbered
# clues instead), and a candidate without them scores 0 on every task. Such a reply is answered in the same
# chat with what is missing, and the reflection LM writes the meta-prompt again.
PLACEHOLDER_RETRIES = 2

# gepa's reflection prompt speaks of "instructions for an assistant"; ours has to say that the text is a
# template for another model, with placeholders that must survive. <curr_param> and <side_info> are gepa's.
REFLECTION_PROMPT = """I use the meta-prompt below to ask a language model (the generator) to write the instruction for a \
text classification task. Before the call, {labels} is replaced by the task's label names and {examples} by labelled \
examples of the task. A second model (the follower) then labels new texts of the task, following that instruction.

Meta-prompt:
```
<curr_param>
```

Here is how it did on a few tasks: the instruction the generator wrote, the follower's macro-F1 with it (0 to 1, \
higher is better) and some of the follower's mistakes:
```
<side_info>
```

Write an improved meta-prompt, so that the generator writes instructions that help the follower label new texts \
correctly on any classification task, not only these. Change what the mistakes show to be missing or misleading; \
do not hand back the meta-prompt unchanged. Keep it general: do not name these tasks or their labels. \
It must contain the placeholders {labels} and {examples}, each exactly once. Reply with the new meta-prompt \
within ``` blocks."""


@dataclass(frozen=True)
class TuneConfig:
    """Settings of one tuning run; all but budget and finalists must match when a run is resumed."""

    corpus: str = field(metadata={"help": "corpus directory (tasks.jsonl + instances/); train and validation splits"})
    generator: str = field(default=DEFAULT_BACKEND, metadata={"help": "backend spec of the generator to tune for"})
    follower: str = field(default=DEFAULT_BACKEND, metadata={"help": "backend spec of the frozen follower"})
    reflection: str = field(default="", metadata={"help": "backend spec of gepa's reflection LM [the generator]"})
    budget: int = field(default=3000, metadata={"help": "LLM calls of the search (tasks x (1 + m) per candidate)"})
    n: int = field(default=20, metadata={"help": "labelled examples the generator sees per task"})
    m: int = field(default=20, metadata={"help": "examples the follower labels per task to score a candidate"})
    train_tasks: int = field(default=0, metadata={"help": "train-split tasks used, seeded sample [0 = all]"})
    pareto_tasks: int = field(default=6, metadata={"help": "of those, tasks that score candidates (gepa's valset)"})
    minibatch: int = field(default=3, metadata={"help": "tasks gepa reflects on per iteration"})
    finalists: int = field(default=3, metadata={"help": "best candidates scored on validation, besides the start"})
    validation_tasks: int = field(default=0, metadata={"help": "validation-split tasks for selection [0 = all]"})
    start: str = field(default=prompts.DEFAULT_TEMPLATE, metadata={"help": "template the search starts from"})
    max_instruction_tokens: int = field(default=1024, metadata={"help": "generator token limit"})
    decoding: str = field(default="generate", metadata={"help": "follower decoding: " + " | ".join(DECODING)})
    seed: int = field(default=0, metadata={"help": "task sample, shots, gepa's minibatches and selection"})

    def __post_init__(self) -> None:
        if self.budget < 1 or self.n < 1 or self.m < 1 or self.minibatch < 1 or self.finalists < 0:
            raise PromptMIIError(
                f"budget, n, m and minibatch must be at least 1 and finalists at least 0 (got budget={self.budget}, "
                f"n={self.n}, m={self.m}, minibatch={self.minibatch}, finalists={self.finalists})"
            )
        if self.pareto_tasks < 1 or self.train_tasks < 0 or self.validation_tasks < 0:
            raise PromptMIIError(
                f"pareto_tasks must be at least 1, train_tasks and validation_tasks at least 0 (0 = all); got "
                f"{self.pareto_tasks}, {self.train_tasks}, {self.validation_tasks}"
            )
        if self.train_tasks and self.train_tasks <= self.pareto_tasks:
            raise PromptMIIError(
                f"train_tasks={self.train_tasks} leaves no task to reflect on after pareto_tasks={self.pareto_tasks}; "
                "raise --train-tasks or lower --pareto-tasks"
            )
        if self.decoding not in DECODING:
            raise PromptMIIError(f"unknown decoding '{self.decoding}'; choose one of: {', '.join(DECODING)}")
        start = metaprompts.named(self.start)  # raises with "did you mean"
        if metaprompts.missing_placeholders(start.text):
            raise PromptMIIError(f"start template '{self.start}' lacks {metaprompts.missing_placeholders(start.text)}")

    @property
    def task_cost(self) -> int:
        """LLM calls to score a candidate on one task: its generator call and m follower calls."""
        return 1 + self.m

    def resumable_settings(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("budget", "finalists")}


@dataclass(frozen=True)
class TuneTask:
    """gepa's data instance: one task, with the shots its generator sees and the examples that score it."""

    task: str
    labels: tuple[str, ...]
    shots: tuple[Example, ...]
    test: tuple[Example, ...]


@dataclass(frozen=True)
class TaskScore:
    """One candidate on one task: what the generator wrote, how the follower did, its mistakes."""

    task: str
    labels: tuple[str, ...]
    instruction: str
    macro_f1: float
    invalid_rate: float
    mistakes: tuple[tuple[str, str, str], ...]  # (input, gold, prediction), the first few
    problem: str = ""  # why the candidate scored 0 without the follower: no placeholders, generator failed
    cut_off: bool = False  # the generator's reply reached its token limit


def instances(tasks: list[Task], config: TuneConfig) -> list[TuneTask]:
    """Each task's seeded n shots and m scoring examples, drawn as `eval` draws them."""
    out = []
    for task in tasks:
        shots, test = draw(task, config.n, config.m, config.seed)
        out.append(TuneTask(task.id, task.labels, tuple(shots), tuple(test)))
    return out


def split_tasks(train: list[Task], validation: list[Task], config: TuneConfig) -> tuple[list, list, list]:
    """(reflection tasks, pareto tasks, validation tasks): a seeded sample of the train split, cut in two."""
    shuffled = sorted(train, key=lambda t: t.id)
    random.Random(f"{config.seed}/tune").shuffle(shuffled)
    if config.train_tasks:
        shuffled = shuffled[: config.train_tasks]
    if len(shuffled) <= config.pareto_tasks:
        raise DataError(
            f"{config.corpus}: {len(shuffled)} train tasks, not enough for pareto_tasks={config.pareto_tasks} plus "
            "one to reflect on (lower --pareto-tasks)"
        )
    val = sorted(validation, key=lambda t: t.id)[: config.validation_tasks or None]
    pareto, reflect = shuffled[: config.pareto_tasks], shuffled[config.pareto_tasks :]
    return instances(reflect, config), instances(pareto, config), instances(val, config)


# ---------------------------------------------------------------- the ledger


@dataclass
class TuneLedger:
    """The one door tuning uses to its models: it counts every call and holds the search's budget."""

    generator: Backend
    follower: Backend
    reflector: Backend
    budget: int  # LLM calls of evaluations (generator + follower); reflection is counted apart
    induce_config: InduceConfig
    decoding: str = "generate"
    spend: Spend = field(default_factory=Spend)
    used: int = 0
    reflection_calls: int = 0
    exhausted: bool = False
    progress: tqdm | None = None
    _failures: list[str] = field(default_factory=list)

    def can_afford(self, calls: int) -> bool:
        return self.used + calls <= self.budget

    def score(self, meta_prompt: str, instance: TuneTask) -> TaskScore:
        """Induce with `meta_prompt` on one task and let the follower label its m examples."""
        meta_prompt = normalized(meta_prompt)
        missing = metaprompts.missing_placeholders(meta_prompt)
        if missing:  # no call is made, so none is counted
            problem = (
                f"The meta-prompt lacks the placeholder{'s' if len(missing) > 1 else ''} {' and '.join(missing)}, so "
                "the generator never sees the task's labels or examples; score 0. Keep {labels} and {examples}."
            )
            return TaskScore(instance.task, instance.labels, "", 0.0, 0.0, (), problem)
        cost = 1 + len(instance.test)
        if not self.can_afford(cost):
            self.exhausted = True
            raise BudgetExhausted(f"{self.used} of {self.budget} LLM calls used, {cost} more needed")
        template = metaprompts.Template("candidate", meta_prompt)
        instruction = induce(
            list(instance.shots), instance.labels, self.generator, self.induce_config, template=template
        )
        self._count(1)
        self.spend.generator_calls += 1
        self.spend.generator_prompt_tokens += instruction.prompt_tokens
        self.spend.generator_completion_tokens += instruction.completion_tokens
        self.spend.cache_hits += int(instruction.cached)
        if instruction.error:
            self._failures.append(instruction.error)
            if len(self._failures) >= MAX_CONSECUTIVE_FAILURES:
                raise BackendError(
                    f"tune: the generator failed {len(self._failures)} times in a row ({instruction.error})"
                )
            problem = f"The generator call failed ({instruction.error}); score 0."
            return TaskScore(instance.task, instance.labels, "", 0.0, 0.0, (), problem)
        self._failures.clear()
        test = list(instance.test)
        run = run_follower(self.follower, instruction.text, instance.labels, test, decoding=self.decoding)
        self.spend.add_run(run)
        self._count(run.calls)
        mistakes = tuple((e.text, e.label, p) for e, p in zip(test, run.predictions, strict=True) if p != e.label)[
            :MISTAKES_SHOWN
        ]
        return TaskScore(
            instance.task,
            instance.labels,
            instruction.text,
            run.scores.macro_f1,
            run.scores.invalid_rate,
            mistakes,
            cut_off=instruction.completion_tokens >= self.induce_config.max_tokens,
        )

    def ask_generator(self, chat: Chat, params: GenParams) -> Generation:
        """One reflection call (search.ReflectionLM calls it by this name); counted apart from the budget."""
        [generation] = self.reflector.generate([chat], params)
        self.reflection_calls += 1
        self.spend.add_generation(generation)
        return generation

    def _count(self, calls: int) -> None:
        self.used += calls
        if self.progress is not None:
            self.progress.update(calls)


def normalized(meta_prompt: str) -> str:
    """The text scored and saved for a candidate: stripped, one final newline (as the built-in templates end).

    The generator's greedy instruction changes with a trailing newline, and with it a task's score (by up to
    0.22 macro-F1 at m=20 in the first tuning run): two candidates that differ only so are one candidate.
    """
    return meta_prompt.strip() + "\n"


def shown_meta_prompt(reflection_prompt: str) -> str | None:
    """The meta-prompt a REFLECTION_PROMPT shows, between its first fence and the fence before the scores."""
    _, sep, rest = reflection_prompt.partition("Meta-prompt:\n```\n")
    body, sep2, _after = rest.partition("\n```\n\nHere is how it did")
    return body if sep and sep2 else None


def is_echo(proposed: str, shown: str) -> bool:
    """The shown meta-prompt handed back, whitespace aside, or inside a few characters of wrapping (a heading).

    The bundled 1.5B's sampled replies also echoed as "### Meta-prompt" and then the template it was shown.
    """
    proposed, shown = normalized(proposed), normalized(shown)
    return shown.strip() in proposed and len(proposed) - len(shown) <= ECHO_WRAPPING_CHARS


def proposal(reply: str) -> str:
    """The new meta-prompt in a reflection reply, as gepa's proposer reads it (the text within ``` blocks)."""
    from gepa.strategies.instruction_proposal import InstructionProposalSignature

    return InstructionProposalSignature.output_extractor(reply)["new_instruction"]


class TuneReflection(ReflectionLM):
    """gepa's reflection LM, greedy first; a reply that echoes the shown meta-prompt, or drops a placeholder,
    is asked again."""

    def __init__(self, ledger: TuneLedger, max_tokens: int, seed: int):
        super().__init__(ledger, max_tokens, seed)  # type: ignore[arg-type]
        self.echoes = 0  # echoed replies, each followed by a sampled retry while retries last
        self.placeholder_misses = 0  # replies without {labels} or {examples}, each followed by a retry

    def __call__(self, prompt: str | Chat) -> str:
        reply = super().__call__(prompt)
        shown = shown_meta_prompt(prompt) if isinstance(prompt, str) else None
        for attempt in range(1, ECHO_RETRIES + 1):
            if shown is None or not is_echo(proposal(reply), shown):
                break
            self.echoes += 1
            reply = self.ask(
                prompt, replace(self.params, temperature=ECHO_TEMPERATURE, seed=self.params.seed + attempt)
            )
        return self._with_placeholders(prompt, reply)

    def _with_placeholders(self, prompt: str | Chat, reply: str) -> str:
        """The reply, or a retry in the same chat told which placeholders it dropped; the last reply if none has them."""
        chat = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        for _ in range(PLACEHOLDER_RETRIES):
            missing = metaprompts.missing_placeholders(proposal(reply))
            if not missing:
                break
            self.placeholder_misses += 1
            chat = [
                *chat,
                {"role": "assistant", "content": reply},
                {"role": "user", "content": placeholder_nudge(missing)},
            ]
            reply = self.ask(chat, self.params)
        return reply


def placeholder_nudge(missing: list[str]) -> str:
    """The follow-up message to a proposal that lacks placeholders."""
    plural = "s" if len(missing) > 1 else ""
    return (
        f"Your meta-prompt lacks the placeholder{plural} {' and '.join(missing)}: without {'them' if plural else 'it'} "
        "the generator never sees the task's labels or examples, and the meta-prompt scores 0 on every task. "
        "Write the whole improved meta-prompt again, short, with {labels} and {examples} each exactly once, "
        "within ``` blocks."
    )


# ---------------------------------------------------------------- gepa's adapter


def task_feedback(score: TaskScore) -> str:
    """What the reflection LM reads about one task, besides the instruction and the mistakes."""
    if score.problem:
        return score.problem
    parts = [f"Follower macro-F1 {score.macro_f1:.3f}."]
    if score.invalid_rate:
        parts.append(f"{score.invalid_rate:.0%} of the follower's replies were not one of the labels.")
    if not score.instruction:
        parts.append("The generator wrote an empty instruction.")
    if score.cut_off:
        parts.append(
            "The generator's reply ran to its token limit and was cut off (it rambled or repeated itself); "
            "the follower read all of it before every input."
        )
    if not score.mistakes:
        parts.append("The follower made no mistakes.")
    return " ".join(parts)


def shown_instruction(instruction: str) -> str:
    """A generated instruction as the reflection LM reads it: its first INSTRUCTION_SHOWN characters."""
    if not instruction:
        return "(none)"
    if len(instruction) <= INSTRUCTION_SHOWN:
        return instruction
    return f"{instruction[:INSTRUCTION_SHOWN]}... [{len(instruction) - INSTRUCTION_SHOWN} more characters]"


def format_mistakes(score: TaskScore) -> str:
    lines = []
    for text, gold, prediction in score.mistakes:
        short = text if len(text) <= TEXT_SHOWN else text[:TEXT_SHOWN] + "..."
        lines.append(f"Input: {short}\nCorrect label: {gold}; follower answered: {prediction}")
    return "\n\n".join(lines) or "(none)"


class MetaPromptAdapter:
    """gepa's GEPAAdapter protocol: a candidate is a meta-prompt, a data instance is a task.

    As gepa's contract asks, one task's failure (no placeholders, a failed generator call) scores 0.0
    with a reason; only systemic faults raise (the budget, a generator that keeps failing).
    """

    propose_new_texts = None  # gepa's own reflective proposer, with our reflection prompt

    def __init__(self, ledger: TuneLedger):
        self.ledger = ledger

    def evaluate(self, batch: list[TuneTask], candidate: dict[str, str], capture_traces: bool = False) -> Any:
        from gepa.core.adapter import EvaluationBatch

        scores = [self.ledger.score(candidate[COMPONENT], instance) for instance in batch]
        outputs = [{"task": s.task, "instruction": s.instruction, "macro_f1": s.macro_f1} for s in scores]
        return EvaluationBatch(
            outputs=outputs, scores=[s.macro_f1 for s in scores], trajectories=scores if capture_traces else None
        )

    def make_reflective_dataset(
        self, candidate: dict[str, str], eval_batch: Any, components_to_update: list[str]
    ) -> dict[str, list[dict[str, str]]]:
        records = [
            {
                "Task": f"labels: {prompts.label_list(s.labels)}",
                "Generated instruction": shown_instruction(s.instruction),
                "Follower mistakes": format_mistakes(s),
                "Feedback": task_feedback(s),
            }
            for s in eval_batch.trajectories or []
        ]
        return dict.fromkeys(components_to_update, records)

    def get_adapter_state(self) -> dict[str, Any]:
        return {
            "spend": asdict(self.ledger.spend),
            "used": self.ledger.used,
            "reflections": self.ledger.reflection_calls,
        }

    def set_adapter_state(self, state: dict[str, Any]) -> None:
        if state:  # empty on a fresh run
            self.ledger.spend = Spend(**state["spend"])
            self.ledger.used = state["used"]
            self.ledger.reflection_calls = state["reflections"]
            if self.ledger.progress is not None:  # a resumed run's bar starts where the run stopped
                self.ledger.progress.n = self.ledger.used
                self.ledger.progress.refresh()


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class Finalist:
    """A candidate scored on the validation split."""

    index: int  # gepa's candidate index; 0 is the start template
    text: str
    pareto_score: float  # gepa's valset (train tasks) mean macro-F1
    validation_macro_f1: float
    per_task: dict[str, float]


def tune(config: TuneConfig, run_dir: Path, *, register: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Search, select on validation, write run_dir/template.txt (and register it); resumable via run_dir."""
    import gepa  # the optimizer loads only for tuning
    from gepa.core.result import GEPAResult
    from gepa.core.state import GEPAState

    began = time.perf_counter()
    _check_run_dir(config, run_dir)
    corpus = Path(config.corpus)
    reflect, pareto, validation = split_tasks(
        load_corpus(corpus, split="train"), load_corpus(corpus, split="validation"), config
    )
    minibatch = min(config.minibatch, len(reflect))
    per_iteration = (2 * minibatch + len(pareto)) * config.task_cost  # parent + child minibatch, then a full val
    needed = len(pareto) * config.task_cost + per_iteration
    if config.budget < needed:
        raise DataError(
            f"budget {config.budget} is too small: scoring the start template on {len(pareto)} tasks and one "
            f"iteration take {needed} LLM calls at m={config.m} (raise --budget or lower --m, --pareto-tasks)"
        )
    journal = run_dir / "calls.sqlite"
    generator = CachedBackend(get_backend(config.generator), journal)
    follower = CachedBackend(get_backend(config.follower), journal)
    reflector = CachedBackend(get_backend(config.reflection), journal) if config.reflection else generator
    induce_config = InduceConfig(max_tokens=config.max_instruction_tokens, seed=config.seed)
    start = metaprompts.named(config.start)

    with tqdm(total=config.budget, desc="tune search", disable=quiet, unit="call") as bar:
        ledger = TuneLedger(generator, follower, reflector, config.budget, induce_config, config.decoding, progress=bar)
        reflection = TuneReflection(ledger, config.max_instruction_tokens, config.seed)
        gepa_dir = run_dir / "gepa"
        gepa_dir.mkdir(parents=True, exist_ok=True)
        try:
            result = gepa.optimize(
                seed_candidate={COMPONENT: start.text},
                trainset=reflect,
                valset=pareto,
                adapter=MetaPromptAdapter(ledger),
                reflection_lm=reflection,
                reflection_prompt_template=REFLECTION_PROMPT,
                reflection_minibatch_size=minibatch,
                # The ledger's call budget is the stop that binds (the callback below). gepa's own count is of
                # task evaluations, and one without placeholders makes no call, so a cap of budget // task_cost
                # stopped the 0.5B's run at 567 of 1,000 calls. Every iteration scores its parent, which costs
                # calls, so evaluations never exceed twice the calls: this cap is a backstop only.
                max_metric_calls=2 * config.budget,
                stop_callbacks=[reflection.stop, lambda _state: not ledger.can_afford(per_iteration)],
                run_dir=str(gepa_dir),
                logger=RunLog(gepa_dir / "run_log.txt"),
                seed=config.seed,
                raise_on_exception=True,
            )
        except BudgetExhausted:  # the last iteration would have crossed the budget: keep the state before it
            result = GEPAResult.from_state(GEPAState.load(str(gepa_dir)), run_dir=str(gepa_dir), seed=config.seed)
        if reflection.error:
            raise BackendError(f"tune: the reflection LM failed, search stopped ({reflection.error})")
    search_calls, reflection_calls = ledger.used, ledger.reflection_calls
    candidates = [
        {"index": i, "pareto_score": round(score, 4), "text": normalized(c[COMPONENT])}
        for i, (c, score) in enumerate(zip(result.candidates, result.val_aggregate_scores, strict=True))
    ]
    atomic_write(run_dir / "candidates.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in candidates))

    finalists, selection_calls = _select(candidates, validation, ledger, config, run_dir, quiet)
    best = max(finalists, key=lambda f: f.validation_macro_f1)  # the first of equals: the start template
    header = {
        "generator": generator.model_id,
        "follower": follower.model_id,
        "validation_macro_f1": f"{best.validation_macro_f1:.4f}",
        "start_template": config.start,
        "start_validation_macro_f1": f"{finalists[0].validation_macro_f1:.4f}",
        "validation_tasks": len(validation),
        "candidate": best.index,
        "candidates": len(candidates),
        "n": config.n,
        "m": config.m,
        "seed": config.seed,
        "budget": config.budget,
        "search_llm_calls": search_calls,
        "reflection_calls": reflection_calls,
        "selection_llm_calls": selection_calls,
        "llm_calls": search_calls + reflection_calls + selection_calls,
        "model_seconds": round(generator.stored_seconds(), 1),  # every distinct call in the journal, once
        "git_commit": git_sha() or "unknown",
        "gepa": version("gepa"),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    text = metaprompts.with_header(header, best.text)
    atomic_write(run_dir / "template.txt", text)
    registered = None
    if register:
        home = models.promptmii_home() / "templates"
        home.mkdir(parents=True, exist_ok=True)
        registered = home / f"{metaprompts.slug(generator.model_id)}.txt"
        shutil.copyfile(run_dir / "template.txt", registered)
    return {
        "template": str(run_dir / "template.txt"),
        "registered": str(registered) if registered else None,
        **header,
        "wall_seconds": round(time.perf_counter() - began, 1),
        "reflection_echoes": reflection.echoes,  # this process's retries only: a resumed run counts afresh
        "reflection_placeholder_misses": reflection.placeholder_misses,
        "finalists": [{k: v for k, v in asdict(f).items() if k != "text"} | {"start": f.index == 0} for f in finalists],
    }


def _select(
    candidates: list[dict[str, Any]],
    validation: list[TuneTask],
    search: TuneLedger,
    config: TuneConfig,
    run_dir: Path,
    quiet: bool,
) -> tuple[list[Finalist], int]:
    """Score the start template and the best `finalists` others on the validation split (never test)."""
    seen = {candidates[0]["text"]}
    ranked = []
    for c in sorted(candidates[1:], key=lambda c: -c["pareto_score"]):  # stable: earlier first on ties
        if c["text"] not in seen and not metaprompts.missing_placeholders(c["text"]):
            seen.add(c["text"])
            ranked.append(c)
    chosen = [candidates[0], *ranked[: config.finalists]]
    cost = len(chosen) * len(validation) * config.task_cost
    with tqdm(total=cost, desc="tune selection", disable=quiet, unit="call") as bar:
        ledger = TuneLedger(
            search.generator, search.follower, search.reflector, cost, search.induce_config, config.decoding,
            progress=bar,
        )  # fmt: skip
        finalists = []
        for c in chosen:
            per_task = {i.task: ledger.score(c["text"], i).macro_f1 for i in validation}
            mean = sum(per_task.values()) / len(per_task)
            finalists.append(Finalist(c["index"], c["text"], c["pareto_score"], round(mean, 4), per_task))
    rows = [json.dumps(asdict(f), ensure_ascii=False) + "\n" for f in finalists]
    atomic_write(run_dir / "selection.jsonl", "".join(rows))
    return finalists, ledger.used


def _check_run_dir(config: TuneConfig, run_dir: Path) -> None:
    """A run directory holds one tuning run: resuming it with other settings would mix two searches."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "tune_config.json"
    settings = config.resumable_settings()
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        if changed:
            raise PromptMIIError(
                f"{run_dir} holds a tuning run with other settings ({', '.join(changed)}); use the same settings to "
                "resume it, or a new --output"
            )
    atomic_write(path, json.dumps(asdict(config), indent=2) + "\n")
