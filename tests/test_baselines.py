"""The honest baselines beside an accuracy (rlvr.baselines), worked out by hand on built splits."""

from __future__ import annotations

import pytest
from conftest import DigitTask

from rlvr.baselines import (answer_set, baseline_note, chance_accuracy, compute_baselines, constant_accuracy,
                            majority_answer)
from rlvr.tasks.base import Example, normalize_text


def exact(answer, example):
    """A yes/no verifier: the normalised answer equals the ground truth."""
    return float(answer is not None and normalize_text(answer) == normalize_text(example.answer))


def split(answers: str) -> list[Example]:
    return [Example(f"q{i}", a) for i, a in enumerate(answers.split())]


def test_majority_answer_counts_normalised_and_keeps_the_first_spelling():
    assert majority_answer(["No", "Yes", "yes.", "YES", "No"]) == "Yes"  # yes x3 vs no x2
    assert majority_answer(["b", "a", "a", "b"]) == "b"  # a tie goes to the one seen first
    assert majority_answer([]) is None


def test_majority_baseline_on_a_hand_built_split():
    # train: 6 Yes, 3 No -> the majority answer is "Yes"
    train = split("Yes No Yes Yes No Yes Yes No Yes")
    # test: 4 of 6 are Yes -> always answering "Yes" scores 4/6
    test = split("Yes Yes No Yes No Yes")
    b = compute_baselines(exact, train, test)
    assert b.majority_answer == "Yes"
    assert b.majority == pytest.approx(4 / 6)
    # the answer set {Yes, No} is fixed (2 answers, 9 >= 3 * 2 examples, every test answer in it):
    # a uniform guess is right on each question with probability 1/2
    assert b.choices == 2 and b.chance == pytest.approx(0.5)


def test_no_fixed_answer_set_when_answers_are_many_or_unseen():
    many = split(" ".join(str(i) for i in range(40)))  # 40 distinct answers: no fixed set
    assert answer_set([e.answer for e in many], ["3"]) is None
    assert compute_baselines(exact, many, split("3 5")).chance is None
    few = [e.answer for e in split("a b a b a b a b")]
    assert answer_set(few, ["a", "c"]) is None  # a test answer outside the set
    assert answer_set(few, ["b"]) == ["a", "b"]
    assert answer_set(["a", "b"], ["a"]) is None  # seen once each: too few to call it a set


def test_constant_and_chance_accuracy_use_the_verifier():
    test = split("a b c c")
    assert constant_accuracy(exact, "c", test) == 0.5
    # guesses a, b, c: right on 1, 1 and 2 of the 4 questions -> (1 + 1 + 2) / 4 / 3 = 1/3
    assert chance_accuracy(exact, ["a", "b", "c"], test) == pytest.approx(1 / 3)


def test_a_declared_answer_set_wins_and_no_training_split_means_no_majority():
    test = split("x y")
    b = compute_baselines(exact, [], test, choices=["x", "y", "z", "w"])
    assert b.majority is None and b.majority_answer is None
    assert b.chance == pytest.approx(0.25) and b.choices == 4


def test_an_accuracy_under_the_majority_baseline_is_called_that():
    row = {"accuracy": 0.60, "majority_baseline": 2 / 3, "majority_answer": "Yes"}
    note = baseline_note(row)
    assert note is not None and "under the majority baseline of 66.7%" in note and "'Yes'" in note
    assert baseline_note({**row, "accuracy": 0.70}) is None
    assert baseline_note({"accuracy": 0.0, "majority_baseline": 0.0, "majority_answer": "5"}) is None


def test_report_verdict_demotes_a_gain_that_stays_under_the_majority_baseline():
    """The issue's example: 46% -> 60% where always-"Yes" scores 67% is not an improvement."""
    from rlvr.report.data import verdict

    extra = {"n": 1000, "majority_baseline": 2 / 3, "majority_answer": "Yes"}
    v = verdict([{"label": "before", "accuracy": 0.46, **extra}, {"label": "after", "accuracy": 0.60, **extra}])
    assert v.kind == "flat" and "majority baseline" in v.text
    above = verdict([{"label": "before", "accuracy": 0.46, **extra}, {"label": "after", "accuracy": 0.80, **extra}])
    assert above.kind == "improved"


def test_evaluate_config_rows_carry_the_baselines(tiny_char):
    """A real evaluation of a tiny model: the row has the majority and chance baselines of the task."""
    from rlvr.config import load_config
    from rlvr.evaluate import evaluate_config, format_table
    from rlvr.sampling import make_sampler

    model, tok = tiny_char
    cfg = load_config(None, ["eval.n=4", "eval.max_new_tokens=4", "run.quiet=true"])
    task = DigitTask()  # every answer is "7": the majority baseline is 100%, the answer set {7}: chance 100%
    result = evaluate_config(make_sampler("fast", model, tok), tok, task, cfg, progress=False)
    row = {"stage": "base", **result.summary()}
    assert row["majority_answer"] == "7" and row["majority_baseline"] == 1.0 and row["chance_baseline"] == 1.0
    assert "majority baseline 100.0% ('7')" in format_table([row])
