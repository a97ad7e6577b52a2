"""Countdown (TinyZero, seed 002, docs/SEEDS.md): reach a target with + - * / using each given number once.

Problems are generated procedurally and are solvable by construction: the target is the value of
a random expression over the numbers (integer intermediate results only), kept in the `solution`
column. `source="hub"` loads TinyZero's `Jiayi-Pan/Countdown-Tasks-3to4` instead.

The verifier parses the answer with `ast` and walks a whitelist (integer literals, + - * /,
parentheses, unary minus) and computes with `fractions.Fraction`: it never calls `eval`.
Departure from TinyZero / seed 002, whose `eval` behind a character filter lets `9**9**9` hang
the trainer (USERS.md #16): here `**`, names, calls and attributes are refused, and answers over
200 characters are refused before parsing.

Metadata columns: `nums` (list[int]), `target` (int), `solution` (str, generated problems only).

`tools=True` offers the calculator tool (rlvr.tasks.calculator) and makes the episode multi-turn:
the model may compute a candidate equation before it answers (a 135M model states false
arithmetic in nearly every countdown answer it gets right: bench/results/reasoning_check.json).
Its demonstrations are then trajectories (`demonstration_messages`: the solver's equation
computed, then answered).
"""

from __future__ import annotations

import ast
import random
import re
from fractions import Fraction
from collections.abc import Sequence

from rlvr.prompts import format_completion
from rlvr.tasks.base import ARITHMETIC_OPS as _OPS, Example, Task, exact_value, split_train_test

HUB_DATASET = "Jiayi-Pan/Countdown-Tasks-3to4"
MAX_EXPRESSION_CHARS = 200
_ALLOWED_CHARS = re.compile(r"[\d\s+\-*/().]+")
TOOL_SYSTEM_PROMPT = (
    "You are a careful assistant with a calculator. Use the calculator to compute an equation before "
    "you answer; if it does not give the target, try another. Think briefly inside <think> </think> and "
    "give only the equation inside <answer> </answer>."
)
"""the tools variant's instructions; the tool and the call format are added by `rlvr.tools`"""


# ------------------------------------------------------------------------------ verifier


def evaluate_expression(expression: str, nums: Sequence[int]) -> Fraction | None:
    """The exact value of `expression` if it is a whitelisted expression using each of `nums`
    exactly once; None otherwise (also for a division by zero)."""
    if len(expression) > MAX_EXPRESSION_CHARS or not _ALLOWED_CHARS.fullmatch(expression):
        return None
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        literals = sorted(_literals(tree.body))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if literals != sorted(int(n) for n in nums):  # checked before computing: bounds the values
        return None
    try:
        return exact_value(tree.body)
    except ZeroDivisionError:
        return None


