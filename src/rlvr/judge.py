"""The judge: one completion in, (answer, correct, formatted) out, the same way everywhere.

Training (rollout metrics, the accuracy reward, the curriculum, sample records) and evaluation
call this one function, so the number training pushes up is the number evaluation reports
(nanochat's rule: the task's eval check *is* its reward). In training it runs once per completion;
the accuracy reward reads its verdicts instead of verifying again.

    answer     the text of the last closed <answer>...</answer> (None without one)
    correct    task.verify(answer, example): 1.0 right, 0.0 wrong
    formatted  a closed <think> block followed by a closed <answer> (the lenient format)
"""

from __future__ import annotations

from dataclasses import dataclass

from rlvr.prompts import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, extract_answer, parse_completion
from rlvr.tasks.base import Example, Task


@dataclass(frozen=True)
class Verdict:
    answer: str | None
    """the extracted answer (None when the completion has no closed answer tag)"""
    correct: float
    """the task's verdict on the answer"""
    formatted: bool
    """the completion has the think/answer format (`is_lenient_format`)"""


def judge(task: Task, text: str, example: Example) -> Verdict:
    """The verdict on one completion. `text`: what follows the prompt, the assistant prefill
    included (a prefilled `<think>` counts towards the format)."""
    answer = extract_answer(text)
    return Verdict(answer, float(task.verify(answer, example)), is_lenient_format(text))


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
