"""Meta-train the instruction generator with GRPO on TRL's GRPOTrainer: `promptmii train`.

Each training row is one meta-prompt (n labelled examples of one train-split task) plus that task's
fixed m scoring examples. The policy samples `num_generations` instructions per row; each is scored by
the frozen follower's macro-F1 on the m examples (reward.py); GRPO pushes the policy towards the
instructions that beat their group's mean. Everything the paper fixes (its Section 4 and appendix settings) is a field
of `TrainConfig`, and `grpo_args` maps each one to TRL's name for it, so a reader can check the mapping
in one place. Departures for CPU (LoRA on the 0.5B, fewer prompts per step, shorter lengths) are
defaults here and written down in docs/training.md.

A run directory holds: promptmii_train.json (the config), checkpoint-N/ (TRL's, with the config
copied in), metrics.jsonl (every logged step), validation.jsonl, rollouts.jsonl (what the policy
wrote and what it scored), training.png, and adapter/ (the final LoRA adapter).
"""

from __future__ import annotations

import json
import logging
import os
import random
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from promptmii import models, prompts
from promptmii.backends import get_backend
from promptmii.cache import CachedBackend
from promptmii.data import Task, draw, load_tasks
from promptmii.errors import BackendError, DataError, PromptMIIError
from promptmii.evaluate import DECODING, run_follower
from promptmii.experiment import DEFAULT_BACKEND
from promptmii.induce import InduceConfig, induce
from promptmii.results import read_jsonl, set_aside_partial_line
from promptmii.reward import FollowerReward

log = logging.getLogger(__name__)

DEFAULT_POLICY = "qwen2.5-coder-0.5b-instruct"
# How often each n appears: every train task gets an n=5 row, 30% also n=10, 20% n=20, 10% n=50
# (the reference implementation's proportions, millix19/promptmii).
N_SHARES = ((5, 1.0), (10, 0.3), (20, 0.2), (50, 0.1))
# Fields that may change when a run is resumed: how long it runs and how often it reports.
# The rollout engine only changes who samples, not what is learned, so it may change too.
RESUMABLE_CHANGES = (
    "output",
    "max_steps",
    "save_steps",
    "eval_steps",
    "validation_tasks",
    "rollout_engine",
    "vllm_url",
)
# Who samples the rollouts: transformers' generate in the training process, or vLLM (TRL's use_vllm),
# inside each training process (colocate) or in a `trl vllm-serve` server (server).
ROLLOUT_ENGINES = ("transformers", "vllm-colocate", "vllm-server")


