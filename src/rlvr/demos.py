"""Demonstrations for the SFT warm-up: procedural, from a teacher model's API, or from a user's JSONL.

A small model rarely writes `<think> ... </think> <answer> ... </answer>` on its own, so GRPO sees only
zero rewards and gets no signal; a few hundred demonstrations teach the format first (seed 004,
"Warming up with Supervised Fine-tuning"). They come from three places, all as `Demo` records:

- procedural: the task's own worked solution (`Task.demonstration`), free and always right;
- teacher: an OpenAI-compatible `/chat/completions` endpoint is shown the question *and* the ground
  truth (as in seed 004) and asked to reason its way to it;
- jsonl: a user's own (prompt, completion) pairs.

Where this departs from seed 004's script: plain `httpx` instead of the `openai` client (a local
llama.cpp / vLLM / Ollama server works the same); back-off on 5xx, time-outs and connection errors
as well as 429, honouring `Retry-After`; every reply is checked with the task's own verifier and
kept only if right (rejection sampling: a teacher told the answer still gets it wrong sometimes);
and each finished example is appended to a JSONL file at once, so an interrupted job resumes where
it stopped instead of paying for the same requests again. The API key is read from the environment
and never written anywhere: it is stripped (secret mounts end in a newline) and checked at start,
and every error text is scrubbed of it, in each form it can take (raw, repr- or JSON-escaped,
URL-quoted, cut short), before it is cut to length or logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterator, Sequence, TypeVar

import httpx

from rlvr.apikey import APIKeyError, read_api_key, scrub_secret
from rlvr.prompts import build_messages, extract_answer, format_completion, parse_completion
from rlvr.tasks.base import Example, Task

log = logging.getLogger(__name__)

TEACHER_NOTE = (
    "You will also be given the correct final answer. Reason step by step so that your thinking "
    "reaches that answer by itself; never mention that you were given it. Reply in exactly this "
    "format and nothing else:\n<think>\nyour reasoning\n</think>\n<answer>the final answer only, "
    "written the same way as the correct answer</answer>"
)


class DemoFileError(ValueError):
    """A demonstrations file cannot be read; the message names the file and line."""


class TeacherAPIError(RuntimeError):
    """The teacher endpoint cannot be used (bad key, wrong URL or model, or down for good)."""


# ----------------------------------------------------------------------------------------------
# The record


@dataclass
class Demo:
    """One demonstration: the user-turn text and the assistant completion to imitate."""

    question: str
    """the question: `Example.question` (the task's `user_message` makes the user turn of it),
    or the user-turn text itself for a JSONL demo"""
    completion: str
    """the assistant turn, `<think> ... </think>` then `<answer> ... </answer>`"""
    ground_truth: str = ""
    """the expected answer ("" when unknown, e.g. a user's JSONL without an answer column)"""
    metadata: dict[str, Any] = field(default_factory=dict)
    """the example's extra columns (or a JSONL line's other keys)"""
    source: str = "procedural"
    """where it came from: "procedural", "teacher" or "jsonl\""""
    prompt_messages: list[dict[str, Any]] | None = None
    """the whole chat prompt when a JSONL line gave one (it may carry its own system turn)"""
    messages: list[dict[str, Any]] | None = None
    """a multi-turn demonstration (a tool task's `demonstration_messages`): the whole trajectory after
    the prompt, assistant / tool / assistant; `completion` is then its last turn"""

    def to_record(self) -> dict[str, Any]:
        """The JSON form: {"question", "completion", "answer", "metadata", "source"} and, when set,
        "prompt_messages" and "messages"."""
        record: dict[str, Any] = {"question": self.question, "completion": self.completion,
                                  "answer": self.ground_truth, "metadata": self.metadata,
                                  "source": self.source}
        if self.prompt_messages is not None:
            record["prompt_messages"] = self.prompt_messages
        if self.messages is not None:
            record["messages"] = self.messages
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Demo:
        """Inverse of `to_record`; "question" may be absent when "prompt_messages" is given."""
        messages = record.get("prompt_messages")
        question = record.get("question")
        if question is None and messages:
            question = _last_user_text(messages)
        if question is None or "completion" not in record:
            raise KeyError("a demo record needs 'completion' and 'question' or 'prompt_messages'")
        answer = record.get("answer")
        return cls(question=question, completion=record["completion"],
                   ground_truth="" if answer is None else str(answer),
                   metadata=dict(record.get("metadata") or {}),
                   source=record.get("source", "jsonl"), prompt_messages=messages,
                   messages=record.get("messages"))


def write_demos_jsonl(path: str | os.PathLike, demos: Sequence[Demo]) -> Path:
    """Write demos to `path` (JSONL, one `Demo.to_record()` per line), replacing the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for demo in demos:
            fh.write(_dumps(demo.to_record()) + "\n")
    return path


def read_demos_jsonl(path: str | os.PathLike) -> list[Demo]:
    """Read a file written by `write_demos_jsonl` or `teacher_demos` (rejected lines are skipped)."""
    demos = []
    for lineno, record in _iter_jsonl(Path(path)):
        if record.get("accepted") is False:
            continue
        try:
            demos.append(Demo.from_record(record))
        except KeyError as err:
            raise DemoFileError(f"{path}:{lineno}: {err.args[0]}") from None
    return demos


# ----------------------------------------------------------------------------------------------
# Procedural and user-supplied demonstrations


def worked_solution(task: Task, example: Example, *, trajectory: bool = True) -> str | list[dict] | None:
    """The task's worked solution: its `demonstration` text, else (a tool task, when `trajectory`) its
    `demonstration_messages`, the whole trajectory; None when it has neither. The one rule for the
    SFT warm-up's procedural demonstrations and the self warm-up's few-shot examples."""
    text = task.demonstration(example)
    if text is not None or not trajectory or not callable(getattr(task, "demonstration_messages", None)):
        return text
    return task.demonstration_messages(example) or None


def procedural_demos(task: Task, examples: Sequence[Example]) -> list[Demo]:
    """The task's own worked solutions (`worked_solution`); examples without one are skipped."""
    demos = []
    for example in examples:
        worked = worked_solution(task, example)
        if worked is None:
            continue
        messages = worked if isinstance(worked, list) else None
        demos.append(Demo(example.question, messages[-1]["content"] if messages else worked, example.answer,
                          dict(example.metadata), "procedural", messages=messages))
    if examples and not demos:
        log.warning("task %r has no procedural demonstrations; use a teacher or a JSONL file",
                    task.name)
    return demos


def load_demos_jsonl(path: str | os.PathLike, *, prompt_key: str = "prompt",
                     completion_key: str = "completion", answer_key: str = "answer") -> list[Demo]:
    """A user's JSONL of (prompt, completion) pairs, one object per line.

    A prompt is a string (the user turn) or a list of chat messages; a completion is a string or
    a list of messages (TRL's conversational form: the assistant contents are joined; a list with
    tool messages is a multi-turn trajectory, trained on its assistant turns only). The answer
    column is optional; every other key goes into `metadata`. Errors name the file and line.
    """
    path = Path(path)
    demos = []
    for lineno, record in _iter_jsonl(path):
        where = f"{path}:{lineno}"
        for key, option in ((prompt_key, "prompt_key"), (completion_key, "completion_key")):
            if key not in record:
                present = ", ".join(repr(k) for k in record) or "none"
                raise DemoFileError(f"{where}: missing key {key!r} (keys on this line: {present}); "
                                    f"name the right column with {option}=")
        question, messages = _prompt_value(record[prompt_key], where)
        completion, trajectory = _completion_value(record[completion_key], where)
        answer = record.get(answer_key)
        metadata = {k: v for k, v in record.items() if k not in (prompt_key, completion_key, answer_key)}
        demos.append(Demo(question, completion, "" if answer is None else str(answer), metadata,
                          "jsonl", messages, trajectory))
    if not demos:
        raise DemoFileError(f"{path}: no demonstrations in the file")
    unformatted = sum(extract_answer(d.completion) is None for d in demos)
    if unformatted:
        log.warning("%s: %d of %d completions have no <answer> ... </answer>; the SFT warm-up will "
                    "teach the model to answer without it", path, unformatted, len(demos))
    return demos


def _prompt_value(value: Any, where: str) -> tuple[str, list[dict[str, Any]] | None]:
    """(user-turn text, full message list or None) from a string or a list of chat messages."""
    if isinstance(value, str) and value.strip():
        return value, None
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        text = _last_user_text(value)
        if text is not None:
            return text, value
    raise DemoFileError(f"{where}: the prompt must be a non-empty string or a list of chat messages "
                        "with a user turn ({'role': 'user', 'content': ...})")


def _completion_value(value: Any, where: str) -> tuple[str, list[dict[str, Any]] | None]:
    """(completion text, trajectory or None) from a string, a message or a list of messages. Assistant
    messages only: their contents joined (TRL's conversational form). A list that also holds tool
    (or user) messages is a multi-turn trajectory, kept whole (`Demo.messages`: the SFT warm-up trains
    on the assistant turns only); its completion is the last assistant turn."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        roles = [m.get("role", "assistant") for m in value]
        if set(roles) != {"assistant"}:
            if "assistant" not in roles or any(not isinstance(m.get("content"), str) for m in value):
                raise DemoFileError(f"{where}: a multi-turn completion needs assistant turns and a string "
                                    "'content' in every message")
            trajectory = [{**m, "role": r} for m, r in zip(value, roles)]
            return [m for m in trajectory if m["role"] == "assistant"][-1]["content"], trajectory
        value = "".join(str(m.get("content") or "") for m in value)
    if isinstance(value, str) and value.strip():
        return value, None
    raise DemoFileError(f"{where}: the completion must be a non-empty string or assistant message(s)")


def _last_user_text(messages: list[dict[str, Any]]) -> str | None:
    users = [m.get("content") for m in messages if m.get("role") == "user"]
    return str(users[-1]) if users else None


# ----------------------------------------------------------------------------------------------
# Teacher demonstrations: prompt, reply checking, retries


def example_key(example: Example) -> str:
    """A stable id of an example (hash of question and answer): the resume key in `out_path`."""
    text = json.dumps([example.question, example.answer], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def build_teacher_messages(task: Task, example: Example,
                           system_prompt: str | None = None) -> list[dict[str, str]]:
    """The chat sent to the teacher: the student's prompt (`prompts.build_messages`) with
    `TEACHER_NOTE` added to the system turn and the correct answer (and the metadata, as in seed
    004) to the user turn. A given `system_prompt` replaces the whole system turn."""
    messages = build_messages(task, example)
    if messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": ""})
    note = f"{messages[0]['content']}\n\n{TEACHER_NOTE}".strip()
    messages[0] = {"role": "system", "content": note if system_prompt is None else system_prompt}
    user = f"{messages[-1]['content']}\n\nCorrect answer: {example.answer}"
    if example.metadata:
        user += f"\nMetadata: {_dumps(example.metadata)[:2000]}"
    messages[-1] = {"role": "user", "content": user}
    return messages


def normalize_completion(text: str) -> str | None:
    """Rewrite a reply as `prompts.format_completion(think, answer)`, dropping the text around the
    tags. The answer is the last `<answer>` after the last `</think>`. None when the think part or
    the answer is missing or empty, or the thinking holds answer tags (a bad example to imitate).
    """
    parsed = parse_completion(text)
    think = "\n\n".join(t.strip() for t in parsed.thinks)
    if not think or "answer>" in think:
        return None
    answers = [a for start, a in parsed.answers if start > parsed.think_closes[-1]]
    if not answers or not answers[-1].strip():
        return None
    return format_completion(think, answers[-1])


@dataclass
class Verdict:
    """The check of one teacher reply."""

    completion: str
    """the normalized completion (the raw reply when the format is wrong)"""
    extracted: str | None
    """the answer `extract_answer` found"""
    score: float | None
    """`task.verify(extracted, example)` (None: not verified)"""
    accepted: bool
    reason: str
    """"ok", "format", "wrong answer" or "verify error: ..." """


def judge_reply(task: Task, example: Example, reply: str, *, verify: bool = True,
                min_score: float = 1.0) -> Verdict:
    """Rejection sampling: keep a reply only if it has the format and the verifier scores it
    at least `min_score` (with `verify=False` only the format is checked)."""
    completion = normalize_completion(reply)
    if completion is None:
        return Verdict(reply, extract_answer(reply), None, False, "format")
    extracted = extract_answer(completion)
    if not verify:
        return Verdict(completion, extracted, None, True, "ok")
    try:
        score = float(task.verify(extracted, example))
    except Exception as err:  # a user's verifier: record its failure instead of stopping the job
        return Verdict(completion, extracted, None, False, f"verify error: {type(err).__name__}: {err}")
    accepted = score >= min_score
    return Verdict(completion, extracted, score, accepted, "ok" if accepted else "wrong answer")


def retry_delay(attempt: int, *, base_s: float, max_s: float, retry_after_s: float | None,
                rng: random.Random) -> float:
    """Seconds to wait before retry number `attempt + 1`.

    The server's `Retry-After` when it gave one (capped at `max_s`); otherwise exponential back-off
    with "equal jitter": d = min(max_s, base_s * 2**attempt), wait uniform in [d/2, d].
    """
    if retry_after_s is not None:
        return min(max(retry_after_s, 0.0), max_s)
    delay = min(max_s, base_s * 2.0**attempt)
    return delay * rng.uniform(0.5, 1.0)


def parse_retry_after(headers: httpx.Headers | dict[str, str]) -> float | None:
    """Seconds from `retry-after-ms` (OpenAI) or `Retry-After` (seconds or an HTTP date); None if absent."""
    headers = httpx.Headers(headers)
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000.0
        if "retry-after" in headers:
            value = headers["retry-after"]
            try:
                return float(value)
            except ValueError:
                return email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    except (ValueError, TypeError, OverflowError):
        pass
    return None


def message_text(response: dict[str, Any]) -> str:
    """The reply text of a chat-completions response. A separate `reasoning_content` / `reasoning`
    field (reasoning models behind vLLM, DeepSeek, Ollama) becomes the `<think>` part."""
    message = response["choices"][0]["message"]
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning.strip() and "<think>" not in content:
        content = f"<think>\n{reasoning.strip()}\n</think>\n{content.strip()}"
    return content


@dataclass
class _Reply:
    text: str | None  # None: failed after every retry
    attempts: int
    error: str = ""


@dataclass(frozen=True)
class _Job:
    """The settings of one teacher job (see `teacher_demos`); `api_key` lives only in memory."""

    url: str
    model: str
    api_key: str | None
    api_key_env: str
    temperature: float
    system_prompt: str | None
    concurrency: int
    timeout_s: float
    max_retries: int
    backoff_base_s: float
    max_backoff_s: float
    abort_after_failures: int | None
    verify: bool
    min_score: float

    def scrub(self, text: str) -> str:
        """Error text with the API key masked in every form (a server may echo it)."""
        return scrub_secret(text, self.api_key)

    def excerpt(self, text: str, limit: int = 200) -> str:
        """The first `limit` characters of a server's text, scrubbed BEFORE the cut (a cut through
        the key would leave a prefix that no longer matches it)."""
        return self.scrub(text[:limit + 4096])[:limit]


async def _ask_teacher(client: httpx.AsyncClient, job: _Job, messages: list[dict[str, str]],
                       semaphore: asyncio.Semaphore, rng: random.Random) -> _Reply:
    """POST one chat request; retry 429, 5xx, time-outs and connection errors with back-off.

    401/403/404 raise `TeacherAPIError` (a configuration problem: every request would fail).
    """
    body = {"model": job.model, "messages": messages, "temperature": job.temperature}
    headers = {"Authorization": f"Bearer {job.api_key}"} if job.api_key else {}
    error = ""
    for attempt in range(job.max_retries + 1):
        retry_after = None
        try:
            async with semaphore:  # held per attempt only: back-off sleeps free the slot
                response = await asyncio.wait_for(
                    client.post(job.url, json=body, headers=headers), job.timeout_s)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            error = f"no reply within {job.timeout_s} s"
        except httpx.TransportError as err:
            error = job.scrub(f"{type(err).__name__}: {err}")
        except Exception as err:  # noqa: BLE001 - anything else (httpx may quote the header): scrubbed, unchained
            raise TeacherAPIError(job.scrub(f"request to {job.url} failed: {type(err).__name__}: {err}")) from None
        else:
            status = response.status_code
            if status == 200:
                try:
                    return _Reply(message_text(response.json()), attempt + 1)
                except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                    error = f"malformed reply: {job.excerpt(response.text)!r}"
            elif status in (401, 403, 404):
                raise TeacherAPIError(_config_error(job, status, job.excerpt(response.text)))
            elif status == 429 or status >= 500:
                error = f"HTTP {status}: {job.excerpt(response.text)}"
                retry_after = parse_retry_after(response.headers)
            else:  # e.g. 400 (prompt too long): this example will not work, the others may
                return _Reply(None, attempt + 1, f"HTTP {status}: {job.excerpt(response.text, 300)}")
        if attempt < job.max_retries:
            delay = retry_delay(attempt, base_s=job.backoff_base_s, max_s=job.max_backoff_s,
                                retry_after_s=retry_after, rng=rng)
            log.info("teacher: %s; retry %d/%d in %.2f s", job.scrub(error), attempt + 1,
                     job.max_retries, delay)
            await asyncio.sleep(delay)
    return _Reply(None, job.max_retries + 1, job.scrub(error))


def _config_error(job: _Job, status: int, text: str) -> str:
    if status == 404:
        hint = f"check base_url (most servers want it to end in /v1) and the model name {job.model!r}"
    elif job.api_key:
        hint = f"check the key in ${job.api_key_env}"
    else:
        hint = f"${job.api_key_env} is not set; export the API key there"
    return f"HTTP {status} from {job.url}: {hint} (server said: {text})"


# ----------------------------------------------------------------------------------------------
# Teacher demonstrations: the resumable job


@dataclass
class TeacherResult:
    """What a teacher job produced: the accepted demos (in example order) and the counts."""

    demos: list[Demo]
    """accepted demonstrations, this run's and those found in `out_path`"""
    requested: int = 0
    """examples sent to the teacher in this run"""
    accepted: int = 0
    """... of which the verifier accepted"""
    rejected: int = 0
    """... of which were wrong or badly formatted (kept in `out_path` with "accepted": false)"""
    failed: int = 0
    """... of which got no reply after every retry (not in `out_path`: a re-run asks again)"""
    resumed: int = 0
    """examples already finished in `out_path`, not requested again"""
    retries: int = 0
    """HTTP attempts beyond the first, over all requests"""
    out_path: Path | None = None
    failures: Counter = field(default_factory=Counter)
    """why requests failed: error text (scrubbed, cut to 120 characters) -> count"""
    rejections: Counter = field(default_factory=Counter)
    """why replies were rejected: "wrong answer", "format", "verify error: ..." -> count"""

    def counts(self) -> dict[str, int]:
        return {"requested": self.requested, "accepted": self.accepted, "rejected": self.rejected,
                "failed": self.failed, "resumed": self.resumed, "retries": self.retries,
                "demos": len(self.demos)}

    def why_none(self) -> str:
        """Why no demonstration came back: the counts, and the commonest failure and rejection reasons."""
        def top(counter: Counter) -> str:
            return "; ".join(f"{n} x {reason}" for reason, n in counter.most_common(3))

        text = (f"the teacher gave no usable demonstration, so there is nothing to train on: "
                f"{self.requested} requested, {self.failed} failed, {self.rejected} rejected")
        if self.failures:
            text += f"; failures: {top(self.failures)}"
        if self.rejections:
            text += f"; rejections: {top(self.rejections)}"
        return text + f" (replies are in {self.out_path}; a re-run asks the failed ones again)"

    def summary(self) -> str:
        return (f"teacher: {self.requested} requested, {self.accepted} accepted, {self.rejected} "
                f"rejected, {self.failed} failed, {self.resumed} resumed from {self.out_path}; "
                f"{len(self.demos)} demonstrations")


def run_teacher_job(
    task: Task, examples: Sequence[Example], *, base_url: str, model: str,
    out_path: str | os.PathLike, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
    max_retries: int = 5, timeout_s: float = 60.0, system_prompt: str | None = None,
    temperature: float = 0.7, verify: bool = True, min_score: float = 1.0,
    backoff_base_s: float = 1.0, max_backoff_s: float = 60.0,
    abort_after_failures: int | None = 10, seed: int = 0,
    progress: Callable[[TeacherResult], None] | None = None,
) -> TeacherResult:
    """Ask an OpenAI-compatible teacher for a demonstration of each example; keep the right ones.

    Sends `POST {base_url}/chat/completions` with {"model", "messages", "temperature"} and, when
    `$api_key_env` is set, `Authorization: Bearer <key>` (a local server may need none). At most
    `concurrency` requests are in flight; each has `timeout_s` in total and is retried up to
    `max_retries` times on 429, 5xx, time-outs and connection errors (back-off from
    `backoff_base_s`, see `retry_delay`; `seed` seeds its jitter). A reply is kept if it has the
    think/answer format and `task.verify` scores its answer >= `min_score` (`verify=False`: the
    format only). Each finished example is appended to `out_path` and flushed, rejected ones with
    "accepted": false; examples already there (by `example_key`) are not requested again, so an
    interrupted job resumes. Raises `TeacherAPIError` on 401/403/404, or once
    `abort_after_failures` examples in a row failed every retry (None: never).
    `progress(result)` is called after each finished example. Blocking; inside a running event
    loop (a notebook) the job runs in a thread of its own.
    """
    try:
        api_key = read_api_key(api_key_env)
    except APIKeyError as err:
        raise TeacherAPIError(str(err)) from None
    job = _Job(url=base_url.rstrip("/") + "/chat/completions", model=model,
               api_key=api_key, api_key_env=api_key_env,
               temperature=temperature, system_prompt=system_prompt, concurrency=concurrency,
               timeout_s=timeout_s, max_retries=max_retries, backoff_base_s=backoff_base_s,
               max_backoff_s=max_backoff_s, abort_after_failures=abort_after_failures,
               verify=verify, min_score=min_score)
    return _run_sync(_teacher_job(task, examples, job, Path(out_path), random.Random(seed), progress))


def teacher_demos(task: Task, examples: Sequence[Example], **options: Any) -> list[Demo]:
    """The accepted teacher demonstrations: `run_teacher_job(task, examples, **options).demos`
    (same keyword arguments: `base_url`, `model`, `out_path` required; the counts are logged)."""
    return run_teacher_job(task, examples, **options).demos


async def _teacher_job(task: Task, examples: Sequence[Example], job: _Job, out_path: Path,
                       rng: random.Random, progress: Callable[[TeacherResult], None] | None,
                       ) -> TeacherResult:
    """Skip what `out_path` already holds, request the rest, return the accepted demos in order."""
    finished = _read_finished(out_path)
    keys = list(dict.fromkeys(example_key(ex) for ex in examples))
    todo = list({example_key(ex): ex for ex in examples if example_key(ex) not in finished}.items())
    result = TeacherResult(demos=[], resumed=len(keys) - len(todo), out_path=out_path)
    if todo:
        if job.api_key is None:
            log.info("$%s is not set: sending requests without an API key", job.api_key_env)
        await _request_all(task, todo, job, rng, finished, result, progress)
    result.demos = [Demo.from_record(finished[k]) for k in keys
                    if k in finished and finished[k].get("accepted")]
    log.info(result.summary())
    return result


async def _request_all(task: Task, todo: list[tuple[str, Example]], job: _Job, rng: random.Random,
                       finished: dict[str, dict[str, Any]], result: TeacherResult,
                       progress: Callable[[TeacherResult], None] | None) -> None:
    """Request every example in `todo`; write each finished one to the file as soon as it is done."""
    semaphore = asyncio.Semaphore(job.concurrency)
    limits = httpx.Limits(max_connections=job.concurrency, max_keepalive_connections=job.concurrency)

    async def one(key: str, example: Example) -> tuple[str, Example, _Reply]:
        messages = build_teacher_messages(task, example, job.system_prompt)
        return key, example, await _ask_teacher(client, job, messages, semaphore, rng)

    result.requested = len(todo)
    _end_with_newline(result.out_path)
    in_a_row = 0
    async with httpx.AsyncClient(timeout=httpx.Timeout(job.timeout_s), limits=limits) as client:
        pending = [asyncio.ensure_future(one(key, ex)) for key, ex in todo]
        try:
            with result.out_path.open("a", encoding="utf-8") as fh:
                for next_done in asyncio.as_completed(pending):
                    key, example, reply = await next_done
                    result.retries += reply.attempts - 1
                    if reply.text is None:
                        result.failed += 1
                        result.failures[reply.error[:120]] += 1
                        in_a_row += 1
                        log.warning("teacher: no demonstration for %r: %s",
                                    example.question[:60], reply.error)
                        if job.abort_after_failures and in_a_row >= job.abort_after_failures:
                            raise TeacherAPIError(
                                f"{in_a_row} requests in a row failed after {job.max_retries} retries "
                                f"each (last: {reply.error}); {len(finished)} finished examples are "
                                f"in {result.out_path}: re-run to resume")
                        continue
                    in_a_row = 0
                    record = _teacher_record(task, key, example, reply.text, job)
                    fh.write(_dumps(record) + "\n")
                    fh.flush()
                    finished[key] = record
                    result.accepted += record["accepted"]
                    result.rejected += not record["accepted"]
                    if not record["accepted"]:
                        result.rejections[record["reason"]] += 1
                    if progress is not None:
                        progress(result)
        finally:
            for future in pending:
                future.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def _teacher_record(task: Task, key: str, example: Example, reply: str, job: _Job) -> dict[str, Any]:
    """The line written to `out_path`: a `Demo` record plus the verdict."""
    verdict = judge_reply(task, example, job.scrub(reply), verify=job.verify, min_score=job.min_score)
    demo = Demo(example.question, verdict.completion, example.answer,
                dict(example.metadata), "teacher")
    return {"key": key, **demo.to_record(), "accepted": verdict.accepted, "reason": verdict.reason,
            "extracted": verdict.extracted, "score": verdict.score, "model": job.model}


# ----------------------------------------------------------------------------------------------
# Small helpers

_T = TypeVar("_T")


def _run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """`asyncio.run(coro)`, or in a fresh thread when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as err:  # re-raised in the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, name="rlvr-teacher")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _dumps(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False, default=str)


def _iter_jsonl(path: Path, *, strict: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line. A bad line raises `DemoFileError`, or with
    `strict=False` is skipped with a warning (the torn last line of an interrupted job)."""
    if not path.exists():
        raise DemoFileError(f"{path}: no such file")
    data = path.read_bytes()
    try:  # not strict: a torn last line may end inside a character; it is skipped below
        text = data.decode("utf-8-sig", errors="strict" if strict else "replace")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DemoFileError(f"{path}:{line}: not UTF-8 text (byte {data[err.start]:#04x}); "
                            "re-save the file as UTF-8") from None
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            problem = (None if isinstance(record, dict)
                       else f"expected a JSON object, got {type(record).__name__}")
        except json.JSONDecodeError as err:
            problem = f"not valid JSON ({err.msg} at column {err.colno})"
        if problem is None:
            yield lineno, record
        elif strict:
            raise DemoFileError(f"{path}:{lineno}: {problem}")
        else:
            log.warning("%s:%d: %s; line skipped", path, lineno, problem)


def _read_finished(path: Path) -> dict[str, dict[str, Any]]:
    """key -> record of the examples a previous teacher job finished (accepted or rejected)."""
    if not path.exists():
        return {}
    return {rec["key"]: rec for _, rec in _iter_jsonl(path, strict=False) if "key" in rec}


def _end_with_newline(path: Path) -> None:
    """Create `path`, or end it with a newline so an append never joins a torn last line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as fh:
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
