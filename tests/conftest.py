"""Shared fixtures: an isolated PROMPTMII_HOME per test, small tasks, fake backends in the registry."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import settings

from promptmii import backends, models
from promptmii.data import Example, Task

REPO = Path(__file__).resolve().parent.parent
SHARED_CORPUS = REPO.parent / "shared" / "corpus"
SENTIMENT_LABELS = ("negative", "positive")

# Property tests check values, not speed: on 2 shared cores (benchmarks running beside, CI) a 200 ms
# per-example deadline fails them for reasons that have nothing to do with the code.
settings.register_profile("no-deadline", deadline=None)
settings.load_profile("no-deadline")


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One models directory for the whole session: the bundled GGUF is assembled at most once."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def module_home(model_store: Path):
    """PROMPTMII_HOME for module-scoped fixtures (servers, loaded models), sharing the session's model store."""
    home = model_store.parent / f"home-{os.getpid()}-{id(model_store)}"
    home.mkdir(exist_ok=True)
    if not (home / "models").exists():
        os.symlink(model_store, home / "models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROMPTMII_HOME", str(home))
        yield home


@pytest.fixture(autouse=True)
def promptmii_home(tmp_path: Path, model_store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    os.symlink(model_store, home / "models")
    monkeypatch.setenv("PROMPTMII_HOME", str(home))
    return home


@pytest.fixture
def register_backend(monkeypatch: pytest.MonkeyPatch):
    """Put a backend under a spec string, so CLI commands can select it (`--follower fake:f`)."""

    def register(spec: str, backend: object) -> str:
        monkeypatch.setitem(backends._LOADED, spec, backend)
        return spec

    return register


SENTIMENT_WORDS = {"great": "positive", "love": "positive", "awful": "negative", "hate": "negative"}


def sentiment_examples(count: int, offset: int = 0) -> list[Example]:
    words = list(SENTIMENT_WORDS.items())
    return [Example(f"review {offset + i}: I {words[i % 4][0]} it", words[i % 4][1]) for i in range(count)]


@pytest.fixture
def sentiment_task() -> Task:
    return Task(
        "sentiment", ("negative", "positive"), tuple(sentiment_examples(40)), tuple(sentiment_examples(12, 100))
    )


def write_corpus(root: Path, tasks: list[Task]) -> Path:
    """A corpus directory in the format of ../shared/corpus."""
    (root / "instances").mkdir(parents=True)
    with (root / "tasks.jsonl").open("w") as index:
        for task in tasks:
            record = {
                "id": task.id,
                "split": task.split or "test",
                "labels": list(task.labels),
                "n_train": len(task.train),
            }
            index.write(json.dumps(record) + "\n")
            for side, rows in (("train", task.train), ("test", task.test)):
                with (root / "instances" / f"{task.id}.{side}.jsonl").open("w") as f:
                    for e in rows:
                        f.write(json.dumps({"text": e.text, "label": e.label}) + "\n")
    return root


def corpus_tasks(train_tasks: int = 6, train_rows: int = 60) -> list[Task]:
    tasks = []
    for i in range(train_tasks):
        examples = sentiment_examples(train_rows + 30, offset=100 * i)
        tasks.append(
            Task(f"train{i}", SENTIMENT_LABELS, tuple(examples[:train_rows]), tuple(examples[train_rows:]), "train")
        )
    examples = sentiment_examples(60, offset=9000)
    tasks.append(Task("val0", SENTIMENT_LABELS, tuple(examples[:30]), tuple(examples[30:]), "validation"))
    return tasks


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Path:
    """A 2-layer random Qwen2 with the bundled model's tokenizer and chat template: GRPO steps in seconds.

    PROMPTMII_TINY_BASE may name a directory holding only the 0.5B's config.json and tokenizer files
    (`python tests/test_train.py --tiny-base DIR` writes one): the weights are random anyway, so a GPU
    machine without the bundled model (and without llama.cpp) can run these tests.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    base = os.environ.get("PROMPTMII_TINY_BASE")
    if not base:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PROMPTMII_HOME", str(model_store.parent / "tiny-home"))
            (model_store.parent / "tiny-home").mkdir(exist_ok=True)
            if not (model_store.parent / "tiny-home" / "models").exists():
                (model_store.parent / "tiny-home" / "models").symlink_to(model_store)
            base = models.ensure_dequantized("qwen2.5-coder-0.5b-instruct")
    config = AutoConfig.from_pretrained(base)
    config.update({"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2})
    config.update({"num_hidden_layers": 2, "head_dim": 16, "layer_types": config.layer_types[:2]})
    path = tmp_path_factory.mktemp("tiny-policy")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(base).save_pretrained(path)
    return path


def load_script(relative: str) -> ModuleType:
    """A script of the repository that is not part of the package (docs/, bench/), imported from its file.

    Its folder is on sys.path while it loads, as when it runs: bench scripts import bench/_common.py.
    """
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # as an import does: dataclasses look their module up there
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module
