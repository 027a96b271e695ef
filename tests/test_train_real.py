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


def test_exported_adapter_moves_llama_cpp_logits_as_the_merged_adapter_moves_transformers(
    trained_run, tmp_path
) -> None:
    """The GGUF adapter is the peft adapter: its effect on the next-token logits is the same in both engines.

    Comparing greedy texts is not a fair test: llama.cpp multiplies Q4_K weights with Q8 activations, the
    transformers copy is the dequantized float32, so near-ties flip somewhere in a long generation. Here the
    run's LoRA B is scaled up (two GRPO steps barely move it) so the adapter's effect dwarfs that difference,
    and the change in logits it causes must agree between llama.cpp and transformers.
    """
    import shutil

    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    from promptmii.backends.hf import HFBackend
    from promptmii.backends.llamacpp import LlamaCppBackend
    from promptmii.export import export_adapter

    run, _ = trained_run
    path = export_adapter(run)
    assert path == run / models.EXPORTED_ADAPTER and path.stat().st_size > 100_000
    boosted = tmp_path / "run"
    shutil.copytree(run, boosted, ignore=shutil.ignore_patterns("checkpoint-*", models.EXPORTED_ADAPTER))
    weights_path = boosted / models.ADAPTER_DIR / "adapter_model.safetensors"
    weights = load_file(str(weights_path))
    save_file({k: v * 300 if "lora_B" in k else v for k, v in weights.items()}, str(weights_path))
    export_adapter(boosted)
    chat = prompts.meta_prompt(
        prompts.meta_template("terse"),
        [Example(t, "good") for t in POSITIVE[:2]] + [Example(NEGATIVE[0], "bad")],
        ["bad", "good"],
    )
    base_llama = LlamaCppBackend.from_spec(models.FAST_MODEL)
    tokens = base_llama._tokens(base_llama._render(chat))
    llama_delta = LlamaCppBackend.from_training_run(boosted)._next_token_logits(tokens) - base_llama._next_token_logits(
        tokens
    )

    def hf_logits(backend: HFBackend) -> np.ndarray:
        with torch.no_grad():
            return backend.model(input_ids=torch.tensor([tokens])).logits[0, -1].float().numpy()

    hf_delta = hf_logits(HFBackend.from_training_run(boosted)) - hf_logits(HFBackend.from_spec(models.FAST_MODEL))
    assert np.abs(hf_delta).max() > 1.0  # the boosted adapter does move the logits
    assert np.corrcoef(llama_delta, hf_delta)[0, 1] > 0.95
    assert 0.8 < np.linalg.norm(llama_delta) / np.linalg.norm(hf_delta) < 1.25  # the same scale: alpha / r kept
    assert llama_delta.argmax() == hf_delta.argmax()
