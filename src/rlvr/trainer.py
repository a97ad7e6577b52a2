"""The GRPO loop: collect experience, update the policy, log, evaluate, checkpoint.

Reads top to bottom like seed 004's loop, one named call per stage and no callback framework:

    for step in steps:
        experience = collect_experience(...)      # sample G per prompt, score, group advantages
        metrics    = update_policy(...)           # clipped surrogate over shuffled minibatches
        log / alarms / eval / checkpoint

Departures from the paper (DeepSeekMath's GRPO), all options with TRL's names:
  - the KL term is off by default (beta = 0), as DAPO and Dr. GRPO recommend; when on, the
    reference is the base model with the LoRA adapter disabled (no second copy in memory);
  - with num_iterations = 1 the old log-probs are the current ones, detached, so the ratio is
    exactly 1 (TRL does the same); with more passes the sampler's log-probs are reused as the
    old log-probs (same weights, same temperature), saving a forward pass;
  - micro-batches need not divide the batch: each is weighted by its share of the optimizer batch;
  - on N processes (rlvr.distributed) each samples and learns from its share of the step's groups,
    with global loss weights, so the optimizer steps equal one process's.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlvr.alarms import Alarms, alarm_metrics
from rlvr.algorithms.losses import policy_loss
from rlvr.buffer import Buffer, collate
from rlvr.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rlvr.config import Config, ConfigError, GRPOConfig, ModelConfig
from rlvr.distributed import Dist, NullTracker, setup_distributed
from rlvr.evaluate import evaluate_config, format_table, verdict
from rlvr.policy import completion_logprobs, decoder_tokens
from rlvr.rollout import PromptFormat, build_reward_fns, collect_experience, sampling_params
from rlvr.sampling.base import free_memory

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a NaN or inf loss or gradient."""


class CtrlC:
    """Ctrl-C as a flag as well as the usual KeyboardInterrupt, so that it cannot be lost.

    Python raises KeyboardInterrupt wherever the main thread happens to be. If that is inside a
    finaliser (a `__del__`, a weakref callback), CPython prints "Exception ignored" and the interrupt
    is gone, and the run would go on training (tests/test_interrupt.py shows it). The flag survives;
    the loop checks it before every step. Installed only over Python's default handler, in the main
    thread: a process started with SIGINT ignored (a shell's background job, `rlvr train &`) keeps
    ignoring it, as Python itself does.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def install(self) -> "CtrlC":
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed, even if its exception was swallowed."""
        if self.requested:
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    eval_rows: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    peak_rss_gb: float = 0.0


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------

def peak_rss_gb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 ** 3 if sys.platform == "darwin" else 1024 ** 2)


