"""induce -> instruction.json -> classify and PromptMIIClassifier on the real bundled 0.5B (llama.cpp).

What fakes cannot show: the file's prompt is the one `eval` sends (same answers as the follower loop
of `eval` on the same rows), and label scoring gives probabilities on a real model.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO
from promptmii import PromptMIIClassifier
from promptmii.backends import get_backend
from promptmii.cli import main
from promptmii.data import Example
from promptmii.evaluate import run_follower
from promptmii.instruction_file import load_instruction_file
from promptmii.parse import INVALID

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.real

MODEL = "llamacpp:qwen2.5-coder-0.5b-instruct"
DATA = REPO / "examples" / "support_tickets.csv"


def test_induce_then_classify_then_the_python_api(tmp_path: Path) -> None:
    run = CliRunner().invoke(
        main,
        ["induce", str(DATA), "--no-eval", "--n", "4", "--base-generator", MODEL, "--follower", MODEL,
         "--max-instruction-tokens", "48", "--no-cache", "-o", str(tmp_path / "run")],
        catch_exceptions=False,
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    instruction = load_instruction_file(tmp_path / "run")
    assert instruction.instruction and instruction.labels == (
        "account access",
        "billing",
        "shipping",
        "technical issue",
    )

    with DATA.open(newline="") as f:
        tickets = [Example(r["text"], r["label"]) for r in csv.DictReader(f)][-4:]
    data = tmp_path / "tickets.csv"
    with data.open("w", newline="") as f:
        csv.writer(f).writerows([["text"], *([e.text] for e in tickets)])
    out = tmp_path / "labelled.csv"
    labelled = CliRunner().invoke(
        main, ["classify", str(tmp_path / "run"), str(data), "-o", str(out), "--no-cache", "-q"], catch_exceptions=False
    )
    assert labelled.exit_code == 0, labelled.output
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == [e.text for e in tickets] and {r["failed"] for r in rows} == {"false"}
    ours = [r["prediction"] or INVALID for r in rows]
    assert set(ours) <= {*instruction.labels, INVALID}
    eval_loop = run_follower(get_backend(MODEL), instruction.instruction, instruction.labels, tickets)
    assert ours == eval_loop.predictions  # the file's prompt is the one eval sends

    clf = PromptMIIClassifier.from_instruction(tmp_path / "run", cache=False)
    assert list(clf.predict([e.text for e in tickets])) == ours
    proba = clf.predict_proba([e.text for e in tickets])
    assert proba.shape == (4, 4) and np.allclose(proba.sum(axis=1), 1) and (proba > 0).all()
