"""Reward functions, the registry, and the scorer (weights, retries, time-outs, seed functions)."""

import logging
import math
import re

import numpy as np
import pytest

from rlvr.rewards import (
    REWARDS,
    reasoning_text,
    statements,
    steps_f1,
    completion_text,
    example_columns,
    format_reward,
    format_reward_strict,
    get_reward,
    is_trusted,
    load_reward,
    make_accuracy_reward,
    make_format_reward,
    make_length_penalty,
    resolve_reward,
    reward_name,
    score,
    trusted,
)
from rlvr.tasks import get_task
from rlvr.tasks.countdown import make_countdown_example

GOOD = "<think>\n9 - 4 = 5\n</think>\n<answer>5</answer>"


# ------------------------------------------------------------- seed functions, copied verbatim


def seed000_format_reward(completions, **kwargs):
    """Reward function that checks if the completion has a specific format."""
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]


def seed000_accuracy_reward(completions, difference, **kwargs):
    """Reward function that checks if the completion is the same as the ground truth."""
    contents = [completion[0]["content"] for completion in completions]
    answer_pattern = r"<answer>(.*?)</answer>"
    rewards = []
    for content, diff in zip(contents, difference):
        try:
            content = re.search(answer_pattern, content).group(1).strip()
            answer = int(content)
            reward = 1.0 if answer == diff else 0.0
        except Exception:  # if it fails for any reason, return 0.0
            reward = 0.0
        rewards.append(reward)
    return rewards


def seed002_format_reward_func(completions, target, **kwargs):
    rewards = []
    for completion, _gt in zip(completions, target, strict=False):
        try:
            # add synthetic <think> as its already part of the prompt and prefilled for the assistant to more easily match the regex  # noqa: E501
            completion = "<think>" + completion
            regex = r"^<think>([^<]*(?:<(?!/?think>)[^<]*)*)<\/think>\n<answer>([\s\S]*?)<\/answer>$"
            match = re.search(regex, completion, re.DOTALL)
            if match is None or len(match.groups()) != 2:
                rewards.append(0.0)
            else:
                rewards.append(1.0)
        except Exception:  # noqa: PERF203
            rewards.append(0.0)
    return rewards


def seed002_equation_reward_func(completions, target, nums, **kwargs):
    rewards = []
    for completion, gt, numbers in zip(completions, target, nums, strict=False):
        try:
            # add synthetic <think> as its already part of the prompt and prefilled for the assistant to more easily match the regex  # noqa: E501
            completion = "<think>" + completion
            answer_tags = re.findall(r"<answer>([\s\S]*?)<\/answer>", completion)
            if len(answer_tags) != 1:
                rewards.append(0.0)
                continue
            equation = answer_tags[0].strip()
            used_numbers = [int(n) for n in re.findall(r"\d+", equation)]
            if sorted(used_numbers) != sorted(numbers.flatten().tolist()):
                rewards.append(0.0)
                continue
            allowed_pattern = r"^[\d+\-*/().\s]+$"
            if not re.match(allowed_pattern, equation):
                rewards.append(0.0)
                continue
            result = eval(equation, {"__builtins__": None}, {})
            if abs(float(result) - float(gt)) < 1e-5:
                rewards.append(1.0)
            else:
                rewards.append(0.0)
        except Exception:
            rewards.append(0.0)
    return rewards


# --------------------------------------------------------------------------- the basics


def test_completion_text():
    assert completion_text("abc") == "abc"
    assert completion_text([{"role": "assistant", "content": "abc"}]) == "abc"
    assert completion_text({"role": "assistant", "content": "x"}) == "x"


