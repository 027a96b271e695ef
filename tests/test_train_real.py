"""A real GRPO run: the bundled Qwen2.5-Coder-0.5B as LoRA policy, the same model in llama.cpp as follower.

Two optimizer steps with tiny lengths. The reward is the real follower's macro-F1; the labels are
arbitrary codes ("alpha"/"beta"), so the follower can only get them right through the instruction and
rewards differ between rollouts. TRL's own test idiom: the trained parameters must have changed.
Then the adapter is exported to GGUF and llama.cpp must write what transformers writes with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_corpus
from promptmii import models, prompts
from promptmii.backends import GenParams
from promptmii.data import Example, Task
from promptmii.train import TrainConfig, train
from test_e2e_real import MONEY, NEGATIVE, POSITIVE, SPORT

pytest.importorskip("trl")
pytestmark = pytest.mark.real
POLICY = "qwen2.5-coder-0.5b-instruct"


def coded_task(task_id: str, split: str, first: list[str], second: list[str]) -> Task:
    rows = [Example(t, "alpha") for t in first] + [Example(t, "beta") for t in second]
    rows = rows[0::2] + rows[1::2]  # interleave so both sides hold both labels
    return Task(task_id, ("alpha", "beta"), tuple(rows[:6]), tuple(rows[6:]), split)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, module_home: Path) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("grpo")
    write_corpus(
        root / "corpus",
        [
            coded_task("sport_money", "train", SPORT, MONEY),
            coded_task("money_sport", "train", MONEY, SPORT),
            coded_task("sentiment_codes", "validation", POSITIVE, NEGATIVE),
        ],
    )
    config = TrainConfig(
        corpus=str(root / "corpus"),
        output=str(root / "run"),
        policy=POLICY,
        follower=f"llamacpp:{POLICY}",
        m=6,
        num_generations=4,
        prompts_per_step=2,
        micro_batch_size=4,
        max_completion_tokens=24,
        max_steps=2,
        save_steps=2,
        eval_steps=2,
        learning_rate=1e-4,
        cache=False,
    )
    return root / "run", train(config)


def test_two_real_grpo_steps_log_real_rewards_and_move_the_lora_weights(trained_run) -> None:
    import torch
    from safetensors.torch import load_file

    run, summary = trained_run
    assert summary["steps"] == 2
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == [1, 2]
    assert all(0.0 <= r["reward"] <= 1.0 and "loss" in r for r in metrics)
    assert any(r["reward_std"] > 0 for r in metrics), "the follower gave every rollout the same F1"
    rollouts = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 2 * 2 * 4 and len({r["reward"] for r in rollouts}) > 1
    weights = load_file(str(run / models.ADAPTER_DIR / "adapter_model.safetensors"))
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    # peft initialises every lora_B to zeros (weight decay keeps zeros at zero): only a gradient moves them
    assert lora_b and any(torch.count_nonzero(t) > 0 for t in lora_b)
    validation = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in validation] == [0, 2] and set(validation[0]["tasks"]) == {"sentiment_codes"}
    assert (run / "training.png").is_file()


def test_exported_adapter_writes_the_same_greedy_instruction_as_transformers(trained_run) -> None:
    from promptmii.backends.hf import HFBackend
    from promptmii.backends.llamacpp import LlamaCppBackend
    from promptmii.export import export_adapter

    run, _ = trained_run
    path = export_adapter(run)
    assert path == run / models.EXPORTED_ADAPTER and path.stat().st_size > 100_000
    template = prompts.meta_template("terse")
    chats = [
        prompts.meta_prompt(
            template, [Example(t, "alpha") for t in SPORT[:2]] + [Example(MONEY[0], "beta")], ["alpha", "beta"]
        ),
        prompts.meta_prompt(
            template, [Example(t, "good") for t in POSITIVE[:2]] + [Example(NEGATIVE[0], "bad")], ["bad", "good"]
        ),
    ]
    params = GenParams(max_tokens=32)
    hf = HFBackend.from_training_run(run)
    llama = LlamaCppBackend.from_training_run(run)
    assert [g.text for g in llama.generate(chats, params)] == [g.text for g in hf.generate(chats, params)]
    assert llama.model_id.startswith("run-lora@") and hf.model_id.startswith("run-lora@")
