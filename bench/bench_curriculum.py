"""Benchmark adaptive difficulty: the no-signal fraction of a short GRPO run with the level adapting,
against the same run at a fixed difficulty (same model, seed, steps, sampling and optimizer).

A group whose G rewards are all equal teaches nothing (zero advantage). At a fixed difficulty the
model may be right almost never (or always) and most groups are flat; with `AdaptiveDifficulty`
the level moves toward where groups succeed about half the time. Each run is a short real GRPO
loop built from the trainer's own stages (collect_experience, update_policy); it prints, per step,
the fraction of flat groups (no signal at all), the fraction of groups with both right and wrong
answers (signal about the task itself, not only the format), the training accuracy and the level,
then both runs' means.

    .venv/bin/python bench/bench_curriculum.py --model runs/sft     # an SFT-warmed 135M (rlvr sft)
    .venv/bin/python bench/bench_curriculum.py --model smollm2-135m --steps 4   # the base model

The default task is subtraction on 0-999 (level 3), hard for a warmed-up 135M model; adaptive
difficulty starts at the same level and moves down (or up) as the groups' accuracy says.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from rlvr.config import load_config
from rlvr.curriculum import AdaptiveDifficulty, group_success_rates


def run(args, adaptive: bool) -> list[dict]:
    """One short GRPO run; returns one row of metrics per step."""
    from rlvr.buffer import Buffer
    from rlvr.models import load_model
    from rlvr.rollout import PromptFormat, build_reward_fns, collect_experience, sampling_params
    from rlvr.tasks import get_task
    from rlvr.curriculum import ExampleStream
    from rlvr.models import prepare_policy
    from rlvr.sampling import make_sampler
    from rlvr.update import make_optimizer, update_policy

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [f"model.name={args.model}", f"grpo.prompts_per_step={args.prompts}",
                                    f"grpo.num_generations={args.generations}", f"grpo.max_steps={args.steps}",
                                    f"task.options={{high: {args.high}}}", *args.overrides])
    torch.manual_seed(cfg.run.seed)
    model, tok = load_model(cfg.model.name)
    policy = prepare_policy(model, cfg.model)
    task = get_task(cfg.task.name, **cfg.task.options)
    if adaptive:
        stream = AdaptiveDifficulty(task, target=0.5, window=args.window, seed=cfg.run.seed)
    else:
        stream = ExampleStream(task.train_examples(), cfg.run.seed)
    s, g = cfg.sampling, cfg.grpo
    params = sampling_params(tok, max_new_tokens=s.max_completion_length, temperature=s.temperature,
                             top_p=s.top_p, top_k=s.top_k, stop_at_answer=s.stop_at_answer)
    fmt = PromptFormat(cfg.task.chat, cfg.task.system_prompt, cfg.task.prefill)
    reward_fns = build_reward_fns(task, cfg.task.rewards)
    sampler = make_sampler(s.backend, policy, tok)
    optimizer, scheduler = make_optimizer(policy, g, g.max_steps)
    gens = [torch.Generator().manual_seed(cfg.run.seed), torch.Generator().manual_seed(cfg.run.seed + 1)]
    rows = []
    for step in range(1, g.max_steps + 1):
        t0 = time.perf_counter()
        level = stream.level if adaptive else getattr(task, "default_level", None)
        policy.eval()
        exp = collect_experience(sampler, tok, task, stream, batch_size=g.prompts_per_step, num_generations=g.num_generations,
                                 params=params, fmt=fmt, reward_fns=reward_fns, scale_rewards=g.scale_rewards,
                                 dynamic_sampling=False, max_resample_rounds=0, reward_timeout=cfg.task.reward_timeout,
                                 generator=gens[0])
        if not args.no_update:
            update_policy(policy, optimizer, scheduler, Buffer(exp.rollouts), g, temperature=max(s.temperature, 1e-6),
                          max_completion_length=s.max_completion_length, pad_token_id=tok.pad_token_id, generator=gens[1])
        if adaptive:
            stream.observe(group_success_rates(exp.correct, g.num_generations))
        m = exp.metrics
        rates = group_success_rates(exp.correct, g.num_generations)
        mixed = sum(0 < r < 1 for r in rates) / max(1, len(rates))  # groups with right and wrong answers
        rows.append({"step": step, "level": level, "zero_signal": m["signal/zero_std_groups"], "mixed": mixed,
                     "accuracy": m["train/accuracy"], "format": m["train/format_rate"],
                     "length": m["completion/length_mean"], "seconds": time.perf_counter() - t0})
        print(f"  {'adaptive' if adaptive else 'fixed':8} step {step}: level {level}  no-signal {m['signal/zero_std_groups']:.0%}  "
              f"right-and-wrong {mixed:.0%}  "
              f"accuracy {m['train/accuracy']:.0%}  format {m['train/format_rate']:.0%}  "
              f"({rows[-1]['seconds']:.0f} s)", flush=True)
    return rows


def mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / max(1, len(rows))


def main() -> None:
    from rlvr import allocator

    allocator.start()  # as the `rlvr` command runs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="model spec (an SFT-warmed run directory)")
    parser.add_argument("--config", default="configs/main.yaml")
    parser.add_argument("--high", type=int, default=1000, help="subtraction range [0, high) of the fixed run")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=8, help="prompts (groups) per step")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--window", type=int, default=8, help="groups per adaptive decision")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (1 is fastest on a busy shared CPU)")
    parser.add_argument("--no-update", action="store_true", help="sample and score only (no policy update)")
    parser.add_argument("--json", help="write both runs' rows here")
    parser.add_argument("overrides", nargs="*", help="config overrides section.option=value")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.model} on subtraction [0, {args.high}): {args.steps} steps x {args.prompts} prompts x "
          f"{args.generations} completions, {torch.get_num_threads()} threads")
    results = {name: run(args, adaptive=name == "adaptive") for name in ("fixed", "adaptive")}
    print(f"\n{'run':<9} {'no-signal':>9} {'right+wrong':>11} {'accuracy':>9} {'format':>7} {'levels':>14} {'s/step':>7}")
    for name, rows in results.items():
        levels = "-".join(str(r["level"]) for r in rows)
        print(f"{name:<9} {mean(rows, 'zero_signal'):>9.0%} {mean(rows, 'mixed'):>11.0%} {mean(rows, 'accuracy'):>9.0%} "
              f"{mean(rows, 'format'):>7.0%} {levels:>14} {mean(rows, 'seconds'):>7.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
