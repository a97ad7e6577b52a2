"""A user's reward file, as `rlvr train` loads it (task.rewards: {tests/toy_rewards.py:digit_reward: 1.0})."""


def digit_reward(completions, answer, **kwargs):
    """Fraction of the completion's characters that are the asked-for digit (TRL signature)."""
    out = []
    for text, digit in zip(completions, answer):
        text = text if isinstance(text, str) else text[0]["content"]
        out.append(sum(ch == digit for ch in text) / max(1, len(text)))
    return out


def variety_reward(completions, **kwargs):
    """Distinct characters / length: differs between random completions, so every group has signal."""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [len(set(t)) / max(1, len(t)) for t in texts]


def constant_reward(completions, **kwargs):
    """The same score for everything: every group is flat, so there is nothing to learn."""
    return [0.5 for _ in completions]


class _CtrlCWhileFinalised:
    """Presses Ctrl-C inside its own finaliser, where CPython prints and drops the KeyboardInterrupt."""

    def __del__(self):
        import os
        import signal
        import time

        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # Python code runs here, so the KeyboardInterrupt is raised (and lost) here
            time.sleep(0.001)


_ctrl_c_calls = 0


def ctrl_c_in_finaliser_reward(completions, answer, **kwargs):
    """digit_reward; its second call presses Ctrl-C inside a finaliser (runs in-process: trusted)."""
    global _ctrl_c_calls
    _ctrl_c_calls += 1
    if _ctrl_c_calls == 2:
        _CtrlCWhileFinalised()  # freed at once
    return digit_reward(completions, answer)


ctrl_c_in_finaliser_reward.rlvr_trusted = True
