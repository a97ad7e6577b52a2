"""A TRL-format dataset as a task: `dataset_task(train_dataset, eval_dataset)`.

The data TRL's `GRPOTrainer` takes: a `datasets.Dataset` (or a `DatasetDict` with train/test
splits, or a list of dicts) with a `prompt` column, plain text or a conversation (a list of
`{"role", "content"}` messages, with its own system turn). Every column reaches the reward
functions under its own name, unchanged (Open-R1's `solution` stays `solution`), as in TRL.

- A conversational prompt is used as it is (`Example.messages`): no rlvr system prompt is added,
  and a final assistant message is continued (TRL's prefill). A plain-text prompt becomes the
  user turn of rlvr's prompt format (system prompt, chat template), as every rlvr task's question;
  departure from TRL, which feeds plain text to the model raw.
- rlvr's built-in accuracy reward (and `rlvr eval`) compares the answer inside `<answer>` with
  the answer column: `answer_column` if given, else `answer`, else `solution`; numbers exactly,
  math with math-verify (`rlvr.tasks.custom.match_answer`). A dataset with none of them trains
  with the reward functions you give (the accuracy reward is refused, by name).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rlvr.tasks.base import Example, Task, split_train_test
from rlvr.tasks.custom import match_answer

ANSWER_COLUMNS = ("answer", "solution")
"""where the accuracy reward's ground truth is looked for when `answer_column` is not given"""
GENERIC_BUILDERS = {"json", "csv", "parquet", "arrow", "text", "generator", "pandas", "webdataset"}
"""`datasets` builder names that say how a dataset was read, not what it is"""


def is_conversation(value: Any) -> bool:
    """TRL's `is_conversational` for one prompt: a non-empty list whose first item is a dict with a role."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def _content_text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


class DatasetTask(Task):
    """Rows of a TRL-format dataset (see the module docstring); built by `dataset_task`."""

    description = "a TRL-format dataset (prompt column, any other columns) given in Python"

    def __init__(self, train_rows: list[dict], test_rows: list[dict] | None, *, name: str = "dataset",
                 prompt_column: str = "prompt", answer_column: str | None = None, test_fraction: float = 0.1,
                 n_test: int | None = None, seed: int = 42, system_prompt: str | None = None):
        self.name, self.system_prompt = name, system_prompt
        self.prompt_column = prompt_column
        self.answer_column = _answer_column(train_rows, answer_column, where=name)
        self.answers = self.answer_column is not None
        """False: the data has no ground truth, so rlvr's accuracy reward cannot score it"""
        self._train = self._examples(train_rows, where=name)
        self.conversational = self._train[0].messages is not None
        """the prompts are conversations: reward functions get conversational completions (TRL's rule)"""
        if test_rows is None:
            self._train, self._test = split_train_test(self._train, test_fraction=test_fraction, n_test=n_test,
                                                       seed=seed)
        else:
            self._test = self._examples(test_rows, where=f"{name} [eval]") if test_rows else []

    def _examples(self, rows: list[dict], *, where: str) -> list[Example]:
        if not rows:
            raise ValueError(f"no rows in {where}")
        present = list(rows[0])
        if self.prompt_column not in present:
            raise ValueError(f"column {self.prompt_column!r} not found in {where}; columns present: "
                             f"{', '.join(present)} (set prompt_column=...)")
        return [self._example(row, i, where) for i, row in enumerate(rows)]

    def _example(self, row: dict, i: int, where: str) -> Example:
        prompt = row.get(self.prompt_column)
        truth = row.get(self.answer_column) if self.answer_column else None
        answer = "" if truth is None else str(truth)
        if is_conversation(prompt):
            users = [m for m in prompt if m.get("role") == "user"]
            question = _content_text(users[-1].get("content")) if users else _content_text(prompt[-1].get("content"))
            return Example(question, answer, dict(row), messages=[dict(m) for m in prompt])
        if not isinstance(prompt, str):
            raise ValueError(f"{where} row {i}: column {self.prompt_column!r} must be text or a list of "
                             f"{{'role', 'content'}} messages, got {type(prompt).__name__}")
        return Example(prompt, answer, dict(row))

    def train_examples(self) -> list[Example]:
        return self._train

    def test_examples(self) -> list[Example]:
        return self._test

    def verify(self, answer: str | None, example: Example) -> float:
        """1.0 when the extracted answer matches the answer column (0.0 when the data has none)."""
        return match_answer(answer, example.answer) if self.answers else 0.0


def _answer_column(rows: list[dict], answer_column: str | None, *, where: str) -> str | None:
    present = list(rows[0]) if rows else []
    if answer_column is not None:
        if rows and answer_column not in present:
            raise ValueError(f"answer column {answer_column!r} not found in {where}; columns present: "
                             f"{', '.join(present)} (set answer_column=...)")
        return answer_column
    return next((c for c in ANSWER_COLUMNS if c in present), None)


def dataset_task(train: Any, eval: Any = None, *, name: str | None = None, prompt_column: str = "prompt",
                 answer_column: str | None = None, **options: Any) -> DatasetTask:
    """A task from a TRL-format dataset: a `datasets.Dataset`, a `DatasetDict` or a list of dicts.

    train: the training rows; a `DatasetDict` gives its "train" split, and its "test" split is the
        test set when `eval` is not given.
    eval: the held-out rows (a Dataset or a list of dicts); None: the "test" split of a DatasetDict,
        else a held-out fraction of `train` (options test_fraction=0.1, n_test, seed=42, as `ColumnsTask`).
    prompt_column: TRL's `prompt` by default: plain text, or a list of messages used as they are.
    answer_column: the ground truth of rlvr's built-in accuracy reward; default `answer`, else
        `solution` (Open-R1's); every column, this one included, also reaches reward functions
        under its own name, unchanged.
    name: the task's name in the run's records; default the dataset's own name (`info.dataset_name`).
    options: test_fraction, n_test, seed, system_prompt (replaces a conversation's system turn).
    """
    known = {"test_fraction", "n_test", "seed", "system_prompt"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for dataset_task; options: {', '.join(sorted(known))}")
    if isinstance(train, Mapping):  # a DatasetDict (a dict of splits)
        if "train" not in train:
            raise ValueError(f"the DatasetDict has no 'train' split; splits: {', '.join(train)}")
        if eval is None and "test" in train:
            eval = train["test"]
        train = train["train"]
    train_rows = _rows(train, "train")
    eval_rows = None if eval is None else _rows(eval, "eval")
    return DatasetTask(train_rows, eval_rows, name=name or dataset_name(train), prompt_column=prompt_column,
                       answer_column=answer_column, **options)


def _rows(data: Any, role: str) -> list[dict]:
    """A Dataset or a list of dicts as a list of dicts."""
    if hasattr(data, "to_list") and hasattr(data, "column_names"):
        return data.to_list()
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        rows = list(data)
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, Mapping)), None)
        if bad is not None:
            raise TypeError(f"{role} dataset: row {bad} is a {type(rows[bad]).__name__}, not a dict of columns")
        return [dict(r) for r in rows]
    raise TypeError(f"{role} dataset must be a datasets.Dataset, a DatasetDict or a list of dicts, "
                    f"got {type(data).__name__}")


def dataset_name(data: Any) -> str:
    """The dataset's own name (`info.dataset_name`, not a generic reader such as "json"), else "dataset"."""
    info = getattr(data, "info", None)
    for attr in ("dataset_name", "builder_name"):
        value = getattr(info, attr, None)
        if value and value not in GENERIC_BUILDERS:
            return str(value)
    return "dataset"