@dataclass(frozen=True)
class TrainConfig:
    """One meta-training run. Paper values in comments; defaults are the CPU settings (docs/training.md)."""

    corpus: str = field(metadata={"help": "corpus directory (tasks.jsonl + instances/); train/validation splits"})
    output: str = field(metadata={"help": "run directory (checkpoints, logs, final adapter)"})
    policy: str = field(default=DEFAULT_POLICY, metadata={"help": "bundled model name or transformers directory"})
    follower: str = field(default=DEFAULT_BACKEND, metadata={"help": "frozen follower backend spec (reward)"})
    decoding: str = field(default="generate", metadata={"help": "follower decoding for the reward"})
    template: str = field(default=prompts.DEFAULT_TEMPLATE, metadata={"help": "meta-prompt template"})
    m: int = field(default=20, metadata={"help": "fixed scoring examples per task (paper 20)"})
    max_prompt_tokens: int = field(default=2048, metadata={"help": "longer meta-prompts are dropped (paper 4096)"})
    max_completion_tokens: int = field(default=256, metadata={"help": "instruction length limit (paper 1024)"})
    num_generations: int = field(default=5, metadata={"help": "rollouts per meta-prompt (paper 5)"})
    prompts_per_step: int = field(default=2, metadata={"help": "meta-prompts per rollout batch (paper 64)"})
    updates_per_step: int = field(default=1, metadata={"help": "optimizer updates per rollout batch (paper 2)"})
    micro_batch_size: int = field(default=5, metadata={"help": "completions per forward/backward (paper 4)"})
    processes: int = field(default=1, metadata={"help": "data-parallel processes (GPUs) the run is launched on"})
    temperature: float = field(default=1.0, metadata={"help": "rollout sampling temperature (paper 1.0)"})
    epsilon: float = field(default=0.2, metadata={"help": "lower clip (paper 0.2)"})
    epsilon_high: float = field(default=0.4, metadata={"help": "upper clip, clip-higher (paper 0.4)"})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient (paper 0: no KL, no reference model)"})
    loss_type: str = field(default="grpo", metadata={"help": "TRL loss aggregation (paper: seq-mean-token-mean)"})
    learning_rate: float = field(default=5e-5, metadata={"help": "paper 2e-6 for full fine-tuning; LoRA needs more"})
    warmup_ratio: float = field(default=0.033, metadata={"help": "linear warm-up share, then constant (paper)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (paper 0.01)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (paper 1.0)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank; 0 = full fine-tuning (the paper's setting)"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    max_steps: int = field(default=100, metadata={"help": "optimizer updates to run (TRL global steps)"})
    save_steps: int = field(default=5, metadata={"help": "checkpoint every this many steps"})
    eval_steps: int = field(default=10, metadata={"help": "validation every this many steps (0 = never)"})
    validation_tasks: int = field(default=0, metadata={"help": "validation-split tasks used (0 = all)"})
    validation_n: int = field(default=20, metadata={"help": "examples shown to the policy at validation"})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "trade compute for activation memory"})
    rollout_engine: str = field(
        default="transformers", metadata={"help": "who samples rollouts: " + ", ".join(ROLLOUT_ENGINES) + " (GPU)"}
    )
    vllm_url: str = field(default="", metadata={"help": "vllm-server: the `trl vllm-serve` URL, http://HOST:PORT"})
    seed: int = field(default=0, metadata={"help": "data selection, shuffling and sampling"})
    cache: bool = field(default=True, metadata={"help": "cache follower calls in $PROMPTMII_HOME/cache.sqlite"})

    def __post_init__(self) -> None:
        prompts.meta_template(self.template)  # raises with "did you mean"
        if self.decoding not in DECODING:
            raise PromptMIIError(f"unknown decoding '{self.decoding}'; choose one of: {', '.join(DECODING)}")
        for name in ("m", "num_generations", "prompts_per_step", "updates_per_step", "micro_batch_size", "max_steps"):
            if getattr(self, name) < 1:
                raise PromptMIIError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.rollout_engine not in ROLLOUT_ENGINES:
            raise PromptMIIError(
                f"unknown rollout engine '{self.rollout_engine}'; choose one of: {', '.join(ROLLOUT_ENGINES)}"
            )
        if self.rollout_engine == "vllm-server" and not self.vllm_url:
            raise PromptMIIError("--rollout-engine vllm-server needs --vllm-url (where `trl vllm-serve` listens)")
        if self.num_generations < 2:
            raise PromptMIIError("num_generations must be at least 2: GRPO compares rollouts within a group")
        self.completions_per_update  # noqa: B018 (validates the batch geometry)

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations

    @property
    def completions_per_update(self) -> int:
        per_update, rest = divmod(self.completions_per_step, self.updates_per_step)
        micro = self.micro_batch_size * self.processes
        if rest or per_update % micro:
            raise PromptMIIError(
                f"batch geometry: {self.prompts_per_step} prompts x {self.num_generations} generations = "
                f"{self.completions_per_step} completions must split into {self.updates_per_step} updates of whole "
                f"micro-batches of {self.micro_batch_size} x {self.processes} processes"
            )
        return per_update

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.completions_per_update // (self.micro_batch_size * self.processes)


# ---------------------------------------------------------------- config -> TRL


