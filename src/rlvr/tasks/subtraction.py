"""Subtraction of two integers (seed 000, docs/SEEDS.md), with a question that cannot disagree with its label.

Data exactly like seed 000: `rng = default_rng(seed)`, then `n1 = rng.integers(low, high, n)` and
`n2 = rng.integers(low, high, n)`; the seed showed the pair as "n2 n1" with label n2 - n1.
Departure: seed 000's system prompt asked for "the second minus the first" while its labels were
the first minus the second. Here the question writes the subtraction out ("What is 512 - 387?")
and the label is that expression's value, so prompt and label agree by construction.
`order="first_minus_second"` (default) asks n2 - n1 (the seed's labels); "second_minus_first"
asks n1 - n2.

Metadata columns: `minuend`, `subtrahend`, `difference` (seed 000's reward column name).
"""

from __future__ import annotations

import random
import numpy as np

from rlvr.prompts import format_completion
from rlvr.tasks.base import Example, Task, parse_number, split_train_test

ORDERS = ("first_minus_second", "second_minus_first")
PLACES = ("ones", "tens", "hundreds", "thousands")
Rng = np.random.Generator | random.Random


class SubtractionTask(Task):
    """Subtract two integers drawn uniformly from [low, high)."""

    name = "subtraction"
    description = "a - b for integers in [low, high) (seed 000); demonstrations borrow digit by digit"

    def __init__(
        self,
        *,
        low: int = 0,
        high: int = 1000,
        n: int = 8000,
        test_fraction: float = 0.2,
        seed: int = 42,
        order: str = "first_minus_second",
    ):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if not low < high:
            raise ValueError(f"need low < high, got low={low}, high={high}")
        self.low, self.high, self.order = low, high, order
        self.default_level = len(str(max(abs(high - 1), abs(low))))
        rng = np.random.default_rng(seed)
        numbers1 = rng.integers(low, high, n)  # [n]
        numbers2 = rng.integers(low, high, n)  # [n]
        examples = [self._example(int(b), int(a)) for a, b in zip(numbers1, numbers2, strict=True)]
        if (high - low) ** 2 <= n:  # a small range (0-9: 100 problems): each distinct problem once
            examples = list({e.question: e for e in examples}.values())
        self._train, self._test = split_train_test(examples, test_fraction=test_fraction, seed=seed,
                                                    key=lambda e: e.question)  # no test problem in training

    def _example(self, first: int, second: int) -> Example:
        """`first` and `second` are the pair in seed 000's displayed order."""
        if self.order == "first_minus_second":
            a, b = first, second
        else:
            a, b = second, first
        return Example(
            question=f"What is {a} - {b}?",
            answer=str(a - b),
            metadata={"minuend": a, "subtrahend": b, "difference": a - b},
        )

    def make_example(self, rng: Rng, level: int | None = None) -> Example:
        """A fresh problem; level k draws both numbers from [0, 10**k) (1: 0-9, 2: 0-99, ...).

        level=None uses the task's own range [low, high). For adaptive-difficulty curricula.
        """
        lo, hi = (self.low, self.high) if level is None else (0, 10 ** max(1, level))
        if isinstance(rng, random.Random):
            first, second = rng.randrange(lo, hi), rng.randrange(lo, hi)
        else:
            first, second = (int(x) for x in rng.integers(lo, hi, 2))
        return self._example(first, second)

    def train_examples(self) -> list[Example]:
        return self._train

    def test_examples(self) -> list[Example]:
        return self._test

    def verify(self, answer: str | None, example: Example) -> float:
        """1.0 when the answer is the integer a - b (commas, spaces and "−" tolerated), else 0."""
        value = parse_number(answer)
        return 1.0 if value is not None and value == int(example.answer) else 0.0

    def demonstration(self, example: Example) -> str:
        a, b = example.metadata["minuend"], example.metadata["subtrahend"]
        return format_completion(subtraction_steps(a, b), str(a - b))


def subtraction_steps(a: int, b: int) -> str:
    """Column subtraction written out digit by digit, borrowing spelled out (~45-85 tokens).

    For 512 - 387:
        512 > 387
        ones: 2<7, borrow: 12-7=5
        tens: 1-1=0, 0<8, borrow: 10-8=2
        hundreds: 5-1=4, 4-3=1
        = 125
    A negative result is computed as -(b - a) ("7 < 512, so -(512 - 7)"). The comparison line
    comes first whatever the sign, so the model copies `a` before it decides (one token, `<`, `>`
    or `=`): when only negative results had it, the first token had to decide, without any
    scratch work, and a 135M model took the negative branch for 57 of 90 positive results.
    Negative inputs fall back to one line.
    """
    if a < 0 or b < 0:
        return f"{a} - {b} = {a - b}"
    lines, top, bottom = [], a, b
    if a < b:
        lines.append(f"{a} < {b}, so -({b} - {a})")
        top, bottom = b, a
    else:
        lines.append(f"{a} {'>' if a > b else '='} {b}")
    lines += _column_lines(top, bottom)
    lines.append(f"= {a - b}")
    return "\n".join(lines)


def _column_lines(top: int, bottom: int) -> list[str]:
    """One line per column of `top` (>= bottom >= 0), ones first."""
    digits_top, digits_bottom = str(top)[::-1], str(bottom)[::-1]
    lines, borrow = [], 0
    for i, ch in enumerate(digits_top):
        d, e = int(ch), int(digits_bottom[i]) if i < len(digits_bottom) else 0
        place = PLACES[i] if i < len(PLACES) else f"10^{i}"
        parts, borrow_next = [], 0
        if borrow and d == 0:  # borrow through a zero: it becomes 9 and borrows in turn
            parts.append("0-1<0, borrow: 10-1=9")
            d, borrow_next = 9, 1
        elif borrow:
            parts.append(f"{d}-1={d - 1}")
            d -= 1
        if d < e:
            parts.append(f"{d}<{e}, borrow: {d + 10}-{e}={d + 10 - e}")
            borrow_next = 1
        elif i < len(digits_bottom):
            parts.append(f"{d}-{e}={d - e}")
        elif not parts:  # past the shorter number's digits: the digit comes down
            parts.append(str(d))
        borrow = borrow_next
        lines.append(f"{place}: " + ", ".join(parts))
    return lines