@pytest.mark.parametrize(
    "text, strict, lenient",
    [
        (GOOD, 1.0, 1.0),
        ("<think>a</think><answer>1</answer>", 1.0, 1.0),  # seed 000's exact format
        ("  <think>a</think> \n <answer>1</answer>\n", 1.0, 1.0),  # whitespace between tags
        ("<think>a</think>text<answer>1</answer>", 0.0, 1.0),  # text between the blocks
        ("Sure! <think>a</think><answer>1</answer>", 0.0, 1.0),  # text before
        ("<think>a</think><answer>1</answer> bye", 0.0, 1.0),  # text after
        ("<think>a<answer>1</answer></think>", 0.0, 0.0),  # answer only inside think
        ("<think>a</think><answer>1</answer><answer>2</answer>", 0.0, 1.0),  # two answers
        ("<answer>1</answer>", 0.0, 0.0),  # no think block
        ("<think>a</think>", 0.0, 0.0),  # no answer
        ("<think>a</think><answer>1", 0.0, 0.0),  # truncated
        ("", 0.0, 0.0),
    ],
)
def test_format_rewards(text, strict, lenient):
    assert format_reward_strict([text]) == [strict]
    assert format_reward([[{"role": "assistant", "content": text}]]) == [lenient]


def test_format_reward_with_prefill():
    completion = "9 - 4 = 5\n</think>\n<answer>5</answer>"  # sampled after a "<think>" prefill
    assert format_reward_strict([completion]) == [0.0]
    assert make_format_reward(strict=True, prefill="<think>")([completion]) == [1.0]
    # idempotent: text that already carries the prefill is not prefixed twice
    assert make_format_reward(strict=True, prefill="<think>")(["<think>" + completion]) == [1.0]


def test_accuracy_reward_from_example_or_columns():
    task = get_task("subtraction", n=10)
    ex = task.train_examples()[0]  # "What is 1 - 932?" -> -931
    right = f"<think>\nx\n</think>\n<answer>{ex.answer}</answer>"
    wrong = "<think>\nx\n</think>\n<answer>0</answer>"
    reward = make_accuracy_reward(task)
    assert reward([right, wrong, "no tags"], _example=[ex] * 3) == [1.0, 0.0, 0.0]
    columns = {k: [v] * 2 for k, v in ex.columns().items()}  # a TRL dataset built from Example.columns()
    assert reward([right, wrong], **columns, prompts=["p", "p"]) == [1.0, 0.0]
    with pytest.raises(KeyError, match="_example"):
        reward([right], target=[1])
    prefilled = make_accuracy_reward(task, prefill="<think>")
    assert prefilled([f"x <answer>0</answer></think><answer>{ex.answer}</answer>"], _example=[ex]) == [1.0]


def test_length_penalty():
    penalty = make_length_penalty(max_length=100, soft_length=50)
    # lengths 40, 50, 75, 100, 150 -> 0, 0, -(25/50) = -0.5, -1, -1 (capped)
    assert penalty(["a" * 40, "a" * 50, "a" * 75, "a" * 100, "a" * 150]) == [0.0, 0.0, -0.5, -1.0, -1.0]
    words = make_length_penalty(max_length=4, soft_length=2, count=lambda s: len(s.split()))
    assert words(["a b c"]) == [-0.5]  # 3 words: -(3 - 2) / (4 - 2)
    with pytest.raises(ValueError):
        make_length_penalty(max_length=10, soft_length=10)


def test_statements_by_hand():
    demo = "16 < 91, so -(91 - 16)\nones: 1<6, borrow: 11-6=5\ntens: 9-1=8, 8-1=7\n= -75"
    assert statements(demo) == ["16<91", "1<6", "11-6=5", "9-1=8", "8-1=7"]
    assert statements("3 + 4 * 2 = 11; 48 / 2 = 24; 2 × 3 = 6; -5+2=-3; 0.5*4=2; 5 <= 5; 1,000; = -75") == [
        "3+4*2=11", "48/2=24", "2*3=6", "-5+2=-3", "0.5*4=2", "5<=5"]
    # not statements: a parenthesised left side, numbers inside words, too many digits
    assert statements("(91 - 16) = 75 a1-1=0 x<2 " + "1" * 40 + "-1=0") == []


