"""Right for the right reason? The arithmetic a completion states in its think part, checked.

An accuracy reward only reads the answer. On countdown the bundled 135M model writes "43 - 51 =
11, and 11 + 46 = 38" and answers `43 - 51 + 46`: the answer is right (it is 38), every step of the
reasoning is false. A self warm-up that keeps verified answers (rlvr.selftrain) then teaches the
model to guess a sign pattern and write made-up arithmetic beside it; accuracy cannot tell.

What is checked: every claim of the form `a op b [op c ...] = r`, or a chain of such expressions
joined by "=" ("347 * 829 = 277600 + 6940 + 3123 = 287663"), with decimal numbers and the
operators + - * / × ÷ (the usual precedence), found anywhere in the think blocks. A claim is
true when every side has the same exact value, or a side written as a plain number is the value
rounded to its decimal places ("10 / 3 = 3.33" is true). Parenthesised expressions, words and units
are not read: a think part with no claim this can read is "not checked" (None), never "right".

    think_arithmetic(completion)  -> True (all claims true) / False (one is false) / None
    arithmetic_summary(records)   -> the share of right answers whose reasoning states a false claim
    false_arithmetic_text(row), reasoning_note(row)  -> that share in words, for tables and verdicts

Pure functions: `rlvr eval` prints the share, the report shows it, and `sft.self_check_arithmetic`
uses `think_arithmetic` to keep only self warm-up completions whose arithmetic holds.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from fractions import Fraction

from rlvr.prompts import parse_completion
from rlvr.tasks.base import exact_value

_NUM = r"-?\d+(?:\.\d+)?"
_OP = r"[-+*/×÷]"
_SP = r"[ \t]*"  # a claim stays on one line: "tens: 6-3=3\n= 31" is a step, then the total
_EXPR = rf"{_NUM}(?:{_SP}{_OP}{_SP}{_NUM})*"
# a chain "e = e [= e ...]" of number expressions: not glued to a word, a digit or a ")" before it;
# not followed by more digits or by an operator and a parenthesis (a full stop after it is fine)
_CHAIN = re.compile(rf"(?<![\w.)])({_EXPR}(?:{_SP}={_SP}{_EXPR})+)(?!\.?\d|{_SP}{_OP}{_SP}\()")
_HAS_OP = re.compile(rf"\d{_SP}{_OP}")
# the runs of characters a claim is made of (one line at most); the claim pattern only ever runs
# inside one of them, so a long completion costs linear time (run over the whole text, the pattern
# was quadratic: 65 s on "1+" x 25000)
_RUN = re.compile(r"[0-9.+\-*/×÷= \t]+")
MAX_CLAIM_CHARS = 300


@dataclass(frozen=True)
class Claim:
    text: str
    """the claim as written, e.g. "43 - 51 = 11" or "347 * 829 = 277600 + 6940 + 3123 = 287663" """
    values: tuple[Fraction | None, ...]
    """each side's exact value (None: a division by zero)"""
    holds: bool


def claim_holds(value: Fraction, stated: str) -> bool:
    """`value` equals the stated number, or rounds to it at its decimal places."""
    decimals = len(stated.split(".")[1]) if "." in stated else 0
    if not decimals:
        return value == Fraction(stated)
    return abs(value - Fraction(stated)) <= Fraction(1, 2 * 10**decimals)


def _side_value(side: str) -> Fraction | None:
    try:
        return exact_value(ast.parse(side.replace("×", "*").replace("÷", "/"), mode="eval").body)
    except ZeroDivisionError:
        return None


def _sides_agree(a: str, va: Fraction | None, b: str, vb: Fraction | None) -> bool:
    """Two sides of "=": equal, or a side written as a plain number is the other rounded to its places."""
    if va is None or vb is None:
        return False
    if re.fullmatch(_NUM, b):
        return claim_holds(va, b)
    if re.fullmatch(_NUM, a):
        return claim_holds(vb, a)
    return va == vb


def arithmetic_claims(text: str) -> list[Claim]:
    """The checkable claims in `text`, in order: chains of number expressions joined by "=", with
    at least one operator, not continuing an expression the pattern cannot read (after an operator
    or a parenthesis). A claim holds when every "=" in it does; a division by zero is false."""
    claims = []
    for run in _RUN.finditer(text):
        if run.end() - run.start() > MAX_CLAIM_CHARS or "=" not in run.group():
            continue  # nothing to read, or too long to be a claim (never read)
        # the pattern sees the character before the run (lookbehind) and the one after (lookahead)
        claims += _claims_in(text, run.start(), min(len(text), run.end() + 1))
    return claims


def _claims_in(text: str, start: int, end: int) -> list[Claim]:
    claims = []
    for m in _CHAIN.finditer(text, start, end):
        chain = m.group(1)
        if not _HAS_OP.search(chain):
            continue
        before = text[max(0, m.start() - MAX_CLAIM_CHARS):m.start()].rstrip(" \t")
        if before and before[-1] in "+-*/×÷)":
            continue  # the tail of "(2 + 3) * 5 = 25": the left side is not all here
        sides = [side.strip() for side in chain.split("=")]
        try:
            values = [_side_value(side) for side in sides]
        except (SyntaxError, ValueError, RecursionError):
            continue  # e.g. "3 - - 4": not a claim this reads
        holds = all(_sides_agree(a, va, b, vb) for a, va, b, vb in zip(sides, values, sides[1:], values[1:]))
        claims.append(Claim(chain, tuple(values), holds))
    return claims


def think_text(completion: str) -> str:
    """The think blocks of a completion (closed ones, then one left open), joined."""
    parsed = parse_completion(completion)
    return "\n".join([*parsed.thinks, *([parsed.open_think] if parsed.open_think is not None else [])])


def think_arithmetic(completion: str) -> bool | None:
    """True when the think part states arithmetic and all of it is true, False when some claim is
    false, None when it states none this can check."""
    claims = arithmetic_claims(think_text(completion))
    return all(c.holds for c in claims) if claims else None


@dataclass(frozen=True)
class ArithmeticSummary:
    right: int
    """right answers"""
    checked: int
    """right answers whose think part states checkable arithmetic"""
    false_claims: int
    """of those, the ones with a false claim: right for a wrong reason"""

    @property
    def false_frac(self) -> float | None:
        return self.false_claims / self.checked if self.checked else None


def arithmetic_summary(records: list[dict]) -> ArithmeticSummary:
    """Over evaluation records ({"completion", "correct"}): how many right answers state arithmetic,
    and how many of those state a false claim."""
    right = [r for r in records if r["correct"] >= 1.0]
    verdicts = [think_arithmetic(r.get("completion") or "") for r in right]
    return ArithmeticSummary(len(right), sum(v is not None for v in verdicts), sum(v is False for v in verdicts))


def false_arithmetic_text(row: dict) -> str:
    """'98% (44 of 45)': the share of right answers with checkable arithmetic that state a false claim."""
    if not row.get("right_checked"):
        return "-"
    checked = row["right_checked"]
    return f"{row['right_false_arithmetic']:.0%} ({round(row['right_false_arithmetic'] * checked)} of {checked})"


def reasoning_note(row: dict) -> str:
    """A sentence when most of a stage's right answers (that state arithmetic) state a false claim."""
    false_frac = row.get("right_false_arithmetic")
    if false_frac is None or false_frac < 0.5:
        return ""
    name = row.get("label") or row.get("stage") or "the last evaluation"
    return (f" In {name}, {false_arithmetic_text(row)} of the right answers that state arithmetic state a false "
            "claim in their reasoning: right for a wrong reason (rlvr.reasoning).")