def grpo_args(config: TrainConfig, *, use_cuda: bool = False) -> Any:
    """The paper's GRPO settings (verl) in TRL's names. One line per decision."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=config.output,
        # rollouts: n=5 samples per prompt at temperature 1.0, top-p 1, no top-k
        num_generations=config.num_generations,
        temperature=config.temperature,
        top_p=1.0,
        top_k=0,
        max_completion_length=config.max_completion_tokens,
        # batch geometry: verl's train_batch_size (prompts per rollout batch) and ppo_mini_batch_size
        # (updates per batch) become TRL's micro-batch x accumulation x steps_per_generation
        per_device_train_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        steps_per_generation=config.gradient_accumulation_steps * config.updates_per_step,
        num_iterations=1,  # verl ppo_epochs=1
        # loss: asymmetric clip 0.2/0.4, no KL (so no reference model), seq-mean-token-mean, group std scaling
        epsilon=config.epsilon,
        epsilon_high=config.epsilon_high,
        beta=config.beta,
        loss_type=config.loss_type,
        scale_rewards="group",
        # optimizer: AdamW, constant lr after a linear warm-up, weight decay 0.01, grad clip 1.0
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of max_steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        # the run: checkpoints, logs, precision
        max_steps=config.max_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,  # resuming needs only the last; each 0.5B LoRA checkpoint is ~100 MB with optimizer state
        logging_steps=1,
        report_to="none",
        seed=config.seed,
        bf16=use_cuda,
        gradient_checkpointing=config.gradient_checkpointing,
        disable_dropout=True,
        log_completions=False,  # rollouts.jsonl keeps them, without rich tables on stderr
        shuffle_dataset=True,
        # rollouts: vLLM samples with the current weights (TRL syncs them, merging a LoRA first)
        use_vllm=config.rollout_engine != "transformers",
        vllm_mode="server" if config.rollout_engine == "vllm-server" else "colocate",
        vllm_server_base_url=config.vllm_url or None,
        vllm_max_model_length=config.max_prompt_tokens + config.max_completion_tokens,
    )


def check_rollout_engine(config: TrainConfig, *, use_cuda: bool) -> None:
    """vLLM rollouts need the vllm package and a GPU; say so before any run directory is made."""
    if config.rollout_engine == "transformers":
        return
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise PromptMIIError(f"--rollout-engine {config.rollout_engine} needs vLLM: pip install vllm (CUDA machines)")
    if not use_cuda:
        raise PromptMIIError(f"--rollout-engine {config.rollout_engine} needs a CUDA GPU; on CPU use transformers")


# ---------------------------------------------------------------- data


@dataclass
class DataReport:
    """What happened to each candidate row: kept, or why not (never silent)."""

    rows: int = 0
    tasks: int = 0
    by_n: dict[int, int] = field(default_factory=dict)
    dropped_too_long: int = 0
    skipped_too_few_rows: int = 0

    def line(self) -> str:
        counts = ", ".join(f"n={n}: {k}" for n, k in sorted(self.by_n.items()))
        return (
            f"{self.rows} training rows from {self.tasks} tasks ({counts}); dropped {self.dropped_too_long} "
            f"meta-prompts over the token limit, skipped {self.skipped_too_few_rows} (task, n) with too few rows"
        )


def training_rows(
    tasks: list[Task], config: TrainConfig, count_tokens: Any, *, seed: int | None = None
) -> tuple[list[dict[str, Any]], DataReport]:
    """One row per (task, n): the meta-prompt as a chat, plus the task's fixed m scoring examples.

    `count_tokens(chat)` measures a meta-prompt with the policy's own chat template. n is drawn per
    task with the reference's shares; the m scoring examples are the same for every n of a task.
    """
    seed = config.seed if seed is None else seed
    template = prompts.meta_template(config.template)
    report = DataReport()
    rows = []
    for task in tasks:
        chooser = random.Random(f"{seed}/{task.id}/n")
        kept_any = False
        for n, share in N_SHARES:
            if chooser.random() >= share:
                continue
            if n > len(task.train):
                report.skipped_too_few_rows += 1
                continue
            shots, test = draw(task, n, config.m, seed)
            chat = prompts.meta_prompt(template, shots, task.labels)
            if count_tokens(chat) > config.max_prompt_tokens:
                report.dropped_too_long += 1
                continue
            rows.append(
                {
                    "prompt": chat,
                    "task": task.id,
                    "n": n,
                    "labels": list(task.labels),
                    "test_texts": [e.text for e in test],
                    "test_labels": [e.label for e in test],
                }
            )
            report.by_n[n] = report.by_n.get(n, 0) + 1
            kept_any = True
        report.tasks += kept_any
    report.rows = len(rows)
    return rows, report


def load_split(corpus: str, split: str) -> list[Task]:
    tasks = load_tasks(corpus, split=split)
    if not tasks:
        raise DataError(f"{corpus}: the '{split}' split has no tasks; meta-training needs train and validation tasks")
    return tasks


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class CostEstimate:
    """What one rollout batch and the whole run cost, before anything loads (`--dry-run`)."""

    rows: int
    generations_per_step: int
    follower_calls_per_step: int
    optimizer_updates_per_step: int
    trl_fields: dict[str, Any]
    rollout_batches: int
    follower_calls_total: int
    validation_calls_each: int
    data: str


def estimate(config: TrainConfig, rows: int, report: DataReport, validation_tasks: int) -> CostEstimate:
    batches = -(-config.max_steps // config.updates_per_step)
    evals = config.max_steps // config.eval_steps + 1 if config.eval_steps else 0
    per_eval = validation_tasks * (1 + config.m)
    return CostEstimate(
        rows=rows,
        generations_per_step=config.completions_per_step,
        follower_calls_per_step=config.completions_per_step * config.m,
        optimizer_updates_per_step=config.updates_per_step,
        trl_fields={
            "num_generations": config.num_generations,
            "per_device_train_batch_size": config.micro_batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "steps_per_generation": config.gradient_accumulation_steps * config.updates_per_step,
            "generation_batch_size": config.completions_per_step,
            "num_processes": config.processes,
        },
        rollout_batches=batches,
        follower_calls_total=batches * config.completions_per_step * config.m + evals * per_eval,
        validation_calls_each=per_eval,
        data=report.line(),
    )


def dry_run(config: TrainConfig) -> CostEstimate:
    """Validate the config and the data, and say what a step costs, without loading the policy's weights."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models.policy_path(config.policy))
    train_tasks = load_split(config.corpus, "train")
    validation = load_split(config.corpus, "validation")
    rows, report = training_rows(train_tasks, config, _token_counter(tokenizer))
    if not rows:
        raise DataError(f"{config.corpus}: no training rows survive ({report.line()})")
    return estimate(config, len(rows), report, _validation_count(config, validation))


