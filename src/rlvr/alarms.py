"""Alarms during training: the failures that waste a GRPO run, caught while they happen.

Each rule watches one or two per-step metrics of the trainer (the keys of `rollout.collect_experience`
and `trainer.update_policy`) and, when it sees the failure, returns an `Alarm` that names the metric,
the trend it saw and a concrete fix. The failures are the ones users of TRL, Open-R1, verl and
TinyZero report (shared/USERS.md):

    no_signal         signal/zero_std_groups near 1 for several steps: every group's rewards are
                      equal, the loss is 0 and nothing is learned (TRL #3857, Unsloth #2291)
    truncation        completion/truncated_frac high: completions cut at max_completion_length
                      earn no reward (TRL #5697)
    reward_hacking    train/format_rate rising while train/accuracy falls, both as least-squares
                      slopes over a window (Open-R1 #255)
    kl_growing        loss/kl growing several-fold (the policy drifting from the reference)
    entropy_collapse  policy/entropy fallen to a small fraction of its start (mode collapse)
    length_collapse   completion/length_mean fallen to a small fraction of its start (the
                      thinking section shrinks and disappears, TinyZero #85)
    reward_errors     a reward function raised or timed out (its completions got 0)
    reward_nonfinite  a reward function gave no finite value (None, NaN, inf, beyond float32) for
                      some completions in each of several steps: masked out of their totals
    nan               a NaN or inf loss (verl #721)

An alarm fires at most once per `every` steps per rule. Pure Python: no torch, no I/O; the trainer
prints the messages and logs `alarm/<name> = 1` with the step's metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence


@dataclass(frozen=True)
class Alarm:
    """One failure seen in the metrics: which metric, what it did, and what to do about it."""

    name: str
    """rule name, e.g. "no_signal" (logged as `alarm/<name>`)"""
    metric: str
    """the metric key that shows it, e.g. "signal/zero_std_groups\""""
    trend: str
    """what the metric did, in words with numbers, e.g. "stayed >= 90% for 5 steps (mean 97%)\""""
    fix: str
    """a concrete change to try"""
    message: str
    """one line for the console: "ALARM <name>: <metric> <trend>. Fix: <fix>\""""


@dataclass
class Thresholds:
    """When each rule fires. The defaults are meant to be quiet on healthy runs."""

    no_signal: float = 0.9
    """no_signal: zero_std_groups at or above this ..."""
    no_signal_steps: int = 5
    """... for this many consecutive steps"""
    truncation: float = 0.3
    """truncation: mean truncated fraction over the last `recent` steps at or above this"""
    recent: int = 3
    """steps averaged for "the current value" of a metric"""
    hacking_window: int = 10
    """reward_hacking: steps in the linear fit (at least 6 must be present)"""
    hacking_format_rise: float = 0.1
    """reward_hacking: the fitted format rate rises by at least this over the window ..."""
    hacking_accuracy_fall: float = 0.05
    """... while the fitted accuracy falls by at least this"""
    kl_growth: float = 4.0
    """kl_growing: the fitted KL at the end of the window is this many times its start ..."""
    kl_min: float = 0.05
    """... and at least this large (k3 estimate per token)"""
    kl_max: float = 1.0
    """kl_growing: or the recent KL is above this, whatever its trend"""
    collapse_ratio: float = 0.25
    """entropy / length collapse: the recent mean fell below this fraction of the first steps' mean"""
    baseline_steps: int = 3
    """steps averaged for the start value of entropy and length"""
    nonfinite_steps: int = 3
    """reward_nonfinite: a reward gave non-finite values in each of this many consecutive steps"""


def slope(values: Sequence[float]) -> float:
    """Least-squares slope of values against 0, 1, ..., n-1 (change per step); 0 for n < 2.

    slope = sum((x - x_mean) (y - y_mean)) / sum((x - x_mean)^2)
    """
    n = len(values)
    if n < 2:
        return 0.0
    x_mean = (n - 1) / 2
    y_mean = sum(values) / n
    num = sum((i - x_mean) * (y - y_mean) for i, y in enumerate(values))
    den = sum((i - x_mean) ** 2 for i in range(n))
    return num / den


