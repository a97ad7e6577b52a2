"""Arithmetic a 135M model cannot do in its head (347 * 829), with a `calculator` tool it may call.

The built-in tool task (issue 19). A question is an expression, "What is 347 * 829?", with
`steps` operations drawn from `ops` on integers of `min_digits`..`digits` digits (divisions are
exact, results may be negative); the answer is its exact value. With `tools=True` (the default)
the task offers `tools = [calculator]` and the episode is multi-turn:

    assistant  <think>...</think> <tool_call>{"name": "calculator", "arguments": {"expression": "347 * 829"}}</tool_call>
    tool       287663
    assistant  <think>...</think> <answer>287663</answer>

`tools=False` asks the very same questions (same seed, same split) without the tool, as a
single-turn task, so a report can show what the tool is worth.

Demonstrations for the SFT warm-up: `demonstration_messages(example)` is the whole trajectory
above (the assistant and tool messages that follow the prompt); `demonstration(example)` is the
single completion of the no-tool variant (partial products written out: "347 * 829 = 347 * 800 +
347 * 20 + 347 * 9 = ...") and None with tools, whose demonstrations are multi-turn.

The calculator evaluates + - * / and parentheses on integers and decimals, exactly (fractions),
through a whitelist over Python's `ast`: nothing is `eval`ed. It is `@trusted` (bounded, pure),
so it runs in-process, without a fork.
"""

from __future__ import annotations

import ast
import random
from decimal import Decimal, localcontext
from fractions import Fraction

from rlvr.prompts import format_completion
from rlvr.tasks.base import ARITHMETIC_OPS as _AST_OPS, Example, Task, arithmetic, exact_value, parse_number, split_train_test
from rlvr.tools import format_tool_call, trusted

MAX_EXPRESSION_CHARS = 200
_ALIASES = {"×": "*", "x": "*", "X": "*", "÷": "/", "−": "-", "–": "-"}

SYSTEM_PROMPT = (
    "You are a careful assistant with a calculator. Call the calculator for the arithmetic, then "
    "think briefly inside <think> </think> and give only the final answer inside <answer> </answer>."
)
"""the tool variant's instructions; the tool itself and the call format are added by `rlvr.tools`"""


