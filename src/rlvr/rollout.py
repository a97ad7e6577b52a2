"""Experience collection: examples -> prompts -> sampled completions -> rewards -> advantages.

The first half of a GRPO step (seed 004, docs/SEEDS.md, "Experience collection", steps 1-5). For B examples it
samples G completions each, scores them with the weighted reward functions, normalises the rewards
within each group into advantages, and returns `Rollout`s ready for the buffer, plus the step's
metrics. Groups whose rewards are all equal carry no signal (TRL #3857): they are counted, and with
`dynamic_sampling` dropped and replaced by fresh prompts (DAPO).

Each prompt samples with its own generator, seeded from the step's generator, so its completions
do not depend on which other prompts it is batched with. That is what lets N data-parallel
processes split a step's prompts (`shard`, whole groups) and sample exactly what one process would:
every process draws the same examples and seeds, samples and scores only its share, and `gather`s
the rewards so advantages and zero-signal counts see the whole batch (rlvr.distributed).

A completion is an episode (rlvr.episodes): one turn for a single-turn task, the whole
conversation after the prompt for a task with tools or an environment, with the environment's
tokens masked out of the loss; the group is G episodes of one example.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import torch

from rlvr import prompts as prompt_lib
from rlvr import rewards as reward_lib
from rlvr.algorithms.advantages import group_advantages, zero_signal_groups
from rlvr.buffer import Rollout, shard_bounds
from rlvr.curriculum import group_success_rates
from rlvr.environments import Environment, SingleTurn, environment_for
from rlvr.episodes import Episode, Limits, episode_stats, run_episodes
from rlvr.judge import Verdict, judge
from rlvr.sampling.base import SamplingParams
from rlvr.tasks.base import Example, Task


MAX_TOTAL = 1e15
"""rewards beyond this are clamped for the advantages: a finite float32 total near 3e38 (a user
reward's 1e38) would overflow its group's mean or variance into inf and the advantages into NaN;
with |r| <= 1e15 the squares stay finite for any group size. Real rewards are nowhere near it, so
their advantages are computed exactly as without the clamp."""


@dataclass
class PromptFormat:
    """How an episode's messages become prompt text (chat template or plain, system prompt, prefill),
    and the environment and limits the task's episodes run with."""

    chat: bool | None = None
    system_prompt: str | None = None
    prefill: str = ""
    limits: Limits = field(default_factory=Limits)
    """what one episode may spend (turns, tokens, tool seconds): rlvr.episodes"""
    tool_timeout: float = 5.0
    """seconds one tool call may run"""

    @classmethod
    def from_config(cls, tc) -> "PromptFormat":
        """From a `TaskConfig` (chat, system_prompt, prefill and the episode limits)."""
        iters = tc.max_tool_calling_iterations
        return cls(tc.chat, tc.system_prompt, tc.prefill,
                   Limits(max_turns=None if iters is None else iters + 1, max_tool_seconds=tc.max_tool_seconds),
                   tc.tool_timeout)

    def environment(self, task: Task) -> Environment:
        """The task's environment (rlvr.environments.environment_for): single-turn unless it has tools."""
        return environment_for(task, self.system_prompt, tool_timeout=self.tool_timeout)

    def text(self, tokenizer, task: Task, example: Example) -> str:
        """The prompt of the episode's first turn: the environment's first messages, rendered."""
        messages = self.environment(task).reset(example)
        return prompt_lib.render_prompt(tokenizer, messages, chat=self.chat, prefill=self.prefill)

    def first_turns(self, tokenizer, env: Environment, examples: list[Example]
                    ) -> tuple[list[list[dict]], list[str], list[list[int]]]:
        """Each example's first messages (`env.reset`), their rendered prompt and its token ids (the
        chat template already holds the special tokens): what an episode starts from."""
        messages = [env.reset(ex) for ex in examples]
        texts = [prompt_lib.render_prompt(tokenizer, m, chat=self.chat, prefill=self.prefill) for m in messages]
        return messages, texts, [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    def encode(self, tokenizer, task: Task, examples: list[Example]) -> list[list[int]]:
        """Token ids of each example's prompt."""
        return self.first_turns(tokenizer, self.environment(task), examples)[2]

    def uses_chat(self, tokenizer) -> bool:
        """Whether prompts go through the tokenizer's chat template (`chat`, or auto: it has one)."""
        return self.chat if self.chat is not None else bool(getattr(tokenizer, "chat_template", None))


def sampling_params(tokenizer, *, max_new_tokens: int, temperature: float, top_p: float = 1.0,
                    top_k: int = 0, stop_at_answer: bool = True) -> SamplingParams:
    """Sampling settings with the tokenizer's end-of-turn tokens and, optionally, `</answer>` as stops."""
    stop_ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None and tid >= 0:
            stop_ids.add(tid)
    stop_ids.discard(None)
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                          stop_token_ids=tuple(sorted(stop_ids)),
                          stop_strings=("</answer>",) if stop_at_answer else ())


@dataclass
class WeightedReward:
    """A reward function (`rlvr.rewards.RewardFn`, TRL's signature) with its name and weight."""

    name: str
    fn: reward_lib.RewardFn
    weight: float
    builtin: bool
    """built-in functions see prefill + completion text; a user's function sees TRL's completions"""
    health: reward_lib.RewardHealth = field(default_factory=reward_lib.RewardHealth)
    """this run's record of the function's failures (fresh per `build_reward_fns`: per run)"""


ANSWER_REWARDS = ("accuracy", "partial_credit", "steps")
"""built-in rewards that read the task's ground truth"""


def build_reward_fns(task: Task, weights: Mapping[Any, float],
                     callables: Mapping[str, reward_lib.RewardFn] | None = None) -> list[WeightedReward]:
    """The run's reward functions, one per entry of `weights` (name -> weight, `config.task.rewards`).

    A name resolves first from `callables` (name -> a user's function, TRL's contract), else as a
    built-in name (accuracy, format, format_strict, length, partial_credit, steps) or
    `file.py:function`. A key of `weights` may also be the function itself (named by its
    `__name__`). Every function gets a fresh health record, so each run starts clean.
    """
    callables = dict(callables or {})
    unweighted = [name for name in callables if name not in weights]
    if unweighted:
        raise ValueError(f"reward_funcs {unweighted} have no weight in task.rewards ({list(weights)}); "
                         "give each a weight")
    fns = []
    for key, weight in weights.items():
        if callable(key):
            fn_key, key = key, getattr(key, "__name__", repr(key))
            callables[key] = fn_key
        if not isinstance(key, str):
            raise TypeError(f"task.rewards: a reward is a name, file.py:function or a function, got {key!r}")
        if key in callables:
            fn, builtin, name = callables[key], False, key
            if not callable(fn):
                raise TypeError(f"reward_funcs[{key!r}] is a {type(fn).__name__}, not a function")
        else:
            (fn, builtin), name = reward_lib.resolve_reward(key, task), reward_lib.reward_name(key)
            if builtin and key in ANSWER_REWARDS and getattr(task, "answers", True) is False:
                raise ValueError(f"the {key} reward needs the task's answers, and {getattr(task, 'name', 'the task')} "
                                 "has no answer column (answer_column=..., or a column named answer or solution); "
                                 "drop it from the rewards or pass your own reward functions")
        fns.append(WeightedReward(name=name, fn=fn, weight=reward_lib.check_weight(name, weight), builtin=builtin))
    return fns


def score_texts(reward_fns: list[WeightedReward], task: Task, examples: list[Example], completions: list[str],
                fmt: PromptFormat, timeout_s: float, conversational: bool,
                verdicts: list[Verdict] | None = None, *, completion_ids: list[list[int]] | None = None,
                trainer_state: reward_lib.TrainerState | None = None, trajectories: list | None = None,
                environments: list | None = None) -> reward_lib.RewardResult:
    """Score completions (one per entry of `examples`) with every reward function. A function that
    fails or hangs scores 0 for what it could not score (counted); one that is plainly broken
    (fails on everything from the start, or times out again and again) raises
    `rewards.RewardFunctionError` naming it.

    Built-in rewards see the prefill plus the completion (so `<think>` prefilled by the prompt
    counts). A user's function is called as TRL's GRPOTrainer calls it (`user_reward_columns`):
    `completions` as sampled, without the prefill (strings, or `[{"role": "assistant", "content":
    ...}]` when `conversational`), `prompts` with the prefill, `completion_ids` (token ids; empty
    lists when not given), `trainer_state`, `log_extra`, `log_metric`, and the task's columns.
    Multi-turn episodes pass `trajectories`, what TRL gives them then: the conversation after the
    prompt (assistant, tool, ... messages) for chat models, the whole decoded trajectory otherwise;
    with a TRL environment class, `environments` (its instance per completion) is the
    `environments` column, as in TRL.
    """
    columns: dict[str, list] = {}
    for ex in examples:
        for key, value in ex.columns().items():
            columns.setdefault(key, []).append(value)
    columns["_example"] = list(examples)
    if verdicts is not None:  # the judge's, so the accuracy reward does not verify again
        columns["_verdicts"] = list(verdicts)
    builtin = [(r.name, r.fn, r.weight) for r in reward_fns if r.builtin]
    user = [(r.name, r.fn, r.weight) for r in reward_fns if not r.builtin]
    health = {r.name: r.health for r in reward_fns}
    full = [fmt.prefill + c for c in completions]
    result = reward_lib.score(builtin, full, columns, timeout_s=timeout_s, health=health)
    if user:
        trl_style = [[{"role": "assistant", "content": c}] for c in completions] if conversational else completions
        trl_style = trajectories if trajectories is not None else trl_style
        user_columns = user_reward_columns(task, examples, fmt, conversational,
                                           completion_ids if completion_ids is not None else [[] for _ in completions],
                                           trainer_state or reward_lib.TrainerState())
        if environments is not None:
            user_columns["environments"] = list(environments)
        more = reward_lib.score(user, trl_style, user_columns, timeout_s=timeout_s, health=health,
                                logs=reward_lib.RewardLogs())
        result = reward_lib.RewardResult(total=[reward_lib.weighted_total((a, b), (1.0, 1.0))
                                                for a, b in zip(result.total, more.total)],
                                         parts={**result.parts, **more.parts},
                                         errors={**result.errors, **more.errors}, logs=more.logs)
    return result


TRL_NOT_COLUMNS = ("prompt", "completion", "completion_ids")
"""dataset columns TRL does not pass to reward functions as they are (`prompts` carries the prompt)"""


def user_reward_columns(task: Task, examples: list[Example], fmt: PromptFormat, conversational: bool,
                        completion_ids: list[list[int]], trainer_state) -> dict[str, object]:
    """TRL's keyword arguments for a user's reward function (but completions and the loggers):
    every column of `task.reward_columns` (None where an example lacks it) except prompt /
    completion / completion_ids, then `prompts`, `completion_ids`, `trainer_state`."""
    rows = [task.reward_columns(ex) for ex in examples]
    keys = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in TRL_NOT_COLUMNS]
    columns: dict[str, object] = {k: [row.get(k) for row in rows] for k in keys}
    env, prompts = fmt.environment(task), {}  # one prompt per example, not per completion (G share it)
    for ex in examples:
        if id(ex) not in prompts:
            prompts[id(ex)] = trl_prompt(task, ex, fmt, conversational, env)
    columns["prompts"] = [prompts[id(ex)] for ex in examples]
    columns["completion_ids"] = [list(ids) for ids in completion_ids]
    columns["trainer_state"] = trainer_state
    return columns


