"""SQLite cache of LLM calls, wrapping any Backend; it doubles as the call log (tokens, seconds).

Key = sha256 of sorted JSON of {backend, model_id, prompt, params, sample_index} (dspy's cache_key).
The model is in the key: lm-eval's cache leaves it out and silently returns another model's answers.
Failed calls are never stored, so a re-run retries them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import asdict, replace
from pathlib import Path

from promptmii.backends import Backend, Chat, Generation, GenParams

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    seconds REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS label_scores (
    key TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    scores TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""


def cache_key(backend_kind: str, model_id: str, prompt: Chat, params: GenParams) -> str:
    payload = {
        "backend": backend_kind,
        "model_id": model_id,
        "prompt": prompt,
        # `choices` joins the key only when set, so keys of free-generation calls stay as they were
        "params": {k: v for k, v in asdict(params).items() if k != "sample_index" and not (k == "choices" and not v)},
        "sample_index": params.sample_index,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def scores_key(backend_kind: str, model_id: str, prompt: Chat, labels: list[str]) -> str:
    payload = {"backend": backend_kind, "model_id": model_id, "prompt": prompt, "labels": list(labels)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class CachedBackend:
    """A Backend that answers repeated calls from SQLite and forwards the rest, in one batch."""

    def __init__(self, backend: Backend, path: Path):
        self.backend = backend
        self.model_id = backend.model_id
        self.context_length = backend.context_length
        self.trained_template = getattr(backend, "trained_template", None)
        # The backend's class, seen through another cache: a search journal wraps the run's cache, or
        # the backend itself under --no-cache, and both must find the same journal rows.
        self._kind = backend._kind if isinstance(backend, CachedBackend) else type(backend).__name__
        self.score_hits = 0  # label scorings answered from the cache (Generation.cached covers the rest)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path))
        self._db.executescript(SCHEMA)
        self._db.commit()

    def stored_seconds(self) -> float:
        """Seconds the generations stored here took when they were made, each distinct call once."""
        return float(self._db.execute("SELECT COALESCE(SUM(seconds), 0) FROM calls").fetchone()[0])

    @property
    def token_counter(self) -> str:  # an HTTP backend learns how it counts on its first count
        return self.backend.token_counter

    def generate(self, prompts: list[Chat], params: GenParams) -> list[Generation]:
        keys = [cache_key(self._kind, self.model_id, p, params) for p in prompts]
        results: list[Generation | None] = [self._lookup(k) for k in keys]
        missing: dict[str, int] = {}  # key -> the first index that asks it, in the batch's order
        for i, r in enumerate(results):
            if r is None:
                missing.setdefault(keys[i], i)
        if missing:
            fresh = dict(
                zip(missing, self.backend.generate([prompts[i] for i in missing.values()], params), strict=True)
            )
            for key, generation in fresh.items():
                if generation.error is None:
                    self._store(key, generation)
            self._db.commit()
            for i, r in enumerate(results):  # a prompt repeated within the batch is asked once
                if r is None:
                    generation = fresh[keys[i]]
                    results[i] = generation if i == missing[keys[i]] else replace(generation, cached=True, seconds=0.0)
        return [r for r in results if r is not None]

    def label_logprobs(self, prompt: Chat, labels: list[str]) -> dict[str, float]:
        key = scores_key(self._kind, self.model_id, prompt, labels)
        row = self._db.execute("SELECT scores FROM label_scores WHERE key = ?", (key,)).fetchone()
        if row:
            self.score_hits += 1
            return json.loads(row[0])
        scores = self.backend.label_logprobs(prompt, labels)
        self._db.execute(
            "INSERT OR REPLACE INTO label_scores VALUES (?, ?, ?, ?)",
            (key, self.model_id, json.dumps(scores), time.time()),
        )
        self._db.commit()
        return scores

    def count_tokens(self, prompt: Chat) -> int:
        return self.backend.count_tokens(prompt)

    def _lookup(self, key: str) -> Generation | None:
        row = self._db.execute(
            "SELECT text, prompt_tokens, completion_tokens, seconds FROM calls WHERE key = ?", (key,)
        ).fetchone()
        return Generation(row[0], row[1], row[2], row[3], cached=True) if row else None

    def _store(self, key: str, g: Generation) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, self.model_id, g.text, g.prompt_tokens, g.completion_tokens, g.seconds, time.time()),
        )
