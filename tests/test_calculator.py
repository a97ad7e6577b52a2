"""The built-in tool task: the calculator tool (safe, exact), the questions, the verifier, the demonstrations."""

import random
import time
from fractions import Fraction

import pytest

from rlvr.prompts import extract_answer
from rlvr.tasks import get_task
from rlvr.tasks.calculator import CalculatorTask, calculator, evaluate, format_number, worked_steps
from rlvr.tools import parse_tool_calls, run_tool_call, tool_map, tool_message, tool_schema

# ------------------------------------------------------------------------------ the tool


@pytest.mark.parametrize("expression, expected", [
    ("347 * 829", "287663"),       # 347 * 829 = 277600 + 6940 + 3123
    ("(12.5 + 3) * 4", "62"),      # 15.5 * 4
    ("7 / 2", "3.5"),
    ("1/3", "0.333333333333"),     # 12 significant digits
    ("-3 + 2", "-1"),
    ("2 × 3 − 1", "5"),            # the unicode signs a model may copy
    ("0.1 + 0.2", "0.3"),          # exact: not 0.30000000000000004
    ("  10 - 2 - 3 ", "5"),        # left to right
    ("2 + 3 * 4", "14"),           # precedence
])
def test_calculator(expression, expected):
    assert calculator(expression) == expected


@pytest.mark.parametrize("expression, reason", [
    ("1 / 0", "division by zero"),
    ("__import__('os').system('touch PWNED')", "only numbers"),
    ("9**9**9", "only numbers"),
    ("[1, 2]", "only numbers"),
    ("x1", "cannot read"),          # x is a times sign: "*1"
    ("abs(-1)", "only numbers"),
    ("1,234 + 1", "only numbers"),
    ("1 +", "cannot read"),
    ("(" * 500 + "1" + ")" * 500, "longer than 200"),
    ("1" * 300, "longer than 200"),
    ("True + 1", "only numbers"),
])
def test_calculator_refuses_everything_else_fast(expression, reason):
    start = time.monotonic()
    with pytest.raises(ValueError, match=reason):
        calculator(expression)
    assert time.monotonic() - start < 0.5


def test_calculator_as_a_tool():
    """Trusted, so it runs in this process; its errors reach the model as text."""
    schema = tool_schema(calculator)["function"]
    assert schema["name"] == "calculator" and schema["parameters"]["required"] == ["expression"]
    assert schema["parameters"]["properties"]["expression"]["type"] == "string"
    (call,) = parse_tool_calls('<tool_call>{"name": "calculator", "arguments": {"expression": "1/0"}}</tool_call>')
    result = run_tool_call(call, tool_map([calculator]))
    assert result.error and result.content == "error: ValueError: division by zero"
    assert run_tool_call(call, tool_map([calculator]), isolate=True).content == result.content  # same in a child


def test_format_number():
    assert [format_number(Fraction(n, d)) for n, d in [(6, 3), (-7, 2), (1, 8), (2, 3)]] == \
        ["2", "-3.5", "0.125", "0.666666666667"]


# ------------------------------------------------------------------------------ the task


def test_questions_are_products_of_two_to_three_digit_numbers_with_a_seeded_split():
    task = get_task("calculator")
    train, test = task.train_examples(), task.test_examples()
    assert len(test) == 200 and len(train) > 1500
    assert not {e.question for e in train} & {e.question for e in test}
    for e in train[:100] + test:
        a, b = e.question.removeprefix("What is ").removesuffix("?").split(" * ")
        assert 10 <= int(a) < 1000 and 10 <= int(b) < 1000
        assert e.answer == str(int(a) * int(b))  # Python's own product, not the task's evaluator
    again = get_task("calculator")
    assert [e.question for e in again.test_examples()] == [e.question for e in test]
    other = get_task("calculator", seed=7)
    assert [e.question for e in other.test_examples()] != [e.question for e in test]


def test_the_no_tool_variant_asks_the_same_questions():
    with_tool, without = get_task("calculator"), get_task("calculator", tools=False)
    assert [e.question for e in without.test_examples()] == [e.question for e in with_tool.test_examples()]
    assert with_tool.tools == [calculator] and without.tools == []
    assert "calculator" in with_tool.system_prompt and without.system_prompt is None