def test_steps_f1_by_hand():
    ref = ["16<91", "1<6", "11-6=5", "9-1=8", "8-1=7"]
    assert steps_f1(ref, ref) == 1.0
    # 1 - 91 style slips: 2 of the 4 found are in the reference: 2 * 2 / (4 + 5)
    assert steps_f1(["16<91", "1<1", "11-1=9", "9-1=8"], ref) == pytest.approx(4 / 9)
    # padding with extra (even true) statements lowers it: 2 * 5 / (8 + 5)
    assert steps_f1([*ref, "-1<12", "-16<12", "0<1"], ref) == pytest.approx(10 / 13)
    # a repeated statement counts once per occurrence in the reference
    assert steps_f1(["9-1=8", "9-1=8"], ["9-1=8"]) == pytest.approx(2 / 3)
    assert steps_f1([], ref) == 0.0 and steps_f1([], []) == 1.0


def test_steps_reward_against_the_worked_solution():
    task = get_task("subtraction", n=10)
    ex = task.train_examples()[0]
    reward = get_reward("steps", task=task)
    demo = task.demonstration(ex)
    gamed = "<think>\n1<2, so 0<1, so -1<3\n</think>\n<answer>0</answer>"  # true statements, none of the solution's
    scores = reward([demo, gamed, "<think>no numbers</think><answer>3</answer>"], _example=[ex] * 3)
    assert scores == [1.0, 0.0, 0.0]
    # the answer tag's content is not reasoning; no think block: the text before the answer counts
    ref = statements(reasoning_text(demo))
    assert reward([f"<think>{ref[0]}</think><answer>{' '.join(ref)}</answer>"], _example=[ex]) == [
        pytest.approx(2 / (1 + len(ref)))]
    assert reward([f"{' '.join(ref)} <answer>x</answer>"], _example=[ex]) == [1.0]
    assert is_trusted(reward)

    class NoDemo(type(task)):
        def demonstration(self, example):
            return None

    assert math.isnan(get_reward("steps", task=NoDemo(n=10))([demo], _example=[ex])[0])


def test_registry_and_loading(tmp_path):
    task = get_task("subtraction", n=10)
    assert set(REWARDS) == {"format", "format_strict", "accuracy", "partial_credit", "length", "steps", "random"}
    for name in REWARDS:
        fn = get_reward(name, task=task)
        assert is_trusted(fn) and fn([GOOD], _example=[task.train_examples()[0]])[0] <= 1.0
    assert get_reward("length", max_length=10, soft_length=5)(["a" * 10]) == [-1.0]
    with pytest.raises(ValueError, match="needs the task"):
        get_reward("accuracy")
    with pytest.raises(ValueError, match="unknown reward 'acc'"):
        get_reward("acc")
    path = tmp_path / "my_rewards.py"
    path.write_text("def short(completions, **kw):\n    return [1.0 if len(c) < 5 else 0.0 for c in completions]\n")
    fn = load_reward(f"{path}:short")
    assert fn(["abc", "abcdef"]) == [1.0, 0.0] and not is_trusted(fn)
    assert resolve_reward(f"{path}:short", task)[1] is False and resolve_reward("format", task)[1] is True
    assert reward_name(f"{path}:short") == "short" and reward_name("format") == "format"
    with pytest.raises(ValueError, match="has no function 'nope'"):
        load_reward(f"{path}:nope")


def test_example_columns():
    exs = [make_countdown_example([1, 2], 3, "1 + 2"), make_countdown_example([4, 5], 9)]
    cols = example_columns(exs)
    assert cols["_example"] == exs and cols["target"] == [3, 9] and cols["nums"] == [[1, 2], [4, 5]]
    assert cols["solution"] == ["1 + 2", None]  # absent in the second example


# --------------------------------------------------------------------------------- score


def test_score_weights_and_parts():
    task = get_task("subtraction", n=10)
    ex = task.train_examples()[0]
    right = f"<think>\nx\n</think>\n<answer>{ex.answer}</answer>"
    funcs = [("accuracy", make_accuracy_reward(task), 0.85), ("format", format_reward, 0.15)]
    result = score(funcs, [right, "<answer>0</answer>"], example_columns([ex, ex]))
    # right: 0.85 * 1 + 0.15 * 1 = 1.0; the second: no think block -> format 0, wrong -> 0
    assert result.total == pytest.approx([1.0, 0.0])
    assert result.parts == {"accuracy": [1.0, 0.0], "format": [1.0, 0.0]}
    assert result.errors == {"accuracy": 0, "format": 0}


