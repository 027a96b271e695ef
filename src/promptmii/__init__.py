"""promptmii: write a classifier's task instruction from labelled examples in one LLM call (Prompt-MII).

Public API:
    load_task, load_tasks   labelled data -> Task records          (promptmii.data)
    get_backend             "llamacpp:qwen2.5-coder-1.5b-instruct" -> Backend   (promptmii.backends)
    induce                  examples + generator -> Instruction     (promptmii.induce)
    run_eval                tasks x methods -> Result rows           (promptmii.experiment)
    PromptMIIClassifier     fit / predict / predict_proba / save, scikit-learn style  (promptmii.estimator)
    load_instruction_file   instruction.json -> InstructionFile     (promptmii.instruction_file)

`promptmii.evaluate` is the module that runs the follower over a test set for one prompt prefix;
`run_eval` is the whole evaluation (every method on every task, resumable into a results directory).
"""

from __future__ import annotations

from promptmii.backends import Backend, Generation, GenParams, get_backend
from promptmii.data import Example, Task, load_tasks
from promptmii.errors import PromptMIIError
from promptmii.experiment import EvalConfig, run_eval
from promptmii.induce import InduceConfig, Instruction, induce
from promptmii.instruction_file import InstructionFile, load_instruction_file
from promptmii.results import Result, ResultsDir, promptmii_version

__version__ = promptmii_version()


def __getattr__(name: str) -> object:
    """PromptMIIClassifier on first use: it imports scikit-learn when installed, which `import promptmii` should not."""
    if name == "PromptMIIClassifier":
        from promptmii.estimator import PromptMIIClassifier

        return PromptMIIClassifier
    raise AttributeError(f"module 'promptmii' has no attribute '{name}'")


def load_task(source: str, **kwargs: object) -> Task:
    """Load exactly one task (a CSV/JSONL file or a Hugging Face dataset); see `load_tasks` for options."""
    tasks = load_tasks(source, **kwargs)  # type: ignore[arg-type]
    if len(tasks) != 1:
        raise PromptMIIError(f"{source}: holds {len(tasks)} tasks; use load_tasks for a corpus")
    return tasks[0]


__all__ = [
    "Backend",
    "EvalConfig",
    "Example",
    "GenParams",
    "Generation",
    "InduceConfig",
    "Instruction",
    "InstructionFile",
    "PromptMIIClassifier",
    "PromptMIIError",
    "Result",
    "ResultsDir",
    "Task",
    "__version__",
    "get_backend",
    "induce",
    "load_instruction_file",
    "load_task",
    "load_tasks",
    "run_eval",
]
