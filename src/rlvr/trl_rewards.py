"""TRL's ready-made reward functions under their TRL names, so `from trl.rewards import accuracy_reward`
becomes `from rlvr.rewards import accuracy_reward` (TRL's GRPO quickstart) with nothing else changed.

Same signatures, same values as TRL 1.16's `trl.rewards` (checked against it in tests/test_trl_rewards_named.py
when trl is installed): `accuracy_reward` compares the completion with the `solution` column using
Hugging Face's math-verify, `None` where the solution does not parse (TRL skips such examples);
`think_format_reward` is 1 when the completion is `<think>...</think>` then anything. One difference on
purpose: TRL reads `completion[0]["content"]`, so these work only on conversational completions; rlvr's
take plain-text completions too (a plain prompt gives plain completions, as in TRL's own trainer).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["accuracy_reward", "think_format_reward"]

THINK_FORMAT = re.compile(r"^<think>(?!.*<think>)(.*?)</think>.*$", re.DOTALL | re.MULTILINE)
"""TRL's pattern: one <think> block at the very start, then the answer"""


def _text(completion: Any) -> str:
    """A completion as TRL passes it (a list of messages) or as plain text."""
    if isinstance(completion, str):
        return completion
    return completion[0]["content"]


def think_format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when the completion starts with one `<think>...</think>` block, else 0.0 (TRL's)."""
    return [1.0 if THINK_FORMAT.match(_text(c)) else 0.0 for c in completions]


def accuracy_reward(completions: Sequence[Any], solution: Sequence[str],
                    log_extra: Callable[[str, list], None] | None = None, **kwargs: Any) -> list[float | None]:
    """1.0 when math-verify finds the completion's answer (a `\\boxed{}` first, then other LaTeX)
    equal to the parsed `solution`, 0.0 when not, None when the solution itself does not parse
    (TRL's: the example is left out of this reward). Logs the parsed gold and answer through
    `log_extra` when the trainer gives it."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse, verify

    main = threading.current_thread() is threading.main_thread()  # math-verify's time-outs use SIGALRM
    parse_timeout, verify_timeout = (10, 5) if main else (None, None)
    if not main:
        logging.getLogger("math_verify.parser").setLevel(logging.ERROR)
        logging.getLogger("math_verify.grader").setLevel(logging.ERROR)
    extraction = [LatexExtractionConfig(normalization_config=NormalizationConfig(units=True),
                                        boxed_match_priority=0, try_extract_without_anchor=False)]
    rewards: list[float | None] = []
    golds, answers = [], []
    if len(completions) != len(solution):
        raise ValueError(f"accuracy_reward: {len(completions)} completions but {len(solution)} solutions")
    for completion, sol in zip(completions, solution):
        gold = parse(sol, parsing_timeout=parse_timeout)
        if not gold:
            rewards.append(None)
            golds.append("[unparseable]")
            answers.append("[skipped]")
            continue
        answer = parse(_text(completion), extraction_config=extraction, extraction_mode="first_match",
                       parsing_timeout=parse_timeout)
        rewards.append(float(verify(gold, answer, timeout_seconds=verify_timeout)))
        golds.append(str(gold))
        answers.append(str(answer) if answer else "[unparseable]")
    if log_extra is not None:
        log_extra("solution", list(solution))
        log_extra("gold_parsed", golds)
        log_extra("answer_parsed", answers)
    return rewards
