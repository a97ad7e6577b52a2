"""The Task protocol: what a verifiable task knows (its data, how to ask, how to check).

A task knows nothing of models or tensors. Its `verify` is the single source of truth for
correctness: the accuracy reward during training and `rlvr eval` both call it, so training and
evaluation cannot drift apart (as in nanochat's `chat_rl.py`).

Below the protocol: helpers the task families share (number parsing, text normalisation, a
seeded train/test split). Procedural tasks also offer `make_example(rng, level=None)` for
adaptive-difficulty curricula (check with `hasattr`).
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Example:
    """One problem of a task."""

    question: str
    """the user-facing question text (what goes into the user message)"""
    answer: str
    """the ground truth, as text (for countdown: the target number)"""
    metadata: dict[str, Any] = field(default_factory=dict)
    """extra columns; passed to reward functions as keyword arguments (TRL's convention)"""
    messages: list[dict] | None = None
    """a conversational prompt from the data (TRL's `prompt` column as a list of messages, with its
    own system turn): the episode starts with these messages as they are, instead of the system
    prompt and `Task.user_message` (`rlvr.prompts.build_messages`)"""

    def columns(self) -> dict[str, Any]:
        """Columns passed to reward functions: `answer`, `question` and every metadata key."""
        return {"question": self.question, "answer": self.answer, **self.metadata}


class Task:
    """Base class of every task. Subclasses set `name` and implement the four methods.

    The default instructions ask for `<think> ... </think>` then `<answer> ... </answer>`;
    a task may override `system_prompt` or `user_message` to add task-specific instructions.
    """

    name: str = "task"
    description: str = ""
    """one line for `rlvr tasks`"""
    system_prompt: str | None = None  # None: prompts.DEFAULT_SYSTEM_PROMPT

    def train_examples(self) -> list[Example]:
        raise NotImplementedError

    def test_examples(self) -> list[Example]:
        raise NotImplementedError

    def user_message(self, example: Example) -> str:
        """The text of the user turn for this example."""
        return example.question

    def verify(self, answer: str | None, example: Example) -> float:
        """Score an extracted answer (the text inside <answer>, or None if absent) in [0, 1]."""
        raise NotImplementedError

    def reward_columns(self, example: Example) -> dict[str, Any]:
        """The dataset columns a user's reward function gets for this example (TRL passes every
        column of the row but `prompt`): `Example.columns()`, i.e. question, answer, metadata."""
        return example.columns()

    def demonstration(self, example: Example) -> str | None:
        """A worked completion in the think/answer format, for the SFT warm-up (None: not available)."""
        return None


# ------------------------------------------------------------ helpers shared by the task families

MAX_ANSWER_CHARS = 10_000
"""Verifiers give 0 to longer answers at once (a 1 MB answer must not cost a second)."""

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d+)?|\.\d+)(?:/\d+)?")
_GROUPED = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
"""a number with thousands separators: groups of exactly three digits after the first (1,234 / 12,345,678)"""
_CURRENCY = re.compile(r"^([+-]?)\s*\$\s*")


def parse_number(text: str | None, *, remove_comma: bool = True) -> Fraction | None:
    """The exact value of a number written as text, or None.

    Accepts "42", "-3.5", "1/3", "$1,234." (with remove_comma) and the unicode minus; "1,234"
    is not a number when remove_comma=False (seed 001's `not_remove_comma`). Commas are removed
    only as thousands separators (groups of three: "12,345,678"); spaces only around the text and
    after a leading sign or "$". So "4 2" and "1,2" are not numbers (they were 42 and 12).
    """
    if text is None or len(text) > 100:
        return None
    s = text.strip().replace("\u2212", "-")
    s = _CURRENCY.sub(r"\1", s).removesuffix("$").rstrip()  # "$5", "-$5", "$ 5", LaTeX's "$18$"
    s = re.sub(r"^([+-])\s+", r"\1", s)  # "- 5"
    s = s.removesuffix(".")
    if remove_comma and _GROUPED.fullmatch(s):
        s = s.replace(",", "")
    if not _NUMBER.fullmatch(s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def is_conversation(value: Any) -> bool:
    """TRL's `is_conversational` for one prompt: a non-empty list whose first item is a dict with a role."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def content_text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def conversation_example(messages: list[dict], answer: str, metadata: dict[str, Any]) -> Example:
    """An example whose prompt is a conversation (used as it is); its question, for display and
    records, is the text of the last user turn."""
    users = [m for m in messages if m.get("role") == "user"]
    question = content_text((users[-1] if users else messages[-1]).get("content"))
    return Example(question, answer, metadata, messages=[dict(m) for m in messages])


ARITHMETIC_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def exact_value(node: ast.AST) -> Fraction:
    """The exact value of a parsed expression of numbers, + - * / and signs (a decimal literal is
    read as written: 0.1 is 1/10). ValueError on any other node; ZeroDivisionError on x / 0."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(str(node.value)) if type(node.value) is float else Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = exact_value(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC_OPS:
        return arithmetic(ARITHMETIC_OPS[type(node.op)], exact_value(node.left), exact_value(node.right))
    raise ValueError("only numbers, + - * / and parentheses are allowed")


def arithmetic(op: str, left: Fraction, right: Fraction) -> Fraction:
    """`left op right` for op in + - * / (exact; a division by zero raises ZeroDivisionError)."""
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    return left / right


def normalize_text(text: str) -> str:
    """Case-folded, whitespace collapsed, surrounding quotes and a final period removed."""
    s = " ".join(text.split()).casefold()
    s = s.strip("\"'`")
    return s[:-1].rstrip() if s.endswith(".") else s


def split_train_test(
    items: Sequence[T], *, test_fraction: float = 0.2, n_test: int | None = None, seed: int = 42,
    key: Callable[[T], Any] | None = None,
) -> tuple[list[T], list[T]]:
    """Shuffle with `seed`, then cut: the test set is `n_test` items, else `test_fraction` of them.

    With `key`, training items whose key is also a test item's are dropped, so that drawing with
    replacement from a small space (subtraction 0-99: 10,000 problems, 8,000 draws) cannot put a
    held-out problem in training. The test set is the same with or without `key`.
    """
    if n_test is None:
        if not 0.0 <= test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
        n_test = round(len(items) * test_fraction)
    if not 0 <= n_test <= len(items):
        raise ValueError(f"n_test={n_test} but only {len(items)} examples")
    order = random.Random(seed).sample(range(len(items)), len(items))
    shuffled = [items[i] for i in order]
    train, test = shuffled[n_test:], shuffled[:n_test]
    if key is not None:
        held_out = {key(item) for item in test}
        train = [item for item in train if key(item) not in held_out]
    return train, test
