"""Reward of the toy tool task in tests/test_episodes.py (TRL signature; multi-turn episodes pass the
whole trajectory: plain text here, the char model has no chat template)."""


def secret_reward(completions, answer, **kwargs):
    """Fraction of the final answer's characters that are the secret digit, if the tool was called
    (the plain template renders its result as "Result: ..."); a guess without the tool scores 0."""
    out = []
    for text, digit in zip(completions, answer):
        if "Result:" not in text:
            out.append(0.0)
            continue
        final = text.rsplit("Answer: ", 1)[-1]
        out.append(sum(ch == digit for ch in final) / max(1, len(final)))
    return out