def train(config: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) GRPO meta-training; returns a summary. Checkpoints survive any failure."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint
    from trl import GRPOTrainer

    out = Path(config.output)
    use_cuda = torch.cuda.is_available()
    check_rollout_engine(config, use_cuda=use_cuda)
    policy_dir = models.policy_path(config.policy)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    train_tasks = load_split(config.corpus, "train")
    validation = load_split(config.corpus, "validation")
    rows, report = training_rows(train_tasks, config, _token_counter(tokenizer))
    if not rows:
        raise DataError(f"{config.corpus}: no training rows survive ({report.line()})")
    follower = get_backend(config.follower)  # unreachable servers and bad names fail here, before training
    if config.cache:
        follower = CachedBackend(follower, models.promptmii_home() / "cache.sqlite")
    checkpoint = _prepare_output(out, config, resume)  # only now: a config error leaves no half-made run behind
    log.warning("%s", report.line())
    _append_jsonl(out / "run_log.jsonl", {"event": "data", "message": report.line(), "time": _now()})
    model = AutoModelForCausalLM.from_pretrained(
        policy_dir,
        dtype=torch.bfloat16 if use_cuda else torch.float32,
        attn_implementation="sdpa" if use_cuda else "eager",  # eager measured ~3x faster than SDPA at batch 8 on CPU
    )
    reward = FollowerReward(follower, decoding=config.decoding, rollouts_path=out / "rollouts.jsonl")
    validator = Validator(config, validation[: _validation_count(config, validation)], follower, tokenizer, out)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=grpo_args(config, use_cuda=use_cuda),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=_lora_config(config),
        callbacks=[as_trainer_callback(RunLogger)(out, config, validator)],
    )
    validator.trainer = trainer
    started = time.time()
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except (BackendError, DataError) as e:
        last = get_last_checkpoint(str(out))
        kept = f"last checkpoint {Path(last).name}" if last else "no checkpoint yet"
        raise PromptMIIError(
            f"training stopped at step {trainer.state.global_step}: {e} ({kept} kept in {out}; "
            "fix the cause and rerun with --resume)"
        ) from None
    trainer.save_model(str(out / models.ADAPTER_DIR))
    tokenizer.save_pretrained(str(out / models.ADAPTER_DIR))
    validator.plot()
    summary = {
        "output": str(out),
        "steps": trainer.state.global_step,
        "seconds": round(time.time() - started, 1),
        "data": report.line(),
        "validation": validator.history[-1] if validator.history else None,
        "adapter": str(out / models.ADAPTER_DIR),
    }
    _append_jsonl(out / "run_log.jsonl", {"event": "done", **summary, "time": _now()})
    return summary


