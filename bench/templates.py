"""Choose the default meta-prompt template on the corpus's validation tasks (never on test).

Prompt-MII-Zero with each template, plus Naive for reference, on the 8 validation tasks: n=20,
m=50, the bundled 1.5B as generator and follower. Rows go to bench/runs/templates/ (resumable); the
summary goes to bench/results/template_selection.json.

    python bench/templates.py
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from promptmii import models
from promptmii.data import load_tasks
from promptmii.experiment import EvalConfig, run_eval
from promptmii.prompts import TEMPLATES
from promptmii.results import ResultsDir, read_done

ROOT = Path(__file__).resolve().parent
MODEL = f"llamacpp:{models.DEFAULT_MODEL}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(ROOT.parent.parent / "shared" / "corpus"))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "templates"))
    parser.add_argument("--out", default=str(ROOT / "results" / "template_selection.json"))
    parser.add_argument("--m", type=int, default=50)
    args = parser.parse_args()

    tasks = load_tasks(args.corpus, split="validation")
    base = EvalConfig(methods=("naive",), n=20, m=args.m, follower=MODEL, base_generator=MODEL, seed=0)
    summary: dict = {"split": "validation", "tasks": [t.id for t in tasks], "n": base.n, "m": base.m, "model": MODEL}
    for template in ("naive", *TEMPLATES):
        config = base if template == "naive" else replace(base, methods=("promptmii-zero",), template=template)
        out = ResultsDir(Path(args.runs) / template)
        run_eval(tasks, config, out)
        rows = [r for r in read_done(out.results_path) if r.task in summary["tasks"]]
        summary[template] = {
            "mean_macro_f1": sum(r.macro_f1 for r in rows) / len(rows),
            "mean_invalid_rate": sum(r.invalid_rate for r in rows) / len(rows),
            "mean_prompt_tokens_per_query": sum(r.prompt_tokens_per_query for r in rows) / len(rows),
            "per_task": {r.task: round(r.macro_f1, 4) for r in rows},
        }
    summary["chosen"] = max(TEMPLATES, key=lambda t: summary[t]["mean_macro_f1"])
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k]["mean_macro_f1"] for k in ("naive", *TEMPLATES)}, indent=2))


if __name__ == "__main__":
    main()
