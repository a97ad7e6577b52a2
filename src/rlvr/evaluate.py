"""Held-out evaluation: accuracy, format rate, length, mean@k / pass@k / maj@k, and before/after tables.

Evaluation scores answers with the judge (`rlvr.judge`: the task's own `verify`), the same function
the rollout and the accuracy reward call during training, so the number that training pushes up is
the number reported here.
The held-out examples are always the first `n` of the task's test split, so every stage of a run
(base, after SFT, after GRPO) is measured on the same problems.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlvr.environments import SingleTurn
from rlvr.baselines import baseline_note, format_baselines, task_baselines
from rlvr.judge import judge
from rlvr.reasoning import arithmetic_summary, false_arithmetic_text, reasoning_note
from rlvr.rollout import PromptFormat, sampling_params
from rlvr.tasks.base import Example, Task


@dataclass
class EvalResult:
    accuracy: float
    """mean over examples of the mean correctness of its k samples (mean@k; greedy accuracy for k=1)"""
    pass_at_k: float
    """fraction of examples with at least one correct sample among k"""
    maj_at_k: float
    """fraction of examples whose most frequent answer among k is correct (majority vote; greedy
    accuracy for k=1). Sharpening the sampled distribution, which is most of what a few GRPO steps
    do, moves greedy answers towards the majority: maj@k above greedy accuracy is headroom a short
    GRPO run can take, maj@k at or below it means greedy gains need new skill, not sharpening."""
    format_rate: float
    mean_length: float
    truncated_frac: float
    n: int
    k: int
    seconds: float
    tokens_per_s: float
    records: list[dict] = field(default_factory=list)
    tool_calls: float | None = None
    """multi-turn tasks: tool calls per episode (None for a single-turn task)"""
    tool_errors: float | None = None
    """tool calls per episode that failed (raised, timed out, malformed, unknown tool)"""
    limit_frac: float | None = None
    """fraction of episodes cut by a limit (turns, tokens, tool seconds)"""
    majority_baseline: float | None = None
    """accuracy of answering the training split's most common answer to every question (rlvr.baselines)"""
    majority_answer: str | None = None
    chance_baseline: float | None = None
    """accuracy of a uniform guess among the task's fixed answer set (None: no fixed set)"""
    right_checked: int | None = None
    """right answers whose think part states arithmetic that rlvr.reasoning can check (None: none does)"""
    right_false_arithmetic: float | None = None
    """of those, the share that state a false claim: right for a wrong reason (rlvr.reasoning)"""

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "records" and v is not None}


