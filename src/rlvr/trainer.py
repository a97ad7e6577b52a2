"""The GRPO loop, and nothing else: each stage is one named call to the module that owns it.

    set-up        model, policy (LoRA or full), task, rewards, sampler, optimizer, checkpoint to resume
    for step in steps:
        sample      G completions per prompt with the sampler          rlvr.rollout
        score       reward functions, the task's judge                 rlvr.rollout, rlvr.rewards
        advantages  rewards normalised within each group               rlvr.algorithms.advantages
        release     the sampler frees its copies and cache             rlvr.sampling
        update      clipped (or CISPO, SAPO) surrogate, minibatches    rlvr.update, rlvr.algorithms.losses
        sync        the sampler samples from the new weights next       rlvr.sampling
        log         metrics, alarms, samples                           rlvr.tracking, rlvr.alarms
        evaluate    held-out accuracy every eval.every steps           rlvr.evaluate
        checkpoint  every run.save_steps steps, and on Ctrl-C          rlvr.checkpoint
    finish        final evaluation, final model, summary, report       rlvr.runs

Where the algorithm departs from the paper (DeepSeekMath's GRPO) is said in `rlvr.update` and
`rlvr.algorithms.losses`. On N processes (rlvr.distributed) each samples and learns from its share
of the step's groups, with global loss weights, so the optimizer steps equal one process's; the
main process alone evaluates, logs and writes.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from rlvr.alarms import Alarms, alarm_metrics
from rlvr.buffer import Buffer
from rlvr.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rlvr.config import Config, sampler_options
from rlvr.curriculum import example_stream
from rlvr.distributed import Dist, NullTracker, setup_distributed
from rlvr.evaluate import evaluate_config, format_table, verdict
from rlvr.reward_context import TrainerState
from rlvr.rewards import RewardFn
from rlvr.rollout import PromptFormat, build_reward_fns, collect_experience, sample_records, sampling_params
from rlvr.runs import (CtrlC, TrainResult, before_after, peak_rss_gb, prepare_run_dir, recorded_config, save_final,
                       write_report_safely, write_summary)
from rlvr.sampling import make_sampler, resolve_backend
from rlvr.update import make_optimizer, update_policy

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a NaN or inf loss or gradient."""


@dataclass
class _Run:
    """Everything one training run holds; built by `_set_up`, used by the stages of the loop."""

    cfg: Config
    dist: Dist
    run_dir: Path
    policy: object
    tokenizer: object
    ref_model: object
    task: object
    fmt: PromptFormat
    reward_fns: list
    reward_funcs_given: Mapping | None
    """the user's reward callables by name (`train(reward_funcs=)`), for the doctor"""
    sampler: object
    params: object
    optimizer: object
    scheduler: object
    gens: dict
    state: dict
    stream: object
    alarms: Alarms | None
    tracker: object
    say: object
    has_test: bool
    """the task has held-out examples and eval.n > 0"""
    importance_correction: bool
    """the sampler is vLLM and grpo.vllm_importance_sampling_correction is on"""

    @property
    def step(self) -> int:
        return self.state["step"]


