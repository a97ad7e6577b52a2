"""rlvr.rewards.accuracy_reward / think_format_reward: TRL's reward functions under TRL's names."""

from __future__ import annotations

import importlib.util

import pytest

from rlvr.rewards import accuracy_reward, think_format_reward

SOLUTIONS = [r"\frac{1}{3}", r"\frac{1}{3}", "4", "42", "not math at all"]
TEXTS = [r"My answer is \boxed{\frac{1}{3}}", r"My answer is \boxed{\frac{1}{2}}", r"so $\boxed{4}$",
         "<think>6*7</think> the answer is 41", "anything"]


def test_accuracy_reward_hand_examples():
    conversational = [[{"role": "assistant", "content": t}] for t in TEXTS]
    # TRL's docstring example (1/3 right, 1/2 wrong), a boxed integer, a wrong plain answer, and a
    # solution that does not parse (None: the example is left out of this reward)
    expected = [1.0, 0.0, 1.0, 0.0, None]
    assert accuracy_reward(conversational, SOLUTIONS) == expected
    assert accuracy_reward(TEXTS, SOLUTIONS) == expected  # plain-text completions too
    logged = {}
    accuracy_reward(TEXTS[:1], SOLUTIONS[:1], log_extra=lambda k, v: logged.setdefault(k, v))
    assert logged["solution"] == SOLUTIONS[:1] and logged["answer_parsed"] != ["[unparseable]"]
    with pytest.raises(ValueError, match="2 completions but 1 solutions"):
        accuracy_reward(TEXTS[:2], SOLUTIONS[:1])


def test_think_format_reward_hand_examples():
    completions = [[{"content": "<think>\nThis is my reasoning.\n</think>\nThis is my answer."}],
                   [{"content": "<think>\nThis is my reasoning.\nThis is my answer."}],
                   "<think>a</think><think>b</think> twice", "no think </think>"]
    assert think_format_reward(completions) == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed (pip install --no-deps trl)")
def test_same_values_as_trl():
    from trl.rewards import accuracy_reward as trl_accuracy
    from trl.rewards import think_format_reward as trl_format

    conversational = [[{"role": "assistant", "content": t}] for t in TEXTS]
    assert accuracy_reward(conversational, SOLUTIONS) == trl_accuracy(conversational, SOLUTIONS)
    assert think_format_reward(conversational) == trl_format(conversational)
