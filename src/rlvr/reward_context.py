"""What TRL's `GRPOTrainer` hands a reward function besides the completions and the columns.

TRL (`GRPOTrainer._calculate_rewards`) calls every reward function as

    fn(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_extra=..., log_metric=...,
       **every dataset column but prompt / completion / completion_ids)

and runs the `async def` ones together with `asyncio.gather`. This module holds rlvr's side of the
last four: `TrainerState` (the fields of transformers' TrainerState a reward reads), `RewardLogs`
(what the functions logged with `log_extra` / `log_metric`; the functions run in a forked child,
so each call records into its own `Recorder`, sent back with its values), and the helpers that run
coroutines. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainerState:
    """The training progress a reward function may shape itself by (TRL passes transformers'
    `TrainerState`; these are the fields of it that mean something here)."""

    global_step: int = 0
    """optimizer steps done before this batch was sampled (TRL's meaning); 0 in the doctor and eval"""
    max_steps: int = 0
    """the run's number of steps (grpo.max_steps)"""
    epoch: float = 0.0
    """passes over the training examples so far (examples drawn / training examples)"""
    num_generations: int = 0
    """completions per prompt (the group size)"""
    is_world_process_zero: bool = True
    """this process writes the run's records"""


@dataclass
class RewardLogs:
    """What reward functions logged through TRL's `log_extra` and `log_metric` in one scoring."""

    extra: dict[str, list] = field(default_factory=dict)
    """column name -> values, one per completion when logged for the whole batch (TRL's
    completions table; rlvr's samples.jsonl, under "extra")"""
    metrics: dict[str, list[float]] = field(default_factory=dict)
    """metric name -> the values logged (their mean is the step's metric, as TRL averages them)"""

    def merge(self, other: RewardLogs | None) -> RewardLogs:
        if other is not None:
            for k, v in other.extra.items():
                self.extra.setdefault(k, []).extend(v)
            for k, v in other.metrics.items():
                self.metrics.setdefault(k, []).extend(v)
        return self

    def select(self, idx: Sequence[int], n: int) -> RewardLogs:
        """The logs of completions `idx` (of `n`): per-completion columns are selected, metrics kept."""
        extra = {k: ([v[i] for i in idx] if len(v) == n else list(v)) for k, v in self.extra.items()}
        return RewardLogs(extra, {k: list(v) for k, v in self.metrics.items()})

    def metric_means(self) -> dict[str, float]:
        """The step's value of each logged metric: the mean of its finite values."""
        out = {}
        for name, values in self.metrics.items():
            finite = [v for v in values if math.isfinite(v)]
            if finite:
                out[name] = sum(finite) / len(finite)
        return out


class Recorder:
    """The `log_extra` and `log_metric` of one call (kept in the process that runs the call)."""

    def __init__(self):
        self.logs = RewardLogs()

    def log_extra(self, column: str, values: list) -> None:
        """TRL's log_extra: a column of the completions table, one value per completion."""
        self.logs.extra.setdefault(str(column), []).extend(_plain(v) for v in values)

    def log_metric(self, name: str, value: float) -> None:
        """TRL's log_metric: a scalar for this batch, averaged over the step."""
        self.logs.metrics.setdefault(str(name), []).append(float(value))

    def kwargs(self) -> dict[str, Any]:
        return {"log_extra": self.log_extra, "log_metric": self.log_metric}


def _plain(value: Any) -> Any:
    """A value that pickles and goes into JSON as it is (a number, text, None), else its text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def is_async(fn: Any) -> bool:
    """An `async def` reward function (or an object whose `__call__` is one), as TRL tests it."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def run_coroutine(awaitable: Awaitable) -> Any:
    """Run a coroutine to completion from synchronous code, also where an event loop is already
    running in this thread (a notebook): then in a thread of its own."""
    async def main():
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()
