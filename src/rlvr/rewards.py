"""Reward functions (TRL's signature) and a scorer that survives the ones that raise or hang.

A reward function is `f(completions, **columns) -> list[float]`, as in TRL: `completions` is a
list of strings or of conversations (`[{"role": "assistant", "content": str}]`), each column a
list aligned with it. So seed 000's and seed 002's functions work unchanged.

`score` calls each function on the whole batch, returns the weighted total and every part (as
GRPO-Zero does). A function that raises is retried completion by completion, so only the bad
completion scores 0 (counted in `errors`, logged). User-supplied functions run in a forked child
process killed at the time-out: a hang inside C code (`9**9**9` reached through seed 002's `eval`)
holds the GIL, so no thread could stop it. One fork per function per batch (~10 ms); built-in
rewards, marked `trusted`, run in-process.

Columns: the trainer passes `_example` (list[Example]), read by the accuracy reward, next to the
examples' own columns (`question`, `answer`, metadata such as `target`, `nums`, `difference`);
`example_columns` builds them. Completions are passed as sampled (TRL's convention: without the
prompt's assistant prefill); the built-in rewards are built with the prefill and put it back.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import pickle
import select
import signal
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rlvr.prompts import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, extract_answer, parse_completion
from rlvr.tasks.base import Example, Task

logger = logging.getLogger(__name__)
RewardFn = Callable[..., list]
TRL_KEYS = ("prompts", "completion_ids", "trainer_state", "log_extra", "log_metric")
"""keyword arguments TRL passes that are not dataset columns"""


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, a message dict, or a list of messages (joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return "".join(str(m.get("content", "")) for m in completion)


def trusted(fn: RewardFn) -> RewardFn:
    """Mark a reward function as safe to run in-process (no fork, no time-out)."""
    fn.rlvr_trusted = True
    return fn


def is_trusted(fn: RewardFn) -> bool:
    return bool(getattr(fn, "rlvr_trusted", False))


def _with_prefill(text: str, prefill: str) -> str:
    """prefill + text, unless the text already starts with the prefill."""
    return text if not prefill or text.startswith(prefill) else prefill + text


# ------------------------------------------------------------------------------ built-ins


def is_strict_format(text: str) -> bool:
    """Seed 000's `^<think>.*?</think><answer>.*?</answer>$`, whitespace allowed around tags,
    each tag exactly once (so no answer can hide inside the think block)."""
    s = text.strip()
    if not (s.startswith(THINK_OPEN) and s.endswith(ANSWER_CLOSE)):
        return False
    if any(s.count(tag) != 1 for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)):
        return False
    close, open_ = s.find(THINK_CLOSE), s.find(ANSWER_OPEN)
    return close < open_ and not s[close + len(THINK_CLOSE) : open_].strip()


def is_lenient_format(text: str) -> bool:
    """A closed think block followed (somewhere later) by a closed answer tag."""
    parsed = parse_completion(text)
    return bool(parsed.answers and parsed.think_closes) and parsed.think_closes[0] < parsed.answers[-1][0]


def make_format_reward(*, strict: bool = False, prefill: str = "") -> RewardFn:
    """1.0 for a completion in the think/answer format (strict: nothing else around), else 0.0."""
    check = is_strict_format if strict else is_lenient_format

    @trusted
    def format_reward(completions: list, **columns: Any) -> list[float]:
        return [float(check(_with_prefill(completion_text(c), prefill))) for c in completions]

    format_reward.__name__ = "format_reward_strict" if strict else "format_reward"
    return format_reward


format_reward = make_format_reward(strict=False)
format_reward_strict = make_format_reward(strict=True)


def make_accuracy_reward(task: Task, *, prefill: str = "") -> RewardFn:
    """task.verify(extract_answer(prefill + completion), example) for each completion.

    The examples come from the `_example` column, else are rebuilt from the `question`,
    `answer` and metadata columns (a TRL dataset made from `Example.columns()`).
    """

    @trusted
    def accuracy_reward(completions: list, _example: Sequence[Example] | None = None, **columns: Any) -> list[float]:
        examples = _example if _example is not None else examples_from_columns(columns, len(completions))
        return [
            float(task.verify(extract_answer(_with_prefill(completion_text(c), prefill)), ex))
            for c, ex in zip(completions, examples)
        ]

    return accuracy_reward


def examples_from_columns(columns: dict[str, Sequence], n: int) -> list[Example]:
    """Examples rebuilt from TRL-style columns: `question`, `answer`, the rest is metadata."""
    missing = [k for k in ("question", "answer") if k not in columns]
    if missing:
        raise KeyError(f"accuracy reward needs an `_example` column or {missing}; got {sorted(columns)}")
    meta_keys = [k for k in columns if k not in ("question", "answer", *TRL_KEYS)]
    return [
        Example(str(columns["question"][i]), str(columns["answer"][i]), {k: columns[k][i] for k in meta_keys})
        for i in range(n)
    ]


def make_length_penalty(*, max_length: int = 1024, soft_length: int | None = None,
                        count: Callable[[str], int] = len) -> RewardFn:
    """0 up to `soft_length`, then falling linearly to -1 at `max_length` (and -1 beyond).

    r(L) = -min(1, max(0, L - L_soft) / (L_max - L_soft)), DAPO's soft overlong punishment
    (Yu et al. 2025, arXiv:2503.14476, eq. 13). L = count(text): characters by default; pass
    `count=lambda s: len(tokenizer.encode(s))` for tokens. soft_length defaults to 3/4 max_length.
    """
    soft = int(0.75 * max_length) if soft_length is None else soft_length
    if not 0 <= soft < max_length:
        raise ValueError(f"need 0 <= soft_length < max_length, got {soft}, {max_length}")

    @trusted
    def length_penalty(completions: list, **columns: Any) -> list[float]:
        return [-min(1.0, max(0, count(completion_text(c)) - soft) / (max_length - soft)) for c in completions]

    return length_penalty


REWARDS: dict[str, Callable[..., RewardFn]] = {
    "format": lambda task=None, prefill="", **o: make_format_reward(strict=False, prefill=prefill, **o),
    "format_strict": lambda task=None, prefill="", **o: make_format_reward(strict=True, prefill=prefill, **o),
    "accuracy": lambda task=None, prefill="", **o: make_accuracy_reward(_need(task), prefill=prefill, **o),
    "length": lambda task=None, prefill="", **o: make_length_penalty(**o),
}
"""name -> factory(task, prefill, **options) of the built-in rewards"""


def _need(task: Task | None) -> Task:
    if task is None:
        raise ValueError("the accuracy reward needs the task (get_reward('accuracy', task=...))")
    return task


def get_reward(spec: str, *, task: Task | None = None, prefill: str = "", **options: Any) -> RewardFn:
    """A built-in reward by name (REWARDS), or a user's `path/file.py:function` (`load_reward`)."""
    if spec in REWARDS:
        return REWARDS[spec](task=task, prefill=prefill, **options)
    if ":" in spec:
        if options:
            raise ValueError(f"options {sorted(options)} given for user reward {spec!r}")
        return load_reward(spec)
    raise ValueError(f"unknown reward {spec!r}; built-in: {', '.join(REWARDS)}; or path/file.py:function")


def load_reward(spec: str) -> RewardFn:
    """A user's reward function from "path/to/file.py:function_name" or "package.module:name"."""
    import importlib

    from rlvr.tasks.custom import import_file

    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise ValueError(f"expected path/to/file.py:function_name, got {spec!r}")
    module = import_file(where) if where.endswith(".py") else importlib.import_module(where)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{where} has no function {name!r}")
    return fn


def example_columns(examples: Sequence[Example]) -> dict[str, list]:
    """Columns for `score`: `_example` plus every key of `Example.columns()` (None where absent)."""
    rows = [ex.columns() for ex in examples]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {"_example": list(examples), **{k: [row.get(k) for row in rows] for k in keys}}
