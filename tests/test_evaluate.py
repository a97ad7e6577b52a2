"""The eval aggregates, against hand-computed examples: mean@k, pass@k and maj@k."""

from __future__ import annotations

import pytest

from rlvr.evaluate import _aggregate, majority_correct


def rec(index: int, answer: str | None, correct: bool, length: int = 10) -> dict:
    return {"index": index, "answer": answer, "correct": float(correct), "format": float(answer is not None),
            "length": length, "truncated": False}


def test_majority_vote_by_hand():
    assert majority_correct([rec(0, "7", True), rec(0, "5", False), rec(0, " 7", True)]) == 1.0  # 2 of 3
    assert majority_correct([rec(0, "5", False), rec(0, "5", False), rec(0, "7", True)]) == 0.0
    # a tie goes to the answer seen first
    assert majority_correct([rec(0, "5", False), rec(0, "7", True)]) == 0.0
    assert majority_correct([rec(0, "7", True), rec(0, "5", False)]) == 1.0
    # no answer does not vote: one correct answer against two unanswered samples wins
    assert majority_correct([rec(0, None, False), rec(0, "", False), rec(0, "7", True)]) == 1.0
    assert majority_correct([rec(0, None, False)]) == 0.0


def test_aggregate_mean_pass_and_majority_at_k():
    # example 0: 1 of 4 right, majority wrong ("5" three times)
    # example 1: 3 of 4 right, majority right
    # example 2: 0 of 4 (no answers)
    records = [rec(0, "5", False), rec(0, "9", True), rec(0, "5", False), rec(0, "5", False),
               rec(1, "3", True), rec(1, "4", False), rec(1, "3", True), rec(1, "3", True),
               *[rec(2, None, False) for _ in range(4)]]
    r = _aggregate(records, k=4, seconds=2.0, tokens=120)
    assert r.accuracy == pytest.approx((1 / 4 + 3 / 4 + 0) / 3)  # mean@4
    assert r.pass_at_k == pytest.approx(2 / 3)
    assert r.maj_at_k == pytest.approx(1 / 3)
    assert r.format_rate == pytest.approx(8 / 12)
    assert (r.n, r.k, r.tokens_per_s) == (3, 4, 60.0)
    assert "maj_at_k" in r.summary() and "records" not in r.summary()


def test_one_sample_all_three_are_greedy_accuracy():
    r = _aggregate([rec(0, "1", True), rec(1, "2", False), rec(2, None, False), rec(3, "4", True)], 1, 1.0, 4)
    assert r.accuracy == r.pass_at_k == r.maj_at_k == 0.5