def _prepare_output(out: Path, config: TrainConfig, resume: bool) -> Path | None:
    """Create the run directory, or check a resumed run's stored config; return the checkpoint to resume."""
    from transformers.trainer_utils import get_last_checkpoint

    stored_path = out / models.RUN_CONFIG
    if stored_path.is_file() and not resume:
        raise PromptMIIError(f"{out} already holds a training run; pass --resume to continue it or pick a new --output")
    if resume and not stored_path.is_file():
        raise PromptMIIError(f"{out}: nothing to resume (no {models.RUN_CONFIG}); start it without --resume")
    if resume:
        stored = json.loads(stored_path.read_text(encoding="utf-8"))
        changed = [
            f"{k}: {stored.get(k)!r} -> {v!r}"
            for k, v in asdict(config).items()
            if k not in RESUMABLE_CHANGES and stored.get(k) != v
        ]
        if changed:
            raise PromptMIIError(f"--resume with a different config ({'; '.join(changed)}); use a new --output")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(stored_path, asdict(config))
    last = get_last_checkpoint(str(out)) if resume else None
    if resume:  # steps after the checkpoint (all of them, without one) are redone: drop their log rows
        step = int(Path(last).name.split("-")[-1]) if last else 0
        for name in ("metrics.jsonl", "validation.jsonl", "rollouts.jsonl"):
            _truncate_after(out / name, step)
    return Path(last) if last else None


def _lora_config(config: TrainConfig) -> Any:
    if config.lora_r == 0:
        return None  # full fine-tuning, as the paper does
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )


def _token_counter(tokenizer: Any) -> Any:
    def count(chat: list[dict[str, str]]) -> int:
        text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return count


def _validation_count(config: TrainConfig, validation: list[Task]) -> int:
    return min(config.validation_tasks or len(validation), len(validation))


# ---------------------------------------------------------------- validation and logs


def as_trainer_callback(cls: type) -> type:
    """`cls` with transformers' TrainerCallback as its base (no-op defaults for the events it does not handle)."""
    from transformers import TrainerCallback

    return type(cls.__name__, (cls, TrainerCallback), {})


