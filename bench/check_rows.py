"""Find result rows that hide a failure in the committed benchmark runs (bench/runs/**/results.jsonl).

A row hides a failure when it was written as done but its generator call failed, its instruction is
empty, or some of its follower calls failed (their samples carry an error). Since results schema 4
such rows are written as failed; older rows are marked failed when read (results.legacy_status), so
summaries leave them out. This lists every one, with the command that computes it again, and exits 1
when there is any.

    python bench/check_rows.py            # all of bench/runs
    python bench/check_rows.py RUN_DIR    # one results directory
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from promptmii.results import read_jsonl, read_results, setting

ROOT = Path(__file__).resolve().parent


def hidden_failures(directory: Path) -> list[dict]:
    """One record per row of directory/results.jsonl that failed, whether written as failed or not."""
    rows = read_results(directory / "results.jsonl")
    samples = directory / "samples.jsonl"
    sample_errors: dict[tuple, int] = {}
    for sample in read_jsonl(samples) if samples.exists() else []:
        if sample.get("error"):
            key = (sample["task"], sample["method"], sample["fingerprint"])
            sample_errors[key] = sample_errors.get(key, 0) + 1
    # A failed row that a later row redid is no longer open. "The same row" is the same task, method and
    # setting, not the same key: a redo written since schema 4 has a data hash in its fingerprint.
    latest = {setting(row): row for row in rows}
    found = []
    for row in latest.values():
        problem = row.error if row.failed else None
        if not problem and sample_errors.get(row.key):
            problem = f"{sample_errors[row.key]} samples carry a follower error"
        if problem:
            found.append(
                {
                    "run": str(directory),
                    "task": row.task,
                    "method": row.method,
                    "n_shots": row.n_shots,
                    "written_as": "failed" if row.schema_version >= 4 else "done (before schema 4)",
                    "problem": problem,
                }
            )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="results directories (default: every bench/runs/*)")
    args = parser.parse_args()
    dirs = [Path(d) for d in args.runs] or sorted(p.parent for p in (ROOT / "runs").glob("*/results.jsonl"))
    found = [record for d in dirs for record in hidden_failures(d)]
    for record in found:
        print(json.dumps(record))
    print(f"{len(found)} failed rows in {len(dirs)} results directories", file=sys.stderr)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