def trl_prompt(task: Task, example: Example, fmt: PromptFormat, conversational: bool, env: Environment | None = None):
    """The prompt as TRL passes it to reward functions: the conversation the model continued (the
    prefill as a final assistant message, as a TRL dataset writes one), or the plain text (the
    dataset's own prompt text when it has one, else rlvr's plain prompt) with the prefill."""
    messages = (env or fmt.environment(task)).reset(example)
    if conversational:
        return messages + ([{"role": "assistant", "content": fmt.prefill}] if fmt.prefill else [])
    own = example.metadata.get(getattr(task, "prompt_column", None) or "", None)
    if isinstance(own, str):
        return own + fmt.prefill
    return prompt_lib.render_prompt(None, messages, chat=False, prefill=fmt.prefill)


@dataclass
class Experience:
    rollouts: list[Rollout]
    examples: list[Example]
    """one per completion (each group's example repeated G times)"""
    completions: list[str]
    rewards: reward_lib.RewardResult
    correct: list[float]
    formatted: list[float]
    answers: list[str | None]
    """the judge's verdicts, one per completion (`rlvr.judge`)"""
    metrics: dict = field(default_factory=dict)
    group_success: list[float] = field(default_factory=list)
    """the success rate of every group sampled for the step, all processes', those dynamic sampling
    dropped too: what adaptive difficulty observes (the kept groups alone would hide the flat ones)"""
    episodes: list = field(default_factory=list)
    """multi-turn tasks: the `rlvr.episodes.Episode` of each completion (conversations, tool counts); else empty"""


