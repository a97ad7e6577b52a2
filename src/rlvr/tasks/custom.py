"""Bring your own task: question/answer columns from a file or the Hub, or a Python file.

- `jsonl:PATH`, `csv:PATH`, `hf:DATASET_ID` -> `ColumnsTask`: one question column (default
  `question`, else TRL's `prompt`: text, or a list of messages used as they are), one answer
  column (names are options). Reward functions get `question` and `answer` (as text) and every
  column under its own name, unchanged (Open-R1's `solution` stays `solution`).
  `hf:` also takes a single .parquet / .jsonl / .json / .csv file and a `save_to_disk` directory;
  a Hub id without a network fails at once unless it is in the local cache.
  Verifier: numeric equality when both sides parse as numbers, else normalised text equality,
  else math-verify's equivalence (`match_answer`).
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlvr.tasks.base import (
    MAX_ANSWER_CHARS,
    Example,
    Task,
    conversation_example,
    is_conversation,
    normalize_text,
    parse_number,
    split_train_test,
)
from rlvr.tasks.mathcheck import looks_like_math, math_equal


class ColumnsTask(Task):
    """Question/answer pairs from a JSONL file, a CSV file or a Hugging Face dataset."""

    description = "your own question/answer data: jsonl:PATH, csv:PATH or hf:DATASET_ID"

    def __init__(
        self,
        source: str,
        *,
        question_column: str | None = None,
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
        trl_format = (question_column or ("question" if "question" in train_rows[0] else "prompt")) == "prompt"
        self.prompt_column = "prompt" if trl_format else None
        """TRL's `prompt` column holds the prompts: its text is the `prompts` reward functions get"""
        conversational = self._train[0].messages is not None
        self.conversational = conversational if trl_format else (True if conversational else None)
        """reward functions get conversational completions: with a `prompt` column iff it holds messages
        (TRL's rule); with a question column when it holds messages, else as the prompt format says"""
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
    """1.0 if both parse as the same number (two different numbers: 0.0 at once), or match as
    normalised text, or, for a truth that looks like math, math-verify finds them equal
    (`\\boxed{4}` and 4, `\\frac{1}{2}` and 0.5); else 0.0."""
    if answer is None or len(answer) > MAX_ANSWER_CHARS:
        return 0.0
    a, b = parse_number(answer), parse_number(truth)
    if a is not None and b is not None:
        return 1.0 if a == b else 0.0
    if normalize_text(answer) == normalize_text(truth):
        return 1.0
    return 1.0 if looks_like_math(truth) and math_equal(answer, truth) else 0.0


def _examples(rows: list[dict], question_column: str | None, answer_column: str, *, where: str) -> list[Example]:
    """Examples of the rows: the question column (default `question`, else `prompt`) as the question
    (a list of messages as the example's conversation), the answer column as text; the other
    columns, and the question / answer columns under their own names, as metadata."""
    if not rows:
        raise ValueError(f"no rows in {where}")
    present = list(rows[0])
    hint = ""
    if question_column is None:
        question_column = next((c for c in ("question", "prompt") if c in present), "question")
        hint = "; by default question, else prompt"
    for role, column in (("question_column", question_column), ("answer_column", answer_column)):
        if column not in present:
            raise ValueError(
                f"column {column!r} not found in {where}; columns present: {', '.join(present)} "
                f"(set {role}=...{hint if role == 'question_column' else ''})"
            )
    out = []
    for row in rows:
        metadata = {k: v for k, v in row.items() if k not in ("question", "answer") or k not in
                    (question_column, answer_column)}  # rlvr's own names come from Example.columns()
        question = row[question_column]
        if is_conversation(question):
            out.append(conversation_example(question, str(row[answer_column]), metadata))
        else:
            out.append(Example(question=str(question), answer=str(row[answer_column]), metadata=metadata))
    return out


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


def _read_hub(location: str, config_name, train_split: str, test_split: str | None):
    """(train rows, test rows or None) of `hf:LOCATION`: a single .parquet / .jsonl / .json / .csv
    file (one split: the test set is held out), a `Dataset.save_to_disk` directory, a local
    dataset folder, or a Hub id (from the local cache when offline, see `_load_hub`)."""
    path = Path(location)
    if path.is_file():
        kind = path.suffix.lower()
        readers = {".parquet": _read_parquet, ".jsonl": _read_jsonl, ".json": _read_json_file, ".csv": _read_csv}
        if kind not in readers:
            raise ValueError(f"hf:{location}: a single file must be .parquet, .jsonl, .json or .csv")
        return readers[kind](str(path)), None
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
        from datasets import load_from_disk

        data = load_from_disk(str(path))
        if not isinstance(data, Mapping):  # a single Dataset
            return data.to_list(), None
    else:
        data = _load_hub(location, config_name)
    if train_split not in data:
        raise ValueError(f"{location} has no split {train_split!r}; splits: {', '.join(data)}")
    test = data[test_split].to_list() if test_split and test_split in data else None
    return data[train_split].to_list(), test


def _read_parquet(path: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _read_json_file(path: str) -> list[dict]:
    """A .json file: a list of row objects (or JSON Lines under a .json name)."""
    text = _read_text(path)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        return _read_jsonl(path)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: expected a JSON list of objects (one per row)")
    return rows


def _load_hub(dataset_id: str, config_name):
    """`datasets.load_dataset(dataset_id)`; without a network (or with HF_HUB_OFFLINE=1) only the
    local cache is tried, so a missing dataset fails at once with a message naming it (the Hub
    client retried for ~24 s, then raised a bare ConnectionError)."""
    import datasets.config
    import huggingface_hub.constants as hub
    from datasets import load_dataset

    offline = bool(datasets.config.HF_HUB_OFFLINE or hub.HF_HUB_OFFLINE) or not hub_reachable(hub.ENDPOINT)
    saved = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    try:
        if offline:
            datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
        return load_dataset(dataset_id, config_name)
    except Exception as e:
        if offline:
            raise RuntimeError(
                f"hf:{dataset_id}: the Hugging Face Hub cannot be reached (no network, or HF_HUB_OFFLINE=1) "
                f"and the dataset is not in the local cache; use a local copy: hf:FILE.parquet|.jsonl|.csv, "
                f"a Dataset.save_to_disk directory, jsonl:PATH or csv:PATH") from None
        raise RuntimeError(f"could not load {dataset_id} with datasets ({type(e).__name__}: {e})") from e
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved


def hub_reachable(endpoint: str, timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's host opens within `timeout_s` (True behind a proxy:
    the proxy decides)."""
    import os
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


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
