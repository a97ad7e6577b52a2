"""Reward of the toy tool task in tests/test_episodes.py (TRL signature; multi-turn episodes pass the
whole trajectory: decoded text here, the char model has no chat template)."""

import re

AFTER_TOOL = re.compile(r"esult: (\d)\n.*?: (.*)\Z", re.DOTALL)
"""the plain template's tool message ("\\nResult: 7\\n"; its capital R is not in the char vocabulary,
so it decodes as "esult"), the next "Answer: ", then the final turn"""


def secret_reward(completions, answer, **kwargs):
    """0.5 for calling the tool, plus 0.5 x the fraction of the final turn's characters that are the
    secret digit the tool told (without the tool: 0)."""
    out = []
    for text, digit in zip(completions, answer):
        m = AFTER_TOOL.search(text)
        if m is None:
            out.append(0.0)
            continue
        final = m.group(2)
        out.append(0.5 + 0.5 * sum(ch == digit for ch in final) / max(1, len(final)))
    return out