def collect_experience(sampler, tokenizer, task: Task, examples: Iterator[Example], *, batch_size: int,
                       num_generations: int, params: SamplingParams, fmt: PromptFormat,
                       reward_fns: list[WeightedReward], scale_rewards: str, dynamic_sampling: bool,
                       max_resample_rounds: int, reward_timeout: float, generator: torch.Generator,
                       progress: Callable[[int], None] | None = None, shard: tuple[int, int] = (0, 1),
                       gather: Callable[[list], list] = list,
                       trainer_state: reward_lib.TrainerState | None = None) -> Experience:
    """Sample, score and normalise one step's experience (B groups of G completions).

    shard = (rank, world): sample only this process's share of the groups; `gather` concatenates a
    list over all processes in rank order (identity for one process). The returned experience holds
    this process's groups; its zero-signal metric counts everyone's. `trainer_state` is what users'
    reward functions get as TRL's `trainer_state`.
    """
    g = num_generations
    parts: list[Experience] = []
    kept_groups, seen_groups, zero_groups = 0, 0, 0
    success: list[float] = []
    t0 = time.perf_counter()
    gen_tokens = 0
    for round_ in range(1 + (max_resample_rounds if dynamic_sampling else 0)):
        need = batch_size - kept_groups
        if need <= 0:
            break
        batch = [next(examples) for _ in range(need)]
        seeds = torch.randint(0, 2**62, (need,), generator=generator).tolist()  # one per prompt
        lo, hi = shard_bounds(need, *shard)
        part = _sample_and_score(sampler, tokenizer, task, batch[lo:hi], seeds[lo:hi], lo, g, params, fmt,
                                 reward_fns, scale_rewards, reward_timeout, gather, progress, trainer_state)
        gen_tokens += sum(len(r.completion_ids) for r in part.rollouts)
        zero = part.metrics.pop("_zero_mask")  # [need] bool, every process's groups
        success.extend(part.group_success)
        seen_groups += need
        zero_groups += int(zero.sum())
        if dynamic_sampling and round_ < max_resample_rounds:
            part = _keep_groups(part, ~zero[lo:hi], g)
            kept_groups += need - int(zero.sum())
        else:
            kept_groups += need
        parts.append(part)
        if not dynamic_sampling:
            break
    exp = concat_experience(parts)
    exp.group_success = success
    exp.metrics.update(experience_metrics(exp, g))
    exp.metrics["signal/zero_std_groups"] = zero_groups / max(1, seen_groups)
    exp.metrics["time/generate_s"] = time.perf_counter() - t0
    exp.metrics["throughput/generate_tok_s"] = gen_tokens / max(1e-9, exp.metrics["time/generate_s"])
    return exp


