"""Adaptive difficulty: keep the training problems where a group succeeds about half the time.

A GRPO group learns only when its completions disagree: a group that is all wrong or all right has
equal rewards and zero advantage (TRL #3857). With success probability p per completion, a group
of G is all-equal with probability p^G + (1-p)^G, smallest at p = 1/2. So instead of a fixed
difficulty, `AdaptiveDifficulty` generates each training problem at a level, and after every
`window` observed groups compares their mean success rate with the target band:

    mean > target + band  ->  level + 1   (too easy: groups are all right)
    mean < target - band  ->  level - 1   (too hard: groups are all wrong)
    otherwise             ->  stay

and then starts a fresh window, so each decision is made on groups drawn at the current level.
This is a one-step staircase (up-down) controller, the same rule as reasoning-gym's
`increment_global_level` / `decrement_global_level` driven by a score threshold, with a band so
that the level rests where success is near the target instead of oscillating on every window.

Levels come from the task: `make_example(rng, level)` on procedural tasks (subtraction: numbers in
[0, 10^level); countdown: level + 1 numbers), and reasoning-gym's own curricula for `rg:<name>`
tasks (`reasoning_gym.create_curriculum(name)`, global level, each attribute at its level's range).
Held-out evaluation does not go through here: it always uses the task's fixed test examples.

Example i of the stream is drawn from its own `random.Random(seed * 1_000_003 + i)`, so the stream
is reproducible and a resume is exact given `state_dict()` (position, level, open window).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from rlvr.config import ConfigError
from rlvr.tasks.base import Example, Task

LEVEL_RANGES = {"subtraction": (1, 6), "countdown": (1, 5)}
"""(min, max) level of the built-in procedural tasks; other tasks with make_example default to (1, 10)"""


@dataclass
class Levels:
    """How a task makes a problem at a level, and which levels exist."""

    make: Callable[[random.Random, int], Example]
    min_level: int
    max_level: int
    default_level: int | None = None
    """the level of the task's own train/test data, when known (where a run starts by default)"""


def task_levels(task: Task, *, seed: int = 0) -> Levels:
    """The task's levels, or a ValueError saying the task cannot vary its difficulty."""
    if task.name.startswith("rg:"):
        return reasoning_gym_levels(task, seed=seed)
    make = getattr(task, "make_example", None)
    if make is None:
        raise ValueError(
            f"task '{task.name}' cannot generate problems at a chosen difficulty (it has no "
            "make_example(rng, level) method): adaptive difficulty works with subtraction, countdown, "
            "rg:<name> datasets that have a reasoning-gym curriculum, and your own Task subclass if you "
            "add make_example(rng, level) to it; otherwise turn adaptive difficulty off")
    low, high = LEVEL_RANGES.get(task.name, (1, 10))
    return Levels(make=lambda rng, level: make(rng, level), min_level=low, max_level=high,
                  default_level=getattr(task, "default_level", None))


