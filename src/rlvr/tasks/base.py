"""The Task protocol: what a verifiable task knows (its data, how to ask, how to check).

A task knows nothing of models or tensors. Its `verify` is the single source of truth for
correctness: the accuracy reward during training and `rlvr eval` both call it, so training and
evaluation cannot drift apart (as in nanochat's `chat_rl.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    """One problem of a task."""

    question: str
    """the user-facing question text (what goes into the user message)"""
    answer: str
    """the ground truth, as text (for countdown: the target number)"""
    metadata: dict[str, Any] = field(default_factory=dict)
    """extra columns; passed to reward functions as keyword arguments (TRL's convention)"""

    def columns(self) -> dict[str, Any]:
        """Columns passed to reward functions: `answer`, `question` and every metadata key."""
        return {"question": self.question, "answer": self.answer, **self.metadata}


class Task:
    """Base class of every task. Subclasses set `name` and implement the four methods.

    The default instructions ask for `<think> ... </think>` then `<answer> ... </answer>`;
    a task may override `system_prompt` or `user_message` to add task-specific instructions.
    """

    name: str = "task"
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

    def demonstration(self, example: Example) -> str | None:
        """A worked completion in the think/answer format, for the SFT warm-up (None: not available)."""
        return None
