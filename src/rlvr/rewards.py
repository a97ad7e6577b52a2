"""Reward functions (TRL's signature) and a scorer that survives the ones that raise or hang.

A reward function is `f(completions, **columns) -> list[float]`, as in TRL: `completions` is a
list of strings or of conversations (`[{"role": "assistant", "content": str}]`), each column a
list aligned with it. So seed 000's and seed 002's functions work unchanged.

`score` calls each function on the whole batch, returns the weighted total and every part (as
GRPO-Zero does). A function that raises is retried completion by completion, so only the bad
completion scores 0 (counted in `errors`, logged). User-supplied functions run in a forked child
process killed at the time-out: a hang inside C code (`9**9**9` reached through seed 002's `eval`)
holds the GIL, so no thread could stop it. One fork per function per batch (~10 ms); built-in
rewards, marked `trusted`, run in-process.

Columns: the trainer passes `_example` (list[Example]), read by the accuracy reward, next to the
examples' own columns (`question`, `answer`, metadata such as `target`, `nums`, `difference`);
`example_columns` builds them. Completions are passed as sampled (TRL's convention: without the
prompt's assistant prefill); the built-in rewards are built with the prefill and put it back.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import pickle
import re
import select
import signal
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from typing import Any

from rlvr.judge import is_lenient_format, is_strict_format, judge
from rlvr.prompts import ANSWER_OPEN, parse_completion
from rlvr.tasks.base import Example, Task

logger = logging.getLogger(__name__)
RewardFn = Callable[..., list]
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


@dataclass
class RewardResult:
    total: list[float]
    """weighted sum per completion (NaN parts, a function's "not applicable", count as 0)"""
    parts: dict[str, list[float]]
    """per reward-function name, unweighted"""
    errors: dict[str, int]
    """per name: completions whose call raised or timed out (scored 0)"""


def score(
    reward_funcs: list[tuple[str, RewardFn, float]],
    completions: list,
    columns: dict[str, Any],
    *,
    timeout_s: float = 10.0,
) -> RewardResult:
    """Score completions with (name, function, weight) triples.

    `columns` values that are sequences as long as `completions` are per-completion columns;
    anything else (TRL's `trainer_state`) is passed unchanged to every call. `timeout_s` bounds
    each call of an untrusted function: the batch call, then each retried completion.
    """
    names = [name for name, _, _ in reward_funcs]
    if len(set(names)) != len(names):
        raise ValueError(f"reward names must be unique, got {names}")
    n, parts, errors = len(completions), {}, {}
    for name, fn, _ in reward_funcs:
        parts[name], errors[name] = _score_one(name, fn, completions, columns, timeout_s)
    total = [
        sum(w * parts[name][i] for name, _, w in reward_funcs if not math.isnan(parts[name][i]))
        for i in range(n)
    ]
    return RewardResult(total=total, parts=parts, errors=errors)


def _score_one(name, fn, completions, columns, timeout_s) -> tuple[list[float], int]:
    """The batch call; if it fails, one call per completion (failures score 0)."""
    n = len(completions)
    if n == 0:
        return [], 0
    forked = not is_trusted(fn) and hasattr(os, "fork")
    run = (lambda jobs: _run_forked(fn, completions, columns, jobs, timeout_s)) if forked else (
        lambda jobs: _run_inline(fn, completions, columns, jobs))
    status, payload = run([(0, n)])[0]
    if status == "ok":
        return payload, 0
    outcomes = run([(i, i + 1) for i in range(n)])
    values = [p[0] if s == "ok" else 0.0 for s, p in outcomes]
    bad = [p for s, p in outcomes if s != "ok"]
    logger.warning("reward %r failed on the batch (%s); per completion: %d of %d scored 0%s",
                   name, payload, len(bad), n, f", first: {bad[0]}" if bad else "")
    return values, len(bad)


def _call(fn: RewardFn, completions: list, columns: dict[str, Any], start: int, stop: int) -> list[float]:
    """fn on completions[start:stop] with the matching column slices; checked, as floats."""
    n = len(completions)
    sliced = {k: (v[start:stop] if _is_aligned(v, n) else v) for k, v in columns.items()}
    out = fn(completions=completions[start:stop], **_accepted_kwargs(fn, sliced))
    values = list(out)
    if len(values) != stop - start:
        raise ValueError(f"returned {len(values)} rewards for {stop - start} completions")
    return [math.nan if v is None else float(v) for v in values]


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


def _outcome(fn, completions, columns, job) -> tuple[str, Any]:
    try:
        return "ok", _call(fn, completions, columns, *job)
    except KeyboardInterrupt:  # Ctrl-C must reach the trainer, which writes a checkpoint
        raise
    except BaseException as e:  # a user's function may raise anything, SystemExit included
        return "error", f"{type(e).__name__}: {e}"[:300]


def _run_inline(fn, completions, columns, jobs) -> list[tuple[str, Any]]:
    return [_outcome(fn, completions, columns, job) for job in jobs]


def _run_forked(fn, completions, columns, jobs, timeout_s) -> list[tuple[str, Any]]:
    """Run the jobs in forked children; a job silent for `timeout_s` is killed and scored as a
    time-out, and a new child resumes with the next job."""
    outcomes: list[tuple[str, Any] | None] = [None] * len(jobs)
    k = 0
    while k < len(jobs):
        k = _fork_from(fn, completions, columns, jobs, k, timeout_s, outcomes)
    return outcomes


def _fork_from(fn, completions, columns, jobs, k0, timeout_s, outcomes) -> int:
    """One child runs jobs[k0:], streaming one frame per job; returns where to resume."""
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError as e:  # out of memory or processes: run here, without the time-out
        os.close(read_fd), os.close(write_fd)
        logger.warning("cannot fork for a reward function (%s); running it in-process", e)
        outcomes[k0:] = _run_inline(fn, completions, columns, jobs[k0:])
        return len(jobs)
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        try:
            for k in range(k0, len(jobs)):
                _write_frame(write_fd, (k, *_outcome(fn, completions, columns, jobs[k])))
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(0)
    os.close(write_fd)
    reader, k = _FrameReader(read_fd), k0
    try:
        while k < len(jobs):
            frame = reader.read(timeout_s)
            if frame is None:  # silent past the time-out, or the child died
                outcomes[k] = ("timeout" if reader.alive else "error",
                               f"no result after {timeout_s:g} s" if reader.alive else "the child process died")
                return k + 1
            k, status, payload = frame
            outcomes[k] = (status, payload)
            k += 1
        return k
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(read_fd)


def _write_frame(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj)
    data = struct.pack("<I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


class _FrameReader:
    """Length-prefixed pickles from a pipe, with a time-out per frame."""

    def __init__(self, fd: int):
        self.fd, self.buffer, self.alive = fd, b"", True

    def read(self, timeout_s: float) -> Any | None:
        deadline = time.monotonic() + timeout_s
        while True:
            if len(self.buffer) >= 4:
                size = struct.unpack("<I", self.buffer[:4])[0]
                if len(self.buffer) >= 4 + size:
                    frame, self.buffer = self.buffer[4 : 4 + size], self.buffer[4 + size :]
                    return pickle.loads(frame)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                self.alive = False
                return None
            self.buffer += chunk
