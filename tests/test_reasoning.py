"""rlvr.reasoning: the arithmetic a completion states in its think part, checked by hand-computed
examples; the share of right answers that state a false claim, in evaluations and verdicts."""

from __future__ import annotations

from fractions import Fraction

from rlvr.evaluate import _aggregate, format_table, verdict
from rlvr.reasoning import arithmetic_claims, arithmetic_summary, claim_holds, think_arithmetic, think_text


def claims(text: str) -> list[tuple[str, bool]]:
    return [(c.text, c.holds) for c in arithmetic_claims(text)]


def test_claims_are_read_and_checked_exactly():
    # the bundled model's countdown reasoning: the answer 43 - 51 + 46 is 38, both steps are false
    assert claims("43 - 51 = 11, and 11 + 46 = 38.") == [("43 - 51 = 11", False), ("11 + 46 = 38", False)]
    assert claims("3 * 5 = 15, and 15 + 7 = 22.") == [("3 * 5 = 15", True), ("15 + 7 = 22", True)]
    assert claims("12 + 3 + 4 = 19") == [("12 + 3 + 4 = 19", True)]  # a chain, read whole
    assert claims("2 + 3 * 4 = 14") == [("2 + 3 * 4 = 14", True)]  # precedence: 2 + 12
    assert claims("7 - 68 = -61") == [("7 - 68 = -61", True)]
    assert claims("6 × 7 = 42 and 8 ÷ 2 = 5") == [("6 × 7 = 42", True), ("8 ÷ 2 = 5", False)]
    assert claims("5 / 0 = 1") == [("5 / 0 = 1", False)]
    assert arithmetic_claims("43 - 51 = 11")[0].values == (Fraction(-8), Fraction(11))


def test_chains_hold_when_every_side_agrees():
    # the calculator task's worked demonstration: one chain, all sides 287663
    worked = "347 * 829 = 347 * 800 + 347 * 20 + 347 * 9 = 277600 + 6940 + 3123 = 287663"
    assert claims(worked) == [(worked, True)]
    assert claims("2 + 2 = 4 = 5") == [("2 + 2 = 4 = 5", False)]
    assert claims("10 / 3 = 3.33 = 10 / 3") == [("10 / 3 = 3.33 = 10 / 3", True)]
    assert claims("5 = 5") == []  # no operator: not arithmetic
    assert claims("(2 + 3) * 5 = 25") == []  # the tail of a parenthesised expression is not read
    assert claims("so 5 = 2 * (1 + 2)") == []


def test_decimals_hold_when_they_round_to_the_stated_places():
    assert claim_holds(Fraction(10, 3), "3.33") and claim_holds(Fraction(10, 3), "3.3")
    assert not claim_holds(Fraction(10, 3), "3.34")
    assert claim_holds(Fraction(3), "3.0") and not claim_holds(Fraction(3), "3.1")
    assert claim_holds(Fraction(15), "15") and not claim_holds(Fraction(31, 2), "15")  # no places: exact


def test_what_is_not_a_claim_is_not_read():
    assert claims("I have 5 apples and 3 pears") == []
    assert claims("(3 + 4) * 2 = 14") == []  # parentheses are not read (never called right or wrong)
    assert claims("x2 + 3 = 5") == []  # glued to a word
    assert claims("3 * 5 = 15.5") == [("3 * 5 = 15.5", False)]  # the whole stated number


def test_only_the_think_part_counts():
    text = "<think>\n3 + 4 = 7\n</think>\n3 + 4 = 9 <answer>7</answer>"
    assert think_text(text).strip() == "3 + 4 = 7"
    assert think_arithmetic(text) is True
    assert think_arithmetic("<think>\n43 - 51 = 11, and 11 + 46 = 38.\n</think>\n<answer>43 - 51 + 46</answer>") is False
    assert think_arithmetic("<think>\nsubtract them\n</think>\n<answer>7</answer>") is None  # nothing to check
    assert think_arithmetic("3 + 4 = 9 <answer>7</answer>") is None  # no think part
    assert think_arithmetic("<think>\n2 * 3 = 7 and then") is False  # a think block left open (truncated)


def record(index: int, completion: str, correct: float) -> dict:
    return {"index": index, "completion": completion, "correct": correct, "format": 1.0, "length": 10,
            "truncated": False, "answer": "x"}


