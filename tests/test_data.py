"""Loading data: files, corpus directories, HF datasets; every bad input gets one clear line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import SHARED_CORPUS, sentiment_examples, write_corpus
from promptmii.data import Example, Task, draw, join_fields, load_tasks
from promptmii.errors import DataError


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def many_rows(count: int) -> list[str]:
    return [f"text number {i},{'pos' if i % 2 else 'neg'}" for i in range(count)]


def test_csv_autodetects_columns_and_splits_by_seed(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", "text,label", many_rows(30))
    [task] = load_tasks(str(path), test_size=10, min_train=5, seed=1)
    assert task.labels == ("neg", "pos")
    assert (len(task.train), len(task.test)) == (20, 10)
    assert not {e.text for e in task.train} & {e.text for e in task.test}
    [again] = load_tasks(str(path), test_size=10, min_train=5, seed=1)
    [other] = load_tasks(str(path), test_size=10, min_train=5, seed=2)
    assert again == task and other.test != task.test


def test_jsonl_with_named_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"review": f"r{i}", "stars": str(i % 3)}) + "\n" for i in range(12)))
    [task] = load_tasks(str(path), text_col="review", label_col="stars", test_size=4)
    assert task.labels == ("0", "1", "2") and task.test[0].text.startswith("r")


def test_sentence_pairs_are_joined_like_the_corpus(tmp_path: Path) -> None:
    rows = [f"a{i},b{i},{'yes' if i % 2 else 'no'}" for i in range(10)]
    path = write_csv(tmp_path / "pairs.csv", "sentence1,sentence2,label", rows)
    [task] = load_tasks(str(path), test_size=2)
    assert all(e.text.startswith("Sentence 1: a") and "\nSentence 2: b" in e.text for e in task.train)
    assert join_fields([("premise", "p"), ("hypothesis", "h")]) == "Premise: p\nHypothesis: h"


def test_corpus_directory(tmp_path: Path, sentiment_task: Task) -> None:
    root = write_corpus(tmp_path / "corpus", [sentiment_task])
    [task] = load_tasks(str(root), split="test")
    assert (task.id, task.labels, task.train, task.test, task.split) == (*astuple_core(sentiment_task), "test")


def astuple_core(task: Task) -> tuple:
    return task.id, task.labels, task.train, task.test


@pytest.mark.skipif(not SHARED_CORPUS.is_dir(), reason="../shared/corpus is not beside the checkout")
def test_shared_corpus_loads_all_23_test_tasks() -> None:
    tasks = load_tasks(str(SHARED_CORPUS), split="test")
    assert len(tasks) == 23 and all(len(t.labels) >= 2 for t in tasks)


def test_hf_dataset_from_local_disk_with_classlabel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["sad", "happy"])}
    )
    data = datasets.Dataset.from_dict(
        {"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}, features=features
    )
    data.save_to_disk(str(tmp_path / "saved"))
    [task] = load_tasks(str(tmp_path / "saved"), test_size=5)
    assert task.labels == ("sad", "happy")  # ClassLabel order, names not ids
    # the load_dataset code path, from a local directory of data files, offline
    (tmp_path / "raw").mkdir()
    data.to_json(str(tmp_path / "raw" / "train.jsonl"))
    [task2] = load_tasks(f"hf:{tmp_path / 'raw'}", test_size=5)
    assert set(task2.labels) == {"0", "1"}


def test_draw_is_nested_and_seeded(sentiment_task: Task) -> None:
    shots20, test = draw(sentiment_task, 20, 5, seed=0)
    shots5, test_again = draw(sentiment_task, 5, 5, seed=0)
    assert shots20[:5] == shots5 and test == test_again
    assert draw(sentiment_task, 5, 5, seed=1)[0] != shots5


# ---------------------------------------------------------------- bad input: one clear line each


def error_of(source: str, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_tasks(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("")
    assert error_of(str(tmp_path / "e.csv")).endswith("e.csv: the file is empty")


def test_header_only(tmp_path: Path) -> None:
    assert "no data rows" in error_of(str(write_csv(tmp_path / "h.csv", "text,label", [])))


def test_single_label(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "one.csv", "text,label", [f"t{i},spam" for i in range(10)])
    assert "only one label ('spam')" in error_of(str(path), test_size=2)


def test_misspelled_column_lists_the_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", "text,sentiment", many_rows(10))
    message = error_of(str(path), label_col="sentimnet", test_size=2)
    assert (
        "column 'sentimnet' not found (did you mean 'sentiment'?); columns are: text, sentiment (use --label-col)"
        in message
    )


def test_missing_text_column_is_named(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", "code,label,extra", [f"c{i % 3},x{i % 2},e" for i in range(10)])
    assert "c.csv: no text column among: code, extra; columns are: code, label, extra (use --text-col)" in error_of(
        str(path), test_size=2
    )


def test_a_file_uses_the_corpus_builders_column_rules(tmp_path: Path) -> None:
    # No known names: the text is the mostly-distinct string column, the label the one with few values.
    path = write_csv(
        tmp_path / "c.csv", "body,verdict", [f"a long body number {i},{'ok' if i % 2 else 'no'}" for i in range(10)]
    )
    [task] = load_tasks(str(path), test_size=2)
    assert task.labels == ("no", "ok") and all(e.text.startswith("a long body") for e in task.train)


def test_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9,a\nb,b\n".encode("latin-1"))
    assert "not valid UTF-8 (byte 0xe9 at offset 14); re-save the file as UTF-8" in error_of(str(path))


def test_fewer_rows_than_n_plus_m(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "small.csv", "text,label", many_rows(30))
    assert "30 rows, but n=20 shown examples + m=50 held-out rows need 70 (lower --n or --m)" in error_of(
        str(path), test_size=50, min_train=20
    )


def test_empty_label_cell(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "gap.csv", "text,label", ["a,x", "b,", "c,y"])
    assert "row 2 has an empty label" in error_of(str(path), test_size=1)


def test_bad_json_line(tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_text('{"text": "a", "label": "x"}\n{oops\n')
    assert "line 2 is not valid JSON" in error_of(str(tmp_path / "b.jsonl"))


def test_missing_path_and_unknown_task(tmp_path: Path, sentiment_task: Task) -> None:
    assert "no such file or directory" in error_of(str(tmp_path / "nope"))
    root = write_corpus(tmp_path / "corpus", [sentiment_task])
    assert "unknown task 'sentimnt' (did you mean 'sentiment'?)" in error_of(str(root), task_ids=["sentimnt"])
    assert "no tasks in split 'dev'; splits are: test" in error_of(str(root), split="dev")


def test_corpus_with_missing_instances_file(tmp_path: Path, sentiment_task: Task) -> None:
    root = write_corpus(tmp_path / "corpus", [sentiment_task])
    (root / "instances" / "sentiment.test.jsonl").unlink()
    assert "sentiment.test.jsonl: missing instances file for task 'sentiment'" in error_of(str(root))


def test_draw_more_shots_than_train_rows(sentiment_task: Task) -> None:
    with pytest.raises(DataError, match="n=100 shown examples requested but the train side has 40"):
        draw(sentiment_task, 100, 5, seed=0)


def test_labels_differing_only_in_case(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "case.csv",
        "text,label",
        [f"t{i},{'Yes' if i % 3 == 0 else 'yes' if i % 3 == 1 else 'no'}" for i in range(12)],
    )
    assert "differ only in case or spaces" in error_of(str(path), test_size=2)


def test_example_records_are_plain_frozen_strings(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"  # JSON labels are numbers here; records hold them as label names (strings)
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(12)))
    [task] = load_tasks(str(path), test_size=4)
    assert task.labels == ("0", "1") and {type(e.label) for e in task.train + task.test} == {str}
    example = task.train[0]
    assert example == Example(example.text, example.label) and len({example, Example(example.text, example.label)}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        example.label = "2"  # type: ignore[misc]


def test_hub_dataset_offline_and_not_cached_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert "nobody/nothing-here: cannot load dataset (" in error_of("hf:nobody/nothing-here")


def test_json_labels_of_mixed_types_are_one_label(tmp_path: Path) -> None:
    labels = [0, 1, "1", 1.0, " 1", False, "false"]
    rows = [{"text": f"t{i}", "label": labels[i % len(labels)]} for i in range(28)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    [task] = load_tasks(str(tmp_path / "m.jsonl"), test_size=7)
    assert task.labels == ("0", "1", "false")
    (tmp_path / "l.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": [i % 2]}) + "\n" for i in range(9)))
    # a list is no label: the detector finds no label column and says which flag names one
    message = error_of(str(tmp_path / "l.jsonl"), test_size=2)
    assert "no label column among: label" in message and "(use --label-col)" in message


def test_an_unclosed_csv_quote_is_named_not_swallowed(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "q.csv", "text,label", ['"an unclosed quote,pos', *many_rows(30)])
    error = error_of(str(path), test_size=5)
    assert "bad CSV at line" in error and "unclosed quote" in error and "\n" not in error


def test_a_ragged_csv_row_is_named(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", "text,label", [*many_rows(5), "one,two,three", *many_rows(20)])
    assert "line 7 has 3 fields, the header has 2" in error_of(str(path), test_size=5)


def test_malformed_json_array_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('[{"text": "a", "label": "x"},\n {"text": "b", "label": }]')
    assert "a.json: not valid JSON at line 2" in error_of(str(tmp_path / "a.json"))


def test_unlabelled_classlabel_rows_are_one_line(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])})
    data = datasets.Dataset.from_dict(
        {"text": [f"t{i}" for i in range(20)], "label": [-1 if i == 3 else i % 2 for i in range(20)]}, features=features
    )
    data.save_to_disk(str(tmp_path / "saved"))
    assert "1 of 20 rows are unlabelled (ClassLabel -1, first: row 4)" in error_of(str(tmp_path / "saved"))


def test_a_repeated_text_is_never_both_shown_and_scored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_csv(tmp_path / "d.csv", "text,label", many_rows(30) + many_rows(10))  # 10 texts twice
    [task] = load_tasks(str(path), test_size=10)
    assert len(task.train) + len(task.test) == 30
    assert not {e.text for e in task.train} & {e.text for e in task.test}
    assert "dropped 10 rows whose text repeats an earlier row" in caplog.text
    caplog.clear()
    train = (*sentiment_examples(20), *sentiment_examples(3, 100))  # 3 train rows repeat test rows
    root = write_corpus(tmp_path / "c", [Task("t", ("negative", "positive"), train, tuple(sentiment_examples(8, 100)))])
    [loaded] = load_tasks(str(root))
    assert len(loaded.train) == 20 and "dropped 3 train rows whose text is also a test row" in caplog.text


def test_task_hash_changes_with_any_row_and_only_then(sentiment_task: Task) -> None:
    from dataclasses import replace

    from promptmii.data import task_hash

    same = replace(sentiment_task, meta={"source": "elsewhere"})
    relabelled = replace(sentiment_task, train=(replace(sentiment_task.train[0], label="negative"),
                                                *sentiment_task.train[1:]))  # fmt: skip
    assert task_hash(same) == task_hash(sentiment_task) != task_hash(relabelled)
