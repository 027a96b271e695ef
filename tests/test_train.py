"""Meta-training: the reward, the data rows, the TRL mapping, resume and failures.

The policy here is a tiny randomly initialised Qwen2 (2 layers, width 64) with the bundled model's real
tokenizer, so a GRPO step takes seconds; the follower is the scripted FakeBackend. The same code path
on the real bundled 0.5B with a real llama.cpp follower is in test_train_real.py.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import corpus_tasks, sentiment_examples, write_corpus
from fakes import FakeBackend, query_input
from promptmii import models
from promptmii.backends import GenParams
from promptmii.cli import main
from promptmii.data import Example, Task
from promptmii.errors import DataError, PromptMIIError
from promptmii.export import gguf_tensor_name
from promptmii.parse import INVALID
from promptmii.reward import FollowerReward, completion_text, reward_from_predictions
from promptmii.train import TrainConfig, estimate, grpo_args, train, training_rows

LABELS = ("negative", "positive")


# ---------------------------------------------------------------- reward (pure)


def test_reward_is_macro_f1_by_hand() -> None:
    gold = ["positive", "positive", "negative", "negative"]
    # positive: P=1/1, R=1/2 -> F1 2/3; negative: P=2/3, R=2/2 -> F1 4/5; mean 11/15
    assert reward_from_predictions(gold, ["positive", "negative", "negative", "negative"]) == pytest.approx(11 / 15)


def test_invalid_replies_are_errors_not_label_zero() -> None:
    gold = ["negative", "negative", "positive", "positive"]
    # the reference maps INVALID to label 0 ("negative"), which would score these two as right
    predictions = [INVALID, INVALID, "positive", "positive"]
    # negative: no predictions -> F1 0; positive: P=1, R=1 -> F1 1; mean 0.5 (label-0 mapping would give 1.0)
    assert reward_from_predictions(gold, predictions) == pytest.approx(0.5)


def test_completion_text_accepts_plain_and_chat_completions() -> None:
    assert completion_text("Classify by tone.") == "Classify by tone."
    assert completion_text([{"role": "assistant", "content": "Classify by tone."}]) == "Classify by tone."


def test_follower_reward_scores_each_instruction_with_the_follower(tmp_path: Path) -> None:
    def follower_rule(chat: list[dict[str, str]]) -> str:
        text = query_input(chat)
        good = "love and great mean positive" in chat[0]["content"]
        return ("positive" if ("love" in text or "great" in text) else "negative") if good else "positive"

    reward = FollowerReward(FakeBackend(rule=follower_rule), rollouts_path=tmp_path / "rollouts.jsonl")
    test = sentiment_examples(8)
    columns = {
        "labels": [list(LABELS)] * 2,
        "test_texts": [[e.text for e in test]] * 2,
        "test_labels": [[e.label for e in test]] * 2,
        "task": ["sentiment"] * 2,
        "n": [5, 5],
    }
    completions = [
        [{"role": "assistant", "content": "love and great mean positive; awful and hate negative."}],
        [{"role": "assistant", "content": "Decide."}],
    ]
    rewards = reward(prompts=[[], []], completions=completions, **columns)
    assert rewards == [pytest.approx(1.0), pytest.approx((0 + 2 / 3) / 2)]  # all-positive: F1 0 and 2/3
    logged = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in logged] == [1.0, 0.3333]
    assert logged[1]["instruction"] == "Decide."


# ---------------------------------------------------------------- data rows and config


def config_for(tmp_path: Path, **changes) -> TrainConfig:
    return TrainConfig(corpus=str(tmp_path / "corpus"), output=str(tmp_path / "run"), **changes)


def word_count(chat: list[dict[str, str]]) -> int:
    return len(chat[0]["content"].split())


def test_training_rows_follow_the_n_shares_and_fix_m_examples_per_task(tmp_path: Path) -> None:
    tasks = [t for t in corpus_tasks(train_tasks=40) if t.split == "train"]
    rows, report = training_rows(tasks, config_for(tmp_path, max_prompt_tokens=10_000), word_count)
    assert report.by_n[5] == 40  # every task gets n=5
    assert 0 < report.by_n[10] < 40 and report.by_n[10] > report.by_n.get(50, 0)
    assert report.rows == len(rows) and report.dropped_too_long == 0
    by_task: dict[str, list[dict]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
        assert len(row["test_texts"]) == len(row["test_labels"]) == 20
        assert row["prompt"][0]["content"].count("\nLabel: ") == row["n"]
    for task_rows in by_task.values():  # the m scoring examples are fixed per task, whatever n is
        assert all(r["test_texts"] == task_rows[0]["test_texts"] for r in task_rows)
    shown = {line for r in rows for line in r["prompt"][0]["content"].splitlines() if line.startswith("Input: ")}
    scored = {f"Input: {t}" for r in rows for t in r["test_texts"]}
    assert not shown & scored  # scoring examples never appear among the shown ones


def test_overlong_meta_prompts_are_dropped_and_counted(tmp_path: Path) -> None:
    tasks = [t for t in corpus_tasks() if t.split == "train"]
    rows, report = training_rows(tasks, config_for(tmp_path, max_prompt_tokens=120), word_count)
    assert report.dropped_too_long > 0
    assert all(word_count(r["prompt"]) <= 120 for r in rows)
    assert f"dropped {report.dropped_too_long} meta-prompts" in report.line()


def test_rollout_engines_map_to_trl_vllm_fields(tmp_path: Path) -> None:
    assert not grpo_args(config_for(tmp_path)).use_vllm
    colocate = grpo_args(config_for(tmp_path, rollout_engine="vllm-colocate"))
    assert (colocate.use_vllm, colocate.vllm_mode, colocate.vllm_max_model_length) == (True, "colocate", 2048 + 256)
    server = grpo_args(config_for(tmp_path, rollout_engine="vllm-server", vllm_url="http://10.0.0.2:8000"))
    assert (server.use_vllm, server.vllm_mode, server.vllm_server_base_url) == (True, "server", "http://10.0.0.2:8000")
    with pytest.raises(PromptMIIError, match="needs --vllm-url"):
        config_for(tmp_path, rollout_engine="vllm-server")
    with pytest.raises(PromptMIIError, match="unknown rollout engine 'vllm'"):
        config_for(tmp_path, rollout_engine="vllm")


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None and __import__("torch").cuda.is_available(),
    reason="vLLM rollouts can run here",
)
@pytest.mark.real  # trains a tiny random model with TRL on the bundled 0.5B's tokenizer: minutes
def test_vllm_rollouts_without_vllm_or_a_gpu_fail_before_making_a_run(tmp_path, corpus, tiny_policy) -> None:
    with pytest.raises(PromptMIIError, match=r"vllm-colocate needs (vLLM|a CUDA GPU)"):
        train(tiny_config(tmp_path, tiny_policy, rollout_engine="vllm-colocate"))
    assert not (tmp_path / "run").exists()


def test_paper_settings_map_to_trl_fields(tmp_path: Path) -> None:
    config = config_for(tmp_path, prompts_per_step=64, updates_per_step=2, micro_batch_size=4, processes=8)
    args = grpo_args(config)
    assert (args.num_generations, args.temperature, args.epsilon, args.epsilon_high) == (5, 1.0, 0.2, 0.4)
    assert (args.beta, args.loss_type, args.max_grad_norm, args.weight_decay) == (0.0, "grpo", 1.0, 0.01)
    assert args.lr_scheduler_type == "constant_with_warmup" and args.warmup_steps == pytest.approx(0.033)
    # 64 prompts x 5 = 320 completions per rollout batch, 2 updates of 160 = 4 per GPU x 8 GPUs x 5 accumulation
    assert args.gradient_accumulation_steps == 5 and args.steps_per_generation == 10
    cost = estimate(config, rows=100, report=training_rows([], config, word_count)[1], validation_tasks=8)
    assert cost.generations_per_step == 320 and cost.follower_calls_per_step == 6400  # 64 prompts x 5 rollouts x m=20


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_generations": 1}, "at least 2"),
        ({"prompts_per_step": 3, "micro_batch_size": 4}, "batch geometry"),
        ({"template": "tersee"}, "did you mean 'terse'"),
        ({"decoding": "greedy"}, "unknown decoding"),
    ],
)
def test_bad_configs_fail_with_one_clear_message(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(PromptMIIError, match=message):
        config_for(tmp_path, **changes)


# ---------------------------------------------------------------- real (tiny) GRPO runs


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus", corpus_tasks())


@pytest.fixture
def random_follower(register_backend) -> FakeBackend:
    rng = random.Random(0)
    follower = FakeBackend(rule=lambda chat: rng.choice(LABELS))
    register_backend("fake:follower", follower)
    return follower


def tiny_config(tmp_path: Path, policy: Path, **changes) -> TrainConfig:
    settings = {
        "policy": str(policy),
        "follower": "fake:follower",
        "max_completion_tokens": 8,
        "max_steps": 2,
        "save_steps": 1,
        "eval_steps": 1,
        "m": 10,
        "cache": False,
    }
    return config_for(tmp_path, **(settings | changes))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.real  # trains a tiny random model with TRL on the bundled 0.5B's tokenizer: minutes
def test_tiny_run_logs_validates_checkpoints_and_saves_the_adapter(tmp_path, corpus, tiny_policy, random_follower):
    summary = train(tiny_config(tmp_path, tiny_policy))
    run = tmp_path / "run"
    assert summary["steps"] == 2
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2]
    assert all({"loss", "reward", "reward_std", "seconds_per_step", "peak_rss_mb"} <= set(r) for r in metrics)
    assert [r["step"] for r in read_jsonl(run / "validation.jsonl")] == [0, 1, 2]
    rollouts = read_jsonl(run / "rollouts.jsonl")
    assert len(rollouts) == 2 * 10 and {r["step"] for r in rollouts} == {1, 2}  # 2 prompts x 5 generations a step
    assert (run / "training.png").stat().st_size > 1000
    assert (run / "checkpoint-1" / models.RUN_CONFIG).is_file() and (run / "checkpoint-2").is_dir()
    assert (run / models.ADAPTER_DIR / "adapter_config.json").is_file()
    assert len(random_follower.calls) == (2 * 10 + 3) * 10  # 20 rollouts + 3 validations, m=10 each


@pytest.mark.real  # trains a tiny random model with TRL on the bundled 0.5B's tokenizer: minutes
def test_resume_continues_from_the_last_checkpoint(tmp_path, corpus, tiny_policy, random_follower):
    train(tiny_config(tmp_path, tiny_policy, max_steps=1, eval_steps=0))
    with pytest.raises(PromptMIIError, match="already holds a training run"):
        train(tiny_config(tmp_path, tiny_policy, max_steps=1, eval_steps=0))
    with pytest.raises(PromptMIIError, match=r"different config.*learning_rate"):
        train(tiny_config(tmp_path, tiny_policy, max_steps=2, eval_steps=0, learning_rate=1.0), resume=True)
    summary = train(tiny_config(tmp_path, tiny_policy, max_steps=2, eval_steps=0), resume=True)
    assert summary["steps"] == 2
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2]  # step 1 not redone


@pytest.mark.real  # trains a tiny random model with TRL on the bundled 0.5B's tokenizer: minutes
def test_resume_validates_only_at_validation_steps(tmp_path, corpus, tiny_policy, random_follower):
    train(tiny_config(tmp_path, tiny_policy, max_steps=1, eval_steps=2))
    train(tiny_config(tmp_path, tiny_policy, max_steps=2, eval_steps=2), resume=True)
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "validation.jsonl")] == [0, 2]  # none at resume step 1


@pytest.mark.real  # trains a tiny random model with TRL on the bundled 0.5B's tokenizer: minutes
def test_a_follower_that_dies_mid_run_stops_training_and_keeps_the_checkpoint(
    tmp_path, corpus, tiny_policy, register_backend
):
    calls = {"n": 0}

    def fail_after_first_step(chat) -> bool:
        calls["n"] += 1
        return calls["n"] > 10 * 10  # step 1's 10 rollouts x m=10 succeed, then the server is gone

    register_backend("fake:follower", FakeBackend(rule=lambda chat: "positive", fail_when=fail_after_first_step))
    with pytest.raises(PromptMIIError, match=r"training stopped at step 1: .*checkpoint-1 kept.*--resume"):
        train(tiny_config(tmp_path, tiny_policy, eval_steps=0))
    assert (tmp_path / "run" / "checkpoint-1" / "adapter_model.safetensors").is_file()


@pytest.mark.real  # trains a tiny random model with TRL on the bundled 0.5B's tokenizer: minutes
def test_an_unreachable_follower_fails_before_training_and_leaves_no_run(tmp_path, corpus, tiny_policy):
    config = tiny_config(tmp_path, tiny_policy, follower="openai:m@http://127.0.0.1:9/v1?retries=0&timeout=2")
    with pytest.raises(PromptMIIError, match=r"127\.0\.0\.1:9"):
        train(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.real  # trains a tiny random model with TRL on the bundled 0.5B's tokenizer: minutes
def test_an_empty_train_split_is_a_clear_error(tmp_path, tiny_policy) -> None:
    write_corpus(tmp_path / "corpus", [t for t in corpus_tasks() if t.split == "validation"])
    with pytest.raises(DataError, match="no tasks in split 'train'"):
        train(tiny_config(tmp_path, tiny_policy))


@pytest.mark.real  # trains a tiny random model with TRL on the bundled 0.5B's tokenizer: minutes
def test_a_task_with_one_label_is_a_clear_error(tmp_path, tiny_policy) -> None:
    tasks = corpus_tasks()
    one = [Example(f"text {i}", "positive") for i in range(60)]
    write_corpus(tmp_path / "corpus", [*tasks, Task("mono", LABELS, tuple(one[:40]), tuple(one[40:]), "train")])
    with pytest.raises(DataError, match="only one label"):
        train(tiny_config(tmp_path, tiny_policy))


@pytest.mark.real  # trains a tiny random model with TRL on the bundled 0.5B's tokenizer: minutes
def test_train_cli_dry_run_prints_the_step_cost(tmp_path, corpus, tiny_policy) -> None:
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--corpus",
            str(corpus),
            "--output",
            str(tmp_path / "run"),
            "--policy",
            str(tiny_policy),
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    cost = json.loads(result.output)
    assert cost["follower_calls_per_step"] == 2 * 5 * 20 and cost["trl_fields"]["gradient_accumulation_steps"] == 2
    assert "training rows from 6 tasks" in cost["data"]
    assert not (tmp_path / "run").exists()


@pytest.mark.real  # trains a tiny random model with TRL on the bundled 0.5B's tokenizer: minutes
def test_train_cli_reports_bad_input_in_one_line(tmp_path, tiny_policy) -> None:
    result = CliRunner().invoke(main, ["train", "--corpus", str(tmp_path / "nope"), "--output", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1


def test_a_run_without_an_adapter_or_config_cannot_be_used_as_generator(tmp_path: Path) -> None:
    from promptmii.backends import get_backend
    from promptmii.errors import ModelFileError

    run = tmp_path / "run"
    run.mkdir()
    (run / models.RUN_CONFIG).write_text(json.dumps({"policy": "qwen2.5-coder-0.5b-instruct"}))
    with pytest.raises(ModelFileError, match="no trained adapter yet"):
        get_backend(str(run))
    with pytest.raises(ModelFileError, match="promptmii export"):
        get_backend(f"llamacpp:{run}")
    (run / models.EXPORTED_ADAPTER).write_bytes(b"GGUF")  # a committed run: the export without adapter/
    with pytest.raises(ModelFileError, match=re.escape(f"runs on llama.cpp: --generator llamacpp:{run}")):
        get_backend(str(run))
    (run / models.EXPORTED_ADAPTER).unlink()
    (run / models.RUN_CONFIG).unlink()
    with pytest.raises(ModelFileError, match=f"not a training run \\(no {models.RUN_CONFIG}\\)"):
        get_backend(f"llamacpp:{run}")
    shutil.rmtree(run)
    with pytest.raises(ModelFileError, match="no such model file or training run"):
        get_backend(f"llamacpp:{run}")


def test_lora_tensor_names_follow_llama_cpp() -> None:
    key = "base_model.model.model.layers.3.mlp.up_proj.lora_A.weight"
    assert gguf_tensor_name(key) == "blk.3.ffn_up.weight.lora_a"
    assert gguf_tensor_name("base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight") == (
        "blk.0.attn_output.weight.lora_b"
    )
    with pytest.raises(PromptMIIError, match=r"no llama\.cpp name"):
        gguf_tensor_name("base_model.model.lm_head.lora_A.weight")


@pytest.mark.real  # trains a tiny random model with TRL on the bundled 0.5B's tokenizer: minutes
def test_a_trained_run_is_a_generator_for_induce_and_eval(tmp_path, corpus, tiny_policy, random_follower):
    train(tiny_config(tmp_path, tiny_policy, max_steps=1, eval_steps=0, template="criteria"))
    run = str(tmp_path / "run")
    data = tmp_path / "data.csv"
    data.write_text("text,label\n" + "".join(f'"{e.text}",{e.label}\n' for e in sentiment_examples(40)))
    common = ["--follower", "fake:follower", "--generator", run, "--max-instruction-tokens", "8", "--no-cache"]
    result = CliRunner().invoke(main, ["induce", str(data), "--no-eval", "--n", "5", "--m", "10", *common])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        main,
        [
            "eval",
            "--tasks",
            str(data),
            "--methods",
            "promptmii",
            "--n",
            "5",
            "--m",
            "10",
            "-o",
            str(tmp_path / "ev"),
            *common,
            "--format",
            "jsonl",
        ],
    )
    assert result.exit_code == 0, result.output
    [row] = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["method"] == "promptmii" and row["generator"].startswith("run-lora@") and row["m"] == 10
    assert row["template"] == "criteria"  # the run's own meta-prompt, not the default


# ---------------------------------------------------------------- on a GPU (skipped without one)

needs_cuda = pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine: docs/training.md)"
)


@needs_cuda
@pytest.mark.real  # trains a tiny random model with TRL on the bundled 0.5B's tokenizer: minutes
def test_grpo_steps_run_on_the_gpu_in_bf16_and_move_the_lora_weights(tmp_path, corpus, tiny_policy, random_follower):
    import torch
    from safetensors.torch import load_file

    from promptmii.backends.hf import HFBackend

    torch.cuda.reset_peak_memory_stats()
    summary = train(tiny_config(tmp_path, tiny_policy, eval_steps=0))
    assert summary["steps"] == 2 and torch.cuda.max_memory_allocated() > 0
    assert grpo_args(tiny_config(tmp_path, tiny_policy), use_cuda=True).bf16
    run = tmp_path / "run"
    weights = load_file(str(run / models.ADAPTER_DIR / "adapter_model.safetensors"))
    assert any(torch.count_nonzero(t) > 0 for k, t in weights.items() if "lora_B" in k)
    generator = HFBackend.load(Path(tiny_policy), "tiny", adapter=run / models.ADAPTER_DIR)
    assert generator.device.startswith("cuda") and next(generator.model.parameters()).dtype == torch.bfloat16
    chat = [{"role": "user", "content": "Write an instruction."}]
    [first] = generator.generate([chat], GenParams(max_tokens=8))
    [again] = generator.generate([chat], GenParams(max_tokens=8))
    assert first.error is None and first.text == again.text  # greedy on the GPU is repeatable
    logprobs = generator.label_logprobs(chat, ["positive", "negative"])  # the `score` decoding mode
    assert set(logprobs) == {"positive", "negative"} and all(v < 0 for v in logprobs.values())


if __name__ == "__main__":  # write the PROMPTMII_TINY_BASE directory for a machine without the bundled model
    import argparse

    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description="copy the bundled 0.5B's config and tokenizer (no weights)")
    parser.add_argument("--tiny-base", required=True)
    target = Path(parser.parse_args().tiny_base)
    base = models.ensure_dequantized("qwen2.5-coder-0.5b-instruct")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(base / "config.json", target / "config.json")
    AutoTokenizer.from_pretrained(base).save_pretrained(target)