def evaluate(sampler, tokenizer, task: Task, examples: list[Example], *, fmt: PromptFormat,
             max_new_tokens: int, samples: int = 1, temperature: float = 0.0, top_p: float = 1.0,
             batch_size: int = 64, generator: torch.Generator | None = None, progress: bool = True,
             out_path: str | Path | None = None, stop_at_answer: bool = True) -> EvalResult:
    """Evaluate on `examples`: greedy when samples == 1, else k samples at `temperature`."""
    from tqdm.auto import tqdm

    k = max(1, samples)
    temp = 0.0 if k == 1 else (temperature or 1.0)
    params = sampling_params(tokenizer, max_new_tokens=max_new_tokens, temperature=temp, top_p=top_p,
                             stop_at_answer=stop_at_answer)
    per_batch = max(1, batch_size // k)
    records: list[dict] = []
    t0 = time.perf_counter()
    tokens = 0
    bar = tqdm(total=len(examples), desc="eval", unit="ex", disable=not progress, leave=False)
    env = fmt.environment(task)
    multi = not isinstance(env, SingleTurn)
    for start in range(0, len(examples), per_batch):
        batch = examples[start:start + per_batch]
        if multi:  # episodes: the tool metrics ride on each record
            for rec in episode_records(sampler, tokenizer, task, batch, start, k, params, fmt, generator):
                tokens += rec.pop("_tokens")
                records.append(rec)
            bar.update(len(batch))
            continue
        _, texts, ids = fmt.first_turns(tokenizer, env, batch)
        outs = sampler.generate(ids, params, num_samples=k, generator=generator)
        for o in outs:
            tokens += len(o.token_ids)
            ex = batch[o.prompt_index]
            text = tokenizer.decode(o.token_ids, skip_special_tokens=True)
            v = judge(task, fmt.prefill + text, ex)
            records.append({
                "index": start + o.prompt_index, "prompt": texts[o.prompt_index], "completion": text,
                "answer": v.answer, "ground_truth": ex.answer, "correct": v.correct,
                "format": float(v.formatted), "length": len(o.token_ids),
                "truncated": o.finish_reason == "length",
            })
        bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - t0
    result = _aggregate(records, k, seconds, tokens)
    if out_path is not None:
        write_jsonl(out_path, records)
    return result


def episode_records(sampler, tokenizer, task: Task, batch: list[Example], start: int, k: int, params, fmt,
                    generator: torch.Generator | None) -> list[dict]:
    """Evaluation records of a multi-turn task's episodes (rlvr.episodes): the judged final turn,
    the conversation, tool calls and errors, and the limit that cut the episode, if any."""
    from rlvr.episodes import run_episodes

    env = fmt.environment(task)
    first, texts, ids = fmt.first_turns(tokenizer, env, batch)
    seeds = (torch.randint(0, 2**62, (len(batch),), generator=generator).tolist() if generator is not None
             else [start + i for i in range(len(batch))])
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    episodes = run_episodes(sampler, tokenizer, env, batch, gens, k, params, chat=fmt.uses_chat(tokenizer),
                            prefill=fmt.prefill, prompt_ids=ids, first_messages=first, limits=fmt.limits)
    records = []
    for ep in episodes:
        v = judge(task, fmt.prefill + ep.text, ep.example)
        records.append({
            "index": start + ep.prompt_index, "prompt": texts[ep.prompt_index], "completion": ep.text,
            "answer": v.answer, "ground_truth": ep.example.answer, "correct": v.correct,
            "format": float(v.formatted), "length": len(ep.completion_ids), "truncated": ep.truncated,
            "conversation": ep.conversation(), "turns": len(ep.turns), "tool_calls": ep.tool_calls,
            "tool_errors": ep.tool_errors, "limit": ep.limit, "_tokens": int(sum(ep.loss_mask)),
        })
    return records


def majority_correct(records: list[dict]) -> float:
    """1.0 if the most frequent extracted answer of one example's samples is correct, else 0.0.

    Votes are the answers as extracted and stripped; samples without an answer do not vote; a
    tie goes to the answer seen first (deterministic). No answer at all counts as wrong.
    """
    votes: dict[str, list[dict]] = {}
    for r in records:
        if r["answer"] is not None and str(r["answer"]).strip():
            votes.setdefault(str(r["answer"]).strip(), []).append(r)
    if not votes:
        return 0.0
    winner = max(votes.values(), key=len)  # max keeps the first of equal counts
    return float(winner[0]["correct"] > 0)


def _aggregate(records: list[dict], k: int, seconds: float, tokens: int) -> EvalResult:
    by_example: dict[int, list[dict]] = {}
    for r in records:
        by_example.setdefault(r["index"], []).append(r)
    n = len(by_example)
    mean = lambda xs: sum(xs) / max(1, len(xs))  # noqa: E731
    episodes = bool(records) and "tool_calls" in records[0]
    tools = dict(tool_calls=mean([r["tool_calls"] for r in records]), tool_errors=mean([r["tool_errors"] for r in records]),
                 limit_frac=mean([float(r["limit"] is not None) for r in records])) if episodes else {}
    return EvalResult(
        accuracy=mean([mean([r["correct"] for r in rs]) for rs in by_example.values()]),
        pass_at_k=mean([float(any(r["correct"] > 0 for r in rs)) for rs in by_example.values()]),
        maj_at_k=mean([majority_correct(rs) for rs in by_example.values()]),
        format_rate=mean([r["format"] for r in records]),
        mean_length=mean([r["length"] for r in records]),
        truncated_frac=mean([float(r["truncated"]) for r in records]),
        n=n, k=k, seconds=seconds, tokens_per_s=tokens / max(seconds, 1e-9), records=records, **tools,
        **_reasoning_check(records),
    )


def _reasoning_check(records: list[dict]) -> dict:
    """right_checked / right_false_arithmetic over the records (omitted when no right answer states
    arithmetic that can be checked)."""
    s = arithmetic_summary(records)
    return {"right_checked": s.checked, "right_false_arithmetic": s.false_frac} if s.checked else {}


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r, default=str) + "\n")


