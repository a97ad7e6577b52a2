"""Every verifier on right, wrong, malformed and hostile answers; hostile ones must return 0 fast."""

import json
from fractions import Fraction

import pytest

from rlvr.rewards import make_accuracy_reward
from rlvr.tasks import get_task
from rlvr.tasks.base import Example, normalize_text, parse_number
from rlvr.tasks.countdown import evaluate_expression, make_countdown_example, verify_countdown
from rlvr.tasks.custom import match_answer
from rlvr.tasks.gsm8k import make_gsm8k_example

MEGABYTE = "1" * 1_000_000
HOSTILE = ["__import__('os').system('touch PWNED')", "9**9**9", MEGABYTE, "(" * 500 + "1" + ")" * 500,
           "[x for x in ()]", "lambda: 1", "().__class__", "1 if 1 else 2"]


@pytest.fixture(scope="module")
def gsm8k_dir(tmp_path_factory):
    """A two-line GSM8K copy in the official format, so these tests need no shared data."""
    d = tmp_path_factory.mktemp("gsm8k")
    rows = [{"question": "Q?", "answer": "2 x 540 = <<2*540=1080>>1,080\n#### 1,080"}] * 2
    for name in ("train.jsonl", "test.jsonl"):
        (d / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(d)


@pytest.fixture(scope="module")
def tasks(gsm8k_dir):
    return {
        "subtraction": get_task("subtraction", n=20),
        "countdown": get_task("countdown", n=20),
        "gsm8k": get_task("gsm8k", path=gsm8k_dir),
    }


# ------------------------------------------------------------------------------ helpers


@pytest.mark.parametrize(
    "text, expected",
    [("42", Fraction(42)), (" -7 ", Fraction(-7)), ("\u2212125", Fraction(-125)), ("$1,234.", Fraction(1234)),
     ("3.50", Fraction(7, 2)), ("1/3", Fraction(1, 3)), ("12 apples", None), ("", None), (None, None),
     ("1e5", None), ("--3", None), ("1..", None), (MEGABYTE, None)],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


def test_parse_number_keeps_commas_when_asked():
    assert parse_number("1,080", remove_comma=False) is None
    assert parse_number("1,080") == 1080


def test_normalize_text():
    assert normalize_text('  "Paris." ') == "paris"
    assert normalize_text("New   York\nCity") == "new york city"


# ---------------------------------------------------------------------------- subtraction


def test_subtraction_verifier(tasks):
    task = tasks["subtraction"]
    ex = Example("What is 512 - 387?", "125", {"minuend": 512, "subtrahend": 387, "difference": 125})
    assert task.verify("125", ex) == 1.0
    assert task.verify(" 125 ", ex) == 1.0
    assert task.verify("125.0", ex) == 1.0  # the same integer
    assert task.verify("126", ex) == 0.0
    assert task.verify("-125", ex) == 0.0  # the other order is wrong
    assert task.verify("512 - 387 = 125", ex) == 0.0  # only the number
    assert task.verify(None, ex) == 0.0
    for hostile in HOSTILE:
        assert task.verify(hostile, ex) == 0.0
    neg = Example("What is 387 - 512?", "-125", {"minuend": 387, "subtrahend": 512, "difference": -125})
    assert task.verify("-125", neg) == 1.0 and task.verify("\u2212125", neg) == 1.0


# ------------------------------------------------------------------------------ countdown


def test_countdown_right_answers():
    assert verify_countdown("(44 + 19) + 35", [44, 19, 35], 98) == 1.0
    assert verify_countdown("35+44+19", [44, 19, 35], 98) == 1.0  # any order
    assert verify_countdown("44 + 19 + 35 = 98", [44, 19, 35], 98) == 1.0  # "= target" allowed
    assert verify_countdown("(91 + 45) / (53 - 19)", [45, 91, 19, 53], 4) == 1.0  # 136 / 34
    assert verify_countdown("6 / (1 - 3 / 4)", [6, 1, 3, 4], 24) == 1.0  # fractions: 6 / (1/4)
    assert verify_countdown("-3 + 5 * 2", [3, 5, 2], 7) == 1.0  # unary minus
    assert verify_countdown("2 × 3 + 1", [2, 3, 1], 7) == 1.0


def test_countdown_wrong_answers():
    assert verify_countdown("44 + 19 - 35", [44, 19, 35], 98) == 0.0  # 28
    assert verify_countdown("44 + 19", [44, 19, 35], 98) == 0.0  # 35 unused
    assert verify_countdown("44 + 19 + 35 + 35", [44, 19, 35], 98) == 0.0  # 35 twice
    assert verify_countdown("98", [44, 19, 35], 98) == 0.0
    assert verify_countdown("44 + 19 + 35 = 97", [44, 19, 35], 98) == 0.0
    assert verify_countdown("1 + 2 = 3 = 3", [1, 2], 3) == 0.0
    assert verify_countdown("44.0 + 19 + 35", [44, 19, 35], 98) == 0.0  # floats are not the numbers
    assert verify_countdown("7 / (3 - 3) + 1", [7, 3, 3, 1], 1) == 0.0  # division by zero


def test_countdown_malformed_answers():
    for text in [None, "", "(44 + 19", "44 19 35", "44 + + 19 + 35 =", "<answer>", "44 + 19 + 35)"]:
        assert verify_countdown(text, [44, 19, 35], 98) == 0.0


@pytest.mark.timeout(10)
def test_countdown_hostile_answers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for text in HOSTILE + ["9 ** 9 ** 9", "2**3", "abs(-98)", "x", "(44).real + 19 + 35", "44 // 1 + 19 + 35"]:
        assert verify_countdown(text, [9, 9, 9], 98) == 0.0
        assert verify_countdown(text, [44, 19, 35], 98) == 0.0
    assert not (tmp_path / "PWNED").exists()  # never executed
    assert evaluate_expression("9**9**9", [9, 9, 9]) is None


def test_countdown_evaluate_expression_is_exact():
    # 1/3 + 1/3 + 1/3 is exactly 1 with fractions (floats would give 0.9999999999999999 for some)
    assert evaluate_expression("1/3 + 1/3 + 1/3", [1, 3, 1, 3, 1, 3]) == 1
    assert evaluate_expression("7 - 10", [7, 10]) == -3


def test_countdown_task_verify(tasks):
    task = tasks["countdown"]
    ex = make_countdown_example([44, 19, 35], 98)
    assert task.verify("44 + 19 + 35", ex) == 1.0 and task.verify("44 + 19 - 35", ex) == 0.0
    assert task.verify(None, ex) == 0.0


# ---------------------------------------------------------------------------------- gsm8k


def test_gsm8k_verifier_commas_and_dollars(tasks):
    task = tasks["gsm8k"]
    ex = make_gsm8k_example({"question": "q", "answer": "5 x 216 = <<5*216=1080>>1,080\n#### 1,080"})
    assert ex.answer == "1080"  # the ground truth loses its comma
    for right in ["1080", "1,080", "$1,080", "1080.", " 1080.00 "]:
        assert task.verify(right, ex) == 1.0, right
    for wrong in ["1081", "108", "1080 dollars", "", None, *HOSTILE]:
        assert task.verify(wrong, ex) == 0.0, wrong[:20] if wrong else wrong


def test_gsm8k_not_remove_comma(gsm8k_dir):
    task = get_task("gsm8k", path=gsm8k_dir, remove_comma=False)
    ex = make_gsm8k_example({"question": "q", "answer": "#### 1,080"})
    assert task.verify("1080", ex) == 1.0
    assert task.verify("1,080", ex) == 0.0  # seed 001's not_remove_comma=True behaviour


# ------------------------------------------------------------------------- custom columns


def test_match_answer():
    assert match_answer("Paris", "paris") == 1.0
    assert match_answer(" paris. ", "Paris") == 1.0
    assert match_answer("London", "Paris") == 0.0
    assert match_answer("3/4", "0.75") == 1.0  # both numbers: compared as numbers
    assert match_answer("30", "30.0") == 1.0
    assert match_answer("31", "30") == 0.0
    assert match_answer(None, "30") == 0.0
    for hostile in HOSTILE:
        assert match_answer(hostile, "30") == 0.0


# ---------------------------------------------------------------------------- reasoning-gym


def test_rg_verifier_malformed_and_hostile():
    task = get_task("rg:basic_arithmetic", n=3, n_test=3)
    ex = task.train_examples()[0]
    assert task.verify(ex.answer, ex) == 1.0
    for bad in [None, "", "not a number", *HOSTILE]:
        assert task.verify(bad, ex) == 0.0


# ------------------------------------------------------------ through the accuracy reward


def test_answer_inside_think_block_does_not_count(tasks):
    task = tasks["subtraction"]
    ex = Example("What is 9 - 4?", "5", {"minuend": 9, "subtrahend": 4, "difference": 5})
    reward = make_accuracy_reward(task)
    completions = [
        "<think>9 - 4 <answer>5</answer></think><answer>6</answer>",  # right answer only inside think
        "<think>9 - 4 <answer>5</answer></think>",
        "<think>9 - 4 = 5</think><answer>5</answer>",
    ]
    assert reward(completions, _example=[ex] * 3) == [0.0, 0.0, 1.0]
