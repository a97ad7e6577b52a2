"""Adaptive difficulty: the level follows the groups' success rate, the stream resumes exactly."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from rlvr.curriculum import AdaptiveDifficulty, group_success_rates, task_levels
from rlvr.tasks import get_task
from rlvr.tasks.base import Example, Task


def subtraction():
    return get_task("subtraction", n=50, high=100)


def success_probability(level: int) -> float:
    """A synthetic model: p = 1 / (1 + exp(1.2 (level - 3.5))): 0.95 at 1, 0.65 at 3, 0.35 at 4, 0.05 at 6."""
    return 1.0 / (1.0 + math.exp(1.2 * (level - 3.5)))


def simulate(stream: AdaptiveDifficulty, steps: int, groups: int = 8, g: int = 8, seed: int = 0):
    """Each step: `groups` groups of g Bernoulli(p(level)) completions; returns (levels, rates) per step."""
    rng = random.Random(seed)
    levels, rates = [], []
    for _ in range(steps):
        for _ in range(groups):
            next(stream)
        p = success_probability(stream.level)
        step_rates = [sum(rng.random() < p for _ in range(g)) / g for _ in range(groups)]
        levels.append(stream.level)
        rates += step_rates
        stream.observe(step_rates)
    return levels, rates


def test_level_converges_where_success_is_near_the_target():
    """From level 1 (p = 0.95) the level climbs to 3-4 (p = 0.65 / 0.35) and stays around there."""
    stream = AdaptiveDifficulty(subtraction(), target=0.5, band=0.15, window=16, start_level=1, seed=0)
    levels, rates = simulate(stream, steps=200)
    late = levels[50:]
    assert levels[0] == 1
    assert set(late) <= {3, 4}, sorted(set(late))
    late_rates = rates[50 * 8:]
    assert abs(sum(late_rates) / len(late_rates) - 0.5) < 0.1
    # the point: far fewer groups without signal (all 0 or all 1) than at a fixed level 1 or 6
    flat = sum(r in (0.0, 1.0) for r in late_rates) / len(late_rates)
    assert flat < 0.05  # p^8 + (1-p)^8 at p = 0.35-0.65 is at most 3.2%
    assert success_probability(1) ** 8 > 0.6 and (1 - success_probability(6)) ** 8 > 0.6


def test_moves_by_one_level_per_window_and_stays_in_the_band():
    stream = AdaptiveDifficulty(subtraction(), window=4, start_level=3, min_level=1, max_level=4)
    assert stream.observe([1.0, 1.0, 0.75]) == 3  # window not full yet
    assert stream.observe([1.0]) == 4  # mean 0.94 > 0.65 -> up
    assert stream.observe([1.0] * 4) == 4  # max_level
    assert stream.observe([0.5, 0.6, 0.4, 0.5]) == 4  # mean 0.5: inside [0.35, 0.65], stay
    assert stream.observe([0.0, 0.25, 0.0, 0.0]) == 3  # mean 0.06 < 0.35 -> down
    assert stream.metrics() == {"curriculum/level": 3.0, "curriculum/success": pytest.approx(0.0625)}


def test_a_lower_level_that_is_no_easier_for_this_model_is_left():
    """The measured case (bench_curriculum, an SFT model trained on 0-99, on 0-999): success 0 at
    level 3, 0.22 at 2, 0.11 at 1. Target 0.5, band 0.15 (move below 0.35):
    3 (0.00) -> 2 (unseen); 2 (0.22) -> 1 (unseen); 1 (0.11): bottom of the range, level 2 was seen
    nearer the target (|0.22 - 0.5| = 0.28 vs 0.39, by more than band/2 = 0.075) -> back to 2;
    2 (0.22) again: level 1 was seen with lower success, so not down again -> stay at 2."""
    stream = AdaptiveDifficulty(subtraction(), window=1, start_level=3, min_level=1, max_level=3)
    assert stream.observe([0.0]) == 2
    assert stream.observe([0.22]) == 1
    assert stream.observe([0.11]) == 2
    assert stream.observe([0.22]) == 2
    assert stream.observe([0.6]) == 2  # inside the band
    assert stream.observe([0.9]) == 3  # level 3 was seen with lower success (0.0): up is the right way
    state = json.loads(json.dumps(stream.state_dict()))
    again = AdaptiveDifficulty(subtraction(), window=1, start_level=3, min_level=1, max_level=3)
    again.load_state_dict(state)
    assert again.observe([0.2]) == stream.observe([0.2]) == 2


def test_examples_are_drawn_at_the_current_level():
    stream = AdaptiveDifficulty(subtraction(), start_level=1, seed=3)
    for ex in (next(stream) for _ in range(20)):
        assert 0 <= ex.metadata["minuend"] < 10 and 0 <= ex.metadata["subtrahend"] < 10
    stream.level = 3
    assert max(next(stream).metadata["minuend"] for _ in range(50)) >= 100


def test_default_start_is_the_tasks_own_level():
    assert AdaptiveDifficulty(get_task("subtraction", n=20, high=1000)).level == 3
    countdown = get_task("countdown", n=20)
    assert AdaptiveDifficulty(countdown).level == getattr(countdown, "default_level", None) or 1


def test_state_round_trip_continues_exactly():
    a = AdaptiveDifficulty(subtraction(), window=4, seed=7)
    for _ in range(5):
        next(a)
    a.observe([1.0, 1.0, 1.0, 1.0, 0.5])  # a move and an open window of one
    b = AdaptiveDifficulty(subtraction(), window=4, seed=7)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [next(a).question for _ in range(10)] == [next(b).question for _ in range(10)]
    assert a.observe([1.0, 1.0, 1.0]) == b.observe([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="seed"):
        AdaptiveDifficulty(subtraction(), seed=8).load_state_dict(a.state_dict())


def test_a_task_without_levels_is_a_clear_error():
    class Fixed(Task):
        name = "fixed"

        def train_examples(self):
            return [Example("q", "a")]

    with pytest.raises(ValueError, match="make_example"):
        AdaptiveDifficulty(Fixed())


def test_reasoning_gym_levels_come_from_its_curriculum():
    task = get_task("rg:chain_sum", n=20, n_test=5)
    levels = task_levels(task, seed=0)
    assert (levels.min_level, levels.max_level) == (0, 10)  # chain_sum's num_digits has 10 levels
    stream = AdaptiveDifficulty(task, seed=0)
    easy = next(stream)
    stream.level = 5
    hard = next(stream)
    assert len(hard.question) > len(easy.question)
    assert task.verify(easy.answer, easy) == 1.0  # the task's own verifier scores generated items


def test_group_success_rates():
    assert group_success_rates([1, 0, 1, 1, 0, 0], 2) == [0.5, 1.0, 0.0]


def _collect_from_stream(tiny_smol, stream, task, *, dynamic_sampling: bool, rounds: int):
    """One step's experience of a tiny random model, 2 prompts x 4 samples drawn from `stream`."""
    from rlvr.rollout import PromptFormat, build_reward_fns, collect_experience, sampling_params
    from rlvr.sampling.fast import FastSampler

    model, tok = tiny_smol
    return collect_experience(FastSampler(model, tok), tok, task, stream, batch_size=2, num_generations=4,
                              params=sampling_params(tok, max_new_tokens=4, temperature=1.0), fmt=PromptFormat(),
                              reward_fns=build_reward_fns(task, {"accuracy": 1.0}), scale_rewards="group",
                              dynamic_sampling=dynamic_sampling, max_resample_rounds=rounds, reward_timeout=10.0,
                              generator=torch.Generator().manual_seed(0))