def reasoning_gym_levels(task: Task, *, seed: int = 0, items_per_level: int = 2000) -> Levels:
    """Levels of an `rg:<name>` task from reasoning-gym's curriculum for that dataset.

    Level k sets every curriculum attribute to its k-th value (capped at its last), taking the
    upper range segment of each range attribute (RangeAttributeMode.UPPER_BOUND), so each level is
    strictly its own difficulty. The task's other dataset options are kept. Each level's dataset
    holds `items_per_level` items (reasoning-gym draws item i from Random(level seed + i)); a
    problem is one of them, chosen by the stream's rng. Scoring stays the task's `verify`
    (reasoning-gym's `score_answer` reads the entry, not the level's config).
    """
    from reasoning_gym.coaching.base_curriculum import DefaultCurriculumContext, RangeAttributeMode
    from reasoning_gym.factory import DATASETS, create_curriculum, has_curriculum

    name = task.name[3:]
    if not has_curriculum(name):
        raise ValueError(f"reasoning-gym has no curriculum for '{name}', so rg:{name} cannot vary its "
                         "difficulty; turn adaptive difficulty off for this task")
    curriculum = create_curriculum(name)
    max_level = max(len(attr.levels) for attr in curriculum.attributes.values()) - 1
    data = getattr(task, "_data", None)
    defaults = dataclasses.asdict(data.config) if data is not None and dataclasses.is_dataclass(data.config) else {}
    dataset_cls = DATASETS[name][0]
    context = DefaultCurriculumContext(mode=RangeAttributeMode.UPPER_BOUND)
    cache: dict[int, object] = {}

    def dataset(level: int):
        if level not in cache:
            curriculum.set_global_level(level)
            options = {**defaults, "seed": seed * 7919 + 1_000_003 * (level + 1), "size": items_per_level}
            cache[level] = dataset_cls(config=curriculum.generate_configuration(options, context=context))
        return cache[level]

    def make(rng: random.Random, level: int) -> Example:
        from rlvr.tasks.reasoning_gym import rg_example

        return rg_example(dataset(level)[rng.randrange(items_per_level)])

    return Levels(make=make, min_level=0, max_level=max_level, default_level=None)


def group_success_rates(correct: Sequence[float], num_generations: int) -> list[float]:
    """Mean correctness of each group of `num_generations` consecutive completions (groups are contiguous)."""
    g = num_generations
    return [sum(correct[i:i + g]) / g for i in range(0, len(correct) - g + 1, g)]