def test_score_nan_is_not_applicable():
    @trusted
    def sometimes(completions, **kw):
        return [None if c == "skip" else 1.0 for c in completions]

    result = score([("s", sometimes, 2.0), ("f", format_reward, 1.0)], ["skip", GOOD], {})
    assert math.isnan(result.parts["s"][0]) and result.total == [0.0, 3.0]  # NaN counts as 0


def test_score_checks_names_and_passes_non_columns():
    def named_only(completions, target):  # no **kwargs: gets only the columns it names
        return [float(t) for t in target]

    state = {"step": 3}  # like TRL's trainer_state: not a column, passed as is
    result = score([("n", named_only, 1.0)], ["a", "b"], {"target": [1, 2], "other": [0, 0], "trainer_state": state})
    assert result.parts["n"] == [1.0, 2.0]
    with pytest.raises(ValueError, match="unique"):
        score([("a", format_reward, 1.0), ("a", format_reward, 1.0)], ["x"], {})


@pytest.mark.parametrize("trust", [False, True])
def test_score_retries_a_raising_function_per_completion(trust, caplog):
    def fragile(completions, **kw):
        return [1.0 / (len(c) - 3) for c in completions]  # "abc" divides by zero

    fn = trusted(fragile) if trust else fragile
    with caplog.at_level(logging.WARNING, logger="rlvr.rewards"):
        result = score([("fragile", fn, 1.0)], ["abcd", "abc", "abcde"], {})
    assert result.parts["fragile"] == [1.0, 0.0, 0.5] and result.errors == {"fragile": 1}
    assert "fragile" in caplog.text and "ZeroDivisionError" in caplog.text


def test_score_wrong_length_is_an_error():
    result = score([("short", lambda completions, **kw: [1.0], 1.0)], ["a", "b"], {})
    assert result.parts["short"] == [1.0, 1.0] and result.errors["short"] == 0  # per completion: one each


def _nasty(completions, **kw):
    """1.0 per completion; hangs on "hang", kills its process on "die", raises on a batch of "raise"."""
    if len(completions) > 1 and "raise" in completions:
        raise ValueError("no batches")
    out = []
    for c in completions:
        if c == "hang":
            while True:
                pass
        if c == "die":
            import os

            os._exit(3)
        out.append(1.0)
    return out


@pytest.mark.timeout(60)
def test_score_survives_a_hang_and_a_dying_function():
    # the batch call hangs: killed after 1 s, every completion scores 0, no per-completion retries
    result = score([("nasty", _nasty, 1.0)], ["ok", "hang", "ok"], {}, timeout_s=1.0)
    assert result.parts["nasty"] == [0.0, 0.0, 0.0] and result.errors == {"nasty": 3}
    # the batch call's process dies: per completion, only the dying one scores 0
    result = score([("nasty", _nasty, 1.0)], ["ok", "die", "ok", "die", "ok"], {}, timeout_s=1.0)
    assert result.parts["nasty"] == [1.0, 0.0, 1.0, 0.0, 1.0] and result.errors == {"nasty": 2}


@pytest.mark.timeout(60)
def test_score_stops_retrying_at_the_first_time_out():
    # the batch raises, so each completion is retried; "hang" times out and the last is not tried
    result = score([("nasty", _nasty, 1.0)], ["ok", "hang", "raise"], {}, timeout_s=1.0)
    assert result.parts["nasty"] == [1.0, 0.0, 0.0] and result.errors == {"nasty": 2}


# ------------------------------------------------------------------ seeds 000 and 002 unchanged


