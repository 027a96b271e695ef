"""The SQLite call cache: keyed by model and params, never stores failures."""

from __future__ import annotations

from pathlib import Path

from fakes import FakeBackend
from promptmii.backends import GenParams
from promptmii.cache import CachedBackend, cache_key

CHAT = [{"role": "user", "content": "hello"}]


def test_second_call_is_served_from_the_cache(tmp_path: Path) -> None:
    fake = FakeBackend(rule=lambda chat: "hi")
    cached = CachedBackend(fake, tmp_path / "c.sqlite")
    first = cached.generate([CHAT], GenParams())
    again = CachedBackend(fake, tmp_path / "c.sqlite").generate([CHAT], GenParams())  # new process, same file
    assert len(fake.calls) == 1
    assert (again[0].text, again[0].cached, first[0].cached) == ("hi", True, False)


def test_a_prompt_repeated_in_one_batch_is_asked_once_and_timed_once(tmp_path: Path) -> None:
    fake = FakeBackend(rule=lambda chat: chat[0]["content"].upper())
    cached = CachedBackend(fake, tmp_path / "c.sqlite")
    other = [{"role": "user", "content": "bye"}]
    replies = cached.generate([CHAT, other, CHAT], GenParams())
    assert [r.text for r in replies] == ["HELLO", "BYE", "HELLO"]
    assert [(r.cached, r.seconds) for r in replies] == [(False, 0.01), (False, 0.01), (True, 0.0)]
    assert [chat for chat, _ in fake.calls] == [CHAT, other]  # in the batch's order
    assert cached.stored_seconds() == 0.02


def test_key_includes_model_params_and_sample_index() -> None:
    base = cache_key("B", "model-a", CHAT, GenParams())
    assert base != cache_key("B", "model-b", CHAT, GenParams())
    assert base != cache_key("B", "model-a", CHAT, GenParams(temperature=1.0))
    assert base != cache_key("B", "model-a", CHAT, GenParams(sample_index=1))
    assert base == cache_key("B", "model-a", [dict(CHAT[0])], GenParams())


def test_failures_are_not_cached(tmp_path: Path) -> None:
    failing = {"on": True}
    fake = FakeBackend(rule=lambda chat: "ok", fail_when=lambda chat: failing["on"])
    cached = CachedBackend(fake, tmp_path / "c.sqlite")
    assert cached.generate([CHAT], GenParams())[0].error == "fake failure"
    failing["on"] = False
    assert cached.generate([CHAT], GenParams())[0].text == "ok"
    assert len(fake.calls) == 2


def test_mixed_batch_keeps_order(tmp_path: Path) -> None:
    fake = FakeBackend(rule=lambda chat: chat[0]["content"].upper())
    cached = CachedBackend(fake, tmp_path / "c.sqlite")
    cached.generate([[{"role": "user", "content": "b"}]], GenParams())
    out = cached.generate([[{"role": "user", "content": x}] for x in "abc"], GenParams())
    assert [g.text for g in out] == ["A", "B", "C"] and [g.cached for g in out] == [False, True, False]


def test_a_journal_over_the_cache_and_one_without_it_share_their_rows(tmp_path: Path) -> None:
    """A search's journal wraps the run's cache, or the backend itself under --no-cache: same keys either way."""
    chat = [{"role": "user", "content": "hello"}]
    backend = FakeBackend(rule=lambda c: "hi")
    CachedBackend(CachedBackend(backend, tmp_path / "cache.sqlite"), tmp_path / "journal.sqlite").generate(
        [chat], GenParams()
    )
    [again] = CachedBackend(backend, tmp_path / "journal.sqlite").generate([chat], GenParams())
    assert again.cached and len(backend.calls) == 1
