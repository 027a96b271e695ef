"""Cross-model transfer: the generator meta-trained for the 1.5B follower, used with the 0.5B follower.

On the tasks of bench/search_vs_one_call.py with at most MAX_LABELS labels (n=20, m=100, seed 0): calibrated
scoring scores every label of every query, which for banking77's 77 labels costs hours on 2 cores. In one
results folder:
- matched:  promptmii (the bench/train_curve.py run, exported LoRA on llama.cpp) with the 1.5B follower it
  was trained for, free generation (these calls replay from the cache of bench/trained_vs_zero.py);
- transfer: promptmii and promptmii-zero (the same 0.5B untrained) with the 0.5B follower. The 0.5B answers
  one label whatever the prompt in free generation (bench/results/decoding_modes.json), so it answers by
  calibrated label scoring.
Rows record `generator_follower`, so `promptmii report` (bench/report.py) marks them matched or transfer.

    python bench/transfer.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import CORPUS, ROOT
from promptmii import models
from promptmii.data import load_tasks
from promptmii.experiment import EvalConfig, run_eval
from promptmii.results import ResultsDir
from search_vs_one_call import drawn_tasks  # the same 8 tasks
from trained_vs_zero import FOLLOWER as TRAINED_FOR  # the follower the run was trained for
from trained_vs_zero import RUN

OTHER = f"llamacpp:{models.FAST_MODEL}"
MAX_LABELS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--run", default=str(RUN), help="the training run (exported with `promptmii export`)")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "transfer"))
    args = parser.parse_args()

    tasks = load_tasks(args.corpus, split="test", task_ids=drawn_tasks(args.corpus))
    tasks = [t for t in tasks if len(t.labels) <= MAX_LABELS]
    out = ResultsDir(Path(args.runs))
    common = {"n": 20, "m": 100, "base_generator": OTHER, "generator": f"llamacpp:{args.run}", "seed": 0}
    common["max_instruction_tokens"] = 256  # the training limit, as in bench/trained_vs_zero.py
    common["template"] = "terse"  # the template these rows were measured with; auto-selection could pick a tuned one
    matched = EvalConfig(methods=("promptmii",), follower=TRAINED_FOR, **common)
    transfer = EvalConfig(
        methods=("promptmii", "promptmii-zero"), follower=OTHER, decoding="score-calibrated", **common
    )
    for config in (matched, transfer):
        run_eval(tasks, config, out, quiet=False)


if __name__ == "__main__":
    main()