def prepare_policy(model, cfg: ModelConfig):
    """LoRA adapter or full fine-tuning; gradient checkpointing on request."""
    from rlvr.models import attach_lora

    if cfg.use_peft:
        model = attach_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                            target_modules=cfg.lora_target_modules, fused=cfg.fused_layers)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        if cfg.fused_layers:  # the norms: the fused linears and MLPs are LoRA's
            from rlvr.fused import fuse_rms_norms

            fuse_rms_norms(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.use_peft:
            model.enable_input_require_grads()
    return model


def make_sampler(backend: str, model, tokenizer):
    if backend == "hf":
        from rlvr.sampling.hf import HFSampler

        return HFSampler(model, tokenizer)
    from rlvr.sampling.fast import FastSampler

    return FastSampler(model, tokenizer)


def make_optimizer(model, cfg: GRPOConfig, total_steps: int):
    """AdamW over the trainable parameters; linear warm-up then constant, linear or cosine decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters (check model.use_peft and lora_target_modules)")
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * total_steps)

    def schedule(i: int) -> float:
        if i < warmup:
            return (i + 1) / (warmup + 1)
        progress = (i - warmup) / max(1, total_steps - warmup)
        if cfg.lr_scheduler_type == "linear":
            return max(0.0, 1.0 - progress)
        if cfg.lr_scheduler_type == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


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


def _loss_weight(loss_type: str, micro: int, total: int, num_micro: int) -> float:
    """Share of one micro-batch in its optimizer batch, so accumulation equals one big batch.

    grpo / dr_grpo normalise per sequence: weight by sequences. bnpo normalises by each
    micro-batch's own tokens (TRL): plain average of micro-batches. dapo normalises by the
    tokens of the whole accumulated batch already (num_items_in_batch): weight 1.
    """
    return {"grpo": micro / total, "dr_grpo": micro / total, "bnpo": 1.0 / num_micro, "dapo": 1.0}[loss_type]


def update_policy(model, optimizer, scheduler, buffer: Buffer, cfg: GRPOConfig, *, temperature: float,
                  max_completion_length: int, pad_token_id: int, generator: torch.Generator,
                  ref_model=None, dist: Dist | None = None, skip_zero_advantage: bool | None = None) -> dict:
    """num_iterations passes over the buffer; each pass is steps_per_generation optimizer steps.

    With several processes (`dist`), the buffer holds this process's groups; optimizer batches,
    loss weights and the skip decision are global, so the step equals one process's (rlvr.distributed).

    Rows with advantage 0 (every row of a group whose rewards are all equal) have a zero loss
    gradient when there is no KL term (beta = 0), whatever the ratio: with `skip_zero_advantage`
    they are left out of the forward and backward passes, but still counted by the normalisers
    (sequences, DAPO's tokens), so the step is the same. Not for bnpo, which normalises by each
    micro-batch's own tokens. With half the groups flat, that halves the update's work.
    skip_zero_advantage: None follows cfg.skip_zero_advantage.
    """
    dist = dist or Dist()
    device = next(model.parameters()).device
    model.train()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    bad = 0
    tokens = decoded = 0  # real tokens of the rows; tokens the decoder ran (shared prompts once)
    t0 = time.perf_counter()

    def add(key, value):
        sums[key] = sums.get(key, 0.0) + float(value)
        counts[key] = counts.get(key, 0) + 1

    if skip_zero_advantage is None:
        skip_zero_advantage = cfg.skip_zero_advantage
    skip = skip_zero_advantage and cfg.beta == 0 and cfg.loss_type != "bnpo"
    micro_size = cfg.per_device_train_batch_size
    # each prompt's forward once; not under FSDP, where all processes must run the same collectives,
    # and a shared-prompt forward runs the decoder once or twice by the rows
    share = cfg.share_prompt and not dist.fsdp
    zero_ref = cfg.beta > 0 and ref_model is None and dist.fsdp  # FSDP: the reference forward is collective too
    for _ in range(cfg.num_iterations):
        for parts in dist.optimizer_batches(buffer.rollouts, cfg.steps_per_generation, micro_size, generator,
                                            by_group=cfg.share_prompt):
            masks = [_loss_mask(p, cfg.mask_truncated_completions) for p in parts]
            local_tok = sum(float(w) * len(r.completion_ids) for p, m in zip(parts, masks) for r, w in zip(p, m))
            n_seq, n_tok, n_micro = dist.all_sum(sum(len(p) for p in parts), local_tok, len(parts))  # all processes
            n_tok = max(1, int(n_tok))
            if skip:  # zero-gradient rows out; the normalisers above still count them
                kept = [r for p in parts for r in p if r.advantage != 0.0]
                add("update/skipped_frac", 1.0 - len(kept) / max(1, sum(len(p) for p in parts)))
                parts = [kept[m:m + micro_size] for m in range(0, len(kept), micro_size)]
                masks = [_loss_mask(p, cfg.mask_truncated_completions) for p in parts]
            # none of this batch's rows here: join DDP's gradient all-reduce with a zero-loss pass. Under
            # FSDP every pass is collective: top up to the busiest process's number of passes
            for _ in range(dist.missing_passes(max(1, len(parts))) + (not parts)):
                _zero_pass(model, dist, pad_token_id, device, reference=zero_ref)
            for i, (micro, mask_rows) in enumerate(zip(parts, masks)):
                with dist.sync(last=i == len(parts) - 1):  # processes average gradients after the last
                    mb = collate(micro, pad_token_id).to(device)
                    mask = mb.completion_mask * mask_rows.to(device)[:, None]  # [n, C]
                    rows = mb.prompt_rows if share else None
                    logp, entropy = dist.completion_logprobs(
                        model, mb.input_ids, mb.attention_mask, mb.logits_to_keep, temperature=temperature,
                        chunk_size=cfg.logprob_chunk_size, with_entropy=True, prompt_rows=rows)  # [n, C], [n, C]
                    old = logp.detach() if cfg.num_iterations == 1 else mb.old_logprobs  # [n, C]
                    ref = (_reference_logprobs(model, ref_model, mb, rows, temperature, cfg, dist)
                           if cfg.beta > 0 else None)
                    loss, m = policy_loss(logp, old, mb.advantages, mask, ref_logprobs=ref, beta=cfg.beta,
                                          epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, loss_type=cfg.loss_type,
                                          max_completion_length=max_completion_length, num_items_in_batch=n_tok,
                                          importance_sampling_level=cfg.importance_sampling_level)
                    # x world: the weights sum to 1 over all processes, and DDP averages their gradients
                    dist.backward(loss * _loss_weight(cfg.loss_type, len(micro), n_seq, n_micro) * dist.world)
                tokens += int(mb.attention_mask.sum())
                decoded += decoder_tokens(model, mb.attention_mask, mb.logits_to_keep, rows)
                add("loss/policy", loss.detach())
                for key, value in m.items():
                    add({"clip_frac": "policy/clip_frac", "kl": "loss/kl", "ratio_mean": "policy/ratio_mean"}.get(key, f"policy/{key}"), value)
                denom = mb.completion_mask.sum().clamp(min=1)
                add("policy/entropy", (entropy * mb.completion_mask).sum() / denom)
            grad_norm = dist.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
            bad_here = not torch.isfinite(grad_norm) or not math.isfinite(sums.get("loss/policy", 0.0))
            if dist.all_sum(float(bad_here))[0]:  # the same decision on every process
                bad += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            add("optim/grad_norm", grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    metrics = {k: sums[k] / counts[k] for k in sums}
    metrics.update({"optim/lr": scheduler.get_last_lr()[0], "optim/bad_updates": bad, "time/update_s": seconds,
                    "throughput/update_tok_s": tokens / max(seconds, 1e-9), "update/decoder_tokens": decoded})
    return dist.mean_metrics(metrics)


def _zero_pass(model, dist: Dist, pad_token_id: int, device, reference: bool = False) -> None:
    """Forward and backward a 2-token placeholder with loss 0 (zero gradients): a process without
    rows in an optimizer batch still takes part in DDP's gradient all-reduce. reference: also the
    reference forward of a micro-batch (FSDP with LoRA and beta > 0: it gathers weights too)."""
    ids = torch.full((1, 2), pad_token_id, dtype=torch.long, device=device)  # [1, 2]
    logp = dist.completion_logprobs(model, ids, torch.ones_like(ids), 1)  # [1, 1]
    if reference:
        with torch.no_grad(), model.disable_adapter():
            dist.completion_logprobs(model, ids, torch.ones_like(ids), 1)
    dist.backward(logp.sum() * 0.0)


def _loss_mask(rollouts, mask_truncated: bool) -> torch.Tensor:
    """Per-row weight [n]: 0 for truncated completions when DAPO's mask_truncated_completions is on."""
    return torch.tensor([0.0 if (mask_truncated and r.truncated) else 1.0 for r in rollouts])


def _reference_logprobs(model, ref_model, mb, prompt_rows, temperature, cfg, dist: Dist):
    """Log-probs under the reference: the adapter disabled (LoRA) or a frozen copy (full fine-tuning).

    Under FSDP the adapter-disabled forward runs through the sharded model (`dist`), like the
    policy's; the frozen copy of full fine-tuning is not sharded (every process holds it whole).
    """
    kwargs = dict(temperature=temperature, chunk_size=cfg.logprob_chunk_size, prompt_rows=prompt_rows)
    with torch.no_grad():
        if ref_model is None:
            forward = dist.completion_logprobs if dist.fsdp else completion_logprobs
            with model.disable_adapter():
                return forward(model, mb.input_ids, mb.attention_mask, mb.logits_to_keep, **kwargs)
        return completion_logprobs(ref_model, mb.input_ids, mb.attention_mask, mb.logits_to_keep, **kwargs)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

def train(config: Config, *, resume: bool = False, model=None, tokenizer=None, task=None,
          stage: str = "grpo", write_report: bool = True) -> TrainResult:
    """Run GRPO as configured; returns the evaluation rows (start and end) and resource use."""
    from tqdm.auto import tqdm

    from rlvr.models import load_model
    from rlvr.tasks import get_task
    from rlvr.tracking import Tracker, format_step_line

    cfg = config
    t_start = time.time()
    dist = setup_distributed()  # one process, unless a launcher started several (rlvr.distributed)
    run_dir = prepare_run_dir(cfg, resume, write=dist.is_main)
    dist.barrier()
    quiet = cfg.run.quiet or not dist.is_main  # only the main process prints
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    if model is None:
        model, tokenizer = load_model(cfg.model.name, device=dist.device(cfg.model.device), dtype=cfg.model.dtype,
                                      load_in_4bit=cfg.model.load_in_4bit)
    policy = prepare_policy(model, cfg.model)
    ref_model = None
    if cfg.grpo.beta > 0 and not cfg.model.use_peft:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    task = task or get_task(cfg.task.name, **cfg.task.options)
    fmt = PromptFormat(cfg.task.chat, cfg.task.system_prompt, cfg.task.prefill)
    reward_fns = build_reward_fns(task, cfg.task.rewards)
    sampler = make_sampler(cfg.sampling.backend, policy, tokenizer)
    s = cfg.sampling
    params = sampling_params(tokenizer, max_new_tokens=s.max_completion_length, temperature=s.temperature,
                             top_p=s.top_p, top_k=s.top_k, stop_at_answer=s.stop_at_answer)
    total_updates = cfg.grpo.max_steps * cfg.grpo.num_iterations * cfg.grpo.steps_per_generation
    optimizer, scheduler = make_optimizer(policy, cfg.grpo, total_updates)
    gens = {"sample": torch.Generator().manual_seed(cfg.run.seed),
            "shuffle": torch.Generator().manual_seed(cfg.run.seed + 1)}
    state = {"step": 0, "examples_seen": 0, "eval_rows": [], "bad_steps": 0}
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model=policy, optimizer=optimizer, scheduler=scheduler, generators=gens)
        log.info("resumed from %s (step %d)", ckpt, state["step"])
    dist.prepare(policy, optimizer)  # gradient averaging (DDP) or sharding (FSDP), when there are several processes
    train_examples = task.train_examples()
    test_examples = task.test_examples()[:cfg.eval.n]
    if cfg.curriculum.enabled:
        from rlvr.doctor import first_examples

        stream = first_examples(cfg, task)  # adaptive difficulty (rlvr.curriculum)
        if state.get("curriculum"):
            stream.load_state_dict(state["curriculum"])
    else:
        stream = ExampleStream(train_examples, cfg.run.seed, state["examples_seen"])
    alarms = Alarms(every=cfg.run.alarm_every) if cfg.run.alarm_every and dist.is_main else None
    if alarms is not None and state.get("alarms"):
        alarms.load_state_dict(state["alarms"])
    tracker = NullTracker()  # only the main process writes metrics, evaluations and samples
    if dist.is_main:
        tracker = Tracker(run_dir, report_to=list(cfg.run.report_to), config=cfg.to_dict(),
                          purge_step=state["step"] + 1 if ckpt is not None else None)
    say = (lambda *a: None) if quiet else (lambda msg: tqdm.write(msg))

    def run_eval(step: int, name: str) -> None:
        """Evaluate on the main process (the others wait) and record the row."""
        with dist.full_weights(sampler):  # FSDP: every process gathers the weights, the main one uses them
            if dist.is_main:
                policy.eval()
                result = evaluate_config(sampler, tokenizer, task, cfg, progress=not quiet,
                                         out_path=run_dir / "eval" / f"step-{step:06d}.jsonl")
                row = {"step": step, "stage": name, **result.summary()}
                tracker.log_eval(row)
                say(f"eval [{name}] step {step}: accuracy {result.accuracy:.1%}  format {result.format_rate:.1%}  "
                    f"length {result.mean_length:.1f}  ({result.n} examples, {result.seconds:.0f}s)")
                state["eval_rows"].append(row)
            dist.barrier()

    if state["step"] == 0 and cfg.run.doctor != "off":
        doctor_check(policy, tokenizer, task, run_dir, cfg, dist, sampler=sampler, say=log.warning if quiet else say)
    if state["step"] == 0 and cfg.eval.on_start and test_examples:
        run_eval(0, "before")
    step = state["step"]
    bar = tqdm(total=cfg.grpo.max_steps, initial=step, desc=stage, unit="step", disable=quiet)

    def checkpoint(at: int) -> None:
        model_state, optimizer_state = dist.full_state(policy, optimizer)  # FSDP: gathered from the shards
        if not dist.is_main:
            return
        state.update(step=at, examples_seen=stream.position,
                     curriculum=stream.state_dict() if cfg.curriculum.enabled else None,
                     alarms=alarms.state_dict() if alarms is not None else None)
        save_checkpoint(run_dir, at, model=policy, optimizer=optimizer, scheduler=scheduler, generators=gens,
                        trainer_state=state, keep=cfg.run.keep_checkpoints, model_state=model_state,
                        optimizer_state=optimizer_state)

    ctrl_c = CtrlC().install()
    try:
        while step < cfg.grpo.max_steps:
            ctrl_c.check()
            policy.eval()
            gen_bar = tqdm(desc="generate", unit="tok", leave=False, disable=quiet)
            with dist.full_weights(sampler):  # FSDP: the sampler reads full weights
                exp = collect_experience(
                    sampler, tokenizer, task, stream, batch_size=cfg.grpo.prompts_per_step,
                    num_generations=cfg.grpo.num_generations, params=params, fmt=fmt, reward_fns=reward_fns,
                    scale_rewards=cfg.grpo.scale_rewards, dynamic_sampling=cfg.grpo.dynamic_sampling,
                    max_resample_rounds=cfg.grpo.max_resample_rounds, reward_timeout=cfg.task.reward_timeout,
                    generator=gens["sample"], progress=gen_bar.update, shard=dist.shard, gather=dist.gather)
            gen_bar.close()
            # the fast sampler's fused weight copies and KV cache (~1 GB for the 135M model at batch
            # 64) would otherwise sit through the update, whose activations set the run's peak; the
            # weights change with every step, so the copies are made again next step anyway
            free_memory(sampler)
            seen = dist.gather_experience(exp, cfg.grpo.num_generations)  # all processes' groups (exp on one)
            upd = update_policy(policy, optimizer, scheduler, Buffer(exp.rollouts), cfg.grpo,
                                temperature=max(s.temperature, 1e-6), max_completion_length=s.max_completion_length,
                                pad_token_id=tokenizer.pad_token_id, generator=gens["shuffle"], ref_model=ref_model,
                                dist=dist)
            step += 1
            metrics = {**seen.metrics, **upd, "memory/peak_rss_gb": peak_rss_gb(), **dist.metrics}
            if cfg.curriculum.enabled:
                stream.observe(seen.group_success)  # every group sampled, dynamic sampling's dropped ones too
                metrics.update(stream.metrics())
            fired = alarms.update(metrics, step) if alarms is not None else []
            metrics.update(alarm_metrics(fired))
            tracker.log(metrics, step)
            bar.update(1)
            say(format_step_line(metrics, step, cfg.grpo.max_steps))
            for alarm in fired:
                (log.warning if cfg.run.quiet else say)(alarm.message)
            if cfg.run.log_format == "json" and dist.is_main:
                print(json.dumps({"step": step, **metrics}, default=float), flush=True)
            if cfg.run.log_samples_every and (step % cfg.run.log_samples_every == 0 or step == 1):
                tracker.log_samples(_sample_records(seen, step, fmt))
            state["bad_steps"] = state["bad_steps"] + 1 if upd["optim/bad_updates"] else 0
            if state["bad_steps"] >= cfg.run.max_bad_steps:
                raise TrainingDiverged(f"{state['bad_steps']} steps in a row had a NaN/inf loss or gradient; "
                                       f"stopped at step {step}, the last good checkpoint is kept in {run_dir}/checkpoints")
            if cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.grpo.max_steps:
                run_eval(step, f"step {step}")
            if cfg.run.save_steps and step % cfg.run.save_steps == 0:
                checkpoint(step)
    except KeyboardInterrupt:
        if dist.fsdp:  # gathering the shards is collective, and each process stopped somewhere else
            if dist.is_main:
                print(f"interrupted: under FSDP no checkpoint is gathered on Ctrl-C; the last one saved "
                      f"(run.save_steps) is in {run_dir}/checkpoints: continue with --resume",
                      file=sys.stderr, flush=True)
            tracker.close()
            raise
        checkpoint(step)
        if dist.is_main:
            print(f"interrupted: checkpoint of step {step} written in {run_dir}/checkpoints; "
                  "continue with the same command and --resume", file=sys.stderr, flush=True)
        tracker.close()
        raise
    finally:
        ctrl_c.restore()
    bar.close()
    if step % max(1, cfg.run.save_steps) != 0:
        checkpoint(step)
    if test_examples:
        run_eval(step, "after")
    final_model = dist.full_model(policy)  # FSDP: gathered into a plain copy on the main process
    if not dist.is_main:
        return TrainResult(run_dir, step)
    save_final(final_model, tokenizer, run_dir)
    tracker.close()
    result = TrainResult(run_dir, step, state["eval_rows"], time.time() - t_start, peak_rss_gb())
    write_summary(run_dir, result, cfg)
    if write_report:
        write_report_safely(run_dir)
    rows = _before_after(state["eval_rows"])
    if rows and not cfg.run.quiet:
        print(format_table(rows))
        print(verdict(rows))
    return result


def doctor_check(policy, tokenizer, task, run_dir: Path, cfg: Config, dist, *, sampler, say) -> None:
    """`rlvr doctor` at step 0 (run.doctor: warn | stop), on one process; see doctor.check_before_training."""
    if dist.world > 1:
        if dist.is_main:
            say("rlvr doctor is skipped with several processes: run `rlvr doctor` with the same config first")
        return
    from rlvr.doctor import check_before_training

    check_before_training(cfg, policy, tokenizer, task, run_dir, sampler=sampler, say=say)


def prepare_run_dir(cfg: Config, resume: bool, write: bool = True) -> Path:
    """Create the run directory and save the resolved config; refuse to mix two runs' files.

    write=False only checks (the processes other than the main one of a distributed run).
    """
    run_dir = Path(cfg.run.output_dir)
    if run_dir.exists() and (run_dir / "metrics.jsonl").exists() and not resume:
        raise ConfigError(f"run directory {run_dir} already holds a run: pass --resume to continue it, "
                          "or choose another run.output_dir")
    if not write:
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    return run_dir


def save_final(policy, tokenizer, run_dir: Path) -> None:
    """The trained model in Hugging Face format: the adapter alone, and a merged full copy."""
    from peft import PeftModel

    from rlvr.models import merged_copy, save_pretrained_atomic

    final = run_dir / "final"
    if isinstance(policy, PeftModel):
        save_pretrained_atomic(policy, tokenizer, final / "adapter")
    save_pretrained_atomic(merged_copy(policy), tokenizer, final / "merged")


def _before_after(rows: list[dict]) -> list[dict]:
    keep = [r for r in rows if r["stage"] in ("before", "after")]
    return keep if len(keep) >= 1 else rows


def write_report_safely(run_dir: Path) -> Path | None:
    """The HTML report; a failure here is logged, never allowed to lose a finished run."""
    from rlvr.report import write_report

    try:
        return write_report(run_dir)
    except Exception as err:  # noqa: BLE001 - the report is a view of files already written
        log.warning("could not write the report for %s: %s (run `rlvr report %s` to retry)", run_dir, err, run_dir)
        return None


def write_summary(run_dir: Path, result: TrainResult, cfg: Config) -> None:
    summary = {"model": cfg.model.name, "task": cfg.task.name, "steps": result.steps,
               "before_after": _before_after(result.eval_rows), "wall_time_s": result.wall_time_s,
               "peak_rss_gb": result.peak_rss_gb}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))


def _sample_records(exp, step: int, fmt: PromptFormat, k: int = 4) -> list[dict]:
    from rlvr import prompts as prompt_lib

    out = []
    for i in range(min(k, len(exp.completions))):
        text = exp.completions[i]
        out.append({"step": step, "prompt": exp.examples[i].question, "completion": fmt.prefill + text,
                    "answer": prompt_lib.extract_answer(fmt.prefill + text), "ground_truth": exp.examples[i].answer,
                    "rewards": {**{n: v[i] for n, v in exp.rewards.parts.items()}, "total": exp.rewards.total[i]}})
    return out
