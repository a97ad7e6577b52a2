"""Honest baselines beside every accuracy: what a model scores without reading the question.

    majority   the most common answer of the training split, given for every test question, scored
               by the task's own verifier. On a yes/no dataset where "Yes" is right for two thirds
               of the items, a model that always says "Yes" scores 67%: a before/after of 46% -> 60%
               on it is below that line, and is called so.
    chance     where the task has a fixed answer set: a guess drawn uniformly from that set, scored
               by the verifier (the mean over test questions of the fraction of the set it accepts).

A task declares its answer set with an `answer_choices` attribute (a list of strings); else the set
is inferred from the data: at most `MAX_CHOICES` distinct answers in the training split, each seen
on average `MIN_PER_CHOICE` times or more, and every test answer among them (subtraction over
0-99 has no fixed set; a yes/no or multiple-choice dataset has one). Answers are compared after
`normalize_text` (case, spaces, quotes, a final period), the first spelling seen is the one kept.

Pure functions of answers and examples; the verifier is passed in, nothing else of the task is read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rlvr.tasks.base import Example, normalize_text

MAX_CHOICES = 10
"""an inferred answer set has at most this many answers"""
MIN_PER_CHOICE = 3
"""... and the training split holds at least this many examples per answer on average"""

Verify = Callable[[str | None, Example], float]


@dataclass(frozen=True)
class Baselines:
    majority_answer: str | None
    """the most common training answer (None: no training split)"""
    majority: float | None
    """accuracy of giving `majority_answer` to every test question"""
    chance: float | None
    """accuracy of a uniform guess among the answer set (None: the task has no fixed set)"""
    choices: int | None
    """the size of the answer set (None: none)"""

    def as_row(self) -> dict:
        """The keys an evaluation row carries (`rlvr.evaluate.EvalResult`)."""
        return {"majority_baseline": self.majority, "majority_answer": self.majority_answer,
                "chance_baseline": self.chance}


def majority_answer(answers: Sequence[str]) -> str | None:
    """The most common answer (compared after `normalize_text`; a tie goes to the one seen first;
    its first spelling is returned); None for no answers."""
    counts: Counter[str] = Counter()
    spelling: dict[str, str] = {}
    for a in answers:
        key = normalize_text(str(a))
        counts[key] += 1
        spelling.setdefault(key, str(a).strip())
    if not counts:
        return None
    best = max(counts.values())
    return next(spelling[k] for k in spelling if counts[k] == best)  # dicts keep first-seen order


def answer_set(train_answers: Sequence[str], test_answers: Sequence[str], *, max_choices: int = MAX_CHOICES,
               min_per_choice: int = MIN_PER_CHOICE) -> list[str] | None:
    """The fixed answer set the data shows (see the module docstring), in first-seen order; None
    when the answers are too many, too rarely repeated, or a test answer is outside them."""
    spelling: dict[str, str] = {}
    for a in train_answers:
        spelling.setdefault(normalize_text(str(a)), str(a).strip())
    if not spelling or len(spelling) > max_choices or len(train_answers) < min_per_choice * len(spelling):
        return None
    if any(normalize_text(str(a)) not in spelling for a in test_answers):
        return None
    return list(spelling.values())


def constant_accuracy(verify: Verify, answer: str | None, examples: Sequence[Example]) -> float:
    """The accuracy of giving `answer` to every example, by the verifier."""
    return sum(float(verify(answer, ex)) for ex in examples) / max(1, len(examples))


def chance_accuracy(verify: Verify, choices: Sequence[str], examples: Sequence[Example]) -> float:
    """The expected accuracy of a guess drawn uniformly from `choices`, by the verifier."""
    if not choices:
        return 0.0
    return sum(constant_accuracy(verify, c, examples) for c in choices) / len(choices)


def compute_baselines(verify: Verify, train: Sequence[Example], test: Sequence[Example],
                      choices: Sequence[str] | None = None) -> Baselines:
    """The majority and chance baselines of `test` (the evaluated examples), from `train`'s answers;
    `choices`: a declared answer set (else inferred by `answer_set`)."""
    answer = majority_answer([ex.answer for ex in train])
    majority = constant_accuracy(verify, answer, test) if answer is not None and test else None
    found = list(choices) if choices else answer_set([ex.answer for ex in train], [ex.answer for ex in test])
    chance = chance_accuracy(verify, found, test) if found and test else None
    return Baselines(answer, majority, chance, len(found) if found else None)


def task_baselines(task, test: Sequence[Example]) -> Baselines:
    """`compute_baselines` for a task: its training split, its verifier, its `answer_choices` if it
    declares them. A task without a training split gets no majority baseline."""
    try:
        train = task.train_examples()
    except NotImplementedError:
        train = []
    return compute_baselines(task.verify, train or [], test, getattr(task, "answer_choices", None))


def baseline_note(row: dict) -> str | None:
    """A sentence when an evaluation row's accuracy is at or under its majority baseline (and that
    baseline is above 0), else None."""
    acc, majority = row.get("accuracy"), row.get("majority_baseline")
    if not (isinstance(acc, (int, float)) and isinstance(majority, (int, float))) or majority <= 0 or acc > majority:
        return None
    where = "under" if acc < majority else "at"
    return (f"{100 * acc:.1f}% is {where} the majority baseline of {100 * majority:.1f}% (answering "
            f"{row.get('majority_answer')!r} to every question, the training split's most common answer).")


def format_baselines(row: dict) -> str:
    """"majority baseline 66.7% ('Yes'), chance 50.0%" for the keys present ("" when none)."""
    parts = []
    if isinstance(row.get("majority_baseline"), (int, float)):
        parts.append(f"majority baseline {100 * row['majority_baseline']:.1f}% ({row.get('majority_answer')!r})")
    if isinstance(row.get("chance_baseline"), (int, float)):
        parts.append(f"chance {100 * row['chance_baseline']:.1f}%")
    return ", ".join(parts)