class Validator:
    """Greedy instructions from the current policy on validation tasks, scored by the follower."""

    def __init__(self, config: TrainConfig, tasks: list[Task], follower: Any, tokenizer: Any, out: Path):
        self.config = config
        self.tasks = tasks
        self.follower = follower
        self.tokenizer = tokenizer
        self.out = out
        self.trainer: Any = None
        self.history: list[dict[str, Any]] = _read_jsonl(out / "validation.jsonl")

    def run(self, step: int) -> dict[str, Any]:
        from promptmii.backends.hf import HFBackend

        model = self.trainer.model
        was_training = model.training
        model.eval()
        policy = HFBackend(model, self.tokenizer, f"policy@step{step}")
        induce_config = InduceConfig(template=self.config.template, max_tokens=self.config.max_completion_tokens)
        started = time.time()
        per_task = {}
        try:
            for task in tqdm(self.tasks, desc=f"validation at step {step}", unit="task", leave=False):
                n = min(self.config.validation_n, len(task.train))
                shots, test = draw(task, n, self.config.m, self.config.seed)
                instruction = induce(shots, task.labels, policy, induce_config)
                run = run_follower(self.follower, instruction.text, task.labels, test, decoding=self.config.decoding)
                per_task[task.id] = round(run.scores.macro_f1, 4)
        finally:
            model.train(was_training)
        row = {
            "step": step,
            "validation_f1": round(sum(per_task.values()) / len(per_task), 4),
            "tasks": per_task,
            "seconds": round(time.time() - started, 1),
        }
        self.history.append(row)
        _append_jsonl(self.out / "validation.jsonl", row)
        self.plot()
        return row

    def plot(self) -> None:
        plot_training(self.out)


class RunLogger:
    """Appends every logged step to metrics.jsonl, validates every k steps, copies the config into checkpoints.

    A transformers TrainerCallback, given that base only when training starts (`as_trainer_callback`):
    importing transformers takes seconds, and the CLI imports this module for `--help`.
    """

    def __init__(self, out: Path, config: TrainConfig, validator: Validator):
        self.out = out
        self.config = config
        self.validator = validator
        self.last_log = time.time()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The paper validates before training too. On resume this only fills a validation step that a kill
        # interrupted; validating at every resume step would cost a validation per restart.
        self._validate_if_due(state.global_step)
        self.last_log = time.time()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._validate_if_due(state.global_step)

    def _validate_if_due(self, step: int) -> None:
        """Validate at step 0 and every eval_steps, once per step (a resume keeps the rows up to its checkpoint)."""
        due = self.config.eval_steps and step % self.config.eval_steps == 0
        if due and not any(r["step"] == step for r in self.validator.history):
            self.validator.run(step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs:
            return  # the end-of-training summary line repeats nothing per step
        now = time.time()
        row = {
            "step": state.global_step,
            **{k: v for k, v in logs.items() if isinstance(v, int | float)},
            "seconds_per_step": round(now - self.last_log, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "time": _now(),
        }
        self.last_log = now
        _append_jsonl(self.out / "metrics.jsonl", row)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        checkpoint = self.out / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            shutil.copy(self.out / models.RUN_CONFIG, checkpoint / models.RUN_CONFIG)
        plot_training(self.out)


def plot_training(out: Path) -> Path | None:
    """training.png: train reward per step and validation macro-F1, from the run's JSONL logs."""
    metrics = _read_jsonl(out / "metrics.jsonl")
    validation = _read_jsonl(out / "validation.jsonl")
    if not metrics and not validation:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if metrics:
        steps = [r["step"] for r in metrics]
        rewards = [r.get("reward", float("nan")) for r in metrics]
        ax.plot(steps, rewards, ".", alpha=0.4, label="train reward (batch mean)")
        window = 5
        if len(rewards) >= window:
            smooth = [sum(rewards[i - window + 1 : i + 1]) / window for i in range(window - 1, len(rewards))]
            ax.plot(steps[window - 1 :], smooth, "-", label=f"train reward ({window}-step mean)")
    if validation:
        ax.plot([r["step"] for r in validation], [r["validation_f1"] for r in validation], "o-", label="validation F1")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("follower macro-F1")
    ax.set_title(out.name)
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "training.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- small file helpers


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.is_file() else []  # a line cut short by a kill is skipped, with a warning


def _truncate_after(path: Path, step: int) -> None:
    set_aside_partial_line(path)  # a kill mid-write: the line goes to PATH.corrupt-<time>, its step is redone
    rows = _read_jsonl(path)
    kept = [r for r in rows if r.get("step") is None or r["step"] <= step]
    if len(kept) != len(rows):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")


def config_fields() -> list[Any]:
    """TrainConfig's fields, for the CLI's options."""
    return list(fields(TrainConfig))
