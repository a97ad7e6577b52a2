"""Training alarms on constructed metric series (pure: no model)."""

from __future__ import annotations

import json
import math

import pytest

from rlvr.alarms import Alarms, alarm_metrics, fitted_ends, slope


def healthy(step: int) -> dict:
    """A run that learns: accuracy and format rise together, a third of the groups flat, nothing odd."""
    return {"signal/zero_std_groups": 0.3, "completion/truncated_frac": 0.02, "train/format_rate": 0.5 + 0.02 * step,
            "train/accuracy": 0.2 + 0.02 * step, "policy/entropy": 1.0 - 0.01 * step,
            "completion/length_mean": 60.0 + step, "loss/policy": 0.01, "loss/kl": 0.001 * (1 + 0.1 * step)}


def run(series: list[dict], alarms: Alarms | None = None) -> list[tuple[int, str]]:
    alarms = alarms or Alarms(every=10)
    return [(step, a.name) for step, m in enumerate(series, start=1) for a in alarms.update(m, step)]


def test_slope_and_fitted_ends_by_hand():
    assert slope([1.0, 3.0, 5.0]) == 2.0
    # y = 0, 1, 0, 1: x - 1.5 = -1.5, -0.5, 0.5, 1.5 and y - 0.5 = -0.5, 0.5, -0.5, 0.5:
    # sum of products 0.75 - 0.25 - 0.25 + 0.75 = 1.0, sum (x - 1.5)^2 = 5 -> slope 0.2;
    # fitted ends 0.5 -/+ 0.2 * 1.5 = 0.2, 0.8
    assert slope([0.0, 1.0, 0.0, 1.0]) == pytest.approx(0.2)
    assert fitted_ends([0.0, 1.0, 0.0, 1.0]) == pytest.approx((0.2, 0.8))
    assert slope([4.0]) == 0.0


def test_a_healthy_run_raises_nothing():
    assert run([healthy(s) for s in range(30)]) == []


def test_format_rising_while_accuracy_falls_is_reward_hacking():
    # format +0.08 a step from 0.2, accuracy -0.03 a step from 0.40: the rule needs 6 steps, and
    # after 6 the fitted lines (exact for lines) go 0.20 -> 0.60 and 0.40 -> 0.25
    series = [{**healthy(s), "train/format_rate": 0.2 + 0.08 * s, "train/accuracy": 0.40 - 0.03 * s} for s in range(10)]
    fired = Alarms(every=10)
    alarms = [(step, a) for step, m in enumerate(series, 1) for a in fired.update(m, step)]
    hacking = [(step, a) for step, a in alarms if a.name == "reward_hacking"]
    assert [step for step, _ in hacking] == [6]
    a = hacking[0][1]
    assert a.metric == "train/format_rate"
    assert "20% -> 60%" in a.trend and "40% -> 25%" in a.trend and "6 steps" in a.trend
    assert "format reward" in a.fix and a.message.startswith("ALARM reward_hacking")
    # both rising is learning, not hacking
    rising = [{**healthy(s), "train/format_rate": 0.2 + 0.08 * s, "train/accuracy": 0.1 + 0.03 * s} for s in range(10)]
    assert "reward_hacking" not in [name for _, name in run(rising)]


def test_no_signal_for_five_steps_fires_then_waits_every_steps():
    series = [{**healthy(s), "signal/zero_std_groups": 1.0, "train/accuracy": 0.0} for s in range(25)]
    fired = [(step, name) for step, name in run(series, Alarms(every=10)) if name == "no_signal"]
    assert fired == [(5, "no_signal"), (15, "no_signal"), (25, "no_signal")]


def test_no_signal_because_everything_is_right_says_harder():
    alarms = Alarms()
    out = []
    for step in range(1, 6):
        out += alarms.update({**healthy(step), "signal/zero_std_groups": 1.0, "train/accuracy": 1.0}, step)
    assert [a.name for a in out] == ["no_signal"] and "harder" in out[0].fix


def test_one_flat_step_is_not_an_alarm():
    series = [{**healthy(s), "signal/zero_std_groups": 1.0 if s % 5 == 0 else 0.5} for s in range(20)]
    assert run(series) == []


def test_truncation_high():
    series = [{**healthy(s), "completion/truncated_frac": 0.6} for s in range(3)]
    alarms = Alarms()
    out = [a for step, m in enumerate(series, 1) for a in alarms.update(m, step)]
    assert [a.name for a in out] == ["truncation"]
    assert out[0].metric == "completion/truncated_frac" and "60%" in out[0].trend
    assert "max_completion_length" in out[0].fix


def test_kl_growing_and_entropy_and_length_collapsing():
    # KL 0.01 -> 0.19 (x19), entropy 2.0 -> 0.2, length 80 -> 4 tokens over 10 steps
    series = [{**healthy(s), "loss/kl": 0.01 + 0.02 * s, "policy/entropy": 2.0 - 0.2 * s,
               "completion/length_mean": 80.0 - 8.4 * s} for s in range(10)]
    names = {name for _, name in run(series)}
    assert {"kl_growing", "entropy_collapse", "length_collapse"} <= names


def test_reward_errors_and_nan():
    alarms = Alarms()
    out = alarms.update({**healthy(0), "reward/my_reward/errors": 3, "loss/policy": float("nan")}, 1)
    assert sorted(a.name for a in out) == ["nan", "reward_errors"]
    assert next(a for a in out if a.name == "reward_errors").metric == "reward/my_reward/errors"
    assert alarm_metrics(out) == {"alarm/nan": 1.0, "alarm/reward_errors": 1.0}


def test_state_round_trips_through_json():
    first, second = Alarms(every=10), Alarms(every=10)
    series = [{**healthy(s), "signal/zero_std_groups": 1.0, "train/accuracy": 0.0} for s in range(8)]
    for step, m in enumerate(series[:3], 1):
        first.update(m, step)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    rest_a = [(s, a.name) for s, m in enumerate(series[3:], 4) for a in first.update(m, s)]
    rest_b = [(s, a.name) for s, m in enumerate(series[3:], 4) for a in second.update(m, s)]
    assert rest_a == rest_b == [(5, "no_signal")]


def test_non_numbers_are_ignored():
    alarms = Alarms()
    assert alarms.update({"train/accuracy": "n/a", "signal/zero_std_groups": None, "loss/policy": True}, 1) == []
    assert not math.isnan(sum(sum(v) for v in alarms.history.values()))