def test_seed000_rewards_run_unchanged():
    task = get_task("subtraction", n=10)
    exs = task.train_examples()[:3]
    texts = [
        f"<think>easy</think><answer>{exs[0].answer}</answer>",  # seed 000's format, right
        f"<think>\nwith newlines\n</think>\n<answer>{exs[1].answer}</answer>",  # no DOTALL: format 0
        "<think>hmm</think><answer>twelve</answer>",  # format 1, not an int
    ]
    completions = [[{"role": "assistant", "content": t}] for t in texts]  # TRL's conversational form
    funcs = [("format", seed000_format_reward, 1.0), ("accuracy", seed000_accuracy_reward, 1.0)]
    result = score(funcs, completions, example_columns(exs), timeout_s=5.0)
    assert result.parts == {"format": [1.0, 0.0, 1.0], "accuracy": [1.0, 1.0, 0.0]}
    assert result.total == [2.0, 1.0, 1.0] and result.errors == {"format": 0, "accuracy": 0}


@pytest.mark.timeout(60)
def test_seed002_rewards_run_unchanged_and_the_hang_is_stopped(caplog):
    rows = [([44, 19, 35], 98), ([9, 9, 9], 98), ([2, 4, 1], 9)]
    completions = [  # sampled after the "<think>" prefill, as seed 002 expects
        " 44+19=63, 63+35=98</think>\n<answer>44 + 19 + 35</answer>",
        " big</think>\n<answer>9**9**9</answer>",  # passes seed 002's character filter; eval hangs
        " 2*4=8</think>\n<answer>2 * 4 + 1</answer>",
    ]
    columns = {"target": [t for _, t in rows], "nums": [np.array(n) for n, _ in rows]}  # as AgileRL passes
    funcs = [("format", seed002_format_reward_func, 0.5), ("equation", seed002_equation_reward_func, 1.0)]
    with caplog.at_level(logging.WARNING, logger="rlvr.rewards"):
        result = score(funcs, completions, columns, timeout_s=1.0)
    assert "'equation' failed on the batch (no result after 1 s)" in caplog.text  # it hung
    # the batch call hangs on 9**9**9 -> killed after 1 s, the whole batch scores 0 (a time-out
    # is not retried per completion: an always-hanging reward would cost (n + 1) time-outs)
    assert result.parts == {"format": [1.0, 1.0, 1.0], "equation": [0.0, 0.0, 0.0]}
    assert result.errors == {"format": 0, "equation": 3}
    assert result.total == [0.5, 0.5, 0.5]
    # our own verifier answers the same question at once, without eval
    task = get_task("countdown", n=10)
    ex = make_countdown_example([9, 9, 9], 98)
    ours = score([("accuracy", make_accuracy_reward(task, prefill="<think>"), 1.0)], [completions[1]],
                 example_columns([ex]))
    assert ours.parts["accuracy"] == [0.0] and ours.errors == {"accuracy": 0}


@pytest.mark.timeout(20)
def test_builtin_rewards_on_hostile_completions():
    task = get_task("countdown", n=10)
    ex = make_countdown_example([9, 9, 9], 98)
    hostile = [
        "<think>" + "<answer>" * 100_000 + "</think>" * 10_000,  # ~1 MB of tags
        "x" * 1_000_000,
        "<think>a</think><answer>" + "1" * 1_000_000 + "</answer>",
        "<think>a</think><answer>__import__('os').system('x')</answer>",
        "<think>a</think><answer>9**9**9</answer>",
    ]
    funcs = [(name, get_reward(name, task=task), 1.0) for name in ("accuracy", "format", "format_strict", "length", "steps")]
    result = score(funcs, hostile, example_columns([ex] * len(hostile)))
    assert result.parts["accuracy"] == [0.0] * 5 and result.errors == {name: 0 for name, _, _ in funcs}
    assert result.parts["format_strict"] == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_reward_metrics_skip_not_applicable():
    from rlvr.rollout import _mean_std

    # a reward of [1.0, NaN, 0.0] (NaN: not applicable): logged over the two completions it applies to
    assert _mean_std([1.0, math.nan, 0.0]) == (0.5, 0.5)
    assert _mean_std([math.nan]) == (0.0, 0.0) and _mean_std([]) == (0.0, 0.0)
