"""Bring your own task: question/answer columns from a file or the Hub, or a Python file.

- `jsonl:PATH`, `csv:PATH`, `hf:DATASET_ID` -> `ColumnsTask`: one question column, one answer
  column (names are options); every other column becomes metadata, passed to reward functions.
  Verifier: numeric equality when both sides parse as numbers, else normalised text equality.
- `PATH.py` or `PATH.py:Name` -> `load_python_task`: `Name` (or the file's `make_task` function,
  or its only Task subclass) is called with the task options.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import inspect
import io
import json
import sys
from pathlib import Path
from typing import Any

from rlvr.tasks.base import (
    MAX_ANSWER_CHARS,
    Example,
    Task,
    normalize_text,
    parse_number,
    split_train_test,
)


class ColumnsTask(Task):
    """Question/answer pairs from a JSONL file, a CSV file or a Hugging Face dataset."""

    description = "your own question/answer data: jsonl:PATH, csv:PATH or hf:DATASET_ID"

    def __init__(
        self,
        source: str,
        *,
        question_column: str = "question",
        answer_column: str = "answer",
        train_split: str = "train",
        test_split: str | None = "test",
        config_name: str | None = None,
        test_fraction: float = 0.1,
        n_test: int | None = None,
        seed: int = 42,
        system_prompt: str | None = None,
    ):
        kind, _, location = source.partition(":")
        if kind not in ("jsonl", "csv", "hf") or not location:
            raise ValueError(f"expected jsonl:PATH, csv:PATH or hf:DATASET_ID, got {source!r}")
        self.name, self.system_prompt = source, system_prompt
        columns = (question_column, answer_column)
        if kind == "hf":
            train_rows, test_rows = _read_hub(location, config_name, train_split, test_split)
        else:
            train_rows, test_rows = (_read_jsonl if kind == "jsonl" else _read_csv)(location), None
        self._train = _examples(train_rows, *columns, where=location)
        if test_rows is None:
            self._train, self._test = split_train_test(
                self._train, test_fraction=test_fraction, n_test=n_test, seed=seed
            )
        else:
            self._test = _examples(test_rows, *columns, where=f"{location} [{test_split}]")

    def train_examples(self) -> list[Example]:
        return self._train

    def test_examples(self) -> list[Example]:
        return self._test

    def verify(self, answer: str | None, example: Example) -> float:
        return match_answer(answer, example.answer)


def match_answer(answer: str | None, truth: str) -> float:
    """1.0 if both parse as the same number, or match as normalised text; else 0.0."""
    if answer is None or len(answer) > MAX_ANSWER_CHARS:
        return 0.0
    a, b = parse_number(answer), parse_number(truth)
    if a is not None and b is not None:
        return 1.0 if a == b else 0.0
    return 1.0 if normalize_text(answer) == normalize_text(truth) else 0.0


def _examples(rows: list[dict], question_column: str, answer_column: str, *, where: str) -> list[Example]:
    if not rows:
        raise ValueError(f"no rows in {where}")
    present = list(rows[0])
    for role, column in (("question_column", question_column), ("answer_column", answer_column)):
        if column not in present:
            raise ValueError(
                f"column {column!r} not found in {where}; columns present: {', '.join(present)} "
                f"(set {role}=...)"
            )
    return [
        Example(
            question=str(row[question_column]),
            answer=str(row[answer_column]),
            metadata={k: v for k, v in row.items() if k not in (question_column, answer_column)},
        )
        for row in rows
    ]


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    for number, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _read_csv(path: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(_read_text(path), newline="")))


def _read_text(path: str) -> str:
    """The file as UTF-8 text (a leading BOM dropped); a ValueError naming the file, line and byte
    when it is not UTF-8 (e.g. saved as Latin-1)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
                         "re-save the file as UTF-8") from None


def _read_hub(dataset_id: str, config_name, train_split: str, test_split: str | None):
    """(train rows, test rows or None when the dataset has no such split)."""
    try:
        from datasets import load_dataset

        data = load_dataset(dataset_id, config_name)
    except Exception as e:
        raise RuntimeError(f"could not load {dataset_id} with datasets ({type(e).__name__}: {e})") from e
    if train_split not in data:
        raise ValueError(f"{dataset_id} has no split {train_split!r}; splits: {', '.join(data)}")
    test = list(data[test_split]) if test_split and test_split in data else None
    return list(data[train_split]), test


# ------------------------------------------------------------------------ a user's Python file


def load_python_task(spec: str, **options: Any) -> Task:
    """A Task from `PATH.py` or `PATH.py:Name` (a Task subclass or a function returning a Task).

    Without `:Name`: the file's `make_task` function if it has one, else its only Task subclass.
    """
    path, name = _split_spec(spec)
    module = import_file(path)
    if name is None:
        if hasattr(module, "make_task"):
            name = "make_task"
        else:
            own = [
                n for n, obj in vars(module).items()
                if inspect.isclass(obj) and issubclass(obj, Task) and obj.__module__ == module.__name__
            ]
            if len(own) != 1:
                raise ValueError(
                    f"{path} defines {len(own)} Task subclasses ({', '.join(own) or 'none'}) and no "
                    f"make_task(); say which one with {path}:ClassName"
                )
            name = own[0]
    if not hasattr(module, name):
        raise ValueError(f"{path} has no {name!r}")
    task = getattr(module, name)(**options)
    if not isinstance(task, Task):
        raise TypeError(f"{spec} returned {type(task).__name__}, not a rlvr Task")
    return task


def _split_spec(spec: str) -> tuple[str, str | None]:
    """'dir/file.py:Name' -> ('dir/file.py', 'Name'); a Windows drive colon is left alone."""
    head, sep, tail = spec.rpartition(":")
    if sep and head.endswith(".py") and tail.isidentifier():
        return head, tail
    return spec, None


def import_file(path: str | Path):
    """Import a Python file as a module (a unique name per path, so two files never collide)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"rlvr_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
