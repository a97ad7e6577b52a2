"""Reward of the toy tool task in tests/test_episodes.py (TRL signature; multi-turn episodes pass the
whole trajectory: decoded text here, the char model has no chat template)."""

import re

AFTER_TOOL = re.compile(r"secret is \d\n.*?: (.*)\Z", re.DOTALL)
"""the tool's result line ("secret is 7"), the plain template's next "Answer: " (its capital is not in
the char vocabulary), then the final turn"""


def secret_reward(completions, answer, **kwargs):
    """Fraction of the final turn's characters that are the secret digit, if the tool was called
    (a guess without the tool scores 0)."""
    out = []
    for text, digit in zip(completions, answer):
        m = AFTER_TOOL.search(text)
        final = m.group(1) if m else ""
        out.append(sum(ch == digit for ch in final) / max(1, len(final)))
    return out