def fitted_ends(values: Sequence[float]) -> tuple[float, float]:
    """(start, end) of the least-squares line through values: less noisy than the raw endpoints."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    b = slope(values)
    mid = sum(values) / n
    return mid - b * (n - 1) / 2, mid + b * (n - 1) / 2


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


# ------------------------------------------------------------------------------------------ rules
# Each rule: (history of every watched metric, start values, thresholds) -> (metric, trend, fix) or None.

History = Mapping[str, Sequence[float]]
Rule = Callable[[History, Mapping[str, float], Thresholds], "tuple[str, str, str] | None"]


def no_signal_rule(h: History, base: Mapping[str, float], t: Thresholds):
    zero = h.get("signal/zero_std_groups", [])[-t.no_signal_steps:]
    if len(zero) < t.no_signal_steps or min(zero) < t.no_signal:
        return None
    trend = f"stayed >= {_pct(t.no_signal)} for the last {len(zero)} steps (mean {_pct(_mean(zero))})"
    accuracy = _mean(h.get("train/accuracy", [])[-len(zero):])
    if accuracy >= 0.9:
        fix = ("every completion is right, so there is nothing to learn from: use harder problems "
               "(a larger task range, or adaptive difficulty)")
    else:
        fix = ("every group's rewards are equal, so the loss is 0 and nothing is learned: run the SFT "
               "warm-up (`rlvr sft`), raise sampling.temperature, turn on grpo.dynamic_sampling, or use "
               "easier problems (adaptive difficulty)")
    return "signal/zero_std_groups", trend, fix


def truncation_rule(h: History, base: Mapping[str, float], t: Thresholds):
    frac = h.get("completion/truncated_frac", [])[-t.recent:]
    if len(frac) < t.recent or _mean(frac) < t.truncation:
        return None
    trend = f"averaged {_pct(_mean(frac))} over the last {len(frac)} steps"
    fix = ("completions cut at sampling.max_completion_length cannot finish and usually earn no reward: "
           "raise sampling.max_completion_length, ask for shorter reasoning, or set "
           "grpo.mask_truncated_completions=true (DAPO)")
    return "completion/truncated_frac", trend, fix


def reward_hacking_rule(h: History, base: Mapping[str, float], t: Thresholds):
    fmt = h.get("train/format_rate", [])[-t.hacking_window:]
    acc = h.get("train/accuracy", [])[-t.hacking_window:]
    n = min(len(fmt), len(acc))
    if n < min(6, t.hacking_window):
        return None
    fmt, acc = fmt[-n:], acc[-n:]
    f0, f1 = fitted_ends(fmt)
    a0, a1 = fitted_ends(acc)
    if f1 - f0 < t.hacking_format_rise or a0 - a1 < t.hacking_accuracy_fall:
        return None
    trend = (f"format rate rose {_pct(f0)} -> {_pct(f1)} while train/accuracy fell {_pct(a0)} -> {_pct(a1)} "
             f"(linear fits over the last {n} steps)")
    fix = ("the policy is learning the format, not the task (reward hacking): lower the format reward's "
           "weight in task.rewards, read samples.jsonl, add a KL penalty (grpo.beta=0.04) or lower "
           "grpo.learning_rate")
    return "train/format_rate", trend, fix


def kl_rule(h: History, base: Mapping[str, float], t: Thresholds):
    kl = [v for v in h.get("loss/kl", []) if math.isfinite(v)][-t.hacking_window:]
    if len(kl) < t.recent:
        return None
    recent = _mean(kl[-t.recent:])
    k0, k1 = fitted_ends(kl)
    growing = len(kl) >= 6 and k1 >= t.kl_min and k1 >= t.kl_growth * max(k0, 1e-4)
    if not growing and recent < t.kl_max:
        return None
    trend = (f"grew {k0:.3g} -> {k1:.3g} over the last {len(kl)} steps" if growing
             else f"is {recent:.3g} (above {t.kl_max:g})")
    fix = ("the policy is drifting far from the reference model: lower grpo.learning_rate, raise "
           "grpo.beta, or lower grpo.epsilon")
    return "loss/kl", trend, fix


def _collapse(h: History, base: Mapping[str, float], t: Thresholds, key: str):
    values = h.get(key, [])[-t.recent:]
    start = base.get(key)
    if start is None or len(values) < t.recent or start <= 0:
        return None
    recent = _mean(values)
    return (start, recent) if recent < t.collapse_ratio * start else None


def entropy_rule(h: History, base: Mapping[str, float], t: Thresholds):
    found = _collapse(h, base, t, "policy/entropy")
    if found is None:
        return None
    trend = f"fell from {found[0]:.3g} to {found[1]:.3g} nats per token"
    fix = ("the policy became nearly deterministic, so a group's completions stop differing: raise "
           "sampling.temperature, lower grpo.learning_rate, or clip higher (grpo.epsilon_high=0.28, DAPO)")
    return "policy/entropy", trend, fix


def length_rule(h: History, base: Mapping[str, float], t: Thresholds):
    found = _collapse(h, base, t, "completion/length_mean")
    if found is None:
        return None
    trend = f"fell from {found[0]:.0f} to {found[1]:.1f} tokens"
    fix = ("completions shrank (the thinking may have disappeared): read samples.jsonl; if answers got "
           "worse, lower grpo.learning_rate, add a KL penalty (grpo.beta=0.04) or use grpo.loss_type=dr_grpo")
    return "completion/length_mean", trend, fix


def reward_errors_rule(h: History, base: Mapping[str, float], t: Thresholds):
    for key, values in h.items():
        if key.startswith("reward/") and key.endswith("/errors") and values and values[-1] > 0:
            name = key[len("reward/"):-len("/errors")]
            trend = f"{values[-1]:.0f} completions this step got 0 because {name} raised or timed out"
            fix = (f"run {name} on the completions in samples.jsonl to find the error; raise "
                   "task.reward_timeout if it is only slow")
            return key, trend, fix
    return None


def reward_nonfinite_rule(h: History, base: Mapping[str, float], t: Thresholds):
    for key, values in h.items():
        if not (key.startswith("reward/") and key.endswith("/nonfinite")):
            continue
        recent = values[-t.nonfinite_steps:]
        if len(recent) < t.nonfinite_steps or min(recent) <= 0:
            continue
        name = key[len("reward/"):-len("/nonfinite")]
        trend = (f"{recent[-1]:.0f} completions this step, and some in each of the last {len(recent)} steps, "
                 f"got no finite value from {name} (None, NaN, inf or beyond float32)")
        fix = (f"those completions' totals leave {name} out (masked, as TRL does for None), so it does not "
               f"train on them: make {name} return a finite number for every completion (None only where "
               "it does not apply)")
        return key, trend, fix
    return None


def nan_rule(h: History, base: Mapping[str, float], t: Thresholds):
    loss = h.get("loss/policy", [])
    if not loss or math.isfinite(loss[-1]):
        return None
    fix = ("lower grpo.learning_rate, keep grpo.max_grad_norm at 1.0, and check the rewards for NaN; "
           "the trainer stops after run.max_bad_steps such steps")
    return "loss/policy", f"is {loss[-1]}", fix


RULES: dict[str, Rule] = {
    "no_signal": no_signal_rule,
    "truncation": truncation_rule,
    "reward_hacking": reward_hacking_rule,
    "kl_growing": kl_rule,
    "entropy_collapse": entropy_rule,
    "length_collapse": length_rule,
    "reward_errors": reward_errors_rule,
    "reward_nonfinite": reward_nonfinite_rule,
    "nan": nan_rule,
}
WATCHED = ("signal/zero_std_groups", "completion/truncated_frac", "train/format_rate", "train/accuracy",
           "loss/kl", "policy/entropy", "completion/length_mean", "loss/policy")
BASELINE_KEYS = ("policy/entropy", "completion/length_mean")
COUNTS = ("/errors", "/nonfinite")
"""per-reward counts (`reward/<name>/errors`), logged only when non-zero"""


class Alarms:
    """Watches the per-step metrics; `update` returns the alarms that fire at this step.

    alarms = Alarms(every=10)
    for step ...:
        for alarm in alarms.update(metrics, step):
            print(alarm.message)

    Each rule fires at most once per `every` steps. The history kept is the last `keep` values of
    each watched metric; `state_dict` / `load_state_dict` carry it (and the start values of entropy
    and length) across a resume.
    """

    def __init__(self, every: int = 10, *, thresholds: Thresholds | None = None, keep: int = 50):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.thresholds = thresholds or Thresholds()
        self.keep = max(keep, self.thresholds.hacking_window, self.thresholds.no_signal_steps)
        self.history: dict[str, list[float]] = {}
        self.baseline: dict[str, float] = {}
        self.last_fired: dict[str, int] = {}
        self._starts: dict[str, list[float]] = {}

    def _record(self, metrics: Mapping[str, object]) -> None:
        for key, value in metrics.items():
            watched = key in WATCHED or (key.startswith("reward/") and key.endswith(COUNTS))
            if not watched or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            series = self.history.setdefault(key, [])
            series.append(float(value))
            del series[:-self.keep]
            if key in BASELINE_KEYS and key not in self.baseline and math.isfinite(value):
                starts = self._starts.setdefault(key, [])
                starts.append(float(value))
                if len(starts) >= self.thresholds.baseline_steps:
                    self.baseline[key] = _mean(starts)
        for key in list(self.history):  # a count absent this step means none
            if key.endswith(COUNTS) and key not in metrics:
                self.history[key].append(0.0)
                del self.history[key][:-self.keep]

    def update(self, metrics: Mapping[str, object], step: int) -> list[Alarm]:
        """Record this step's metrics; return the alarms that fire now (each at most once per `every`)."""
        self._record(metrics)
        fired = []
        for name, rule in RULES.items():
            last = self.last_fired.get(name)
            if last is not None and step - last < self.every:
                continue
            found = rule(self.history, self.baseline, self.thresholds)
            if found is None:
                continue
            metric, trend, fix = found
            self.last_fired[name] = step
            fired.append(Alarm(name, metric, trend, fix, f"ALARM {name} (step {step}): {metric} {trend}. Fix: {fix}."))
        return fired

    def state_dict(self) -> dict:
        """JSON-serialisable state (for the checkpoint's trainer state)."""
        return {"history": self.history, "baseline": self.baseline, "last_fired": self.last_fired,
                "starts": self._starts}

    def load_state_dict(self, state: Mapping) -> None:
        self.history = {k: list(v) for k, v in state.get("history", {}).items()}
        self.baseline = dict(state.get("baseline", {}))
        self.last_fired = {k: int(v) for k, v in state.get("last_fired", {}).items()}
        self._starts = {k: list(v) for k, v in state.get("starts", {}).items()}


def alarm_metrics(alarms: Sequence[Alarm]) -> dict[str, float]:
    """`alarm/<name>: 1.0` for each alarm, to log with the step's metrics (the console line shows them)."""
    return {f"alarm/{a.name}": 1.0 for a in alarms}
