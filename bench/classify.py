"""classify: its speed against the raw follower, its memory against the file size, and the induce round trip.

Three measurements on the real bundled model (the 0.5B by default; one memory pair against a local
server), written to one JSON file:

1. Round trip. `promptmii induce examples/support_tickets.csv` (promptmii-zero, n shown rows, m held-out
   rows, no cache) writes instruction.json and samples.jsonl; `promptmii classify` then labels the same
   m held-out texts with that file. Every prediction must equal the one `eval` made (an invalid reply
   counts as the same answer when both are invalid).
2. Throughput. The same `--rows` texts (the support tickets, cycled) labelled by `classify` (CSV in,
   CSV out, chunks, flushes) and by `evaluate.run_follower` (the raw follower loop that `eval` uses)
   behind the same instruction on the same loaded model, cold KV cache each time, in the order raw,
   ours, ours, raw (`--repeats` rounds). Goal: classify's rows/s >= 0.9 x the raw loop's.
3. Memory. `promptmii classify` as a child process, twice per pair of file sizes; its peak RSS
   (the kernel's VmHWM of the child, read every 0.5 s; wait4's ru_maxrss would report this process's
   size at the fork, as Linux carries the larger of the two across exec) and the highest anonymous RSS
   sampled in the second half of the run: the peak counts the model's memory-mapped pages, which move with the machine's memory pressure.
   Goal: flat, the larger file adds less than FLAT_MB of anonymous memory. Two pairs:
   - `--model-memory-rows` (1,000 and 3,000) on the real follower: llama.cpp's own allocations must not
     grow with the rows. 20,000 rows would take about 3 hours of the 0.5B on 2 cores, longer than a session.
   - `--memory-rows` (1,000 and 20,000) with the openai: backend against a local OpenAI-compatible server
     that answers at once (tests/fault_server.py): classify's own reading, batching, concurrency and
     writing at the full size, the model's time taken out.

    python bench/classify.py                       # full run -> bench/results/classify.json (hours on 2 cores)
    python bench/classify.py --rows 20 --model-memory-rows 20,40 --memory-rows 100,2000 --n 4 --m 5 --repeats 1 \
        --out /tmp/classify.json
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from click.testing import CliRunner

from _common import write_json
from promptmii import models
from promptmii.backends import get_backend
from promptmii.classify import ClassifyConfig, classify
from promptmii.cli import main as cli
from promptmii.data import Example
from promptmii.evaluate import run_follower
from promptmii.instruction_file import load_instruction_file
from promptmii.parse import INVALID

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
DATA = REPO / "examples" / "support_tickets.csv"
MODEL = f"llamacpp:{models.FAST_MODEL}"
GOAL_RATIO = 0.9
FLAT_MB = 10.0  # 20,000 rows held in memory (row dicts, prompts, predictions) would add tens of MB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--follower", default=MODEL, help="follower backend spec")
    parser.add_argument("--generator", default=MODEL, help="generator backend spec (the round trip's induce)")
    parser.add_argument("--n", type=int, default=20, help="rows shown to the generator")
    parser.add_argument("--m", type=int, default=50, help="held-out rows of the round trip")
    parser.add_argument("--max-instruction-tokens", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=500, help="rows of the throughput comparison")
    parser.add_argument("--repeats", type=int, default=2, help="raw, ours, ours, raw rounds of the throughput")
    parser.add_argument("--model-memory-rows", default="1000,3000", help="file sizes compared on the real follower")
    parser.add_argument("--memory-rows", default="1000,20000", help="file sizes compared against a local server")
    parser.add_argument("--out", default=str(ROOT / "results" / "classify.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-classify-"))
    summary = {
        "benchmark": "classify",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "follower": args.follower,
        "generator": args.generator,
    }
    summary["round_trip"] = round_trip(args, work)
    write_json(Path(args.out), summary)  # after each part: a killed run keeps what it measured
    instruction = work / "induce" / "instruction.json"
    summary["throughput"] = throughput(args, work, instruction)
    write_json(Path(args.out), summary)
    summary["memory"] = {"model": memory(_sizes(args.model_memory_rows), args.follower, work, instruction)}
    write_json(Path(args.out), summary)
    with local_server(instruction) as spec:
        summary["memory"]["server"] = memory(_sizes(args.memory_rows), spec, work, instruction)
    summary["machine"]["loadavg_at_end"] = os.getloadavg()
    summary["goals_met"] = {
        "round_trip_identical": summary["round_trip"]["identical"],
        "rows_per_second_ratio": summary["throughput"]["ratio"] >= GOAL_RATIO,
        "memory_flat": summary["memory"]["model"]["flat"] and summary["memory"]["server"]["flat"],
    }
    write_json(Path(args.out), summary)
    print(json.dumps(summary["goals_met"]), file=sys.stderr)


def round_trip(args: argparse.Namespace, work: Path) -> dict:
    """induce (with eval) then classify on the same held-out rows: the predictions must be the same."""
    out = work / "induce"
    induce = [
        "induce", str(DATA), "--n", str(args.n), "--m", str(args.m), "--methods", "promptmii-zero",
        "--follower", args.follower, "--base-generator", args.generator,
        "--max-instruction-tokens", str(args.max_instruction_tokens), "--no-cache", "-q", "-o", str(out),
    ]  # fmt: skip
    _invoke(induce)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    inputs = work / "held_out.jsonl"
    inputs.write_text("".join(json.dumps({"text": s["text"], "gold": s["gold"]}) + "\n" for s in samples))
    labelled = work / "held_out.labelled.jsonl"
    _invoke(["classify", str(out / "instruction.json"), str(inputs), "-o", str(labelled), "--no-cache", "-q"])
    rows = [json.loads(line) for line in labelled.read_text().splitlines()]
    ours = [INVALID if r["invalid"] or r["failed"] else r["prediction"] for r in rows]
    theirs = [s["prediction"] for s in samples]
    result = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    return {
        "data": str(DATA.relative_to(REPO)),
        "n": args.n,
        "m": len(samples),
        "eval_macro_f1": result["macro_f1"],
        "same_predictions": sum(a == b for a, b in zip(ours, theirs, strict=True)),
        "identical": ours == theirs,
        "instruction": result["instruction"],
    }


def throughput(args: argparse.Namespace, work: Path, instruction_path: Path) -> dict:
    """rows/s of classify vs run_follower on the same rows, same loaded model, cold KV cache each run."""
    instruction = load_instruction_file(instruction_path)
    examples = _tickets(args.rows)
    data = work / "throughput.csv"
    _write_csv(data, examples)
    follower = get_backend(args.follower)

    def cold() -> None:
        if hasattr(follower, "_llm"):
            follower._llm.reset()

    def raw() -> tuple[float, list[str]]:
        cold()
        start = time.perf_counter()
        run = run_follower(follower, instruction.instruction, instruction.labels, examples)
        return time.perf_counter() - start, run.predictions

    def ours() -> tuple[float, list[str]]:
        cold()
        out = work / "throughput.labelled.csv"
        out.unlink(missing_ok=True)
        start = time.perf_counter()
        classify(instruction, str(data), str(out), ClassifyConfig(follower=args.follower, cache=False), quiet=True)
        seconds = time.perf_counter() - start
        with out.open(newline="") as f:
            return seconds, [r["prediction"] or INVALID for r in csv.DictReader(f)]

    timings: dict[str, list[float]] = {"raw": [], "classify": []}
    answers: dict[str, list[list[str]]] = {"raw": [], "classify": []}
    for _ in range(args.repeats):
        for name, run in (("raw", raw), ("classify", ours), ("classify", ours), ("raw", raw)):
            seconds, predictions = run()
            timings[name].append(round(seconds, 3))
            answers[name].append(predictions)
            print(f"throughput {name}: {len(examples) / seconds:.2f} rows/s", file=sys.stderr)
    rate = {name: len(examples) * len(t) / sum(t) for name, t in timings.items()}
    return {
        "rows": len(examples),
        "seconds": timings,
        "rows_per_second": {k: round(v, 3) for k, v in rate.items()},
        "ratio": round(rate["classify"] / rate["raw"], 3),
        "goal": f"classify >= {GOAL_RATIO} x raw rows/s",
        "same_predictions": all(a == answers["raw"][0] for a in answers["raw"] + answers["classify"]),
        "note": "one process, one loaded model; raw = evaluate.run_follower (eval's loop), ours = classify "
        "reading and writing CSV; rounds in the order raw, ours, ours, raw",
    }


@contextlib.contextmanager
def local_server(instruction_path: Path) -> Iterator[str]:
    """An OpenAI-compatible server in this process that answers every request at once with a valid label."""
    sys.path.insert(0, str(REPO / "tests"))
    from fault_server import FaultServer  # the test suite's server; tests/ is not a package

    labels = load_instruction_file(instruction_path).labels
    server = FaultServer(answer=lambda messages: labels[len(messages[-1]["content"]) % len(labels)])
    server.record = False  # 20,000 request bodies kept for tests' inspection would only cost memory here
    try:
        yield f"openai:test-model@{server.url}?concurrency=8"
    finally:
        server.close()


def memory(sizes: list[int], follower: str, work: Path, instruction_path: Path) -> dict:
    """Peak RSS of `promptmii classify` as a child process, per file size."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    rows = []
    for count in sizes:
        data = work / f"memory-{count}.csv"
        _write_csv(data, _tickets(count))
        out = work / f"memory-{count}.labelled.csv"
        out.unlink(missing_ok=True)
        command = [
            sys.executable, "-m", "promptmii.cli", "classify", str(instruction_path), str(data), "-o", str(out),
            "--follower", follower, "--no-cache", "-q",
        ]  # fmt: skip
        start = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        samples, high_water = [], 0.0  # anonymous RSS while it runs; VmHWM only grows
        while child.poll() is None:
            anon, hwm = _memory_mb(child.pid)
            if anon is not None:
                samples.append(anon)
                high_water = max(high_water, hwm)
            time.sleep(0.5)
        seconds = time.perf_counter() - start
        if child.returncode != 0:
            raise SystemExit(f"classify on {count} rows exited {child.returncode}")
        with out.open(newline="") as f:
            labelled = sum(1 for _ in csv.DictReader(f))
        rows.append(
            {
                "rows": count,
                "labelled": labelled,
                "peak_rss_mb": high_water,
                # the highest anonymous RSS in the second half of the run: rows held in memory would raise it
                "late_peak_anon_mb": max(samples[len(samples) // 2 :]) if samples else None,
                "rss_samples": len(samples),
                "seconds": round(seconds, 1),
                "rows_per_second": round(count / seconds, 3),
            }
        )
        print(f"memory {count} rows: {rows[-1]['peak_rss_mb']} MB peak", file=sys.stderr)
    growth = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
    lates = [r["late_peak_anon_mb"] for r in (rows[0], rows[-1])]
    late_growth = lates[1] - lates[0] if None not in lates else None
    return {
        "follower": follower.split("?")[0],
        "rows": rows,
        "growth_mb": round(growth, 1),
        "late_peak_anon_growth_mb": round(late_growth, 1) if late_growth is not None else None,
        "flat": late_growth is not None and late_growth < FLAT_MB,
        "goal": f"late-peak anonymous RSS grows by less than {FLAT_MB} MB",
        "note": "peak_rss_mb includes the model's memory-mapped file pages, which the kernel keeps or drops "
        "with the machine's memory pressure (tens of MB between runs); anonymous memory is the process's own",
    }


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def _memory_mb(pid: int) -> tuple[float | None, float]:
    """A process's (anonymous RSS now, peak RSS so far) in MB from Linux /proc; (None, 0) once it is gone.

    Anonymous memory is the process's own (heap, KV cache); the peak (VmHWM) also counts mapped model pages.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None, 0.0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "RssAnon" not in fields or "VmHWM" not in fields:  # a zombie has no memory lines
        return None, 0.0
    return tuple(round(int(fields[k].split()[0]) / 1024, 1) for k in ("RssAnon", "VmHWM"))


def _tickets(count: int) -> list[Example]:
    """`count` support tickets: the example file's rows, cycled."""
    with DATA.open(newline="") as f:
        pool = [Example(r["text"], r["label"]) for r in csv.DictReader(f)]
    return list(itertools.islice(itertools.cycle(pool), count))


def _write_csv(path: Path, examples: list[Example]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows((i, e.text) for i, e in enumerate(examples))


def _invoke(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"promptmii {args[0]} failed: {result.output.strip().splitlines()[-1:]}")


if __name__ == "__main__":
    main()