def train(config: Config, *, resume: bool = False, model=None, tokenizer=None, task=None,
          stage: str = "grpo", write_report: bool = True,
          reward_funcs: Mapping[str, RewardFn] | None = None) -> TrainResult:
    """Run GRPO as configured; returns the evaluation rows (start and end) and resource use.

    model/tokenizer/task: already loaded ones (else `config` names them). reward_funcs: a user's
    reward functions by name (TRL's contract); each name in `config.task.rewards` resolves from
    them first, else as a built-in or file.py:name. `stage` labels the progress bar. The loop is
    the module docstring's, stage by stage.
    """
    from tqdm.auto import tqdm

    t_start = time.time()
    config.finalize()  # a Config() built in Python is checked and derived here (idempotent)
    run = _set_up(config, resume, model, tokenizer, task, reward_funcs)  # ---- set-up
    cfg, dist = config, run.dist
    if run.step == 0:
        _before_training(run)
    bar = tqdm(total=cfg.grpo.max_steps, initial=run.step, desc=stage, unit="step", disable=cfg.run.quiet or not dist.is_main)
    ctrl_c = CtrlC().install()
    try:
        while run.step < cfg.grpo.max_steps:
            ctrl_c.check()
            exp = _sample_and_score(run)  # ---- sample, score, advantages
            run.sampler.release()  # ---- release: the update's activations set the run's peak
            seen = dist.gather_experience(exp, cfg.grpo.num_generations)  # all processes' groups
            upd = update_policy(run.policy, run.optimizer, run.scheduler, Buffer(exp.rollouts), cfg.grpo,  # ---- update
                                temperature=max(cfg.sampling.temperature, 1e-6),
                                max_completion_length=cfg.sampling.max_completion_length,
                                pad_token_id=run.tokenizer.pad_token_id, generator=run.gens["shuffle"],
                                ref_model=run.ref_model, dist=dist,
                                sampler_correction=run.importance_correction)
            run.sampler.sync_weights(run.policy)  # ---- sync: the next step samples the new weights
            run.state["step"] += 1
            _log_step(run, seen, upd)  # ---- log
            bar.update(1)
            _stop_if_diverged(run, upd)
            step = run.step
            if cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.grpo.max_steps:
                _evaluate(run, f"step {step}")  # ---- evaluate
            if cfg.run.save_steps and step % cfg.run.save_steps == 0:
                _checkpoint(run)  # ---- checkpoint
    except KeyboardInterrupt:
        _on_interrupt(run)
        raise
    finally:
        ctrl_c.restore()
    bar.close()
    return _finish(run, t_start, write_report)


def _set_up(cfg: Config, resume: bool, model, tokenizer, task, reward_funcs=None) -> _Run:
    """Load (or take) the model, prepare the policy, and restore the latest checkpoint on resume."""
    from rlvr.models import load_model, prepare_policy
    from rlvr.tasks import get_task
    from rlvr.tracking import Tracker

    dist = setup_distributed()  # one process, unless a launcher started several (rlvr.distributed)
    recorded = recorded_config(cfg, task)  # config.yaml and the trackers name the task trained on
    run_dir = prepare_run_dir(recorded, resume, write=dist.is_main)
    dist.barrier()
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    if model is None:
        model, tokenizer = load_model(cfg.model.name, device=dist.device(cfg.model.device), dtype=cfg.model.dtype,
                                      load_in_4bit=cfg.model.load_in_4bit)
    policy = prepare_policy(model, cfg.model)
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if cfg.grpo.beta > 0 and not cfg.model.use_peft else None
    task = task or get_task(cfg.task.name, **cfg.task.options)
    s = cfg.sampling
    params = sampling_params(tokenizer, max_new_tokens=s.max_completion_length, temperature=s.temperature,
                             top_p=s.top_p, top_k=s.top_k, stop_at_answer=s.stop_at_answer)
    g = cfg.grpo
    optimizer, scheduler = make_optimizer(policy, g, g.max_steps * g.num_iterations * g.steps_per_generation)
    gens = {"sample": torch.Generator().manual_seed(cfg.run.seed),
            "shuffle": torch.Generator().manual_seed(cfg.run.seed + 1)}
    state = {"step": 0, "examples_seen": 0, "eval_rows": [], "bad_steps": 0}
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model=policy, optimizer=optimizer, scheduler=scheduler, generators=gens)
        log.info("resumed from %s (step %d)", ckpt, state["step"])
    dist.prepare(policy, optimizer)  # gradient averaging (DDP) or sharding (FSDP), with several processes
    stream = example_stream(cfg, task, state["examples_seen"])
    if cfg.curriculum.enabled and state.get("curriculum"):
        stream.load_state_dict(state["curriculum"])
    alarms = Alarms(every=cfg.run.alarm_every) if cfg.run.alarm_every and dist.is_main else None
    if alarms is not None and state.get("alarms"):
        alarms.load_state_dict(state["alarms"])
    tracker = NullTracker()  # only the main process writes metrics, evaluations and samples
    if dist.is_main:
        tracker = Tracker(run_dir, report_to=list(cfg.run.report_to), config=recorded.to_dict(),
                          purge_step=state["step"] + 1 if ckpt is not None else None)
    return _Run(cfg, dist, run_dir, policy, tokenizer, ref_model, task,
                PromptFormat.from_config(cfg.task),
                build_reward_fns(task, cfg.task.rewards, reward_funcs), reward_funcs,
                make_sampler(s.backend, policy, tokenizer, **sampler_options(cfg)), params,
                optimizer, scheduler, gens, state, stream, alarms, tracker, _printer(cfg, dist),
                bool(cfg.eval.n and task.test_examples()),
                resolve_backend(s.backend, policy) == "vllm" and g.vllm_importance_sampling_correction)