class AdaptiveDifficulty:
    """An endless stream of training `Example`s whose level follows the groups' success rate.

    A drop-in replacement for the trainer's `ExampleStream` (`next(stream)`, `position`), plus
    `observe(group_success_rates)` after each step, `metrics()` for logging, and
    `state_dict()` / `load_state_dict()` for an exact resume.

    Args:
        task: a task with `make_example(rng, level)` or an `rg:<name>` task with a curriculum.
        target: the success rate to aim at (1/2 maximises the chance that a group has signal).
        band: no move while the window's mean success is within target +- band.
        window: groups per decision (e.g. 2 steps of 8 prompts: 16).
        min_level, max_level: the levels allowed (None: the task's range).
        start_level: the first level (None: the task's own level if known, else min_level).
        seed: seed of the problems drawn.
    """

    def __init__(self, task: Task, *, target: float = 0.5, band: float = 0.15, window: int = 16,
                 min_level: int | None = None, max_level: int | None = None, start_level: int | None = None,
                 seed: int = 0):
        if not 0.0 < target < 1.0:
            raise ValueError(f"target must be in (0, 1), got {target}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        levels = task_levels(task, seed=seed)
        self.min_level = levels.min_level if min_level is None else min_level
        self.max_level = levels.max_level if max_level is None else max_level
        if self.min_level > self.max_level:
            raise ValueError(f"min_level {self.min_level} > max_level {self.max_level}")
        start = start_level if start_level is not None else levels.default_level
        self.level = min(max(self.min_level if start is None else start, self.min_level), self.max_level)
        self.task, self.target, self.band, self.window, self.seed = task, target, band, window, seed
        self._make = levels.make
        self.position = 0
        self._open: list[float] = []
        self.last_success: float | None = None
        self._seen: dict[int, float] = {}  # level -> mean success of its last window
        self._drawn: list[int] = []  # the level of each example drawn since the last observe

    def __iter__(self):
        return self

    def __next__(self) -> Example:
        rng = random.Random(self.seed * 1_000_003 + self.position)
        self.position += 1
        self._drawn.append(self.level)
        return self._make(rng, self.level)

    def observe(self, group_success_rates: Sequence[float]) -> int:
        """Add the success rates (in [0, 1]) of the groups drawn since the last call, one per example
        drawn, in the order drawn; return the level.

        Every `window` groups: level +1 if their mean is above target + band, -1 if below
        target - band (within [min_level, max_level]); then a fresh window starts. A window holds
        groups of one level only: once a window moves the level, the rest of the call's groups (drawn
        before the move, at the old level: dynamic sampling draws several rounds per step) are not
        counted towards the new level. (Rates passed without drawing through this stream count at
        the current level.) Each level's
        last mean is remembered: a move down to a level seen with no higher success (or up to one
        seen with no lower) is not made; then, as at the end of the range, the level goes to the one
        seen nearest the target if it is clearly nearer (by more than band / 2) (lower levels are not always easier for a given model: an SFT model
        trained on 0-99 did worse on 0-9 than on 0-99).
        """
        drawn, self._drawn = self._drawn, []
        if len(drawn) != len(group_success_rates):
            drawn = [self.level] * len(group_success_rates)
        for rate, level in zip(group_success_rates, drawn):
            if level != self.level:
                continue  # drawn at a level the stream has since left: it says nothing of this one
            self._open.append(float(rate))
            if len(self._open) < self.window:
                continue
            mean = sum(self._open) / len(self._open)
            self.last_success, self._open = mean, []
            self._seen[self.level] = mean
            self.level = self._next_level(mean)
        return self.level

    def _next_level(self, mean: float) -> int:
        """The level after a window of mean success `mean` at the current level."""
        step = 1 if mean > self.target + self.band else -1 if mean < self.target - self.band else 0
        if step == 0:
            return self.level
        neighbour = min(max(self.level + step, self.min_level), self.max_level)
        seen = self._seen.get(neighbour)
        # a move goes the wanted way unless that level was seen no better (an "easier" level that
        # the model did no better on): then, and at the end of the range, the level seen nearest
        # the target, if it is nearer than this one
        if neighbour != self.level and (seen is None or (seen - mean) * step < 0):
            return neighbour
        distance = {level: abs(m - self.target) for level, m in self._seen.items()}
        best = min(distance, key=lambda level: (distance[level], abs(level - self.level)))
        return best if distance[self.level] - distance[best] > self.band / 2 else self.level

    def metrics(self) -> dict[str, float]:
        """`curriculum/level` and, once a window has closed, `curriculum/success` (its mean)."""
        out = {"curriculum/level": float(self.level)}
        if self.last_success is not None:
            out["curriculum/success"] = self.last_success
        return out

    def state_dict(self) -> dict:
        """JSON-serialisable state: with it, the resumed stream continues exactly."""
        return {"position": self.position, "level": self.level, "open": list(self._open),
                "last_success": self.last_success, "seed": self.seed,
                "seen": {str(level): m for level, m in self._seen.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"curriculum state was saved with seed {state['seed']}, not {self.seed}")
        self.position, self.level = int(state["position"]), int(state["level"])
        self._open = [float(x) for x in state.get("open", [])]
        self.last_success = state.get("last_success")
        self._seen = {int(level): float(m) for level, m in state.get("seen", {}).items()}


class ExampleStream:
    """Training examples in a seeded random order, epoch after epoch; `position` makes resume exact."""

    def __init__(self, examples: list, seed: int, position: int = 0):
        if not examples:
            raise ConfigError("the task has no training examples")
        self.examples, self.seed, self.position = examples, seed, position

    def __iter__(self):
        return self

    def __next__(self):
        epoch, index = divmod(self.position, len(self.examples))
        if index == 0 or not hasattr(self, "_order") or self._epoch != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order, self._epoch = torch.randperm(len(self.examples), generator=g).tolist(), epoch
        self.position += 1
        return self.examples[self._order[index]]


def example_stream(cfg, task: Task, position: int = 0):
    """The run's stream of training examples, `next(stream)` one at a time: the adaptive-difficulty
    stream when `curriculum.enabled` (a config without that section is read as off), else the task's
    training examples in the run's seeded order, from `position` on (resume)."""
    c = getattr(cfg, "curriculum", None)
    if c is not None and c.enabled:
        return AdaptiveDifficulty(task, target=c.target, band=c.band, window=c.window, min_level=c.min_level,
                                  max_level=c.max_level, start_level=c.start_level, seed=cfg.run.seed)
    return ExampleStream(task.train_examples(), cfg.run.seed, position)