def evaluate_config(sampler, tokenizer, task: Task, cfg, *, out_path: str | Path | None = None,
                    progress: bool = True, temperature: float | None = None,
                    generator: torch.Generator | None = None) -> EvalResult:
    """The held-out evaluation a run's `Config` describes: the first eval.n test examples in the
    task's prompt format (chat, system prompt, prefill), eval.samples / max_new_tokens / batch_size,
    at the sampling temperature when samples > 1 (or `temperature`). Every stage of a run (base,
    SFT, GRPO, `rlvr eval --config`) calls this, so they measure the same thing."""
    s = cfg.sampling
    examples = task.test_examples()[:cfg.eval.n]
    result = evaluate(sampler, tokenizer, task, examples,
                      fmt=PromptFormat.from_config(cfg.task),
                      max_new_tokens=cfg.eval.max_new_tokens, samples=cfg.eval.samples,
                      temperature=s.temperature if temperature is None else temperature,
                      batch_size=cfg.eval.batch_size, generator=generator, progress=progress,
                      out_path=out_path, stop_at_answer=s.stop_at_answer)
    return with_baselines(result, task, examples)


def with_baselines(result: EvalResult, task: Task, examples: list[Example]) -> EvalResult:
    """The result with the majority and chance baselines of the same examples (rlvr.baselines)."""
    b = task_baselines(task, examples)
    result.majority_baseline, result.majority_answer, result.chance_baseline = b.majority, b.majority_answer, b.chance
    return result


def format_table(rows: list[dict]) -> str:
    """A plain before/after table: one row per stage, with the change from the first row."""
    if not rows:
        return ""
    base = rows[0]["accuracy"]
    tools = any("tool_calls" in r for r in rows)  # a multi-turn task: tool calls and errors per episode, cut by a limit
    lines = [f"{'stage':<10} {'accuracy':>9} {'change':>8} {'format':>7} {'length':>7} {'n':>5}"
             + (f" {'tools/ep':>8} {'errors/ep':>9} {'cut':>6}" if tools else "")]
    for r in rows:
        delta = (r["accuracy"] - base) * 100
        line = (f"{r['stage']:<10} {r['accuracy'] * 100:8.1f}% {delta:+7.1f} {r['format_rate'] * 100:6.1f}%"
                f" {r['mean_length']:7.1f} {r['n']:5d}")
        if tools and "tool_calls" in r:
            line += f" {r['tool_calls']:8.2f} {r['tool_errors']:9.2f} {r['limit_frac'] * 100:5.1f}%"
        lines.append(line)
    if format_baselines(rows[-1]):
        lines.append(f"baselines: {format_baselines(rows[-1])}")
    if any(r.get("right_checked") for r in rows):
        lines.append("right answers whose stated arithmetic is false: " + ", ".join(
            f"{r['stage']} {false_arithmetic_text(r)}" for r in rows))
    return "\n".join(lines)


def tool_summary(result: EvalResult) -> str:
    """One line on a tool task's episodes: tool calls and errors per episode, episodes cut by a limit."""
    return (f"tools: {result.tool_calls:.2f} calls per episode, {result.tool_errors:.2f} errors per episode, "
            f"{result.limit_frac:.1%} of episodes cut by a limit (turns, tokens or tool seconds)")


def verdict(rows: list[dict]) -> str:
    """One plain sentence: did the model improve from the first stage to the last?"""
    if len(rows) < 2:
        return ""
    a, b = rows[0], rows[-1]
    delta = (b["accuracy"] - a["accuracy"]) * 100
    word = "improved" if delta > 0 else ("did not change" if delta == 0 else "got worse")
    note = baseline_note(b)
    return (f"Held-out accuracy {word}: {a['accuracy'] * 100:.1f}% ({a['stage']}) -> "
            f"{b['accuracy'] * 100:.1f}% ({b['stage']}), {delta:+.1f} points on the same {b['n']} examples."
            + (f" But {note}" if note else "") + reasoning_note(b))