def _sample_and_score(sampler, tokenizer, task, batch, seeds, offset, g, params, fmt, reward_fns, scale_rewards,
                      reward_timeout, gather, progress, trainer_state=None) -> Experience:
    """Sample and score this process's `batch` (prompts offset.. of the round); advantages from
    the gathered rewards of every process's groups. Each completion is an episode (rlvr.episodes):
    one turn for a single-turn task, several for a task with tools."""
    env = fmt.environment(task)
    first, _, prompt_ids = fmt.first_turns(tokenizer, env, batch)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    episodes = run_episodes(sampler, tokenizer, env, batch, gens, g, params, chat=fmt.uses_chat(tokenizer),
                            prefill=fmt.prefill, prompt_ids=prompt_ids, first_messages=first, limits=fmt.limits,
                            progress=progress)
    texts = [ep.text for ep in episodes]  # the final turn: the answer the task judges
    examples = [ep.example for ep in episodes]
    verdicts = [judge(task, fmt.prefill + t, ex) for t, ex in zip(texts, examples)]  # once per completion
    multi = not isinstance(env, SingleTurn)
    if texts:
        chat = _is_chat(tokenizer, fmt, task)
        trajectories = [ep.conversation() if chat else tokenizer.decode(ep.completion_ids, skip_special_tokens=True)
                        for ep in episodes] if multi else None
        instances = [ep.env.instance for ep in episodes] if hasattr(env, "instance") and multi else None
        result = score_texts(reward_fns, task, examples, texts, fmt, reward_timeout, conversational=chat,
                             verdicts=verdicts, completion_ids=[ep.completion_ids for ep in episodes],
                             trainer_state=trainer_state, trajectories=trajectories, environments=instances)
        if multi:
            result = _add_environment_rewards(result, env, episodes)
    else:  # a process with no prompts this round (fewer prompts than processes)
        result = reward_lib.RewardResult(total=[], parts={r.name: [] for r in reward_fns}, errors={})
    # [B*G] the whole round, all processes; within +-MAX_TOTAL so the group's float32 mean and variance stay finite
    total = torch.tensor(gather(result.total), dtype=torch.float32).clamp(-MAX_TOTAL, MAX_TOTAL)
    adv = group_advantages(total, g, scale_rewards=scale_rewards)[offset * g: offset * g + len(episodes)]  # [b*G] ours
    zero = zero_signal_groups(total, g)  # [B]
    rollouts = [  # the whole trajectory after the prompt; loss only on the model's tokens
        Rollout(prompt_ids=ep.prompt_ids, completion_ids=ep.completion_ids, old_logprobs=ep.logprobs,
                advantage=float(a), truncated=ep.truncated, group=offset + ep.prompt_index, loss_mask=ep.loss_mask)
        for ep, a in zip(episodes, adv.tolist())
    ]
    correct = [v.correct for v in verdicts]
    success = group_success_rates(gather(correct), g)  # [B] every process's groups
    metrics = {"_zero_mask": zero, **(episode_stats(episodes) if multi else {})}
    return Experience(rollouts, examples, texts, result, correct, [float(v.formatted) for v in verdicts],
                      [v.answer for v in verdicts], metrics, success, episodes if multi else [])


