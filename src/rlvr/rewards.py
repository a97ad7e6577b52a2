"""Reward functions (TRL's signature) and a scorer that survives the ones that raise or hang.

A reward function is `f(completions, **columns) -> list[float]`, as in TRL: `completions` is a
list of strings or of conversations (`[{"role": "assistant", "content": str}]`), each column a
list aligned with it. So seed 000's and seed 002's functions work unchanged.

`score` calls each function on the whole batch, returns the weighted total and every part (as
GRPO-Zero does). A function that raises is retried completion by completion, so only the bad
completion scores 0 (counted in `errors`, logged). User-supplied functions run in a forked child
process, in its own process group, killed with its subprocesses at the time-out (`rlvr.sandbox`);
a batch call that times out is not retried (every completion scores 0). One fork per function
per batch (~10 ms); built-in rewards, marked `trusted`, run in-process.

Values (issue 21): one rule, TRL's rule for None extended. A value that is None, NaN, +-inf or
beyond float32's range is masked: NaN in the function's part, left out of that completion's
weighted total (the total is finite by construction) and of the reward's mean, and counted per
function by the trainer (`reward/<name>/nonfinite`). For the built-in `steps` reward NaN is its
"not applicable". A broken function stops the run (`RewardFunctionError`): one that raised on
every completion of its first calls, or timed out several calls in a row.

Columns: the trainer passes `_example` (list[Example]), read by the accuracy reward, next to the
examples' own columns (`question`, `answer`, metadata such as `target`, `nums`, `difference`);
`example_columns` builds them. Completions are passed as sampled (TRL's convention: without the
prompt's assistant prefill); the built-in rewards are built with the prefill and put it back.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rlvr.judge import is_lenient_format, is_strict_format, judge
from rlvr.prompts import ANSWER_OPEN, extract_answer, parse_completion
from rlvr.reward_context import Recorder, RewardLogs, TrainerState, is_async, run_coroutine
from rlvr.sandbox import run_forked, run_inline
from rlvr.tasks.base import Example, Task
from rlvr.trl_rewards import accuracy_reward, think_format_reward  # TRL's names: from rlvr.rewards import ...

logger = logging.getLogger(__name__)
RewardFn = Callable[..., list]
__all__ = ["RewardFn", "RewardFunctionError", "RewardLogs", "TrainerState", "get_reward", "score"]
TRL_KEYS = ("prompts", "completion_ids", "trainer_state", "log_extra", "log_metric")
"""keyword arguments TRL passes that are not dataset columns"""


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, a message dict, or a list of messages (joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return "".join(str(m.get("content", "")) for m in completion)


def trusted(fn: RewardFn) -> RewardFn:
    """Mark a reward function as safe to run in-process (no fork, no time-out)."""
    fn.rlvr_trusted = True
    return fn


def is_trusted(fn: RewardFn) -> bool:
    return bool(getattr(fn, "rlvr_trusted", False))


def _with_prefill(text: str, prefill: str) -> str:
    """prefill + text, unless the text already starts with the prefill."""
    return text if not prefill or text.startswith(prefill) else prefill + text


# ------------------------------------------------------------------------------ built-ins


def make_format_reward(*, strict: bool = False, prefill: str = "") -> RewardFn:
    """1.0 for a completion in the think/answer format (strict: nothing else around), else 0.0."""
    check = is_strict_format if strict else is_lenient_format

    @trusted
    def format_reward(completions: list, **columns: Any) -> list[float]:
        return [float(check(_with_prefill(completion_text(c), prefill))) for c in completions]

    format_reward.__name__ = "format_reward_strict" if strict else "format_reward"
    return format_reward


format_reward = make_format_reward(strict=False)
format_reward_strict = make_format_reward(strict=True)


def make_accuracy_reward(task: Task, *, prefill: str = "") -> RewardFn:
    """The task's verdict on each completion (`rlvr.judge.judge`): 1.0 right, 0.0 wrong.

    In training the rollout has judged every completion already and passes the verdicts in the
    `_verdicts` column (verify runs once per completion). Otherwise the examples come from the
    `_example` column, else are rebuilt from the `question`, `answer` and metadata columns (a TRL
    dataset made from `Example.columns()`).
    """

    @trusted
    def accuracy_reward(completions: list, _example: Sequence[Example] | None = None,
                        _verdicts: Sequence | None = None, **columns: Any) -> list[float]:
        if _verdicts is not None:
            return [v.correct for v in _verdicts]
        examples = _example if _example is not None else examples_from_columns(columns, len(completions))
        return [judge(task, _with_prefill(completion_text(c), prefill), ex).correct
                for c, ex in zip(completions, examples, strict=True)]

    return accuracy_reward


def examples_from_columns(columns: dict[str, Sequence], n: int) -> list[Example]:
    """Examples rebuilt from TRL-style columns: `question`, `answer`, the rest is metadata."""
    missing = [k for k in ("question", "answer") if k not in columns]
    if missing:
        raise KeyError(f"accuracy reward needs an `_example` column or {missing}; got {sorted(columns)}")
    meta_keys = [k for k in columns if k not in ("question", "answer", *TRL_KEYS)]
    return [
        Example(str(columns["question"][i]), str(columns["answer"][i]), {k: columns[k][i] for k in meta_keys})
        for i in range(n)
    ]


def make_partial_credit_reward(task: Task, *, prefill: str = "") -> RewardFn:
    """The task's partial credit for the extracted answer: `task.partial_credit(answer, example)`
    where the task has one (reasoning-gym's own score in [0, 1]), else `task.verify`.

    Accuracy counts only fully right answers; this reward keeps the partial credit as a signal,
    logged apart (`reward/partial_credit/mean`). Gameable on some datasets (a hedge such as
    "YesNo" earns ~0.5 on rg:syllogism): `rlvr doctor` warns when a trivial answer scores well.
    """
    credit = getattr(task, "partial_credit", None) or task.verify

    @trusted
    def partial_credit(completions: list, _example: Sequence[Example] | None = None, **columns: Any) -> list[float]:
        examples = _example if _example is not None else examples_from_columns(columns, len(completions))
        return [
            float(credit(extract_answer(_with_prefill(completion_text(c), prefill)), ex))
            for c, ex in zip(completions, examples, strict=True)
        ]

    return partial_credit


def make_length_penalty(*, max_length: int = 1024, soft_length: int | None = None,
                        count: Callable[[str], int] = len) -> RewardFn:
    """0 up to `soft_length`, then falling linearly to -1 at `max_length` (and -1 beyond).

    r(L) = -min(1, max(0, L - L_soft) / (L_max - L_soft)), DAPO's soft overlong punishment
    (Yu et al. 2025, arXiv:2503.14476, eq. 13). L = count(text): characters by default; pass
    `count=lambda s: len(tokenizer.encode(s))` for tokens. soft_length defaults to 3/4 max_length.
    """
    soft = int(0.75 * max_length) if soft_length is None else soft_length
    if not 0 <= soft < max_length:
        raise ValueError(f"need 0 <= soft_length < max_length, got {soft}, {max_length}")

    @trusted
    def length_penalty(completions: list, **columns: Any) -> list[float]:
        return [-min(1.0, max(0, count(completion_text(c)) - soft) / (max_length - soft)) for c in completions]

    return length_penalty


_NUM = r"-?\d{1,30}(?:\.\d{1,30})?"  # bounded: no regex backtracking blow-up on a long digit run
_STATEMENT = re.compile(rf"(?<![\w.)])(?:{_NUM}(?:\s*[-+*/×]\s*{_NUM}){{1,16}}\s*=\s*{_NUM}"
                        rf"|{_NUM}\s*(?:<=|>=|<|>|≤|≥)\s*{_NUM})(?![\w.])")


def statements(text: str) -> list[str]:
    """The arithmetic statements of `text`, spaces removed, in order: equations whose left side
    is numbers joined by + - * / × (`11-6=5`, `48/2 = 24`) and comparisons of two numbers
    (`16 < 91`). Numbers of more than 30 digits and left sides of more than 17 numbers are not
    read (bounded work per character)."""
    return [re.sub(r"\s+", "", m.group()).replace("×", "*") for m in _STATEMENT.finditer(text)]


def reasoning_text(text: str) -> str:
    """The reasoning of a completion: its think blocks (an unclosed one too), else the text
    before the first answer tag."""
    parsed = parse_completion(text)
    thinks = parsed.thinks + ([parsed.open_think] if parsed.open_think is not None else [])
    return "\n".join(thinks) if thinks else text.split(ANSWER_OPEN, 1)[0]


def steps_f1(found: Sequence[str], reference: Sequence[str]) -> float:
    """F1 of two multisets of statements: 2 |found ∩ reference| / (|found| + |reference|)."""
    if not found and not reference:
        return 1.0
    matched = sum((Counter(found) & Counter(reference)).values())
    return 2 * matched / (len(found) + len(reference))


def make_steps_reward(task: Task, *, prefill: str = "") -> RewardFn:
    """How many of the worked solution's steps the reasoning gets right: the F1 between the
    arithmetic statements (`statements`) of the completion's reasoning and those of the task's
    own worked solution (`task.demonstration`); NaN ("not applicable", 0 in the total) for an
    example without one.

    A process reward: two wrong answers differ when one has more right columns, so a group whose
    answers are all wrong still has signal. Checked against the reference, not merely for truth:
    a reward for the fraction of *true* statements pays for easy irrelevant ones, and a sampled
    completion wrote them after 5 GRPO steps with it (`16<12, so -1<12, so -16<12` for a wrong
    answer; bench/results/grpo_process_rewards.json). The F1 also takes points off for extra
    statements.
    For tasks with one canonical procedure (subtraction, gsm8k's worked solutions), not for
    countdown, whose search has many right paths. Weight it below accuracy.
    """
    cache: dict[tuple[str, str], list[str] | None] = {}

    def reference(ex: Example) -> list[str] | None:
        key = (ex.question, ex.answer)
        if key not in cache:
            demo = task.demonstration(ex)
            cache[key] = None if demo is None else statements(reasoning_text(demo))
        return cache[key]

    @trusted
    def steps_reward(completions: list, _example: Sequence[Example] | None = None, **columns: Any) -> list[float]:
        examples = _example if _example is not None else examples_from_columns(columns, len(completions))
        out = []
        for c, ex in zip(completions, examples, strict=True):
            ref = reference(ex)
            found = statements(reasoning_text(_with_prefill(completion_text(c), prefill)))
            out.append(math.nan if not ref else steps_f1(found, ref))
        return out

    return steps_reward


REWARDS: dict[str, Callable[..., RewardFn]] = {
    "format": lambda task=None, prefill="", **o: make_format_reward(strict=False, prefill=prefill, **o),
    "format_strict": lambda task=None, prefill="", **o: make_format_reward(strict=True, prefill=prefill, **o),
    "accuracy": lambda task=None, prefill="", **o: make_accuracy_reward(_need(task, "accuracy"), prefill=prefill, **o),
    "partial_credit": lambda task=None, prefill="", **o: make_partial_credit_reward(_need(task, "partial_credit"),
                                                                                   prefill=prefill, **o),
    "length": lambda task=None, prefill="", **o: make_length_penalty(**o),
    "steps": lambda task=None, prefill="", **o: make_steps_reward(_need(task, "steps"), prefill=prefill, **o),
}
"""name -> factory(task, prefill, **options) of the built-in rewards"""


def _need(task: Task | None, name: str) -> Task:
    if task is None:
        raise ValueError(f"the {name} reward needs the task (get_reward({name!r}, task=...))")
    return task


def get_reward(spec: str, *, task: Task | None = None, prefill: str = "", **options: Any) -> RewardFn:
    """A built-in reward by name (REWARDS), or a user's `path/file.py:function` (`load_reward`)."""
    if spec in REWARDS:
        return REWARDS[spec](task=task, prefill=prefill, **options)
    if ":" in spec:
        if options:
            raise ValueError(f"options {sorted(options)} given for user reward {spec!r}")
        return load_reward(spec)
    raise ValueError(f"unknown reward {spec!r}; built-in: {', '.join(REWARDS)}; or path/file.py:function")


def resolve_reward(spec: str, task: Task | None = None, *, prefill: str = "", **options: Any) -> tuple[RewardFn, bool]:
    """(function, is_builtin) for a reward spec; see `get_reward`."""
    return get_reward(spec, task=task, prefill=prefill, **options), spec in REWARDS


def reward_name(spec: str) -> str:
    """The name a reward is reported under: "accuracy", or "my_reward" for "dir/f.py:my_reward"."""
    return spec.rpartition(":")[2] if ":" in spec else spec


def load_reward(spec: str) -> RewardFn:
    """A user's reward function from "path/to/file.py:function_name" or "package.module:name"."""
    import importlib

    from rlvr.tasks.custom import import_file

    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise ValueError(f"expected path/to/file.py:function_name, got {spec!r}")
    module = import_file(where) if where.endswith(".py") else importlib.import_module(where)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{where} has no function {name!r}")
    return fn


def example_columns(examples: Sequence[Example]) -> dict[str, list]:
    """Columns for `score`: `_example` plus every key of `Example.columns()` (None where absent)."""
    rows = [ex.columns() for ex in examples]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {"_example": list(examples), **{k: [row.get(k) for row in rows] for k in keys}}


# --------------------------------------------------------------------------------- scoring

FLOAT32_MAX = 3.4028234663852886e38
"""the largest float32: a reward beyond it would be inf once the trainer makes a tensor of it"""
TIMEOUTS_TO_STOP = 3
"""a reward function whose calls time out this many times in a row stops the run"""
BROKEN_AFTER_CALLS = 2
"""a reward function that raised on every completion of its first this-many calls stops the run"""


class RewardFunctionError(RuntimeError):
    """A reward function that cannot be used: it raised on every completion of its first calls
    (`BROKEN_AFTER_CALLS`), or timed out `TIMEOUTS_TO_STOP` calls in a row. A broken reward is a
    bug, not noise: training on it would train on nothing, so the run stops naming the function
    (`rlvr train` prints the message in one line and exits 1)."""


@dataclass
class RewardResult:
    total: list[float]
    """weighted sum per completion over the functions that gave a value: masked parts (NaN) are
    left out, so the total is finite; clamped to float32's range"""
    parts: dict[str, list[float]]
    """per reward-function name, unweighted; NaN where it gave no finite value (None, NaN, +-inf,
    beyond float32: "not applicable", masked out of the total and of the reward's mean)"""
    errors: dict[str, int]
    """per name: completions whose call raised or timed out (scored 0)"""
    logs: RewardLogs = field(default_factory=RewardLogs)
    """what the functions logged with TRL's log_extra / log_metric"""


@dataclass
class RewardHealth:
    """What `score` remembers of one reward function across calls (see `health_of`)."""

    calls: int = 0
    succeeded: bool = False
    """gave a value (finite or not) for at least one completion"""
    failed_calls: int = 0
    """calls that raised on every completion"""
    timeouts_in_a_row: int = 0


def health_of(fn: RewardFn) -> RewardHealth:
    """The function's health record when `score` is not given one: kept on the function itself
    (as `trusted` marks it). A run keeps its own records instead (`rlvr.rollout.WeightedReward.health`,
    fresh per `build_reward_fns`), so a callable reused by a second run in the same process starts
    clean. A callable that takes no attributes gets a fresh record each call (no memory)."""
    health = getattr(fn, "rlvr_health", None)
    if not isinstance(health, RewardHealth):
        health = RewardHealth()
        try:
            fn.rlvr_health = health
        except (AttributeError, TypeError):  # a bound method, a builtin
            pass
    return health


def check_weight(name: str, weight: float) -> float:
    """The weight as a float; ValueError naming the reward when it is not a finite float32 number
    (a NaN or 1e39 weight made every total non-finite)."""
    try:
        w = float(weight)
    except (TypeError, ValueError):
        raise ValueError(f"the weight of reward {name!r} must be a number, got {weight!r}") from None
    if not math.isfinite(w) or abs(w) > FLOAT32_MAX:
        raise ValueError(f"the weight of reward {name!r} must be a finite number (|w| <= 3.4e38), got {weight!r}")
    return w


def reward_value(value: Any) -> float:
    """A reward function's value as a float; NaN (masked) for None, NaN, +-inf and values beyond
    float32's range (TRL masks None the same way, with nansum over the functions). TypeError or
    ValueError for something that is not a number."""
    if value is None:
        return math.nan
    try:
        x = float(value)
    except OverflowError:  # an int beyond float64
        return math.nan
    return x if math.isfinite(x) and abs(x) <= FLOAT32_MAX else math.nan


def weighted_total(values: Sequence[float], weights: Sequence[float]) -> float:
    """sum_k w_k r_k over the functions k with a finite value r_k (0 when none has), clamped to
    +-FLOAT32_MAX: finite by construction, so a tensor of totals is finite."""
    t = sum(w * v for v, w in zip(values, weights) if math.isfinite(v))
    return max(-FLOAT32_MAX, min(FLOAT32_MAX, t))


def score(
    reward_funcs: list[tuple[str, RewardFn, float]],
    completions: list,
    columns: dict[str, Any],
    *,
    timeout_s: float = 10.0,
    health: Mapping[str, RewardHealth] | None = None,
    logs: RewardLogs | None = None,
) -> RewardResult:
    """Score completions with (name, function, weight) triples.

    `columns` values that are sequences as long as `completions` are per-completion columns;
    anything else (TRL's `trainer_state`) is passed unchanged to every call. `timeout_s` bounds
    each call of an untrusted function: the batch call, or the retries one completion at a time
    after the batch call raised (the first retry that times out ends them). `health`: each
    function's record across calls, by name (default: kept on the function, `health_of`). `logs`:
    given, every call also gets TRL's `log_extra` and `log_metric`, and what they log is added to
    it (and to the result). `async def` functions run concurrently, as in TRL: their batch calls
    together (`asyncio.gather`), and a function's retries together. Raises `RewardFunctionError`
    for a broken function (see `_check_health`).
    """
    names = [name for name, _, _ in reward_funcs]
    if len(set(names)) != len(names):
        raise ValueError(f"reward names must be unique, got {names}")
    weights = [check_weight(name, w) for name, _, w in reward_funcs]
    n, parts, errors = len(completions), {}, {}
    with_logs = logs is not None
    coroutines = [(name, fn) for name, fn, _ in reward_funcs if is_async(fn)]
    first = _gather_batch_calls(coroutines, completions, columns, timeout_s, with_logs) if coroutines and n else {}
    for name, fn, _ in reward_funcs:
        record = health[name] if health is not None and name in health else health_of(fn)
        parts[name], errors[name] = _score_one(name, fn, completions, columns, timeout_s, record, logs,
                                               first.get(name))
    total = [weighted_total([parts[name][i] for name in names], weights) for i in range(n)]
    return RewardResult(total=total, parts=parts, errors=errors, logs=logs if with_logs else RewardLogs())


def _run_jobs(fn, completions, columns, jobs: list[tuple[int, int]], timeout_s: float,
              with_logs: bool) -> list[tuple[str, Any]]:
    """The outcome of each call fn(completions[start:stop]): in a forked child unless the function
    is trusted; the calls of an async function concurrently, in one job."""
    forked = not is_trusted(fn) and hasattr(os, "fork")
    if is_async(fn):
        return _together(lambda: [_outcome_async(fn, completions, columns, job, with_logs) for job in jobs],
                         len(jobs), forked, timeout_s)

    def job(k: int) -> tuple[str, Any]:
        return _outcome(fn, completions, columns, jobs[k], with_logs)

    return run_forked(job, len(jobs), timeout_s) if forked else run_inline(job, len(jobs))


def _together(make_calls: Callable[[], list], count: int, forked: bool, timeout_s: float) -> list[tuple[str, Any]]:
    """The outcomes of `count` coroutines (made by `make_calls` where they run) awaited together
    (`asyncio.gather`) in one job, forked or inline; a job that fails or times out is every call's outcome."""
    async def gather() -> list:
        return list(await asyncio.gather(*make_calls()))

    def together(_: int) -> tuple[str, Any]:
        return "ok", run_coroutine(gather())

    status, payload = (run_forked(together, 1, timeout_s) if forked else run_inline(together, 1))[0]
    return payload if status == "ok" else [(status, payload)] * count


def _gather_batch_calls(fns, completions, columns, timeout_s, with_logs) -> dict[str, tuple[str, Any]]:
    """name -> outcome of the batch call of each async function, all run together in one job
    (TRL's asyncio.gather; forked when any is untrusted)."""
    n = len(completions)
    forked = any(not is_trusted(fn) for _, fn in fns) and hasattr(os, "fork")
    outcomes = _together(lambda: [_outcome_async(fn, completions, columns, (0, n), with_logs) for _, fn in fns],
                         len(fns), forked, timeout_s)
    return {name: outcome for (name, _), outcome in zip(fns, outcomes)}


def _score_one(name, fn, completions, columns, timeout_s, health: RewardHealth, logs: RewardLogs | None,
               first: tuple[str, Any] | None = None) -> tuple[list[float], int]:
    """The batch call (its outcome `first` when already run); if it raises, one call per completion
    (failures score 0); if it times out, every completion scores 0 (no retries: a hanging function
    costs one time-out per call). What the successful calls logged is added to `logs`."""
    n = len(completions)
    if n == 0:
        return [], 0
    with_logs = logs is not None
    status, payload = first if first is not None else _run_jobs(fn, completions, columns, [(0, n)], timeout_s,
                                                                with_logs)[0]
    if status == "ok":
        _check_health(name, health, ok=True, timed_out=False, error="", timeout_s=timeout_s)
        if with_logs:
            logs.merge(payload[1])
        return payload[0], 0
    if status == "timeout":
        outcomes = [(status, payload)] * n
    else:
        outcomes = _run_jobs(fn, completions, columns, [(i, i + 1) for i in range(n)], timeout_s, with_logs)
    values = [p[0][0] if s == "ok" else 0.0 for s, p in outcomes]
    if with_logs:
        for s, p in outcomes:
            if s == "ok":
                logs.merge(p[1])
    bad = [p for s, p in outcomes if s != "ok"]
    timed_out = any(s == "timeout" for s, _ in outcomes)
    logger.warning("reward %r failed on the batch (%s); %d of %d completions scored 0%s", name, payload,
                   len(bad), n, f", first per completion: {bad[0]}" if bad and status != "timeout" else "")
    _check_health(name, health, ok=len(bad) < n, timed_out=timed_out,
                  error=bad[0] if status != "timeout" and bad else payload, timeout_s=timeout_s)
    return values, len(bad)


def _check_health(name: str, health: RewardHealth, *, ok: bool, timed_out: bool, error: str,
                  timeout_s: float) -> None:
    """Record one call; raise RewardFunctionError when the function is broken: TIMEOUTS_TO_STOP
    time-outs in a row, or an exception on every completion of its first BROKEN_AFTER_CALLS calls
    (a function that gave values once keeps today's containment: its failures score 0)."""
    health.calls += 1
    health.timeouts_in_a_row = health.timeouts_in_a_row + 1 if timed_out else 0
    if health.timeouts_in_a_row >= TIMEOUTS_TO_STOP:
        raise RewardFunctionError(
            f"reward function {name!r} timed out on {health.timeouts_in_a_row} calls in a row (no result "
            f"after {timeout_s:g} s each); fix it, or raise task.reward_timeout if it is only slow")
    if ok:
        health.succeeded = True
        return
    if not timed_out:
        health.failed_calls += 1
    if not health.succeeded and health.failed_calls >= BROKEN_AFTER_CALLS:
        raise RewardFunctionError(
            f"reward function {name!r} raised on every completion of its first {health.failed_calls} calls: "
            f"{error}")


def _call_kwargs(fn: RewardFn, completions: list, columns: dict[str, Any], start: int, stop: int,
                 recorder: Recorder | None) -> dict[str, Any]:
    """The keyword arguments of fn on completions[start:stop]: the matching column slices (and
    TRL's log_extra / log_metric, recorded by `recorder`), those it accepts."""
    n = len(completions)
    sliced = {k: (v[start:stop] if _is_aligned(v, n) else v) for k, v in columns.items()}
    if recorder is not None:
        sliced.update(recorder.kwargs())
    return {"completions": completions[start:stop], **_accepted_kwargs(fn, sliced)}


def _checked(out: Any, expected: int) -> list[float]:
    """A reward function's output as floats (NaN: no finite value, see `reward_value`)."""
    if inspect.isawaitable(out):  # a plain function returning a coroutine (a lambda around an async one)
        out = run_coroutine(out)
    values = list(out)
    if len(values) != expected:
        raise ValueError(f"returned {len(values)} rewards for {expected} completions")
    return [reward_value(v) for v in values]


def _is_aligned(value: Any, n: int) -> bool:
    return (not isinstance(value, (str, bytes, dict)) and hasattr(value, "__getitem__")
            and hasattr(value, "__len__") and len(value) == n)


def _accepted_kwargs(fn: RewardFn, columns: dict[str, Any]) -> dict[str, Any]:
    """All columns for a function with **kwargs; only the ones it names otherwise."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return columns
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return columns
    names = {p.name for p in params}
    return {k: v for k, v in columns.items() if k in names}


def _outcome(fn, completions, columns, job, with_logs: bool) -> tuple[str, Any]:
    """("ok", (values, logs or None)) of one call, or ("error", the exception in one line)."""
    recorder = Recorder() if with_logs else None
    try:
        values = _checked(fn(**_call_kwargs(fn, completions, columns, *job, recorder)), job[1] - job[0])
        return "ok", (values, recorder.logs if recorder else None)
    except KeyboardInterrupt:  # Ctrl-C must reach the trainer, which writes a checkpoint
        raise
    except BaseException as e:  # a user's function may raise anything, SystemExit included
        return "error", f"{type(e).__name__}: {e}"[:300]


async def _outcome_async(fn, completions, columns, job, with_logs: bool) -> tuple[str, Any]:
    """`_outcome` of an `async def` function."""
    recorder = Recorder() if with_logs else None
    try:
        out = await fn(**_call_kwargs(fn, completions, columns, *job, recorder))
        return "ok", (_checked(out, job[1] - job[0]), recorder.logs if recorder else None)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - CancelledError too: one function's failure
        return "error", f"{type(e).__name__}: {e}"[:300]


# ------------------------------------------------------------------ control rewards (issue 20)


def make_random_reward(*, p: float = 0.5, seed: int = 0) -> RewardFn:
    """A control: 1.0 with probability `p`, else 0.0, one Bernoulli draw per completion from its
    own generator (`random.Random(seed)`, in the order completions are scored), independent of
    the text and of the example.

    Bernoulli(0.5) rather than a uniform value: it is the random reward of "Spurious Rewards"
    (Shao et al. 2025, arXiv 2506.10947, gamma = 0.5), and it has the accuracy reward's shape (0 or
    1, flat groups with the same odds as a task solved half the time), so the control differs from
    the real run only in *which* completions are rewarded. Its expected gradient is zero: what a
    run gains with it comes from the update itself (clipping, sharpening), not from the verifier.
    A resumed run starts the draws again from `seed` (still independent of the text). `run.control:
    random-reward` builds it by name, so with seed 0: run.seed changes the completions, not the draws.
    """
    import random

    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random reward: p must be in [0, 1], got {p}")
    rng = random.Random(seed)

    @trusted
    def random_reward(completions: list, **columns: Any) -> list[float]:
        return [float(rng.random() < p) for _ in completions]

    return random_reward


REWARDS["random"] = lambda task=None, prefill="", **o: make_random_reward(**o)