@trusted
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: numbers with + - * / and parentheses, e.g. "(12.5 + 3) * 4"
    """
    return format_number(evaluate(expression))


def evaluate(expression: str) -> Fraction:
    """The exact value of an expression of + - * / and parentheses on integers and decimals.

    ValueError with a short reason (for the model) on anything else, a division by zero included.
    """
    if not isinstance(expression, str):
        raise ValueError("the expression must be a string")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    text = "".join(_ALIASES.get(ch, ch) for ch in expression).strip()
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ValueError(f"cannot read {expression!r}: use numbers, + - * / and parentheses") from None
    try:
        return exact_value(tree.body)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except RecursionError:
        raise ValueError("the expression is nested too deeply") from None


def format_number(value: Fraction) -> str:
    """An integer as is ("287663"); else a decimal of 12 significant digits at most ("0.333333333333")."""
    if value.denominator == 1:
        return str(value.numerator)
    with localcontext() as ctx:
        ctx.prec = 12
        text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


# ------------------------------------------------------------------ the task


class CalculatorTask(Task):
    """Multi-digit arithmetic with (tools=True) or without a calculator tool."""

    name = "calculator"
    description = "multi-digit arithmetic (347 * 829) with a calculator tool; tools=false: the same questions without"

    def __init__(self, *, digits: int = 3, min_digits: int = 2, ops: str = "*", steps: int = 1, n: int = 2000,
                 n_test: int = 200, seed: int = 42, tools: bool = True):
        if not 1 <= min_digits <= digits <= 12:
            raise ValueError(f"calculator: need 1 <= min_digits <= digits <= 12, got min_digits={min_digits}, "
                             f"digits={digits}")
        if not ops or set(ops) - set("+-*/"):
            raise ValueError(f"calculator: ops must be made of + - * /, got {ops!r}")
        if not 1 <= steps <= 4:
            raise ValueError(f"calculator: steps must be 1 to 4, got {steps}")
        self.digits, self.min_digits, self.ops, self.steps = digits, min_digits, ops, steps
        self.use_tools = bool(tools)
        self.tools = [calculator] if self.use_tools else []
        self.system_prompt = SYSTEM_PROMPT if self.use_tools else None
        rng = random.Random(seed)
        examples = list({e.question: e for e in (self.make_example(rng) for _ in range(n + n_test))}.values())
        self._train, self._test = split_train_test(examples, n_test=min(n_test, len(examples)), seed=seed,
                                                    key=lambda e: e.question)

    def make_example(self, rng: random.Random, level: int | None = None) -> Example:
        """A fresh problem; level k draws operands of up to k digits (None: the task's `digits`)."""
        digits = self.digits if level is None else max(1, level)
        low = min(self.min_digits, digits)

        def operand() -> int:
            k = rng.randint(low, digits)
            return rng.randrange(10 ** (k - 1), 10 ** k)

        text, value, precedence = str(first := operand()), Fraction(first), 3
        for _ in range(self.steps):
            op, number = rng.choice(self.ops), operand()
            if op == "/":  # exact division: a divisor of the value so far, or a multiple made to fit
                if self.steps == 1:
                    text, value, precedence = str(first * number), Fraction(first * number), 3
                else:
                    number = _small_divisor(int(value), digits, rng) or 1
            strong = op in "*/"
            if strong and precedence < 2:
                text = f"({text})"
            text, value, precedence = f"{text} {op} {number}", arithmetic(op, value, Fraction(number)), 2 if strong else 1
        answer = format_number(value)
        return Example(question=f"What is {text}?", answer=answer, metadata={"expression": text, "value": answer})

    def train_examples(self) -> list[Example]:
        return self._train

    def test_examples(self) -> list[Example]:
        return self._test

    def verify(self, answer: str | None, example: Example) -> float:
        """1.0 when the answer is exactly the expression's value (commas, "−" and "$" tolerated), else 0."""
        value = parse_number(answer)
        return 1.0 if value is not None and value == Fraction(example.answer) else 0.0

    def demonstration(self, example: Example) -> str | None:
        """The no-tool variant's worked completion; None with tools (see `demonstration_messages`)."""
        if self.use_tools:
            return None
        return format_completion(worked_steps(example.metadata["expression"]), example.answer)

    def demonstration_messages(self, example: Example) -> list[dict]:
        """The whole trajectory after the prompt: the call, the tool's result, the answer.

        Without tools: the single assistant turn of `demonstration`.
        """
        expression, answer = example.metadata["expression"], example.answer
        if not self.use_tools:
            return [{"role": "assistant", "content": self.demonstration(example)}]
        return [*calculator_turns(expression, f"I use the calculator for {expression}."),
                {"role": "assistant", "content": format_completion(f"The calculator says {expression} = {answer}.",
                                                                   answer)}]


def calculator_turns(expression: str, think: str) -> list[dict]:
    """Two messages of a written trajectory: an assistant turn that thinks `think` and calls the
    calculator on `expression`, and the tool's real answer (the calculator and countdown tasks'
    demonstrations, the countdown bench's hand-written shots)."""
    call = format_tool_call("calculator", {"expression": expression})
    return [{"role": "assistant", "content": f"<think>\n{think}\n</think>\n{call}"},
            {"role": "tool", "name": "calculator", "content": calculator(expression)}]


def _small_divisor(value: int, digits: int, rng: random.Random) -> int | None:
    """A divisor d of `value` with 2 <= d < 10**digits, chosen at random; None if there is none."""
    value = abs(value)
    candidates = [d for d in range(2, min(value, 10 ** digits)) if value % d == 0]
    return rng.choice(candidates) if candidates else None


def worked_steps(expression: str) -> str:
    """Working an expression out by hand, one operation a line, products by partial products.

    "347 * 829" -> "347 * 829 = 347 * 800 + 347 * 20 + 347 * 9 = 277600 + 6940 + 3123 = 287663"
    """
    lines: list[str] = []
    _work(ast.parse(expression, mode="eval").body, lines)
    return "\n".join(lines)


def _work(node: ast.AST, lines: list[str]) -> Fraction:
    if not isinstance(node, ast.BinOp):
        return exact_value(node)
    left, right = _work(node.left, lines), _work(node.right, lines)
    op = _AST_OPS[type(node.op)]
    result = arithmetic(op, left, right)
    a, b, c = format_number(left), format_number(right), format_number(result)
    if op == "*" and right.denominator == 1 and right.numerator >= 10:
        parts = [int(d) * 10 ** k for k, d in enumerate(reversed(str(right.numerator))) if d != "0"][::-1]
        if len(parts) > 1:
            terms = " + ".join(f"{a} * {p}" for p in parts)
            values = " + ".join(format_number(left * p) for p in parts)
            lines.append(f"{a} * {b} = {terms} = {values} = {c}")
            return result
    lines.append(f"{a} {op} {b} = {c}")
    return result