def _literals(node: ast.AST) -> list[int]:
    """The integer literals of a whitelisted expression; ValueError on anything else."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return [node.value]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _literals(node.left) + _literals(node.right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _literals(node.operand)
    raise ValueError(f"not allowed: {type(node).__name__}")


def verify_countdown(answer: str | None, nums: Sequence[int], target: int) -> float:
    """1.0 if `answer` is an expression over `nums` (each once) equal to `target`, else 0.0.

    "expr = target" is accepted too (the right side must be the target); x and ÷ are read as * and /.
    """
    if answer is None or len(answer) > MAX_EXPRESSION_CHARS:
        return 0.0
    expression = answer.replace("×", "*").replace("÷", "/")
    if expression.count("=") == 1:
        expression, rhs = expression.split("=")
        if rhs.strip() != str(target):
            return 0.0
    value = evaluate_expression(expression, nums)
    return 1.0 if value is not None and value == target else 0.0


# ---------------------------------------------------------------------- generator, solver


def random_problem(
    rng: random.Random, num_numbers: int, *, max_number: int = 99, max_target: int = 100
) -> tuple[list[int], int, str]:
    """(nums, target, solution): numbers in [1, max_number], target in [1, max_target].

    Combines random pairs with random operations until one number is left (exact division
    only, subtraction never negative); retries until the result lies in [1, max_target].
    """
    while True:
        nums = [rng.randint(1, max_number) for _ in range(num_numbers)]
        for _ in range(20):
            value, expression = _random_expression(rng, nums)
            if value is not None and 1 <= value <= max_target:
                return nums, value, expression


def _random_expression(rng: random.Random, nums: list[int]) -> tuple[int | None, str]:
    items = [(n, str(n)) for n in nums]
    while len(items) > 1:
        (a, ea), (b, eb) = items.pop(rng.randrange(len(items))), items.pop(rng.randrange(len(items)))
        if a < b:
            (a, ea), (b, eb) = (b, eb), (a, ea)
        choices = ["+", "-", "*"] + (["/"] if b != 0 and a % b == 0 else [])
        op = rng.choice(choices)
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
        items.append((value, f"{_wrap(ea)} {op} {_wrap(eb)}"))
    value, expression = items[0]
    return (value if value > 0 else None), expression


def _wrap(expression: str) -> str:
    return expression if expression.isdigit() else f"({expression})"


def solve(
    nums: Sequence[int], target: int, *, integer_only: bool = True, trace: list[str] | None = None
) -> str | None:
    """An expression using every number once that equals `target`, or None (depth-first search).

    Each step combines two numbers with + - * / (integer_only: exact, non-negative results).
    `trace`, if given, receives one line per finished attempt ("44+19=63, 63-35=28").
    """
    items = [(Fraction(n), str(n)) for n in nums]
    return _search(items, Fraction(target), integer_only, [], trace)


def _search(items, target, integer_only, steps, trace) -> str | None:
    if len(items) == 1:
        found = items[0][0] == target
        if trace is not None:
            trace.append(", ".join(steps) + (", found" if found else ", no"))
        return items[0][1] if found else None
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            rest = items[:i] + items[i + 1 : j] + items[j + 1 :]
            for value, text, step in _combinations(items[i], items[j], integer_only):
                found = _search(rest + [(value, text)], target, integer_only, steps + [step], trace)
                if found is not None:
                    return found
    return None


def _combinations(x, y, integer_only):
    """(value, expression, step text) of each allowed operation on two numbers."""
    (a, ea), (b, eb) = (x, y) if x[0] >= y[0] else (y, x)
    out = [(a + b, "+", ea, eb), (a - b, "-", ea, eb), (a * b, "*", ea, eb)]
    if b != 0:
        out.append((a / b, "/", ea, eb))
    if not integer_only:
        out.append((b - a, "-", eb, ea))
        if a != 0:
            out.append((b / a, "/", eb, ea))
    for value, op, el, er in out:
        if integer_only and value.denominator != 1:
            continue
        left, right = (a, b) if el == ea else (b, a)
        yield value, f"{_wrap(el)} {op} {_wrap(er)}", f"{_num(left)}{op}{_num(right)}={_num(value)}"


def _num(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else f"({v.numerator}/{v.denominator})"


def countdown_steps(nums: Sequence[int], target: int, *, max_failures: int = 1) -> tuple[str, str] | None:
    """(trace text, expression) from the solver: the first `max_failures` dead ends, then the hit."""
    for integer_only in (True, False):
        trace: list[str] = []
        expression = solve(nums, target, integer_only=integer_only, trace=trace)
        if expression is not None:
            lines = [f"Target {target} from {', '.join(map(str, nums))}."]
            lines += trace[:max_failures] + [trace[-1]] if len(trace) > max_failures else trace
            return "\n".join(lines), expression
    return None


# ------------------------------------------------------------------------------------ task


class CountdownTask(Task):
    """Countdown with 3-4 numbers (TinyZero's setting), generated or from the Hub."""

    name = "countdown"
    description = "reach a target with + - * / using each number once (TinyZero); verified with ast"

    def __init__(
        self,
        *,
        n: int = 5000,
        test_fraction: float = 0.1,
        n_test: int | None = None,
        seed: int = 42,
        num_numbers: int | Sequence[int] = (3, 4),
        max_number: int = 99,
        max_target: int = 100,
        source: str = "generate",
        tools: bool = False,
    ):
        lo, hi = (num_numbers, num_numbers) if isinstance(num_numbers, int) else tuple(num_numbers)
        if not 2 <= lo <= hi:
            raise ValueError(f"num_numbers must be an int >= 2 or a (low, high) range, got {num_numbers}")
        self.num_numbers, self.max_number, self.max_target = (lo, hi), max_number, max_target
        self.use_tools = bool(tools)
        if self.use_tools:
            from rlvr.tasks.calculator import calculator

            self.tools, self.system_prompt = [calculator], TOOL_SYSTEM_PROMPT
        if source == "generate":
            rng = random.Random(seed)
            examples = [self.make_example(rng) for _ in range(n)]
        elif source == "hub":
            examples = _load_hub(n, seed)
        else:
            raise ValueError(f"source must be 'generate' or 'hub', got {source!r}")
        self._train, self._test = split_train_test(
            examples, test_fraction=test_fraction, n_test=n_test, seed=seed
        )

    def make_example(self, rng, level: int | None = None) -> Example:
        """A fresh solvable problem; level k uses k + 1 numbers (level 1: two numbers).

        level=None draws the count from the task's `num_numbers` range. `rng`: a random.Random
        or a numpy Generator (which seeds a random.Random).
        """
        if not isinstance(rng, random.Random):
            rng = random.Random(int(rng.integers(2**63)))
        count = level + 1 if level is not None else rng.randint(*self.num_numbers)
        nums, target, solution = random_problem(
            rng, max(2, count), max_number=self.max_number, max_target=self.max_target
        )
        return make_countdown_example(nums, target, solution)

    def train_examples(self) -> list[Example]:
        return self._train

    def test_examples(self) -> list[Example]:
        return self._test

    def verify(self, answer: str | None, example: Example) -> float:
        return verify_countdown(answer, example.metadata["nums"], example.metadata["target"])

    def demonstration(self, example: Example) -> str | None:
        """The solver's worked solution; None with tools (see `demonstration_messages`)."""
        if self.use_tools:
            return None
        found = countdown_steps(example.metadata["nums"], example.metadata["target"])
        return None if found is None else format_completion(*found)

    def demonstration_messages(self, example: Example) -> list[dict] | None:
        """With tools: the solver's equation computed with the calculator, then answered. Without:
        the single assistant turn of `demonstration`. None when the solver finds nothing."""
        if not self.use_tools:
            text = self.demonstration(example)
            return None if text is None else [{"role": "assistant", "content": text}]
        found = solve(example.metadata["nums"], example.metadata["target"])
        if found is None:
            return None
        from rlvr.tasks.calculator import calculator_turns

        target = example.metadata["target"]
        return [*calculator_turns(found, f"I compute {found} with the calculator."),
                {"role": "assistant", "content": format_completion(f"{found} = {target}, the target.", found)}]


def make_countdown_example(nums: Sequence[int], target: int, solution: str | None = None) -> Example:
    nums = [int(n) for n in nums]
    question = (
        f"Using the numbers {nums}, create an equation that equals {target}. "
        "Use +, -, *, / and each number exactly once. "
        "Put only the equation in the answer, e.g. <answer>(1 + 2) / 3</answer>."
    )
    metadata = {"nums": nums, "target": int(target)}
    if solution is not None:
        metadata["solution"] = solution
    return Example(question=question, answer=str(int(target)), metadata=metadata)


def _load_hub(n: int, seed: int) -> list[Example]:
    """n problems of TinyZero's dataset (columns `target`, `nums`), shuffled with `seed`."""
    try:
        from datasets import load_dataset

        data = load_dataset(HUB_DATASET, split="train").shuffle(seed=seed)
        data = data.select(range(min(n, len(data))))
    except Exception as e:  # offline, no `datasets`, renamed dataset...
        raise RuntimeError(
            f"could not load {HUB_DATASET} from the Hugging Face Hub ({type(e).__name__}: {e}); "
            "use source='generate' (the default, offline) instead"
        ) from e
    return [make_countdown_example(row["nums"], row["target"]) for row in data]
