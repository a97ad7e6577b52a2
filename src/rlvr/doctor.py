"""The learning-signal doctor: will this GRPO run learn, and will it fit in memory? Asked at step 0.

`diagnose(cfg)` runs the configured sampling on a few training prompts (the same first prompts the
run will see, the real temperature, group size, completion limit and reward functions) and one
update on the longest sequences the config allows, then turns the numbers into findings:

    pass@G, no-signal groups   a group whose G rewards are all equal has zero advantage: with
                               (nearly) every group like that the loss is 0 and nothing is learned
                               (TRL #3857, Unsloth #2291)
    truncation, lengths        completions cut at max_completion_length cannot finish, and
                               usually earn nothing (TRL #5697)
    format rate, accuracy      separately: a model that never writes <answer> needs the warm-up
    trivial answers            the task's verifier and the configured rewards on answers that need
                               no reasoning (empty, a hedge, the question's first line or first
                               listed premise, the most common train answer): a policy learns
                               such an answer when it scores well (issue 21: copying a premise
                               is "right" on 41 of 50 rg:propositional_logic problems)
    update memory              peak RSS increase of one real `update_policy` call (micro-batch of
                               per_device_train_batch_size rows, longest prompt + full completion),
                               so an out-of-memory shows at step 0 rather than step 50 (TRL #3678,
                               verl #2245); with a suggested batch / chunk size that fits

Each finding that predicts a wasted run says so in one sentence and gives a concrete fix;
`Diagnosis.can_learn` is False when any finding is fatal (`rlvr doctor` then exits non-zero).

Memory: see `rlvr.memory`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from rlvr.config import Config, sampler_options
from rlvr.memory import GB, MemoryReport, available_memory, check_memory, peak_since, start_peak, update_estimate
from rlvr.tasks.base import Example



@dataclass
class Finding:
    severity: str
    """ok, warn or fatal (fatal: training as configured cannot learn, or will not fit)"""
    message: str
    fix: str = ""


@dataclass
class SignalStats:
    """What sampling the configured way on a few prompts showed."""

    prompts: int
    generations: int
    pass_at_g: float
    """fraction of groups with at least one correct completion"""
    zero_signal: float
    """fraction of groups whose G rewards are all equal"""
    all_wrong: float
    """fraction of groups with no correct completion and equal rewards"""
    all_right: float
    """fraction of groups with every completion correct"""
    mixed_accuracy: float
    """fraction of groups with both right and wrong completions (a signal about the task itself)"""
    accuracy: float
    format_rate: float
    reward_mean: float
    truncated: float
    truncated_reward_mean: float
    truncated_reward_spread: float
    """max - min total reward among truncated completions (0: they all earn the same)"""
    length_mean: float
    length_p50: float
    length_p90: float
    length_max: int
    max_prompt_len: int
    reward_errors: dict = field(default_factory=dict)
    seconds: float = 0.0
    peak_bytes: int | None = None
    """peak RSS increase while sampling (None where it cannot be measured)"""


@dataclass
class Diagnosis:
    model: str
    task: str
    temperature: float
    max_completion_length: int
    signal: SignalStats
    memory: MemoryReport | None
    findings: list[Finding]
    seconds: float = 0.0

    @property
    def can_learn(self) -> bool:
        """False when a finding is fatal: the run would learn nothing or run out of memory."""
        return not any(f.severity == "fatal" for f in self.findings)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "can_learn": self.can_learn}


# ------------------------------------------------------------------------------ signal

def _percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))])


def signal_stats(exp, num_generations: int) -> SignalStats:
    """Group-level statistics of one `rollout.Experience` (groups are contiguous slices of G)."""
    from rlvr.algorithms.advantages import zero_signal_groups

    g = num_generations
    total = torch.tensor(exp.rewards.total, dtype=torch.float32)  # [B*G]
    zero = zero_signal_groups(total, g).tolist()  # [B]
    groups = [exp.correct[i:i + g] for i in range(0, len(exp.correct), g)]
    b = max(1, len(groups))
    lengths = sorted(len(r.completion_ids) for r in exp.rollouts)
    cut = [t for t, r in zip(exp.rewards.total, exp.rollouts) if r.truncated]
    m = exp.metrics
    return SignalStats(
        prompts=len(groups), generations=g,
        pass_at_g=sum(max(grp) > 0 for grp in groups) / b,
        zero_signal=sum(zero) / b,
        all_wrong=sum(z and max(grp) == 0 for z, grp in zip(zero, groups)) / b,
        all_right=sum(min(grp) >= 1 for grp in groups) / b,
        mixed_accuracy=sum(min(grp) < max(grp) for grp in groups) / b,
        accuracy=m["train/accuracy"], format_rate=m["train/format_rate"], reward_mean=m["reward/total/mean"],
        truncated=m["completion/truncated_frac"], truncated_reward_mean=sum(cut) / max(1, len(cut)),
        truncated_reward_spread=max(cut) - min(cut) if cut else 0.0, length_mean=m["completion/length_mean"],
        length_p50=_percentile(lengths, 0.5), length_p90=_percentile(lengths, 0.9), length_max=lengths[-1] if lengths else 0,
        max_prompt_len=max((len(r.prompt_ids) for r in exp.rollouts), default=0),
        reward_errors={k: v for k, v in exp.rewards.errors.items() if v})


def sample_signal(sampler, tokenizer, task, examples: Iterator[Example], cfg: Config, *, num_prompts: int,
                  generator: torch.Generator, device: torch.device = torch.device("cpu"), reward_funcs=None):
    """Sample num_prompts groups exactly as a training step would (no dynamic sampling); (stats, experience)."""
    from rlvr.rollout import PromptFormat, build_reward_fns, collect_experience, sampling_params

    s = cfg.sampling
    params = sampling_params(tokenizer, max_new_tokens=s.max_completion_length, temperature=s.temperature,
                             top_p=s.top_p, top_k=s.top_k, stop_at_answer=s.stop_at_answer)
    t0 = time.perf_counter()
    start = start_peak(device)
    exp = collect_experience(sampler, tokenizer, task, examples, batch_size=num_prompts,
                             num_generations=cfg.grpo.num_generations, params=params,
                             fmt=PromptFormat.from_config(cfg.task),
                             reward_fns=build_reward_fns(task, cfg.task.rewards, reward_funcs), scale_rewards=cfg.grpo.scale_rewards,
                             dynamic_sampling=False, max_resample_rounds=0, reward_timeout=cfg.task.reward_timeout,
                             generator=generator)
    stats = signal_stats(exp, cfg.grpo.num_generations)
    stats.peak_bytes = peak_since(device, start)
    stats.seconds = time.perf_counter() - t0
    return stats, exp


# ------------------------------------------------------------------------------ findings

def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.01 or x == 0 else f"{100 * x:.1f}%"


WARM_UP = ("Run the SFT warm-up first (`rlvr sft --config CONFIG -o runs/sft`, then train with "
           "model.name=runs/sft; `rlvr run` does both)")


def signal_finding(s: SignalStats, cfg: Config) -> Finding:
    """The no-signal finding: fatal at >= 90% of groups without signal, a warning at >= 50%."""
    g = s.generations
    if cfg.sampling.temperature == 0:
        return Finding("fatal", f"sampling.temperature is 0: the {g} completions of a prompt are identical, "
                       "so every group's rewards are equal and nothing is learned.",
                       "Set sampling.temperature to 0.7-1.0.")
    head = f"{_pct(s.zero_signal)} of groups have no signal (all {g} rewards equal)"
    if s.zero_signal < 0.5:
        return Finding("ok", f"{_pct(1 - s.zero_signal)} of groups have a learning signal (pass@{g} {_pct(s.pass_at_g)}).")
    severity = "fatal" if s.zero_signal >= 0.9 else "warn"
    if s.all_wrong >= s.all_right and s.all_wrong >= s.zero_signal / 2:
        if s.format_rate < 0.05:
            what = "the model never writes the <answer> format"
        elif s.pass_at_g == 0:
            what = "the model never gets the answer right"
        else:
            what = f"in {_pct(s.all_wrong)} of groups no completion is right"
        easier = "use easier problems (a smaller task range, or adaptive difficulty)"
        fix = (f"{WARM_UP}, raise sampling.temperature, or {easier}." if s.format_rate < 0.5 or s.pass_at_g == 0
               else f"{easier[0].upper()}{easier[1:]}, raise grpo.num_generations, or turn on grpo.dynamic_sampling.")
        return Finding(severity, f"{head}: {what} (pass@{g} {_pct(s.pass_at_g)}, accuracy {_pct(s.accuracy)}, "
                       f"format {_pct(s.format_rate)}).", fix)
    if s.all_right > s.all_wrong:
        return Finding(severity, f"{head}: every completion is already right (accuracy {_pct(s.accuracy)}).",
                       "Use harder problems (a larger task range, or adaptive difficulty).")
    return Finding(severity, f"{head}: a prompt's {g} completions earn the same reward.",
                   "Raise sampling.temperature or grpo.num_generations, add a reward that tells completions "
                   "apart, or turn on grpo.dynamic_sampling.")


def truncation_finding(s: SignalStats, cfg: Config) -> Finding:
    limit = cfg.sampling.max_completion_length
    lengths = f"length mean {s.length_mean:.0f}, p50 {s.length_p50:.0f}, p90 {s.length_p90:.0f}, max {s.length_max}"
    if s.truncated < 0.2:
        return Finding("ok", f"{_pct(s.truncated)} of completions truncated at {limit} tokens ({lengths}).")
    same = s.truncated_reward_spread < 1e-6
    fatal = (s.truncated >= 0.9 and same) or (cfg.grpo.mask_truncated_completions and s.truncated >= 0.9)
    if cfg.grpo.mask_truncated_completions:
        why = "and mask_truncated_completions drops them from the loss"
    elif same:
        why = f"they cannot finish, and all earn the same reward ({s.truncated_reward_mean:.2f}): nothing to learn from them"
    else:
        why = "they cannot finish their answer"
    return Finding("fatal" if fatal else "warn",
                   f"{_pct(s.truncated)} of completions were cut at max_completion_length={limit} tokens: {why} ({lengths}).",
                   f"Raise sampling.max_completion_length (e.g. to {2 * limit}), or ask for shorter reasoning.")


def memory_finding(m: MemoryReport, cfg: Config) -> Finding:
    how = "measured" if m.measured_bytes is not None else "estimated"
    engine = f" plus the sampler engine's {m.engine_bytes / GB:.2f} GB" if m.engine_bytes else ""
    what = (f"One update (batch {m.batch_size} x {m.seq_len} tokens, chunk {m.chunk_size}) needs "
            f"{m.peak_bytes / GB:.2f} GB ({how}){engine} of the {m.available_bytes / GB:.1f} GB available")
    fix = (f"Set grpo.per_device_train_batch_size={m.suggested_batch_size} and "
           f"grpo.logprob_chunk_size={m.suggested_chunk_size}")
    if m.needs_gradient_checkpointing and not cfg.model.gradient_checkpointing:
        fix += " and model.gradient_checkpointing=true"
    if m.engine_bytes:
        fix += ", or give the engine less KV cache (sampling.vllm_kv_cache_memory_bytes)"
    if m.total_bytes > m.available_bytes:
        return Finding("fatal", f"{what}: the run would stop with an out-of-memory error.", fix + ".")
    if m.total_bytes > 0.8 * m.available_bytes:
        return Finding("warn", f"{what}: little room for anything else.", fix + ".")
    more = (f"; per_device_train_batch_size={m.suggested_batch_size} would fit too"
            if m.suggested_batch_size > m.batch_size else "")
    return Finding("ok", f"{what}{more}.")


def assess(signal: SignalStats, memory: MemoryReport | None, cfg: Config,
           more: list[Finding] | tuple = ()) -> list[Finding]:
    """All findings, fatal first; `more`: findings computed elsewhere (`hack_finding`). Pure:
    numbers and config in, sentences out."""
    found = [signal_finding(signal, cfg), truncation_finding(signal, cfg), *more]
    if found[0].severity != "fatal" and signal.mixed_accuracy < 0.1 and "accuracy" in cfg.task.rewards:
        found.append(Finding("warn", f"Only {_pct(signal.mixed_accuracy)} of groups have both right and wrong answers: "
                             "the signal comes from the other rewards (such as format), so the run can learn those "
                             "but hardly the task.",
                             "Use easier problems (a smaller task range, or adaptive difficulty), raise "
                             "grpo.num_generations, or warm up longer (sft.num_examples)."))
    builtin = {"accuracy", "format", "format_strict"} & set(cfg.task.rewards)
    if builtin and signal.format_rate < 0.05 and signal.accuracy < 0.05 and "format" not in found[0].message:
        found.append(Finding("warn", f"The model almost never uses the <think>/<answer> format ({_pct(signal.format_rate)}).",
                             f"{WARM_UP}, or prefill the answer's start (task.prefill=\"<think>\")."))
    for name, count in signal.reward_errors.items():
        every = count >= signal.prompts * signal.generations > 0
        found.append(Finding("fatal" if every else "warn",
                             f"The reward function {name} failed on {'every one of the ' if every else ''}{count} "
                             "completions (they got 0).",
                             f"Run {name} by hand on a completion to see the error (task.reward_timeout if only slow)."))
    if memory is not None:
        found.append(memory_finding(memory, cfg))
    order = {"fatal": 0, "warn": 1, "ok": 2}
    return sorted(found, key=lambda f: order[f.severity])


# ------------------------------------------------------------------------------ trivial answers

HACK_SCORE = 0.5
"""a trivial answer whose mean accuracy or reward reaches this is reported"""
ANSWER_BLIND = ("format", "format_strict", "length")
"""built-in rewards that do not read the answer: every well-formatted trivial answer earns them"""
_NUMBERED = re.compile(r"^\.?\s*\d+[.)]\s*(\S.*)$")
"""a numbered line ("1. P", reasoning-gym's ".2. Q"): a premise, a given fact"""


def trivial_answers(example: Example, common: str) -> dict[str, str]:
    """Answers that need no reasoning, by what they are: empty, hedges, the question's first line,
    its first listed item (a premise: "1. P"), the most common train answer."""
    lines = [line.strip() for line in example.question.splitlines() if line.strip()]
    items = [m.group(1).strip() for line in lines if (m := _NUMBERED.match(line))]
    answers = {"an empty answer": "", "the hedge 'YesNo'": "YesNo", "the hedge 'True False'": "True False",
               "the question's first line": lines[0] if lines else "",
               "a copy of the first premise (numbered line)": items[0] if items else ""}
    if common:
        answers[f"the most common train answer {common[:40]!r}"] = common
    return answers


def score_trivial_answers(task, cfg: Config, *, n: int = 50, conversational: bool = False,
                          reward_funcs=None) -> dict[str, dict[str, float]]:
    """{trivial answer: {"accuracy": mean verify, reward name: mean part}} on `n` training examples.

    Each answer is written as a well-formatted completion (`<think>` then `<answer>`) and scored
    by the task's verifier and by the configured rewards, the way a training step scores (the
    answer-blind built-ins, `ANSWER_BLIND`, are left out)."""
    from rlvr.rollout import PromptFormat, build_reward_fns, score_texts

    train = task.train_examples()
    common = Counter(ex.answer for ex in train).most_common(1)[0][0] if train else ""
    examples = train[:: max(1, len(train) // n)][:n]
    per_example = [trivial_answers(ex, common) for ex in examples]
    kinds = list(per_example[0]) if per_example else []
    pairs = [(kind, ex, answers[kind]) for kind in kinds for ex, answers in zip(examples, per_example)]
    fmt = PromptFormat.from_config(cfg.task)
    texts = [f"<think>\n</think>\n<answer>{answer}</answer>" for _, _, answer in pairs]
    texts = [t[len(fmt.prefill):] if fmt.prefill and t.startswith(fmt.prefill) else t for t in texts]
    fns = [r for r in build_reward_fns(task, cfg.task.rewards, reward_funcs) if r.name not in ANSWER_BLIND]
    result = score_texts(fns, task, [ex for _, ex, _ in pairs], texts, fmt, cfg.task.reward_timeout,
                         conversational) if fns and pairs else None
    out: dict[str, dict[str, float]] = {}
    for kind in kinds:
        idx = [i for i, (k, _, _) in enumerate(pairs) if k == kind]
        row = {"accuracy": sum(task.verify(pairs[i][2], pairs[i][1]) for i in idx) / len(idx)}
        for name, values in (result.parts.items() if result else ()):
            finite = [values[i] for i in idx if math.isfinite(values[i])]
            row[name] = sum(finite) / len(finite) if finite else 0.0
        out[kind] = row
    return out


def hack_finding(scores: dict[str, dict[str, float]], task_name: str) -> Finding:
    """A warning naming the trivial answers that score >= HACK_SCORE (accuracy or a reward)."""
    hits = {kind: [f"{metric} {value:.2f}" for metric, value in row.items() if value >= HACK_SCORE]
            for kind, row in scores.items()}
    hits = {kind: found for kind, found in hits.items() if found}
    if not hits:
        best = max((v for row in scores.values() for v in row.values()), default=0.0)
        return Finding("ok", f"No trivial answer (empty, a hedge, a copied premise, the most common answer) "
                       f"scores well on {task_name} (best mean score {best:.2f}).")
    named = "; ".join(f"{kind} scores {', '.join(found)}" for kind, found in list(hits.items())[:4])
    return Finding("warn", f"Trivial answers score well on {task_name}: {named}. A policy can learn these "
                   "instead of the task (reward hacking).",
                   "Reward only fully right answers (the accuracy reward), drop or lower rewards that pay these "
                   "answers (partial_credit), or choose a dataset whose answers cannot be guessed; watch "
                   "samples.jsonl for them.")


# ------------------------------------------------------------------------------ entry points

def diagnose(cfg: Config, *, model=None, tokenizer=None, task=None, num_prompts: int = 8,
             examples: Iterator[Example] | None = None, policy_ready: bool = False,
             measure_memory: bool = True, sampler=None, reward_funcs=None) -> Diagnosis:
    """Sample `num_prompts` groups and measure one update as `cfg` would; return the diagnosis.

    model: a fresh model (it gets the config's LoRA adapter) or, with policy_ready=True, the policy
    the trainer already prepared (and `sampler`, the trainer's, so its weights are prepared
    once). examples: default `example_stream(cfg, task)`, the prompts the
    run's first step will see. Sampling and the measured update use their own generators, the
    global RNG is restored and the update runs at learning rate 0, so a run that follows is
    unchanged by the doctor. reward_funcs: the run's reward callables by name (`build_reward_fns`).
    """
    from rlvr import allocator
    from rlvr.models import load_model
    from rlvr.tasks import get_task
    from rlvr.curriculum import example_stream
    from rlvr.models import prepare_policy
    from rlvr.sampling import make_sampler

    t0 = time.perf_counter()
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    allocator.configure()  # as `rlvr` does at start-up: measure the heap the run will have
    loaded = model is None
    if loaded:
        model, tokenizer = load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype,
                                      load_in_4bit=cfg.model.load_in_4bit)
    policy = model if policy_ready else prepare_policy(model, cfg.model)
    task = task or get_task(cfg.task.name, **cfg.task.options)
    examples = examples if examples is not None else example_stream(cfg, task)
    policy.eval()
    sampler = sampler or make_sampler(cfg.sampling.backend, policy, tokenizer, **sampler_options(cfg))
    available = available_memory(next(policy.parameters()).device)  # before an engine takes its share
    _plan_engine_memory(sampler, policy, tokenizer, task, cfg, available)
    with torch.random.fork_rng(devices=[]):  # the global RNG a following run uses is left as it was
        signal, exp = sample_signal(sampler, tokenizer, task, examples, cfg, num_prompts=num_prompts,
                                    generator=torch.Generator().manual_seed(cfg.run.seed + 12345),
                                    device=next(policy.parameters()).device, reward_funcs=reward_funcs)
        longest = max((r.prompt_ids for r in exp.rollouts), key=len)
        # as the trainer does before each update: the sampler's weight copies and KV cache are freed,
        # so the probe's peak is the update's (with them, the doctor set the process's peak: 4.1 GB
        # where the run's updates peaked near 3 GB, bench/bench_trl.py's SFT setting)
        sampler.release()
        engine = getattr(sampler, "engine_memory", dict)()
        memory = check_memory(policy, cfg, prompt_ids=longest, pad_token_id=tokenizer.pad_token_id,
                              measure=measure_memory, engine_bytes=float(sum(engine.values())), available=available)
    policy.eval()
    chat = cfg.task.chat if cfg.task.chat is not None else bool(getattr(tokenizer, "chat_template", None))
    try:
        hack = hack_finding(score_trivial_answers(task, cfg, conversational=chat, reward_funcs=reward_funcs), task.name)
    except Exception as e:  # noqa: BLE001 - a verifier choking on an empty answer must not hide the rest
        hack = Finding("warn", f"The trivial-answer check failed: {type(e).__name__}: {e}"[:300],
                       "Check that the task's verify and the rewards accept any answer text (an empty one too).")
    name = cfg.model.name if loaded else (getattr(model, "name_or_path", "") or "the given model")
    return Diagnosis(name, task.name, cfg.sampling.temperature, cfg.sampling.max_completion_length,
                     signal, memory, assess(signal, memory, cfg, [hack]), time.perf_counter() - t0)


def _plan_engine_memory(sampler, policy, tokenizer, task, cfg: Config, available: float) -> None:
    """A sampler with its own engine (vLLM on CPU) gets its KV cache sized from the memory measured
    free, less the update's estimated peak at the length of the task's first prompts."""
    plan = getattr(sampler, "plan_memory", None)
    if plan is None:
        return
    from rlvr.rollout import PromptFormat

    fmt = PromptFormat.from_config(cfg.task)
    prompts = fmt.encode(tokenizer, task, task.train_examples()[:64])
    longest = max(map(len, prompts), default=0)
    plan(available=available, reserved_update=update_estimate(policy, cfg, longest),
         seq_len=longest + cfg.sampling.max_completion_length)


def render(d: Diagnosis) -> str:
    """The diagnosis for the console: the numbers, then each finding with its fix, then the verdict."""
    s, m = d.signal, d.memory
    timing = f"sampling {s.seconds:.0f} s" + (f", update {m.seconds:.0f} s" if m is not None else "")
    lines = [f"rlvr doctor: {d.model} on {d.task}: {s.prompts} prompts x {s.generations} completions, "
             f"temperature {d.temperature:g}, at most {d.max_completion_length} tokens ({timing})",
             f"  pass@{s.generations:<10} {_pct(s.pass_at_g):>6}   groups with at least one right answer",
             f"  no signal      {_pct(s.zero_signal):>6}   groups whose rewards are all equal",
             f"  right+wrong    {_pct(s.mixed_accuracy):>6}   groups with both right and wrong answers",
             f"  accuracy       {_pct(s.accuracy):>6}   format {_pct(s.format_rate)}, mean reward {s.reward_mean:.3f}",
             f"  truncated      {_pct(s.truncated):>6}   length mean {s.length_mean:.0f}, p50 {s.length_p50:.0f}, "
             f"p90 {s.length_p90:.0f}, max {s.length_max}"]
    if m is not None:
        measured = f"{m.measured_bytes / GB:.2f} GB measured, " if m.measured_bytes is not None else ""
        lines.append(f"  update memory  {measured}{m.estimated_bytes / GB:.2f} GB estimated, {m.available_bytes / GB:.1f} GB "
                     f"available (batch {m.batch_size} x {m.seq_len} tokens, {m.allocator} malloc)")
        if m.engine_bytes:
            lines.append(f"  engine memory  {m.engine_bytes / GB:.2f} GB (the sampler's engine: weights, KV cache, runtime)")
    if s.peak_bytes is not None:
        lines.append(f"  sampling memory {s.peak_bytes / GB:.2f} GB for {s.prompts * s.generations} completions")
    for f in d.findings:
        lines.append(f"{f.severity.upper():<5}  {f.message}")
        if f.fix and f.severity != "ok":
            lines.append(f"       fix: {f.fix}")
    lines.append("verdict: training can go ahead." if d.can_learn
                 else "verdict: training as configured cannot learn (or will not fit); fix the FATAL findings first.")
    return "\n".join(lines)


class CannotLearn(RuntimeError):
    """Raised at step 0 with run.doctor=stop when the doctor finds a fatal problem (`rlvr` exits 2)."""


def doctor_check(policy, tokenizer, task, run_dir: Path, cfg: Config, dist, *, sampler, say,
                 reward_funcs=None) -> None:
    """The doctor at step 0 of `rlvr train`, on one process (`check_before_training`); with several
    processes it is skipped with a note (run `rlvr doctor` first)."""
    if dist.world > 1:
        if dist.is_main:
            say("rlvr doctor is skipped with several processes: run `rlvr doctor` with the same config first")
        return
    check_before_training(cfg, policy, tokenizer, task, run_dir, sampler=sampler, say=say, reward_funcs=reward_funcs)


def check_before_training(cfg: Config, policy, tokenizer, task, run_dir: Path, *, sampler=None,
                          say: Callable[[str], None] = print, reward_funcs=None) -> Diagnosis:
    """The doctor at the start of `rlvr train` (run.doctor: warn | stop): diagnose the run as
    configured on its first prompts, write RUN/doctor.json, print the findings, and with
    run.doctor=stop raise `CannotLearn` when a finding is fatal. The run that follows is unchanged
    (see `diagnose`): same weights, same global RNG."""
    d = diagnose(cfg, model=policy, tokenizer=tokenizer, task=task, policy_ready=True, sampler=sampler,
                 num_prompts=min(8, cfg.grpo.prompts_per_step), reward_funcs=reward_funcs)
    (Path(run_dir) / "doctor.json").write_text(json.dumps(d.to_dict(), indent=1, default=str))
    if not d.can_learn or any(f.severity != "ok" for f in d.findings):
        say(render(d))
    else:
        say(f"rlvr doctor: pass@{d.signal.generations} {_pct(d.signal.pass_at_g)}, no-signal groups "
            f"{_pct(d.signal.zero_signal)}, truncated {_pct(d.signal.truncated)}: training can go ahead "
            f"({d.seconds:.0f} s; run.doctor=off skips this check)")
    if not d.can_learn and cfg.run.doctor == "stop":
        raise CannotLearn("training as configured cannot learn (see the FATAL findings above and "
                          f"{Path(run_dir) / 'doctor.json'}); fix them, or set run.doctor=warn to train anyway")
    return d