@pytest.mark.parametrize("options", [dict(ops="+-*/", steps=2), dict(ops="/"), dict(ops="+-*/", steps=3, digits=4)])
def test_other_operations_have_exact_integer_answers(options):
    task = get_task("calculator", n=300, **options)
    for e in task.test_examples():
        expression = e.metadata["expression"]
        value = eval(expression, {"__builtins__": {}})  # our own generated text, checked with Python's arithmetic
        assert Fraction(value) == Fraction(e.answer) and Fraction(e.answer).denominator == 1, expression
        assert set(expression) <= set("0123456789 ()") | set(options["ops"])


def test_verify():
    task = get_task("calculator", n=20, n_test=5)
    e = task.test_examples()[0]
    value = int(e.answer)
    assert task.verify(str(value), e) == 1.0
    assert task.verify(f"{value:,}", e) == 1.0
    assert task.verify(f" {value}.", e) == 1.0
    assert task.verify(str(value + 1), e) == 0.0
    assert task.verify(None, e) == 0.0
    assert task.verify(e.metadata["expression"], e) == 0.0  # the expression is not the answer
    from test_verifiers import HOSTILE

    start = time.monotonic()
    assert all(task.verify(h, e) == 0.0 for h in HOSTILE)  # the verifier never evaluates an expression
    assert time.monotonic() - start < 0.5


def test_options_are_checked():
    with pytest.raises(ValueError, match="unknown option.*digit.*options: digits"):
        get_task("calculator", digit=3)
    with pytest.raises(ValueError, match="ops must be made of"):
        get_task("calculator", ops="*^")
    with pytest.raises(ValueError, match="min_digits"):
        get_task("calculator", digits=2, min_digits=3)


def test_make_example_levels():
    task = CalculatorTask(n=10, n_test=2)
    e = task.make_example(random.Random(0), level=1)
    a, b = e.question.removeprefix("What is ").removesuffix("?").split(" * ")
    assert int(a) < 10 and int(b) < 10


# ------------------------------------------------------------------------------ demonstrations


@pytest.mark.parametrize("options", [{}, dict(ops="+-*/", steps=2)])
def test_tool_demonstration_is_a_whole_trajectory_that_scores(options):
    """assistant (call) -> tool (the call's real result) -> assistant (answer), and the answer verifies."""
    task = get_task("calculator", n=50, **options)
    assert task.demonstration(task.test_examples()[0]) is None  # multi-turn only
    for e in task.test_examples():
        first, tool, last = task.demonstration_messages(e)
        assert [first["role"], tool["role"], last["role"]] == ["assistant", "tool", "assistant"]
        (call,) = parse_tool_calls(first["content"])
        assert call.arguments == {"expression": e.metadata["expression"]}
        assert tool == tool_message(run_tool_call(call, tool_map(task.tools)))
        assert extract_answer(first["content"]) is None
        assert task.verify(extract_answer(last["content"]), e) == 1.0


def test_no_tool_demonstration_works_it_out_and_every_step_is_right():
    task = get_task("calculator", n=50, ops="+-*/", steps=2, tools=False)
    for e in task.test_examples():
        demo = task.demonstration(e)
        assert task.verify(extract_answer(demo), e) == 1.0
        assert task.demonstration_messages(e) == [{"role": "assistant", "content": demo}]
        for line in worked_steps(e.metadata["expression"]).splitlines():
            sides = line.split(" = ")
            assert len({evaluate(s) for s in sides}) == 1, line  # each '=' holds


def test_worked_steps_by_hand():
    assert worked_steps("347 * 829") == "347 * 829 = 347 * 800 + 347 * 20 + 347 * 9 = 277600 + 6940 + 3123 = 287663"
    assert worked_steps("(15 + 49) / 32") == "15 + 49 = 64\n64 / 32 = 2"
    assert worked_steps("12 * 30") == "12 * 30 = 360"  # one non-zero digit: no partial products
