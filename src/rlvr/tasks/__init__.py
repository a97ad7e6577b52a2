"""Tasks by name: `get_task("countdown", n=2000)`, `get_task("rg:syllogism")`, `get_task("my.py")`.

Specs:
    subtraction | countdown | gsm8k     built-in families
    calculator                          multi-digit arithmetic with a calculator tool (tools=false: without)
    rg:NAME                             a reasoning-gym dataset
    vf:NAME                             a verifiers (0.4) taskset: its tasks and @vf.reward scoring
    jsonl:PATH | csv:PATH | hf:ID       your question/answer data (plain *.jsonl / *.csv paths too)
    PATH.py | PATH.py:Name              your Task subclass or make_task(**options) function
In Python, `dataset_task(train_dataset, eval_dataset)` makes a task of a TRL-format dataset
(a `datasets.Dataset` or a list of dicts with a `prompt` column; rlvr.tasks.dataset).
An option the task does not take is an error that names it.
"""

from __future__ import annotations

import inspect
from typing import Any

from rlvr.tasks.base import Example, Task
from rlvr.tasks.calculator import CalculatorTask
from rlvr.tasks.countdown import CountdownTask
from rlvr.tasks.custom import ColumnsTask, load_python_task
from rlvr.tasks.dataset import DatasetTask, dataset_task
from rlvr.tasks.gsm8k import GSM8KTask
from rlvr.tasks.subtraction import SubtractionTask

__all__ = ["DatasetTask", "Example", "Task", "dataset_task", "get_task", "list_tasks"]

BUILTIN = {"subtraction": SubtractionTask, "countdown": CountdownTask, "gsm8k": GSM8KTask,
           "calculator": CalculatorTask}


def get_task(spec: str, **options: Any) -> Task:
    """The task named by `spec` (see the module docstring), built with `options`."""
    if spec in BUILTIN:
        return _construct(BUILTIN[spec], spec, **options)
    if spec.startswith("rg:"):
        from rlvr.tasks.reasoning_gym import ReasoningGymTask

        return ReasoningGymTask(spec[3:], **options)
    if spec.startswith("vf:"):
        from rlvr.tasks.vf import VerifiersTask

        return _construct(VerifiersTask, spec, spec[3:], **options)
    if spec.startswith(("jsonl:", "csv:", "hf:")):
        return _construct(ColumnsTask, spec, spec, **options)
    if spec.endswith((".jsonl", ".csv")):
        return _construct(ColumnsTask, spec, f"{spec.rsplit('.', 1)[1]}:{spec}", **options)
    if spec.endswith(".py") or ".py:" in spec:
        return load_python_task(spec, **options)
    known = ", ".join(name for name, _ in list_tasks())
    raise ValueError(f"unknown task {spec!r}; known: {known}")


def list_tasks() -> list[tuple[str, str]]:
    """(spec, one-line description) of every kind of task."""
    return [
        ("subtraction", SubtractionTask.description),
        ("countdown", CountdownTask.description),
        ("gsm8k", GSM8KTask.description),
        ("calculator", CalculatorTask.description),
        ("rg:NAME", "any reasoning-gym dataset, e.g. rg:syllogism (list: rlvr.tasks.reasoning_gym.list_rg_datasets())"),
        ("vf:NAME", "a taskset of the verifiers package (0.4): its tasks and rewards (pip install 'rlvr[verifiers]')"),
        ("jsonl:PATH", "your question/answer pairs, one JSON object a line (question_column=, answer_column=)"),
        ("csv:PATH", "your question/answer pairs in a CSV file with a header row"),
        ("hf:DATASET_ID", "a Hugging Face dataset with question/answer columns (needs the network)"),
        ("PATH.py[:Name]", "your own Task subclass or make_task(**options) function in a Python file"),
    ]


def _construct(cls: type, spec: str, *args: Any, **options: Any) -> Task:
    """cls(*args, **options), with an unknown option reported by name with the known ones."""
    params = inspect.signature(cls.__init__).parameters
    known = [p.name for p in params.values() if p.kind is p.KEYWORD_ONLY]
    unknown = [k for k in options if k not in known]
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for task {spec!r}; options: {', '.join(known)}")
    return cls(*args, **options)