def test_drop_in_for_the_trainers_example_stream(tiny_smol):
    """collect_experience takes the stream like ExampleStream; observe takes its groups' accuracy."""
    task = subtraction()
    stream = AdaptiveDifficulty(task, window=2, start_level=2, seed=0)
    exp = _collect_from_stream(tiny_smol, stream, task, dynamic_sampling=False, rounds=0)
    assert stream.position == 2 and len(exp.rollouts) == 8
    assert stream.observe(group_success_rates(exp.correct, 4)) == 1  # a random model is never right: down


def test_dynamic_sampling_reports_every_group_to_the_curriculum(tiny_smol):
    """Groups dynamic sampling drops are part of what the level's success rate is: a random model
    is never right, so each round's 2 groups are flat and dropped but for the last round's."""
    task = subtraction()
    stream = AdaptiveDifficulty(task, window=2, start_level=2, seed=0)
    exp = _collect_from_stream(tiny_smol, stream, task, dynamic_sampling=True, rounds=2)
    assert len(exp.rollouts) == 8  # the last round's 2 groups are kept whatever they are
    assert exp.group_success == [0.0] * 6  # 3 rounds x 2 groups: all of them observed
    assert exp.metrics["signal/zero_std_groups"] == 1.0


def test_groups_drawn_before_a_move_do_not_count_for_the_new_level():
    """Dynamic sampling draws several rounds in one step, all at the step's level, and the trainer
    observes them together. Window 4, level 3: 8 groups drawn at level 3, all wrong. The first 4
    close a window (mean 0 < 0.35) -> level 2; the other 4 were drawn at level 3 and must not fill
    level 2's window (before, they did: level 2 was then "seen" at 0.0, as hard as level 3, and the
    curriculum refused to come back down to it)."""
    stream = AdaptiveDifficulty(subtraction(), window=4, start_level=3, min_level=1, max_level=3)
    for _ in range(8):
        next(stream)
    assert stream.observe([0.0] * 8) == 2
    assert stream.state_dict()["open"] == []  # the 4 level-3 leftovers were dropped
    assert stream.state_dict()["seen"] == {"3": 0.0}
    for _ in range(4):
        next(stream)
    assert stream.observe([0.5, 0.5, 0.25, 0.75]) == 2  # level 2's own groups: mean 0.5, in the band
    assert stream.state_dict()["seen"] == {"3": 0.0, "2": 0.5}