RECORDS = [
    record(0, "<think>\n43 - 51 = 11, and 11 + 46 = 38.\n</think>\n<answer>43 - 51 + 46</answer>", 1.0),  # right, false
    record(1, "<think>\n3 * 5 = 15, and 15 + 7 = 22.\n</think>\n<answer>3 * 5 + 7</answer>", 1.0),  # right, true
    record(2, "<think>\nguess\n</think>\n<answer>9</answer>", 1.0),  # right, nothing to check
    record(3, "<think>\n2 + 2 = 5\n</think>\n<answer>5</answer>", 0.0),  # wrong: not counted
    record(4, "<think>\n9 - 1 = 7\n</think>\n<answer>8</answer>", 1.0),  # right, false
]


def test_summary_counts_right_answers_with_false_arithmetic():
    s = arithmetic_summary(RECORDS)
    assert (s.right, s.checked, s.false_claims) == (4, 3, 2)
    assert s.false_frac == 2 / 3
    assert arithmetic_summary(RECORDS[2:4]).false_frac is None  # no right answer states arithmetic


def test_an_evaluation_reports_it_and_the_verdict_says_so():
    result = _aggregate(RECORDS, k=1, seconds=1.0, tokens=10)
    assert (result.right_checked, result.right_false_arithmetic) == (3, 2 / 3)
    assert result.summary()["right_false_arithmetic"] == 2 / 3
    plain = _aggregate(RECORDS[2:4], k=1, seconds=1.0, tokens=10)
    assert "right_checked" not in plain.summary()  # nothing checkable: no claim either way
    base = {"stage": "base", "accuracy": 0.0, "format_rate": 0.0, "mean_length": 9.0, "n": 5}
    after = {"stage": "sft", **result.summary()}
    assert "sft 67% (2 of 3)" in format_table([base, after])
    assert "right for a wrong reason" in verdict([base, after])
    honest = {**after, "right_false_arithmetic": 1 / 3}
    assert "wrong reason" not in verdict([base, honest])  # a minority is not called out


def test_the_reports_verdict_notes_right_for_a_wrong_reason():
    from rlvr.report.data import verdict as report_verdict

    before = {"label": "base", "accuracy": 0.0, "n": 200}
    after = {"label": "grpo", "accuracy": 0.225, "n": 200, "right_checked": 45, "right_false_arithmetic": 1.0}
    notes = report_verdict([before, after]).notes
    assert any("In grpo, 100% (45 of 45)" in n and "wrong reason" in n for n in notes)
    sound = {**after, "right_false_arithmetic": 0.02}
    assert not any("wrong reason" in n for n in report_verdict([before, sound]).notes)


def test_the_tasks_own_worked_solutions_are_never_called_false():
    """Every built-in worked solution is right: none may be read as stating a false claim (the
    subtraction steps put the total on its own line, "tens: 6-3=3\\n= 31": a step, then the total)."""
    from rlvr.tasks import get_task

    assert claims("tens: 6-3=3\n= 31") == [("6-3=3", True)]
    for spec, options in (("subtraction", {"n": 200, "high": 1000}), ("countdown", {"num_numbers": 3, "n": 200}),
                          ("calculator", {"n": 200, "tools": False})):
        task = get_task(spec, **options)
        worked = [task.demonstration(ex) for ex in task.train_examples()[:200]]
        worked = [w for w in worked if w]
        assert len(worked) >= 100, spec
        verdicts = [think_arithmetic(w) for w in worked]
        assert False not in verdicts, (spec, next(w for w, v in zip(worked, verdicts) if v is False))
        assert sum(v is True for v in verdicts) >= len(worked) // 2, spec  # and they are read, not skipped


def test_a_long_hostile_completion_is_read_in_linear_time():
    """Model output is untrusted: 50,000 characters of "1+1+..." took 65 s when the claim pattern ran
    over the whole text (each start position re-read the rest); runs of claim characters bound it."""
    import time

    for hostile in ("1+" * 25000, "-1-" * 15000, "12.5*" * 10000):
        t0 = time.perf_counter()
        assert arithmetic_claims(f"<think>{hostile}</think>") == []
        assert time.perf_counter() - t0 < 2.0
    assert len(arithmetic_claims("3 + 4 = 7, " * 2000)) == 2000
