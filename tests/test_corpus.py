"""Corpus builder: column rules, filters with reasons, family split, resume, the hub path (offline)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import SHARED_CORPUS
from fakes import FakeBackend, user_text
from promptmii import corpus
from promptmii.corpus import (
    BuildConfig,
    HubEntry,
    Skip,
    build_corpus,
    first_occurrences,
    normalize_text,
    parse_labeler_reply,
    task_id,
)
from promptmii.data import ColumnError, detect_columns, join_fields, load_corpus
from promptmii.errors import DataError

SMALL = BuildConfig(train_size=20, test_size=10)  # draws 36 rows (20% margin), keeps 30


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def rows(n: int, labels: list, prefix: str = "review") -> list[dict]:
    return [{"text": f"{prefix} number {i} says something", "label": labels[i % len(labels)]} for i in range(n)]


def write_csv(path: Path, data: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(data[0]))
        writer.writeheader()
        writer.writerows(data)
    return path


def write_jsonl(path: Path, data: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in data), encoding="utf-8")
    return path


def log_lines(out: Path) -> dict[str, dict]:
    """Build-log lines by dataset name (the last path component)."""
    lines = [json.loads(line) for line in (out / "build_log.jsonl").read_text().splitlines()]
    return {Path(line["dataset"]).name + (f".{line['config']}" if line["config"] else ""): line for line in lines}


def records(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (out / "tasks.jsonl").read_text().splitlines())}


# ---------------------------------------------------------------- columns and labels


def test_classlabel_names_in_order_and_load_corpus_reads_the_result(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos", "neutral"])}
    )
    splits = {
        side: datasets.Dataset.from_dict(
            {"text": [f"{side} text {i}" for i in range(40)], "label": [i % 3 for i in range(40)]}, features=features
        )
        for side in ("train", "test")
    }
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "src" / "moods"))
    out = tmp_path / "out"
    summary = build_corpus([str(tmp_path / "src")], out, SMALL)
    assert (summary.kept, summary.skipped) == (1, 0)
    [task] = load_corpus(out)
    assert task.id == "moods" and task.labels == ("neg", "pos", "neutral")  # ClassLabel order, names not ids
    assert (len(task.train), len(task.test)) == (20, 10)
    assert {e.text.split()[0] for e in task.train + task.test} == {"train"}  # the train split, when there is one
    assert not {e.text for e in task.train} & {e.text for e in task.test}
    record = records(out)["moods"]
    assert record["origin"]["detected_by"] == "classlabel/name" and record["origin"]["split"] == "train"
    if SHARED_CORPUS.is_dir():  # the same fields as the shared corpus, nothing more or less
        shared = json.loads((SHARED_CORPUS / "tasks.jsonl").read_text().splitlines()[0])
        assert list(record) == list(shared)


def test_numeric_labels_are_kept_sorted_by_value_and_flagged(tmp_path: Path) -> None:
    write_csv(tmp_path / "scores.csv", rows(40, [0, 2, 10]))
    out = tmp_path / "out"
    build_corpus([str(tmp_path / "scores.csv")], out, SMALL)
    record = records(out)["scores"]
    assert record["labels"] == ["0", "2", "10"]
    assert record["origin"]["numeric_labels"] is True and "numeric ids (0, 2, 10)" in record["note"]
    assert load_corpus(out)[0].labels == ("0", "2", "10")


def test_sentence_pairs_keep_both_sides(tmp_path: Path) -> None:
    data = [
        {"premise": f"premise {i} here", "hypothesis": f"hypothesis {i}", "label": ["yes", "no"][i % 2]}
        for i in range(40)
    ]
    write_jsonl(tmp_path / "nli.jsonl", data)
    out = tmp_path / "out"
    build_corpus([str(tmp_path / "nli.jsonl")], out, SMALL)
    [task] = load_corpus(out)
    joined = {join_fields([("premise", r["premise"]), ("hypothesis", r["hypothesis"])]): r["label"] for r in data}
    assert all(joined[e.text] == e.label for e in task.train + task.test)
    assert task.train[0].text.startswith("Premise: ") and "\nHypothesis: " in task.train[0].text
    assert records(out)["nli"]["origin"]["text_columns"] == ["premise", "hypothesis"]


def test_statistics_find_unnamed_columns_and_long_texts_are_cut(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    data = {
        "id": list(range(40)),
        "title": [f"t{i}" for i in range(40)],
        "body": [f"body {i} " + "word " * 20 for i in range(40)],  # the longest strings: the text
        "polarity": ["up" if i % 2 else "down" for i in range(40)],  # few values: the label
    }
    datasets.Dataset.from_dict(data).to_parquet(str(tmp_path / "posts.parquet"))
    out = tmp_path / "out"
    build_corpus([str(tmp_path / "posts.parquet")], out, BuildConfig(train_size=20, test_size=10, max_text_chars=60))
    record = records(out)["posts"]
    origin = record["origin"]
    assert (origin["text_columns"], origin["label_column"]) == (["body"], "polarity")
    assert origin["detected_by"] == "statistics/statistics" and record["labels"] == ["down", "up"]
    assert "30 texts cut to 60 characters" in record["note"]
    assert all(len(e.text) == 60 for e in load_corpus(out)[0].train)


@pytest.mark.parametrize(
    ("row", "class_labels", "expected"),
    [
        ({"sentence": "a b", "label": 1, "stars": 2}, {"stars": ("bad", "ok", "good")}, (("sentence",), "stars")),
        ({"question": "q?", "sentence": "s.", "label": "yes"}, {}, (("question", "sentence"), "label")),
        ({"Premise": "p", "Hypothesis": "h", "Label": "x"}, {}, (("Premise", "Hypothesis"), "Label")),
        ({"tweet": "t", "sentiment": "pos", "labels": ["a"]}, {}, (("tweet",), "sentiment")),  # a list: no label
    ],
)
def test_detect_columns_by_features_and_names(row: dict, class_labels: dict, expected: tuple) -> None:
    columns = detect_columns([row, {**row}], class_labels=class_labels, max_labels=50)
    assert (columns.text, columns.label) == expected


def test_detect_columns_refuses_to_guess_between_two_label_like_columns() -> None:
    data = [{"body": f"long body text {i}", "verdict": i % 2, "grade": i % 3} for i in range(30)]
    with pytest.raises(ColumnError, match="several possible label columns: verdict, grade") as error:
        detect_columns(data, max_labels=50)
    assert error.value.kind == "ambiguous columns"


# ---------------------------------------------------------------- LLM fallback


def ambiguous_rows(prefix: str) -> list[dict]:
    long_body = "x" * 250  # cut to 200 characters in the labeler's prompt
    return [
        {"body": f"{prefix} {i} {long_body}", "verdict": ["keep", "drop"][i % 2], "grade": "abc"[i % 3]}
        for i in range(40)
    ]


def test_llm_labeler_decides_only_when_the_rules_cannot(tmp_path: Path) -> None:
    write_csv(tmp_path / "src" / "ambig.csv", ambiguous_rows("ambig"))
    write_csv(tmp_path / "src" / "wrong.csv", ambiguous_rows("wrong"))
    write_csv(tmp_path / "src" / "plain.csv", rows(40, ["a", "b"]))  # rules decide: no LLM call

    def reply(chat: list[dict]) -> str:
        if "Dataset: ambig" in user_text(chat):
            return "**input_column:** body\nlabel_column: `verdict`"
        return "input_column: review\nlabel_column: verdict"

    labeler = FakeBackend(rule=reply)
    out = tmp_path / "out"
    summary = build_corpus([str(tmp_path / "src")], out, SMALL, labeler=labeler)
    assert (summary.kept, summary.skipped) == (2, 1) and len(labeler.calls) == 2
    prompt = user_text(labeler.calls[0][0])
    assert "Dataset: ambig" in prompt and "Columns: body, verdict, grade" in prompt and "input_column:" in prompt
    shown = [json.loads(line) for line in prompt.splitlines() if line.startswith("{")]
    assert len(shown) == 3 and all(len(row["body"]) == 200 for row in shown)  # 3 rows, values cut to 200 chars
    assert labeler.calls[0][1].temperature == 0.0
    record = records(out)["ambig"]
    assert record["labels"] == ["drop", "keep"] and record["origin"]["detected_by"] == "llm:fake-model"
    assert "columns chosen by fake-model" in record["note"]
    wrong = log_lines(out)["wrong"]
    assert wrong["status"] == "skip" and "unknown column 'review'" in wrong["reason"]

    alone = tmp_path / "alone"
    build_corpus([str(tmp_path / "src" / "ambig.csv")], alone, SMALL)  # no labeler: a recorded skip
    assert log_lines(alone)["ambig"]["reason"] == "several possible label columns: verdict, grade"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("input_column: text\nlabel_column: label", (("text",), "label")),
        ("Sure!\n**Input_Column**: `Text`\n- label_column: 'label'", (("text",), "label")),
        ("input_column: premise, hypothesis\nlabel_column: label", (("premise", "hypothesis"), "label")),
    ],
)
def test_parse_labeler_reply(reply: str, expected: tuple) -> None:
    assert parse_labeler_reply(reply, ["text", "premise", "hypothesis", "label"]) == expected


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("input_column: body\nlabel_column: label", "unknown column 'body'; columns are: text, label"),
        ("the text is in 'text'", "no input_column line"),
        ("input_column: text\nlabel_column: text", "'text' as both input and label"),
    ],
)
def test_parse_labeler_reply_rejects(reply: str, reason: str) -> None:
    with pytest.raises(Skip, match=reason):
        parse_labeler_reply(reply, ["text", "label"])


# ---------------------------------------------------------------- filters, skips, de-duplication


def test_every_skip_has_a_reason_a_person_can_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_csv(src / "good.csv", rows(40, ["ham", "spam"]))
    write_csv(src / "one_label.csv", rows(40, ["spam"]))
    write_csv(src / "no_text.csv", [{"id": i, "score": i / 7, "label": "ab"[i % 2]} for i in range(40)])
    write_csv(src / "no_label.csv", [{"id": i, "body": f"post {i}", "score": i / 7} for i in range(40)])
    write_csv(src / "few.csv", rows(25, ["ham", "spam"]))
    write_csv(src / "case.csv", rows(40, ["Spam", "spam"]))
    write_csv(src / "ids.csv", [{"text": f"row {i}", "label": f"id{i}"} for i in range(40)])
    (src / "broken.parquet").write_bytes(b"not a parquet file")
    out = tmp_path / "out"
    summary = build_corpus([str(src)], out, SMALL)
    lines = log_lines(out)
    reasons = {name: line["reason"] for name, line in lines.items() if line["status"] == "skip"}
    assert reasons["one_label"] == "one label ('spam') in 30 rows"
    assert reasons["no_text"] == "no text column among: id, score"
    assert reasons["no_label"] == "no label column among: id, score (none has 2 to 18 distinct values)"
    assert reasons["few"] == "only 25 rows, need 30"
    assert reasons["case"] == "labels 'Spam' and 'spam' differ only in case or spaces"
    assert reasons["ids"] == "30 distinct labels in 30 rows: not a label column"
    assert reasons["broken"].startswith("load failed: ")
    assert lines["good"]["status"] == "ok" and lines["good"]["task_id"] == "good"
    assert (summary.kept, summary.skipped) == (1, 7)
    assert summary.skip_kinds == {
        "too few labels": 1,
        "no text column": 1,
        "no label column": 1,
        "too few rows": 1,
        "labels clash": 1,
        "too many labels": 1,
        "load failed": 1,
    }
    text = str(summary)
    assert "1 tasks kept, 7 skipped" in text and "too few labels" in text
    assert [t.id for t in load_corpus(out)] == ["good"]


def test_duplicates_and_empty_texts_are_dropped_so_the_sides_share_no_text(tmp_path: Path) -> None:
    # 36 rows each, exactly what SMALL draws, so every row is seen and the outcome does not hang on the shuffle
    unique = rows(31, ["a", "b"])
    variants = [{"text": f"  {r['text'].upper()} ", "label": r["label"]} for r in unique[:5]]  # same once normalised
    write_csv(tmp_path / "src" / "dups.csv", unique + variants)
    empty = [{"text": "", "label": "a"}] * 5
    write_csv(tmp_path / "src" / "short.csv", unique[:28] + variants[:3] + empty)
    out = tmp_path / "out"
    build_corpus([str(tmp_path / "src")], out, SMALL)
    [task] = load_corpus(out)
    normalised = [normalize_text(e.text) for e in task.train + task.test]
    assert len(normalised) == 30 and len(set(normalised)) == 30
    short = log_lines(out)["short"]["reason"]
    assert short == "only 28 rows after dropping duplicates and empty texts, need 30"


def test_first_occurrences_compares_normalised_texts() -> None:
    assert first_occurrences(["A  b", "a b", " c", "C", "d"]) == [0, 2, 4]


# ---------------------------------------------------------------- family split


def family_sources(src: Path) -> None:
    topics = rows(30, ["x", "y"], prefix="topic a")
    write_csv(src / "topics" / "a.csv", topics)  # configs of dataset 'topics': a sub-directory
    write_csv(src / "topics" / "b.csv", rows(30, ["x", "y"], prefix="topic b"))
    write_csv(src / "copy.csv", topics[:5] + rows(25, ["x", "y"], prefix="copy"))  # shares 5 texts with topics/a
    for i in range(6):
        write_csv(src / f"d{i}.csv", rows(30, ["x", "y"], prefix=f"other {i}"))


def test_split_is_by_family_and_the_same_seed_gives_the_same_split(tmp_path: Path) -> None:
    family_sources(tmp_path / "src")
    config = BuildConfig(train_size=20, test_size=10, validation_share=0.3, test_share=0.3)
    summary = build_corpus([str(tmp_path / "src")], tmp_path / "one", config)
    one = records(tmp_path / "one")
    assert set(one) == {"topics__a", "topics__b", "copy", *(f"d{i}" for i in range(6))}
    grouped = {(one[t]["family"], one[t]["split"]) for t in ("topics__a", "topics__b", "copy")}
    assert len(grouped) == 1  # both configs and the dataset sharing texts: one family, one side
    assert summary.families == {"train": 3, "validation": 2, "test": 2}  # 7 families, shares 0.3 / 0.3
    sides: dict[str, set[str]] = {}
    for task in load_corpus(tmp_path / "one"):
        sides.setdefault(task.split, set()).update(normalize_text(e.text) for e in task.train + task.test)
    assert not sides["train"] & sides["test"] and not sides["train"] & sides["validation"]
    assert not sides["validation"] & sides["test"]

    build_corpus([str(tmp_path / "src")], tmp_path / "two", config)
    two = records(tmp_path / "two")
    assert {t: (r["family"], r["split"]) for t, r in one.items()} == {
        t: (r["family"], r["split"]) for t, r in two.items()
    }


# ---------------------------------------------------------------- resume


def test_a_rerun_only_decides_what_the_log_has_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = write_csv(tmp_path / "first.csv", rows(40, ["a", "b"], prefix="first"))
    second = write_csv(tmp_path / "second.csv", rows(40, ["a", "b"], prefix="second"))
    out = tmp_path / "out"
    build_corpus([str(first)], out, SMALL)
    with (out / "build_log.jsonl").open("a") as log:
        log.write('{"dataset": "killed mid-li')  # a build killed while writing a line: the line is dropped
    loaded = []
    real_load = corpus.load_sample

    def counting_load(source: corpus.Source, n_rows: int, seed: int) -> corpus.Sample:
        loaded.append(Path(source.location).name)
        return real_load(source, n_rows, seed)

    monkeypatch.setattr(corpus, "load_sample", counting_load)
    summary = build_corpus([str(first), str(second)], out, SMALL)
    assert loaded == ["second.csv"] and summary.decided_now == 1 and summary.kept == 2
    assert len((out / "build_log.jsonl").read_text().splitlines()) == 2
    assert sorted(records(out)) == ["first", "second"]

    with pytest.raises(DataError, match=r"built with train_size=20 \(now 30\)"):
        build_corpus([str(first)], out, BuildConfig(train_size=30, test_size=10))


def test_an_outage_is_not_a_skip_and_the_next_run_retries_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = write_csv(tmp_path / "first.csv", rows(40, ["a", "b"], prefix="first"))
    second = write_csv(tmp_path / "second.csv", rows(40, ["a", "b"], prefix="second"))
    out = tmp_path / "out"
    real_load = corpus.load_sample

    def hub_down(source: corpus.Source, n_rows: int, seed: int) -> corpus.Sample:
        if source.location.endswith("second.csv"):
            try:
                raise TimeoutError("read timed out")
            except TimeoutError as e:  # as the hub client wraps it
                raise RuntimeError("Couldn't reach the dataset") from e
        return real_load(source, n_rows, seed)

    monkeypatch.setattr(corpus, "load_sample", hub_down)
    summary = build_corpus([str(first), str(second)], out, SMALL)
    assert (summary.kept, summary.skipped, summary.deferred) == (1, 0, 1)
    assert "run the same command again to retry" in str(summary) and list(log_lines(out)) == ["first"]
    monkeypatch.setattr(corpus, "load_sample", real_load)
    summary = build_corpus([str(first), str(second)], out, SMALL)
    assert (summary.kept, summary.deferred, summary.decided_now) == (2, 0, 1)
    # an older build logged an outage as a skip: that line is decided again
    lines = (out / "build_log.jsonl").read_text().splitlines()
    stale = {**json.loads(lines[1]), "status": "skip", "kind": "load failed", "task_id": None,
             "reason": "load failed: ConnectionError: HTTPSConnectionPool: Max retries exceeded"}  # fmt: skip
    (out / "build_log.jsonl").write_text(f"{lines[0]}\n{json.dumps(stale)}\n")
    assert build_corpus([str(first), str(second)], out, SMALL).decided_now == 1


def test_configs_of_local_files_share_a_stem_prefix(tmp_path: Path) -> None:
    write_csv(tmp_path / "tweets.hate.csv", rows(40, ["hate", "none"], prefix="hate"))
    write_csv(tmp_path / "tweets.irony.csv", rows(40, ["irony", "none"], prefix="irony"))
    write_csv(tmp_path / "tweets.zzz.csv", rows(40, ["z", "none"], prefix="zzz"))
    out = tmp_path / "out"
    build_corpus([str(tmp_path)], out, BuildConfig(train_size=20, test_size=10, max_configs=2))
    built = records(out)
    assert sorted(built) == ["tweets__hate", "tweets__irony"]  # max_configs=2: the first two, by name
    assert built["tweets__hate"]["origin"]["config"] == "hate" and built["tweets__hate"]["name"] == "tweets (hate)"


# ---------------------------------------------------------------- the hub path, offline


def test_hub_path_through_a_fake_listing_of_a_local_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["no", "yes"])})
    hub = tmp_path / "hubdata"
    hub.mkdir()
    for side in ("train", "test"):
        data = {"text": [f"{side} sentence {i}" for i in range(40)], "label": [i % 2 for i in range(40)]}
        datasets.Dataset.from_dict(data, features=features).to_parquet(str(hub / f"{side}.parquet"))
    asked = []

    def fake_listing(limit: int) -> list[HubEntry]:
        asked.append(limit)
        return [HubEntry(str(hub), license="mit", language="en")]

    monkeypatch.setattr(corpus, "list_hub_datasets", fake_listing)
    out = tmp_path / "out"
    summary = build_corpus(["hub"], out, BuildConfig(train_size=20, test_size=10, hub_limit=5))
    assert asked == [5] and summary.kept == 1
    [record] = records(out).values()
    assert record["id"] == f"{tmp_path.name}__hubdata"  # owner__name; the 'default' config is left out
    assert record["origin"]["source"] == "hub" and record["origin"]["config"] == "default"
    assert (record["license"], record["language"], record["labels"]) == ("mit", "en", ["no", "yes"])
    [task] = load_corpus(out)
    assert all(e.text.startswith("train ") for e in task.train + task.test)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: [str(tmp / "missing")], "missing: no such file or directory"),
        (lambda tmp: [str((tmp / "empty").mkdir() or tmp / "empty")], "empty: no datasets here"),
        (lambda tmp: [], "no sources"),
        (lambda tmp: [str(tmp / "notes.txt")], "notes.txt: not a dataset file"),
    ],
)
def test_bad_sources_fail_with_one_line(tmp_path: Path, make, message: str) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError) as info:
        build_corpus(make(tmp_path), tmp_path / "out", SMALL)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_config_rejects_impossible_shares() -> None:
    with pytest.raises(DataError, match="lower one of them"):
        BuildConfig(validation_share=0.5, test_share=0.5)


def test_task_ids_are_filesystem_safe() -> None:
    assert task_id("owner/name", "en") == "owner__name__en"
    assert task_id("owner/name", "default") == "owner__name"
    assert task_id("a b/c:d", "x/y") == "a_b__c_d__x_y"
    long = task_id("owner/" + "n" * 300, None)
    assert len(long) == 120 and long != task_id("owner/" + "n" * 301, None)