def _printer(cfg: Config, dist: Dist):
    """Where progress lines go: above the progress bars, on the main process, unless run.quiet."""
    from tqdm.auto import tqdm

    return (lambda *a: None) if cfg.run.quiet or not dist.is_main else (lambda msg: tqdm.write(msg))


def _before_training(run: _Run) -> None:
    """Step 0: the doctor (run.doctor) and the evaluation before training (eval.on_start)."""
    from rlvr.doctor import doctor_check

    cfg = run.cfg
    if cfg.run.doctor != "off":
        doctor_check(run.policy, run.tokenizer, run.task, run.run_dir, cfg, run.dist, sampler=run.sampler,
                     say=log.warning if cfg.run.quiet else run.say, reward_funcs=run.reward_funcs_given)
    if cfg.eval.on_start and run.has_test:
        _evaluate(run, "before")


def _sample_and_score(run: _Run):
    """One step's experience: B groups of G completions, scored, with group advantages (this
    process's groups; the metrics count every process's)."""
    from tqdm.auto import tqdm

    cfg, dist = run.cfg, run.dist
    run.policy.eval()
    bar = tqdm(desc="generate", unit="tok", leave=False, disable=cfg.run.quiet or not dist.is_main)
    with dist.full_weights(run.sampler):  # FSDP: the sampler reads full weights
        exp = collect_experience(
            run.sampler, run.tokenizer, run.task, run.stream, batch_size=cfg.grpo.prompts_per_step,
            num_generations=cfg.grpo.num_generations, params=run.params, fmt=run.fmt, reward_fns=run.reward_fns,
            scale_rewards=cfg.grpo.scale_rewards, dynamic_sampling=cfg.grpo.dynamic_sampling,
            max_resample_rounds=cfg.grpo.max_resample_rounds, reward_timeout=cfg.task.reward_timeout,
            generator=run.gens["sample"], progress=bar.update, shard=dist.shard, gather=dist.gather,
            trainer_state=_trainer_state(run))
    bar.close()
    return exp


def _trainer_state(run: _Run) -> TrainerState:
    """TRL's `trainer_state` for the users' reward functions: the steps done, the epoch so far."""
    examples = getattr(run.stream, "examples", None)  # the fixed list of a plain stream (not a curriculum's)
    epoch = run.stream.position / len(examples) if examples else 0.0
    return TrainerState(global_step=run.step, max_steps=run.cfg.grpo.max_steps, epoch=epoch,
                        num_generations=run.cfg.grpo.num_generations, is_world_process_zero=run.dist.is_main)


def _log_step(run: _Run, seen, upd: dict) -> None:
    """Metrics of the step (experience, update, memory), alarms, the console line, sample records."""
    from rlvr.tracking import format_step_line

    cfg, step = run.cfg, run.step
    metrics = {**seen.metrics, **upd, "memory/peak_rss_gb": peak_rss_gb(), **run.dist.metrics}
    if cfg.curriculum.enabled:
        run.stream.observe(seen.group_success)  # every group sampled, dynamic sampling's dropped ones too
        metrics.update(run.stream.metrics())
    fired = run.alarms.update(metrics, step) if run.alarms is not None else []
    metrics.update(alarm_metrics(fired))
    run.tracker.log(metrics, step)
    run.say(format_step_line(metrics, step, cfg.grpo.max_steps))
    for alarm in fired:
        (log.warning if cfg.run.quiet else run.say)(alarm.message)
    if cfg.run.log_format == "json" and run.dist.is_main:
        print(json.dumps({"step": step, **metrics}, default=float), flush=True)
    if cfg.run.log_samples_every and (step % cfg.run.log_samples_every == 0 or step == 1):
        run.tracker.log_samples(sample_records(seen, step, run.fmt))


