"""Reward of the toy tool task in tests/test_episodes.py (TRL signature)."""


def secret_reward(completions, answer, **kwargs):
    """Fraction of the final answer's characters that are the secret digit."""
    out = []
    for text, digit in zip(completions, answer):
        text = text if isinstance(text, str) else text[-1]["content"]
        out.append(sum(ch == digit for ch in text) / max(1, len(text)))
    return out
