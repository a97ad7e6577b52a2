"""Math answers compared with math-verify, Hugging Face's checker (the one Open-R1's and TRL's
accuracy rewards use): `\\boxed{}`, fractions, LaTeX, equivalent expressions.

rlvr's verifiers try their exact paths first (`parse_number`: "4", "-3.5", "1/3", "$1,234");
`math_equal` is the fallback for what those do not decide, only where the ground truth looks
like math (`looks_like_math`), so a text answer ("Paris") never pays for a sympy parse. math-verify
reads the last expression of a text ("5, 4" is 4, "1080 dollars" is 1080): here it is asked only
about answers written as math (`written_as_math`), so rlvr's verifiers stay as strict as before
on text.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache

from rlvr.tasks.base import parse_number

MAX_MATH_CHARS = 300
"""longer answers are not parsed as math (sympy's cost grows fast with the expression)"""
TIMEOUT_S = 2
"""math-verify's own time-out for parsing and comparing (signal based: the main thread only)"""
_MATHY = re.compile(r"[\\$^{}=]|\d")
_EXPRESSION = re.compile(r"[\d\s.+\-/()]+")
"""an answer written as plain arithmetic: digits, + - /, brackets (no words, commas, powers)"""
_EXPLOSIVE = re.compile(r"\^\s*\{[^}]*\^|\^\s*\{?\s*\d{3,}|!\s*!|\d{3,}\s*!|\*\*")
"""nested powers, powers or factorials of 3+ digit numbers, double factorials, Python's **"""


def looks_like_math(truth: str) -> bool:
    """A ground truth worth a math comparison: a number, or text with digits or LaTeX (\\, $, ^, {})."""
    return parse_number(truth) is not None or bool(_MATHY.search(truth))


def written_as_math(answer: str) -> bool:
    """An answer math-verify may read: LaTeX (a backslash or `$`) or plain arithmetic ("3/4",
    "(1+2)/3"). Not text with words ("1080 dollars", "x is 4"), which math-verify would read
    leniently (its last number) where rlvr's verifiers are strict; not towers of powers or
    factorials (`9^{9^9}`, `10!!`), whose values sympy would compute until the time-out."""
    if _EXPLOSIVE.search(answer):
        return False
    return "\\" in answer or "$" in answer or bool(_EXPRESSION.fullmatch(answer))


def math_equal(answer: str, truth: str) -> bool:
    """math-verify's verdict that `answer` equals `truth` (both parsed as LaTeX or expressions; a
    bare `\\sqrt{2}` is read as `$\\sqrt{2}$`, see `_parse`). False when the answer is not written
    as math (`written_as_math`), either does not parse or is longer than MAX_MATH_CHARS, or
    math-verify is not installed."""
    if len(answer) > MAX_MATH_CHARS or len(truth) > MAX_MATH_CHARS or not written_as_math(answer.strip()):
        return False
    try:
        from math_verify import verify
    except ImportError:  # an install without the dependency: the exact paths alone
        return False
    gold, pred = _parse(truth), _parse(answer)
    if not gold or not pred:
        return False
    return bool(verify(list(gold), list(pred), timeout_seconds=_timeout()))


@lru_cache(maxsize=8192)
def _parse(text: str) -> tuple:
    """math-verify's parse of `text`, else of `$text$`; LaTeX without delimiters (a backslash, no
    `$`) as `$text$` first, since read bare `2\\sqrt{2}` is 2. () if neither parses."""
    from math_verify import parse

    wrapped = f"${text}$"
    order = (wrapped, text) if "\\" in text and "$" not in text else (text, wrapped)
    for candidate in order:
        parsed = parse(candidate, parsing_timeout=_timeout())
        if parsed:
            return tuple(parsed)
    return ()


def _timeout() -> int | None:
    """math-verify's time-outs use SIGALRM, which only the main thread may set."""
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
