"""The SFT warm-up: teach a small model the think/answer format before RL.

Seed 004's lesson: a 135M model almost never earns a reward at first, so every GRPO group has
equal rewards and nothing is learned. A short supervised fine-tune on a few hundred demonstrations
(procedural worked solutions, a teacher model's answers that the verifier accepted, or a user's
JSONL) gives RL a signal. The loss is on completion tokens only. Batches are grouped by length so
that padding is minimal (a length-grouped sampler rather than packing: packed attention needs
flash-attention kernels that CPUs do not have).

The output (`RUN/final/merged`) is a plain Hugging Face model: `rlvr train --model RUN` starts
from it and attaches a fresh LoRA adapter.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlvr.buffer import Rollout, collate
from rlvr.config import Config, ConfigError
from rlvr.episodes import encode_trajectory
from rlvr.policy import completion_logprobs
from rlvr.rollout import PromptFormat


@dataclass
class SFTResult:
    run_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    num_demos: int = 0
    rounds: list[dict] = field(default_factory=list)
    """sft.source self: one record per round (rlvr.selftrain)"""


def load_demonstrations(cfg: Config, task, examples) -> list:
    """Demonstrations from the configured source: procedural, teacher, or a JSONL path."""
    from rlvr import demos as demo_lib

    source = cfg.sft.source
    if source == "procedural":
        found = demo_lib.procedural_demos(task, examples)
        if not found:
            raise ConfigError(f"task '{task.name}' cannot write its own demonstrations; set sft.source to a "
                              ".jsonl file of (prompt, completion) pairs or to 'teacher'")
        return found
    if source == "teacher":
        out = Path(cfg.run.output_dir) / "teacher_demos.jsonl"
        result = demo_lib.run_teacher_job(task, examples, base_url=cfg.sft.teacher_base_url,
                                          model=cfg.sft.teacher_model, api_key_env=cfg.sft.teacher_api_key_env,
                                          out_path=out)
        if not result.demos:  # stop here: training on nothing would write an untrained final/
            raise demo_lib.TeacherAPIError(result.why_none())
        return result.demos
    if source.endswith(".jsonl"):
        return demo_lib.load_demos_jsonl(source)
    raise ConfigError(f"sft.source '{source}' is not procedural, teacher, self or a .jsonl path")


def _encode(tokenizer, task, fmt: PromptFormat, demos) -> list[Rollout]:
    """Prompt ids and completion ids (+ end-of-turn token) of each demonstration; a multi-turn one
    as its episode would be tokenized (`rlvr.episodes.encode_trajectory`), loss only on the model's turns."""
    from rlvr.tasks.base import Example

    items = []
    eos = tokenizer.eos_token or ""
    for d in demos:
        example = Example(question=d.question, answer=d.ground_truth, metadata=dict(d.metadata))
        prompt_ids = fmt.encode(tokenizer, task, [example])[0]
        completion = d.completion
        if fmt.prefill and completion.startswith(fmt.prefill):
            completion = completion[len(fmt.prefill):]
        if d.messages is not None and len(d.messages) > 1:  # multi-turn: the tool's tokens carry no loss
            chat = fmt.uses_chat(tokenizer)
            completion_ids, mask = encode_trajectory(tokenizer, d.messages, chat=chat, prefill=fmt.prefill)
            items.append(Rollout(prompt_ids, completion_ids, [0.0] * len(completion_ids), 0.0, False, loss_mask=mask))
            continue
        completion_ids = tokenizer(completion + eos, add_special_tokens=False)["input_ids"]
        items.append(Rollout(prompt_ids, completion_ids, [0.0] * len(completion_ids), 0.0, False))
    return items


def length_grouped_batches(items: list, batch_size: int, generator: torch.Generator) -> list[list]:
    """Shuffle, then sort within windows of 8 batches by length: little padding, still random."""
    order = torch.randperm(len(items), generator=generator).tolist()
    window = batch_size * 8
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda i: len(items[i].prompt_ids) + len(items[i].completion_ids))
        batches += [[items[i] for i in chunk[b:b + batch_size]] for b in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


def sft_train(policy, tokenizer, task, demos, cfg: Config, *, run_dir: Path, tracker=None,
              step_offset: int = 0) -> SFTResult:
    """Supervised fine-tuning on completion tokens only (mean negative log-likelihood per token).
    `step_offset`: steps already logged (the self warm-up calls this once per round)."""
    from tqdm.auto import tqdm

    from rlvr.runs import peak_rss_gb
    from rlvr.update import make_optimizer

    fmt = PromptFormat.from_config(cfg.task)
    items = _encode(tokenizer, task, fmt, demos)
    generator = torch.Generator().manual_seed(cfg.run.seed)
    s = cfg.sft
    steps_per_epoch = math.ceil(len(items) / s.batch_size)
    total = steps_per_epoch * s.epochs
    opt_cfg = type(cfg.grpo)(learning_rate=s.learning_rate, warmup_ratio=s.warmup_ratio, lr_scheduler_type="cosine",
                             max_grad_norm=s.max_grad_norm, weight_decay=0.0)
    optimizer, scheduler = make_optimizer(policy, opt_cfg, total)
    device = next(policy.parameters()).device
    policy.train()
    result = SFTResult(run_dir, 0, num_demos=len(items))
    t0 = time.perf_counter()
    micro = cfg.grpo.per_device_train_batch_size
    bar = tqdm(total=total, desc="sft", unit="step", disable=cfg.run.quiet)
    for _ in range(s.epochs):
        for batch in length_grouped_batches(items, s.batch_size, generator):
            n_tok = sum(sum(r.loss_mask) for r in batch)  # the tokens that carry loss
            loss_sum = 0.0
            for m in range(0, len(batch), micro):
                mb = collate(batch[m:m + micro], tokenizer.pad_token_id).to(device)
                logp = completion_logprobs(policy, mb.input_ids, mb.attention_mask, mb.logits_to_keep,
                                           chunk_size=cfg.grpo.logprob_chunk_size)  # [n, C]
                loss = -(logp * mb.completion_mask).sum() / n_tok
                loss.backward()
                loss_sum += float(loss.detach())
            torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad], s.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            result.steps += 1
            result.losses.append(loss_sum)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.3f}")
            if tracker is not None:
                tracker.log({"loss/sft": loss_sum, "optim/lr": scheduler.get_last_lr()[0],
                             "memory/peak_rss_gb": peak_rss_gb()}, step_offset + result.steps)
    bar.close()
    result.seconds = time.perf_counter() - t0
    policy.eval()
    return result


