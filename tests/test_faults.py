"""Fault tests: a run that is killed, fed a flaky or hanging backend, a full disk, a cut-off results file or a
second writer ends with the same table as an undisturbed run, or stops with one clear line; never with a
done row that hides a failure.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import REPO, SENTIMENT_WORDS, sentiment_examples, write_corpus
from fakes import FakeBackend, keyword_rule
from fault_server import FaultServer
from promptmii import results
from promptmii.backends import get_backend
from promptmii.cache import CachedBackend
from promptmii.cli import main
from promptmii.data import Task
from promptmii.errors import BackendError, PromptMIIError
from promptmii.experiment import Backends, EvalConfig, run_eval
from promptmii.results import ResultsDir, read_jsonl, read_results

HINT = "Decide the sentiment from the words love, great, hate and awful."
LABELS = ("negative", "positive")
CONFIG = EvalConfig(methods=("naive", "icl:4", "promptmii-zero"), n=4, m=10, cache=False)


def tasks() -> list[Task]:
    return [
        Task(f"t{i}", LABELS, tuple(sentiment_examples(30, 1000 * i)), tuple(sentiment_examples(10, 1000 * i + 500)))
        for i in range(3)
    ]


def follower(**kwargs) -> FakeBackend:
    return FakeBackend("follower", rule=keyword_rule(SENTIMENT_WORDS, "positive", needs="sentiment"), **kwargs)


def generator(**kwargs) -> FakeBackend:
    return FakeBackend("generator", rule=lambda chat: HINT, **kwargs)


def backends(f: object, g: object | None = None, config: EvalConfig = CONFIG) -> Backends:
    return Backends(config, overrides={"follower": f, "base_generator": g or generator()})


def table(directory: Path) -> dict[tuple[str, str], tuple]:
    """The final table: the last row of every (task, method), which must be done."""
    latest = {(r.task, r.method): r for r in read_results(directory / "results.jsonl")}
    assert not [r for r in latest.values() if r.failed], "a failed row was left"
    return {key: (r.macro_f1, r.accuracy, r.invalid_rate, r.instruction) for key, r in latest.items()}


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("undisturbed")
    run_eval(tasks(), CONFIG, ResultsDir(out), backends=backends(follower()), quiet=True)
    return table(out)


def assert_no_hidden_failure(directory: Path) -> None:
    """No done row whose samples carry an error or whose instruction came from a failed generator call."""
    rows = read_results(directory / "results.jsonl")
    done = {r.key for r in rows if not r.failed}
    samples = read_jsonl(directory / "samples.jsonl")
    assert not [s for s in samples if s["error"] and (s["task"], s["method"], s["fingerprint"]) in done]
    assert all(r.instruction.strip() for r in rows if not r.failed and r.method == "promptmii-zero")
    per_key: dict[tuple, int] = {}
    for s in samples:
        key = (s["task"], s["method"], s["fingerprint"])
        per_key[key] = per_key.get(key, 0) + 1
    assert per_key == dict.fromkeys(done, 10)  # done rows' samples, each once; none of failed rows


def test_a_run_killed_mid_task_resumes_to_the_same_table(tmp_path: Path, undisturbed: dict) -> None:
    """A real kill -9 in the middle of the second task's follower run, then the same command again."""
    out = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO / "tests")!r})
        from test_faults import CONFIG, backends, follower, tasks
        from promptmii.experiment import run_eval
        from promptmii.results import ResultsDir

        f = follower()
        rule = f.rule
        def dies(chat):
            if len(f.calls) > 45:  # task 1 done (30 calls), 15 calls into task 2
                os.kill(os.getpid(), signal.SIGKILL)
            return rule(chat)
        f.rule = dies
        run_eval(tasks(), CONFIG, ResultsDir(Path({str(out)!r})), backends=backends(f), quiet=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    before = read_results(out / "results.jsonl")
    assert {r.task for r in before} == {"t0", "t1"} and len(before) < 6  # killed inside t1
    f = follower()
    resumed = run_eval(tasks(), CONFIG, ResultsDir(out), backends=backends(f), quiet=True)  # the lock died with it
    assert len(resumed) == 9 - len(before) and len(f.calls) == 10 * len(resumed)
    assert table(out) == undisturbed
    assert_no_hidden_failure(out)


def test_backend_errors_on_30_percent_of_calls_end_in_the_same_table(tmp_path: Path, undisturbed: dict) -> None:
    out = ResultsDir(tmp_path / "run")
    flaky_f = CachedBackend(follower(fail_rate=0.3, seed=1), tmp_path / "cache.sqlite")
    flaky_g = CachedBackend(generator(fail_rate=0.3, seed=2), tmp_path / "cache.sqlite")
    passes = []
    for _ in range(12):  # each run retries only what failed; the cache answers what did not
        written = run_eval(tasks(), CONFIG, out, backends=backends(flaky_f, flaky_g), quiet=True)
        passes.append(sum(r.failed for r in written))
        assert_no_hidden_failure(out.directory)
        if not passes[-1]:
            break
    assert passes[0] > 0 and passes[-1] == 0, passes
    assert table(out.directory) == undisturbed
    failed = [r for r in read_results(out.results_path) if r.failed]
    assert failed and all(r.error and ("follower calls failed" in r.error or "generator call failed" in r.error)
                          for r in failed)  # fmt: skip


def test_a_failed_row_shows_as_failed_and_stays_out_of_the_means(tmp_path: Path, register_backend) -> None:
    corpus = write_corpus(tmp_path / "corpus", tasks()[:2])
    broken = FakeBackend(rule=lambda chat: "positive", fail_when=lambda chat: "review 502:" in chat[0]["content"])
    args = ["eval", "--tasks", str(corpus), "--methods", "naive", "--n", "4", "--m", "10", "-o", str(tmp_path / "o")]
    result = CliRunner().invoke(main, [*args, "--follower", register_backend("fake:f", broken), "--format", "table"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    [bad] = [line for line in lines if line.startswith("t0 ")]
    assert bad.split()[2:5] == ["-", "-", "-"] and bad.endswith("FAILED")
    [good] = [line for line in lines if line.startswith("t1 ")]
    mean = lines[lines.index("Mean over tasks:") + 3]
    assert mean.split()[1] == good.split()[2] and mean.split()[-2:] == ["1", "1"]  # 1 task, 1 failed
    assert "failed: t0 naive: 1 of 10 follower calls failed (first: fake failure)" in result.stderr


def test_a_server_that_hangs_is_retried_or_refused_in_one_line(tmp_path: Path) -> None:
    def answer(messages: list[dict]) -> str:
        return keyword_rule(SENTIMENT_WORDS, "positive", needs="sentiment")([{"content": messages[0]["content"]}])

    server = FaultServer(answer=answer)
    try:
        spec = f"openai:test-model@{server.url}?timeout=0.5&retries=2&concurrency=4"
        config = EvalConfig(methods=("naive", "icl:4"), n=4, m=10, cache=False)
        calm = run_eval(
            tasks(), config, ResultsDir(tmp_path / "calm"), backends=backends(get_backend(spec), config=config)
        )
        server.faults = [("hang", 2.0)] * 5  # five requests hang past the read timeout, then are retried
        run_eval(tasks(), config, ResultsDir(tmp_path / "hung"), backends=backends(get_backend(spec), config=config))
        assert table(tmp_path / "hung") == table(tmp_path / "calm") and len(calm) == 6
        server.fail_forever = ("hang", 2.0)  # now every request hangs
        with pytest.raises(BackendError, match=r"the follower failed on all 10 inputs \(.*ReadTimeout after 0.5 s"):
            run_eval(
                tasks(), config, ResultsDir(tmp_path / "dead"), backends=backends(get_backend(spec), config=config)
            )
        assert not (tmp_path / "dead" / "results.jsonl").exists()
    finally:
        server.close()


def test_a_full_disk_stops_in_one_line_and_the_next_run_repairs_and_resumes(
    tmp_path: Path, undisturbed: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = ResultsDir(tmp_path / "run")
    real_append = results.append_lines
    appended = []

    def disk_fills(path: Path, rows: list[dict]) -> None:
        appended.append(path.name)
        if appended.count("results.jsonl") == 4:  # the 4th row: half a line lands, then the disk is full
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(rows[0])[:100])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(path, rows)

    monkeypatch.setattr(results, "append_lines", disk_fills)
    with pytest.raises(PromptMIIError, match=r"cannot write results \(No space left on device\); free space"):
        run_eval(tasks(), CONFIG, out, backends=backends(follower()), quiet=True)
    monkeypatch.setattr(results, "append_lines", real_append)
    assert len(read_results(out.results_path)) == 3  # the cut-off 4th line is skipped when read
    run_eval(tasks(), CONFIG, out, backends=backends(follower()), quiet=True)
    [aside] = out.directory.glob("results.jsonl.corrupt-*")
    assert len(aside.read_bytes()) == 100
    assert table(out.directory) == undisturbed
    assert_no_hidden_failure(out.directory)


def test_a_truncated_results_file_is_set_aside_and_its_row_redone(
    tmp_path: Path, undisturbed: dict, caplog: pytest.LogCaptureFixture
) -> None:
    out = ResultsDir(tmp_path / "run")
    run_eval(tasks(), CONFIG, out, backends=backends(follower()), quiet=True)
    data = out.results_path.read_bytes()
    out.results_path.write_bytes(data[: len(data) - 200])  # kill -9 mid-write of the last row
    assert len(read_results(out.results_path)) == 8 and "cut short" in caplog.text
    f = follower()
    [redone] = run_eval(tasks(), CONFIG, out, backends=backends(f), quiet=True)
    assert (redone.task, redone.method) == ("t2", "promptmii-zero") and len(f.calls) == 10
    assert len(list(out.directory.glob("results.jsonl.corrupt-*"))) == 1
    assert table(out.directory) == undisturbed
    assert_no_hidden_failure(out.directory)


def test_a_second_writer_is_refused_naming_the_first(tmp_path: Path, undisturbed: dict) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom promptmii.results import ResultsDir\n"
         f"with ResultsDir(Path({str(out)!r})).lock():\n    print('locked', flush=True)\n    time.sleep(60)\n"],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            PromptMIIError, match=rf"is being written by another promptmii process \(pid {holder.pid}\)"
        ):
            run_eval(tasks(), CONFIG, ResultsDir(out), backends=backends(follower()), quiet=True)
    finally:
        holder.kill()
        holder.wait()
    run_eval(tasks(), CONFIG, ResultsDir(out), backends=backends(follower()), quiet=True)
    assert table(out) == undisturbed


def test_temp_files_are_unique_and_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replaced, synced = [], []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append(Path(src).name), real_replace(src, dst)))
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    target = tmp_path / "state.json"
    results.atomic_write(target, "one")
    results.atomic_write(target, "two")
    assert target.read_text() == "two" and len(set(replaced)) == 2 and len(synced) == 2
    assert "state.json.tmp" not in replaced and not list(tmp_path.glob("*.tmp"))


def test_a_train_log_cut_mid_line_is_set_aside_on_resume(tmp_path: Path) -> None:
    from promptmii.train import _read_jsonl, _truncate_after

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    assert [r["step"] for r in _read_jsonl(log)] == [1, 2]
    _truncate_after(log, 1)
    assert [r["step"] for r in _read_jsonl(log)] == [1]
    [aside] = tmp_path.glob("metrics.jsonl.corrupt-*")
    assert aside.read_text() == '{"step": 3, "lo'