def _add_environment_rewards(result: reward_lib.RewardResult, env, episodes: list[Episode]) -> reward_lib.RewardResult:
    """An environment that scores its episodes (TRL's `get_reward`) adds a reward of weight 1 named after it."""
    if not getattr(env, "has_reward", callable(getattr(env, "reward", None))):
        return result
    values = [ep.env.reward(ep.example, ep.messages) for ep in episodes]
    values = [float("nan") if v is None else float(v) for v in values]
    name = getattr(env, "name", type(env).__name__)
    total = [t + (0.0 if v != v else v) for t, v in zip(result.total, values)]
    return reward_lib.RewardResult(total=total, parts={**result.parts, name: values}, errors=dict(result.errors),
                                   logs=result.logs)


def _is_chat(tokenizer, fmt: PromptFormat, task: Task | None = None) -> bool:
    """Whether reward functions get conversational completions, as TRL decides: the task's own
    prompts say (a dataset's `prompt` column, `DatasetTask.conversational`), else the prompt
    format (a chat template renders messages)."""
    own = getattr(task, "conversational", None)
    return bool(own) if own is not None else fmt.uses_chat(tokenizer)


def _keep_groups(exp: Experience, keep: torch.Tensor, g: int) -> Experience:
    """Keep only the groups where `keep` is true (keep: [B] bool)."""
    idx = [i for i in range(len(exp.rollouts)) if bool(keep[i // g])]
    sel = lambda xs: [xs[i] for i in idx]  # noqa: E731
    res = exp.rewards
    rewards = reward_lib.RewardResult(total=sel(res.total), parts={k: sel(v) for k, v in res.parts.items()},
                                      errors=dict(res.errors), logs=res.logs.select(idx, len(exp.rollouts)))
    return Experience(sel(exp.rollouts), sel(exp.examples), sel(exp.completions), rewards,
                      sel(exp.correct), sel(exp.formatted), sel(exp.answers), exp.metrics, exp.group_success,
                      sel(exp.episodes) if exp.episodes else [])


def concat_experience(parts: list[Experience]) -> Experience:
    """One experience from several (rounds of dynamic sampling, or processes); metrics are not merged."""
    first = parts[0]
    if len(parts) == 1:
        return first
    cat = lambda attr: [x for p in parts for x in getattr(p, attr)]  # noqa: E731
    errors: dict[str, int] = {}
    names = list(first.rewards.parts)
    for p in parts:
        for k, v in p.rewards.errors.items():
            errors[k] = errors.get(k, 0) + v
    logs = reward_lib.RewardLogs()
    for p in parts:
        logs.merge(p.rewards.logs)
    rewards = reward_lib.RewardResult(total=[x for p in parts for x in p.rewards.total],
                                      parts={k: [x for p in parts for x in p.rewards.parts[k]] for k in names},
                                      errors=errors, logs=logs)
    return Experience(cat("rollouts"), cat("examples"), cat("completions"), rewards, cat("correct"),
                      cat("formatted"), cat("answers"), {}, cat("group_success"), cat("episodes"))


def _mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and std over the values that apply (a reward's NaN means "not applicable")."""
    t = torch.tensor(xs, dtype=torch.float64)
    t = t[~t.isnan()]
    if not t.numel():
        return 0.0, 0.0
    return float(t.mean()), float(t.std(unbiased=False))


def experience_metrics(exp: Experience, g: int) -> dict:
    """Reward, accuracy, format, length and truncation statistics of a step's completions."""
    m: dict = {}
    m["reward/total/mean"], m["reward/total/std"] = _mean_std(exp.rewards.total)
    for name, values in exp.rewards.parts.items():
        m[f"reward/{name}/mean"], m[f"reward/{name}/std"] = _mean_std(values)
        nonfinite = sum(v != v for v in values)  # NaN: no finite value (None, NaN, inf), masked out of the total
        if nonfinite:
            m[f"reward/{name}/nonfinite"] = nonfinite
    for name, count in exp.rewards.errors.items():
        if count:
            m[f"reward/{name}/errors"] = count
    for name, value in exp.rewards.logs.metric_means().items():  # TRL's log_metric, under the name given
        m.setdefault(name, value)
    lengths = [len(r.completion_ids) for r in exp.rollouts]
    m["train/accuracy"] = _mean_std(exp.correct)[0]
    m["train/format_rate"] = _mean_std(exp.formatted)[0]
    groups = [exp.correct[i:i + g] for i in range(0, len(exp.correct), g)]
    m["train/pass_at_group"] = sum(1.0 for grp in groups if max(grp, default=0) > 0) / max(1, len(groups))
    m["completion/length_mean"] = sum(lengths) / max(1, len(lengths))
    m["completion/length_max"] = max(lengths, default=0)
    m["completion/truncated_frac"] = sum(r.truncated for r in exp.rollouts) / max(1, len(exp.rollouts))
    m["train/groups"] = len(groups)
    return m


def sample_records(exp: Experience, step: int, fmt: PromptFormat, k: int = 4) -> list[dict]:
    """The first k completions of a step with their prompts, answers and rewards, for samples.jsonl."""
    out = []
    count = len(exp.completions)
    extra = {col: values for col, values in exp.rewards.logs.extra.items() if len(values) == count}  # log_extra
    for i in range(min(k, count)):
        record = {"step": step, "prompt": exp.examples[i].question, "completion": fmt.prefill + exp.completions[i],
                  "answer": exp.answers[i], "ground_truth": exp.examples[i].answer,
                  "rewards": {**{n: v[i] for n, v in exp.rewards.parts.items()}, "total": exp.rewards.total[i]}}
        if extra:
            record["extra"] = {col: values[i] for col, values in extra.items()}
        if exp.episodes:  # a multi-turn episode: the conversation (the report shows calls and results apart)
            ep = exp.episodes[i]
            record.update(conversation=ep.conversation(), tool_calls=ep.tool_calls, tool_errors=ep.tool_errors,
                          limit=ep.limit)
        out.append(record)
    return out