def run_sft(cfg: Config, *, model=None, tokenizer=None, task=None, resume: bool = False):
    """`rlvr sft`: demonstrations -> fine-tune -> save RUN/final/{adapter,merged}; returns (result, policy)."""
    import json

    from rlvr.models import load_model
    from rlvr.tasks import get_task
    from rlvr.tracking import Tracker
    from rlvr.models import prepare_policy
    from rlvr.runs import prepare_run_dir, recorded_config, save_final

    cfg.finalize()  # a Config() built in Python is checked and derived here (idempotent)
    run_dir = prepare_run_dir(recorded_config(cfg, task), resume=resume)
    torch.manual_seed(cfg.run.seed)
    if model is None:
        model, tokenizer = load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype,
                                      load_in_4bit=cfg.model.load_in_4bit)
    task = task or get_task(cfg.task.name, **cfg.task.options)
    demos = None if cfg.sft.source == "self" else _chosen_demonstrations(cfg, task)
    model_cfg = cfg.model if cfg.sft.use_peft is None else dataclasses.replace(cfg.model, use_peft=bool(cfg.sft.use_peft))
    policy = prepare_policy(model, model_cfg)
    rows = []
    with Tracker(run_dir, report_to=list(cfg.run.report_to), config=cfg.to_dict()) as tracker:
        if cfg.eval.n and cfg.eval.on_start:
            rows.append(_evaluate(policy, tokenizer, task, cfg, run_dir, tracker, 0, "before"))
        if demos is None:  # sft.source self: rounds of the model's own verified completions
            from rlvr.selftrain import self_warm_up

            def fine_tune(kept, offset):
                return sft_train(policy, tokenizer, task, kept, cfg, run_dir=run_dir, tracker=tracker, step_offset=offset)

            warm = self_warm_up(policy, tokenizer, task, cfg, run_dir=run_dir, fine_tune=fine_tune, tracker=tracker)
            result = SFTResult(run_dir, warm.steps, warm.losses, warm.seconds, warm.num_demos, warm.rounds)
        else:
            result = sft_train(policy, tokenizer, task, demos, cfg, run_dir=run_dir, tracker=tracker)
        if cfg.eval.n:
            rows.append(_evaluate(policy, tokenizer, task, cfg, run_dir, tracker, result.steps, "after"))
    save_final(policy, tokenizer, run_dir)
    summary = {"source": cfg.sft.source, "num_demos": result.num_demos, "steps": result.steps,
               "seconds": result.seconds, "first_loss": result.losses[0] if result.losses else None,
               "last_loss": result.losses[-1] if result.losses else None, "before_after": rows}
    if result.rounds:
        summary["self_rounds"] = result.rounds
    (run_dir / "sft_summary.json").write_text(json.dumps(summary, indent=1))
    if not cfg.run.quiet and result.rounds:
        from rlvr.selftrain import format_rounds

        print(format_rounds(result.rounds))
    if rows and not cfg.run.quiet:
        from rlvr.evaluate import format_table, verdict

        print(format_table(rows))
        print(verdict(rows))
    return result, policy


def _chosen_demonstrations(cfg: Config, task) -> list:
    """The demonstrations of sft.num_examples training examples (a seeded draw) from sft.source."""
    examples = task.train_examples()
    g = torch.Generator().manual_seed(cfg.run.seed)
    chosen = [examples[i] for i in torch.randperm(len(examples), generator=g)[:cfg.sft.num_examples].tolist()]
    demos = load_demonstrations(cfg, task, chosen)
    if not demos:
        raise ConfigError(f"no demonstrations from sft.source '{cfg.sft.source}' for {len(chosen)} examples: "
                          "nothing to fine-tune on")
    return demos


def _evaluate(policy, tokenizer, task, cfg: Config, run_dir: Path, tracker, step: int, stage: str) -> dict:
    """Greedy accuracy on the first eval.n held-out examples (the same ones `rlvr train` uses)."""
    from rlvr.evaluate import evaluate_config
    from rlvr.sampling import make_sampler
    from rlvr.config import sampler_options

    policy.eval()
    result = evaluate_config(make_sampler(cfg.sampling.backend, policy, tokenizer, **sampler_options(cfg)), tokenizer, task, cfg,
                             progress=not cfg.run.quiet, out_path=run_dir / "eval" / f"{stage}.jsonl")
    row = {"step": step, "stage": stage, **result.summary()}
    tracker.log_eval(row)
    return row