def _stop_if_diverged(run: _Run, upd: dict) -> None:
    """Raise `TrainingDiverged` after run.max_bad_steps steps in a row with a non-finite loss or gradient."""
    state = run.state
    state["bad_steps"] = state["bad_steps"] + 1 if upd["optim/bad_updates"] else 0
    if state["bad_steps"] >= run.cfg.run.max_bad_steps:
        kept = latest_checkpoint(run.run_dir)
        where = f"the last good checkpoint is kept in {kept}" if kept is not None else "no checkpoint was written yet"
        raise TrainingDiverged(f"{state['bad_steps']} steps in a row had a NaN/inf loss or gradient; "
                               f"stopped at step {run.step}; {where}")


def _evaluate(run: _Run, name: str) -> None:
    """Evaluate on the main process (the others wait) and record the row."""
    cfg, dist = run.cfg, run.dist
    with dist.full_weights(run.sampler):  # FSDP: every process gathers the weights, the main one uses them
        if dist.is_main:
            run.policy.eval()
            result = evaluate_config(run.sampler, run.tokenizer, run.task, cfg, progress=not cfg.run.quiet,
                                     out_path=run.run_dir / "eval" / f"step-{run.step:06d}.jsonl")
            row = {"step": run.step, "stage": name, **result.summary()}
            run.tracker.log_eval(row)
            run.say(f"eval [{name}] step {run.step}: accuracy {result.accuracy:.1%}  format {result.format_rate:.1%}  "
                    f"length {result.mean_length:.1f}  ({result.n} examples, {result.seconds:.0f}s)")
            run.state["eval_rows"].append(row)
        dist.barrier()


def _checkpoint(run: _Run) -> None:
    """Save the weights, optimizer, RNG and loop state of the current step (gathered under FSDP)."""
    model_state, optimizer_state = run.dist.full_state(run.policy, run.optimizer)  # every process takes part
    if not run.dist.is_main:
        return
    run.state.update(examples_seen=run.stream.position,
                     curriculum=run.stream.state_dict() if run.cfg.curriculum.enabled else None,
                     alarms=run.alarms.state_dict() if run.alarms is not None else None)
    save_checkpoint(run.run_dir, run.step, model=run.policy, optimizer=run.optimizer, scheduler=run.scheduler,
                    generators=run.gens, trainer_state=run.state, keep=run.cfg.run.keep_checkpoints,
                    model_state=model_state, optimizer_state=optimizer_state)


def _on_interrupt(run: _Run) -> None:
    """Ctrl-C: write a checkpoint of the last finished step (not under FSDP: gathering the shards is
    collective, and each process stopped somewhere else) and say how to continue."""
    dist, where = run.dist, f"{run.run_dir}/checkpoints"
    if dist.fsdp:
        if dist.is_main:
            print(f"interrupted: under FSDP no checkpoint is gathered on Ctrl-C; the last one saved "
                  f"(run.save_steps) is in {where}: continue with --resume", file=sys.stderr, flush=True)
    else:
        _checkpoint(run)
        if dist.is_main:
            print(f"interrupted: checkpoint of step {run.step} written in {where}; "
                  "continue with the same command and --resume", file=sys.stderr, flush=True)
    run.tracker.close()


def _finish(run: _Run, t_start: float, write_report: bool) -> TrainResult:
    """The last checkpoint, the final evaluation, the final model, summary.json and the report."""
    cfg, dist, step = run.cfg, run.dist, run.step
    if step % max(1, cfg.run.save_steps) != 0:
        _checkpoint(run)
    if run.has_test:
        _evaluate(run, "after")
    final_model = dist.full_model(run.policy)  # FSDP: gathered into a plain copy on the main process
    if not dist.is_main:
        return TrainResult(run.run_dir, step)
    save_final(final_model, run.tokenizer, run.run_dir)
    run.tracker.close()
    result = TrainResult(run.run_dir, step, run.state["eval_rows"], time.time() - t_start, peak_rss_gb(), final_model)
    write_summary(run.run_dir, result, cfg, task_name=getattr(run.task, "name", None))
    if write_report:
        write_report_safely(run.run_dir)
    rows = before_after(run.state["eval_rows"])
    if rows and not cfg.run.quiet:
        print(format_table(rows))
        print(verdict(rows))
    return result
