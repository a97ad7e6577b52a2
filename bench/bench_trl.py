"""rlvr against TRL's GRPOTrainer, side by side: seconds per GRPO step and peak memory, in one run.

Both sides train the same model (the bundled SmolLM2-135M, or with --tiny a tiny random Llama) with
the same LoRA adapter on rlvr's `subtraction` task, the same prompts in the same order, the same
B prompts x G completions per step, completion length, temperature, reward functions (rlvr's
accuracy 0.85 + format 0.15, which have TRL's signature), optimizer and number of steps:

    .venv/bin/python bench/bench_trl.py                     # B=8, G=8, 64 tokens, 4 steps, 2 threads
    .venv/bin/python bench/bench_trl.py --repeats 2 --steps 6
    .venv/bin/python bench/bench_trl.py --tiny --steps 2    # a smoke run in well under a minute

Each side runs in its own fresh subprocess (so its peak RSS is its own: `os.wait4` on the child,
and the child's own ru_maxrss at the end of its last step), alternately rlvr, TRL, rlvr, TRL for
--repeats, with the same thread count and environment. Seconds per step are the median over the
steps after the first (warm-up) step; the wall time between the ends of consecutive steps (rlvr's
metrics.jsonl `time`; a TRL callback's `on_step_end`). The parent measures an fp32 matmul ceiling
(2048^3, best of repeated runs, before and after) at the same thread count, and expresses rlvr's
rollout and update tokens/s as a fraction of it. OMP_WAIT_POLICY defaults to PASSIVE in both
children, as in bench_sampler.py (set OMP_WAIT_POLICY=ACTIVE to measure without it).

rlvr's side also gets what the `rlvr` command does at start-up (rlvr.allocator): it re-executes
under mimalloc (installed with rlvr on Linux; --rlvr-allocator mmap: glibc with a 1 MB mmap
threshold, rlvr's fallback). TRL runs with glibc's default allocator, as its users get it, or with
--trl-allocator mmap / mimalloc with rlvr's settings.

Equalised (see `trl_arguments` and `rlvr_overrides`): one optimizer step consumes exactly B*G
completions on both sides (TRL: per_device_train_batch_size x gradient_accumulation_steps = B*G,
steps_per_generation = gradient_accumulation_steps, so one generation per optimizer step, no
old-log-prob pass; rlvr: prompts_per_step x num_generations, per_device_train_batch_size micro
batches, steps_per_generation 1); loss_type grpo, beta 0 (no reference model), epsilon 0.2,
num_iterations 1, group reward scaling, AdamW (0.9, 0.99), no weight decay, constant learning
rate, clip 1.0, fp32 on CPU, no vLLM, gradient checkpointing off on both (--gradient-checkpointing
turns it on for both); generation stops at the same end-of-turn ids and nowhere else (rlvr's
`stop_at_answer` is off, as TRL's generate has no stop strings), top-p 1, top-k off.

FLOPs per token for the ceiling fractions (P = parameters outside the embedding and lm_head, V x H
the lm_head): rollout 2 (P + V H) per generated token (prefill not counted: a lower bound); update
4 P per token the decoder ran (each group's shared prompt once: rlvr's `update/decoder_tokens`)
plus 4 V H per completion token: forward 2, backward 2 (input gradients only; LoRA computes no
weight gradients for the frozen base). The JSON also holds the 6-per-parameter figure (the full
fine-tuning convention). Records before 2026-12-02 07:00 counted every row's prompt (G times the
work the shared prompts cost), which overstated the update's fraction.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, also when imported by path
import ceiling  # noqa: E402
from ceiling import matmul_gflops  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "trl_vs_rlvr.json"
REWARDS = {"accuracy": 0.85, "format": 0.15}
"""rlvr's default reward weights (config.TaskConfig.rewards), used by both sides"""
SIDES = ("rlvr", "trl")


@dataclass
class Settings:
    steps: int = 4
    """GRPO steps per run (optimizer steps; one generation each)"""
    prompts: int = 8
    """B: prompts per step"""
    generations: int = 8
    """G: completions per prompt"""
    max_completion: int = 64
    """most tokens per completion"""
    threads: int = 2
    """torch / OpenMP threads of each side"""
    micro_batch: int = 16
    """completions per forward/backward micro-batch (rlvr per_device_train_batch_size; TRL the same)"""
    learning_rate: float = 1e-5
    lora_r: int = 16
    lora_alpha: int = 32
    temperature: float = 1.0
    gradient_checkpointing: bool = False
    tiny: bool = False
    """a tiny random Llama with the SmolLM2 tokenizer instead of the bundled 135M model"""
    model: str = "smollm2-135m"
    """the model both sides start from (an `rlvr.models.load_model` spec: a path to a saved model too)"""
    task_options: dict = dataclasses.field(default_factory=dict)
    """options of the subtraction task (e.g. {"high": 100}, the main job's)"""
    system_prompt: str | None = None
    """the system prompt (None: the task's own)"""
    rlvr_allocator: str = "mimalloc"
    """rlvr's side: mimalloc (what `rlvr` does where it is installed) or mmap (glibc, 1 MB threshold)"""
    trl_allocator: str = "glibc"
    """TRL's side: glibc (its default, as its users get it), mmap or mimalloc (rlvr's settings)"""
    rlvr_skip: bool = False
    """rlvr's default of leaving flat groups (advantage 0) out of the update; off here, so both sides
    compute every row: the base model rarely scores, most groups are flat, and skipping them would
    time an update with almost nothing in it"""
    seed: int = 0

    @property
    def batch(self) -> int:
        return self.prompts * self.generations

    @property
    def micro(self) -> int:
        """The micro-batch actually used: micro_batch, capped at B*G; must divide B*G."""
        micro = min(self.micro_batch, self.batch)
        if self.batch % micro:
            raise ValueError(f"B*G = {self.batch} is not a multiple of the micro-batch {micro}")
        return micro


# ---------------------------------------------------------------------------------------------
# What both sides share: model, task, prompts, rewards
# ---------------------------------------------------------------------------------------------

def policy_model(s: Settings):
    """A plain fp32 HF model and its tokenizer (the same weights for both sides)."""
    from rlvr.models import load_model, tiny_random_model

    if s.tiny:
        return tiny_random_model(seed=s.seed)
    return load_model(s.model, device="cpu", dtype="fp32")


def model_shape(model) -> dict:
    """Parameter counts for the FLOP estimates: backbone (no embedding / lm_head), V and H."""
    backbone = sum(p.numel() for n, p in model.named_parameters()
                   if "embed_tokens" not in n and "lm_head" not in n and "lora_" not in n)
    return {"backbone_params": backbone, "vocab": model.config.vocab_size, "hidden": model.config.hidden_size}


def bench_rows(s: Settings, tokenizer) -> list[dict]:
    """The steps x B prompts rlvr will draw, in its order: prompt text (rlvr's template) + columns."""
    from rlvr.rollout import PromptFormat
    from rlvr.tasks import get_task
    from rlvr.curriculum import ExampleStream

    task = get_task("subtraction", **s.task_options)
    stream = ExampleStream(task.train_examples(), s.seed)  # what rlvr.trainer.train iterates
    fmt = PromptFormat(system_prompt=s.system_prompt)  # the chat template, no prefill (TRL has none)
    examples = [next(stream) for _ in range(s.steps * s.prompts)]
    return [{"prompt": fmt.text(tokenizer, task, ex), **ex.columns()} for ex in examples]


def stop_token_ids(tokenizer) -> list[int]:
    """The end-of-turn ids rlvr's sampler stops at (TRL is given the same)."""
    from rlvr.rollout import sampling_params

    return list(sampling_params(tokenizer, max_new_tokens=1, temperature=1.0).stop_token_ids)


def _lora_count(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def _intervals(start: float, ends: list[float]) -> list[float]:
    """Seconds of each step: from the previous step's end (the first from `start`) to its own end."""
    marks = [start, *ends]
    return [b - a for a, b in zip(marks, marks[1:])]


def _rss_gb() -> float:
    """Peak RSS of this process so far (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


# ---------------------------------------------------------------------------------------------
# rlvr side
# ---------------------------------------------------------------------------------------------

def rlvr_overrides(s: Settings, run_dir: Path) -> list[str]:
    """rlvr config overrides equal to `trl_arguments` (eval, checkpoints, report and alarms off)."""
    rewards = "{" + ", ".join(f"{k}: {v}" for k, v in REWARDS.items()) + "}"
    return [
        f"run.output_dir={run_dir}", f"run.seed={s.seed}", f"run.threads={s.threads}", "run.quiet=true",
        "run.save_steps=0", "run.log_samples_every=0", "run.alarm_every=0",
        "model.use_peft=true", f"model.lora_r={s.lora_r}", f"model.lora_alpha={s.lora_alpha}",
        "model.lora_dropout=0.0", "model.lora_target_modules=all-linear",
        f"model.gradient_checkpointing={str(s.gradient_checkpointing).lower()}",
        "task.name=subtraction", f"task.rewards={rewards}", f"task.options={json.dumps(s.task_options)}",
        *([f"task.system_prompt={json.dumps(s.system_prompt)}"] if s.system_prompt is not None else []),
        "sampling.backend=fast", f"sampling.temperature={s.temperature}", "sampling.top_p=1.0", "sampling.top_k=0",
        f"sampling.max_completion_length={s.max_completion}", "sampling.stop_at_answer=false",
        f"grpo.max_steps={s.steps}", f"grpo.prompts_per_step={s.prompts}", f"grpo.num_generations={s.generations}",
        "grpo.num_iterations=1", "grpo.steps_per_generation=1", f"grpo.per_device_train_batch_size={s.micro}",
        f"grpo.learning_rate={s.learning_rate}", "grpo.weight_decay=0.0", "grpo.adam_beta1=0.9",
        "grpo.adam_beta2=0.99", "grpo.warmup_ratio=0.0", "grpo.lr_scheduler_type=constant", "grpo.max_grad_norm=1.0",
        "grpo.epsilon=0.2", "grpo.beta=0.0", "grpo.loss_type=grpo", "grpo.scale_rewards=group",
        "grpo.mask_truncated_completions=false", "grpo.dynamic_sampling=false",
        f"grpo.skip_zero_advantage={str(s.rlvr_skip).lower()}", "grpo.share_prompt=true",
        "eval.n=0", "eval.on_start=false", "curriculum.enabled=false",
    ]


def run_rlvr(s: Settings, workdir: Path, extra_overrides: tuple[str, ...] = ()) -> dict:
    """Train with rlvr's public API; per-step numbers from its metrics.jsonl."""
    from rlvr.config import load_config
    from rlvr.tracking import read_jsonl
    from rlvr.trainer import train

    model, tokenizer = policy_model(s)
    shape = {**model_shape(model), "rss_loaded_gb": _rss_gb()}
    cfg = load_config(None, [*rlvr_overrides(s, workdir / "rlvr-run"), *extra_overrides])
    t0 = time.time()
    train(cfg, model=model, tokenizer=tokenizer, write_report=False)
    rows = read_jsonl(workdir / "rlvr-run" / "metrics.jsonl")
    completion_tokens = [r["completion/length_mean"] * s.batch for r in rows]
    return {
        "side": "rlvr", **shape, "lora_params": _lora_count(model),
        "step_s": _intervals(t0, [r["time"] for r in rows]),
        "generate_s": [r["time/generate_s"] for r in rows],
        "update_s": [r["time/update_s"] for r in rows],
        "completion_tokens": completion_tokens,
        "update_tokens": [r["throughput/update_tok_s"] * r["time/update_s"] for r in rows],
        "decoder_tokens": [r["update/decoder_tokens"] for r in rows],  # shared prompts counted once
        "rss_step_gb": [r["memory/peak_rss_gb"] for r in rows],
        "loss": [r.get("loss/policy") for r in rows],
    }


# ---------------------------------------------------------------------------------------------
# TRL side
# ---------------------------------------------------------------------------------------------

def trl_arguments(s: Settings, output_dir: Path) -> dict:
    """GRPOConfig keyword arguments equal to `rlvr_overrides` (names as in TRL 1.16)."""
    return dict(
        output_dir=str(output_dir), seed=s.seed, max_steps=s.steps, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, log_completions=False, eval_strategy="no",
        use_cpu=True, bf16=False, fp16=False, use_vllm=False, use_transformers_continuous_batching=False,
        gradient_checkpointing=s.gradient_checkpointing, torch_compile=False,
        num_generations=s.generations, per_device_train_batch_size=s.micro,
        gradient_accumulation_steps=s.batch // s.micro,  # one optimizer step = B*G completions
        steps_per_generation=s.batch // s.micro,  # one generation of B*G per optimizer step
        num_iterations=1, shuffle_dataset=False, max_completion_length=s.max_completion,
        temperature=s.temperature, top_p=1.0, top_k=0, min_p=None, repetition_penalty=1.0,
        learning_rate=s.learning_rate, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.99, optim="adamw_torch",
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        beta=0.0, epsilon=0.2, loss_type="grpo", scale_rewards="group", mask_truncated_completions=False,
        reward_weights=list(REWARDS.values()), dataloader_num_workers=0,
    )


def trl_lora(s: Settings):
    """The peft LoraConfig rlvr's `models.attach_lora` builds for the same settings."""
    from peft import LoraConfig

    return LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def step_clock():
    """A TrainerCallback recording the wall time and peak RSS at the end of every optimizer step."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends, self.rss = [], []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.time())
            self.rss.append(_rss_gb())

    return StepClock()


def _recording(fn, sink: list):
    """`fn` (a reward function), recording the `question` column of each call: the prompts TRL used."""

    def reward(completions, **columns):
        sink.append(list(columns.get("question", [])))
        return fn(completions, **columns)

    reward.__name__ = fn.__name__  # TRL logs rewards under the function's name
    return reward


def _time_generate(model, sink: list) -> None:
    """Wrap `model.generate` (the call TRL's transformers path makes) to record its seconds."""
    inner = model.generate

    def generate(*args, **kwargs):
        t = time.perf_counter()
        out = inner(*args, **kwargs)
        sink.append(time.perf_counter() - t)
        return out

    model.generate = generate


def check_prompts(s: Settings, rows: list[dict], seen: list[list[str]]) -> None:
    """Each TRL step scored rlvr's B prompts of that step, G times each (order within a step is free)."""
    expected = [sorted(r["question"] for r in rows[i * s.prompts:(i + 1) * s.prompts] for _ in range(s.generations))
                for i in range(s.steps)]
    if [sorted(q) for q in seen] != expected:
        raise RuntimeError(f"TRL trained on other prompts than rlvr: {seen} != {expected}")


def run_trl(s: Settings, workdir: Path) -> dict:
    """Train with TRL's GRPOTrainer on the same model, prompts and rewards."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rlvr.rollout import build_reward_fns
    from rlvr.tasks import get_task

    model, tokenizer = policy_model(s)
    shape = {**model_shape(model), "rss_loaded_gb": _rss_gb()}
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)  # TRL stops at these (and the tokenizer's)
    fns = [r.fn for r in build_reward_fns(get_task("subtraction", **s.task_options), REWARDS)]
    rows, seen = bench_rows(s, tokenizer), []
    fns[0] = _recording(fns[0], seen)
    clock, gen_s = step_clock(), []
    t0 = time.time()
    trainer = GRPOTrainer(model=model, reward_funcs=fns, args=GRPOConfig(**trl_arguments(s, workdir / "trl-run")),
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                          peft_config=trl_lora(s), callbacks=[clock])
    args = trainer.args
    if (args.generation_batch_size, args.per_device_train_batch_size * args.gradient_accumulation_steps) != (
            s.batch, s.batch):
        raise RuntimeError(f"TRL's generation or optimizer batch is not B*G = {s.batch}")
    _time_generate(trainer.model, gen_s)
    trainer.train()
    check_prompts(s, rows, seen)
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    return {
        "side": "trl", **shape, "lora_params": _lora_count(trainer.model), "step_s": _intervals(t0, clock.ends),
        "generate_s": gen_s,
        "completion_tokens": [h["completions/mean_length"] * s.batch for h in logs],
        "rss_step_gb": clock.rss, "loss": [h.get("loss") for h in logs],
        "eos_token_ids": list(trainer.eos_token_ids),
    }


# ---------------------------------------------------------------------------------------------
# The parent: alternate the sides, measure the ceiling, summarise
# ---------------------------------------------------------------------------------------------

def child_env(s: Settings) -> dict:
    """The same environment for both sides (rlvr's allocator setting is applied inside its child)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(s.threads), MKL_NUM_THREADS=str(s.threads),
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench_sampler.py: no spinning when cores are shared
    return env


def worker(side: str, s: Settings) -> None:
    """Child process entry: one side's run, printed as JSON on the last line."""
    from rlvr import allocator

    choice = s.rlvr_allocator if side == "rlvr" else s.trl_allocator
    if choice == "mimalloc":
        allocator.start()  # what the `rlvr` command does first (cli.main)
    elif choice == "mmap":
        allocator.limit_heap_fragmentation()  # rlvr's fallback without mimalloc
    import torch

    torch.set_num_threads(s.threads)
    with tempfile.TemporaryDirectory(prefix=f"bench-{side}-") as tmp:
        result = (run_rlvr if side == "rlvr" else run_trl)(s, Path(tmp))
    result["rss_end_gb"] = _rss_gb()
    result["allocator"] = allocator.active() if choice != "mmap" else "glibc, 1 MB mmap threshold"
    print(json.dumps(result))


def run_side(side: str, s: Settings) -> dict:
    """One side in a fresh subprocess; the whole process's peak RSS from os.wait4."""
    cmd = [sys.executable, __file__, "--worker", side, "--worker-settings", json.dumps(dataclasses.asdict(s))]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=child_env(s))
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise RuntimeError(f"{side} failed:\n{err.read()[-4000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["rss_process_gb"] = usage.ru_maxrss / 1024**2  # KiB on Linux
    return result


def _after_warmup(runs: list[dict], key: str) -> list[float]:
    """Values of `key` from every run, without each run's first step (kept if it is the only one)."""
    values = [v for r in runs for v in (r[key][1:] if len(r[key]) > 1 else r[key])]
    return [v for v in values if v is not None]


def side_summary(runs: list[dict]) -> dict:
    """Medians over the post-warm-up steps of all runs of one side; peaks over all runs."""
    step_s = _after_warmup(runs, "step_s")
    gen_s = _after_warmup(runs, "generate_s")
    tokens = _after_warmup(runs, "completion_tokens")
    return {
        "runs": len(runs), "steps_timed": len(step_s), "step_s": statistics.median(step_s),
        "first_step_s": statistics.median(r["step_s"][0] for r in runs),
        "generate_s": statistics.median(gen_s) if gen_s else None,
        "completion_tokens": statistics.mean(tokens) if tokens else None,
        "generate_tok_s": statistics.median(t / g for t, g in zip(tokens, gen_s)) if gen_s else None,
        "rss_loaded_gb": max(r["rss_loaded_gb"] for r in runs),
        "peak_rss_train_gb": max(r["rss_step_gb"][-1] for r in runs),
        "peak_rss_process_gb": max(r.get("rss_process_gb", r["rss_end_gb"]) for r in runs),
    }


def ceiling_fractions(runs: list[dict], ceiling_gflops: float) -> dict:
    """rlvr's rollout and update throughput as fractions of the matmul ceiling (see the docstring)."""
    r0 = runs[0]
    p, vh = r0["backbone_params"], r0["vocab"] * r0["hidden"]
    gen_s, upd_s = _after_warmup(runs, "generate_s"), _after_warmup(runs, "update_s")
    comp, upd_tok = _after_warmup(runs, "completion_tokens"), _after_warmup(runs, "update_tokens")
    ran = _after_warmup(runs, "decoder_tokens")
    ceiling = ceiling_gflops * 1e9
    rollout = [2 * (p + vh) * c / g / ceiling for c, g in zip(comp, gen_s)]
    update = [4 * (p * t + vh * c) / u / ceiling for t, c, u in zip(ran, comp, upd_s)]
    return {
        "rollout_tok_s": statistics.median(c / g for c, g in zip(comp, gen_s)),
        "rollout_frac": statistics.median(rollout),
        "update_tok_s": statistics.median(t / u for t, u in zip(upd_tok, upd_s)),
        "update_frac": statistics.median(update),
        "update_frac_6p": 1.5 * statistics.median(update),
        "update_s": statistics.median(upd_s),
    }


def summarize(results: dict[str, list[dict]], ceiling_gflops: float) -> dict:
    sides = {side: side_summary(runs) for side, runs in results.items()}
    r, t = sides["rlvr"], sides["trl"]
    ratios = {
        "step_s": t["step_s"] / r["step_s"],
        "peak_rss_train_gb": t["peak_rss_train_gb"] / r["peak_rss_train_gb"],
        "peak_rss_process_gb": t["peak_rss_process_gb"] / r["peak_rss_process_gb"],
        "s_per_completion_token": (t["step_s"] / t["completion_tokens"]) / (r["step_s"] / r["completion_tokens"]),
    }
    return {"sides": sides, "ratios_trl_over_rlvr": ratios, "ceiling_gflops": ceiling_gflops,
            "rlvr_vs_ceiling": ceiling_fractions(results["rlvr"], ceiling_gflops)}


def format_table(summary: dict, s: Settings) -> str:
    """The printed report: one row per side, the TRL/rlvr ratios, rlvr against the ceiling."""
    sides, ratio, c = summary["sides"], summary["ratios_trl_over_rlvr"], summary["rlvr_vs_ceiling"]
    head = (f"{'':<9}{'s/step':>8}{'1st step s':>11}{'gen s':>7}{'tokens/step':>12}"
            f"{'loaded GB':>10}{'peak RSS GB':>12}{'process GB':>11}{'steps timed':>12}")
    lines = [head]
    for name, label in (("rlvr", "rlvr"), ("trl", "TRL")):
        x = sides[name]
        lines.append(f"{label:<9}{x['step_s']:>8.2f}{x['first_step_s']:>11.2f}{x['generate_s'] or 0:>7.2f}"
                     f"{x['completion_tokens'] or 0:>12.0f}{x['rss_loaded_gb']:>10.2f}{x['peak_rss_train_gb']:>12.2f}"
                     f"{x['peak_rss_process_gb']:>11.2f}{x['steps_timed']:>12d}")
    lines.append(f"{'TRL/rlvr':<9}{ratio['step_s']:>7.2f}x{'':>40}{ratio['peak_rss_train_gb']:>11.2f}x"
                 f"{ratio['peak_rss_process_gb']:>10.2f}x")
    lines += [
        f"TRL/rlvr seconds per completion token (corrects for different completion lengths): "
        f"{ratio['s_per_completion_token']:.2f}x",
        f"fp32 matmul ceiling ({s.threads} threads, 2048^3): {summary['ceiling_gflops']:.0f} GFLOP/s",
        f"rlvr rollout: {c['rollout_tok_s']:.0f} tok/s = {100 * c['rollout_frac']:.1f}% of the ceiling "
        f"(2 x (P + VH) FLOPs per generated token, prefill not counted)",
        f"rlvr update: {c['update_tok_s']:.0f} tok/s, {c['update_s']:.2f} s/step = {100 * c['update_frac']:.1f}% "
        f"of the ceiling (4 FLOPs per parameter per token, LoRA; {100 * c['update_frac_6p']:.1f}% counted as 6)",
        "s/step: median over the steps after each run's first; gen s: rlvr's sampling + scoring, TRL's generate();",
        "loaded GB: RSS after the imports and loading the model; peak RSS GB: the child's ru_maxrss at the end of",
        "its last step; process GB: the whole child (incl. rlvr's final adapter + merged save).",
    ]
    return "\n".join(lines)


def machine() -> dict:
    try:
        import trl
        trl_version = trl.__version__
    except ImportError:
        trl_version = None
    return {**ceiling.machine(), "trl": trl_version}


def parse_args(argv=None) -> tuple[argparse.Namespace, Settings]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--prompts", type=int, default=8, help="B: prompts per step")
    p.add_argument("--generations", type=int, default=8, help="G: completions per prompt")
    p.add_argument("--max-completion", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="runs per side, alternating rlvr, TRL, rlvr, TRL")
    p.add_argument("--micro-batch", type=int, default=16, help="completions per forward/backward (both sides)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--gradient-checkpointing", action="store_true", help="on for both sides (default off for both)")
    p.add_argument("--rlvr-allocator", choices=("mimalloc", "mmap"), default="mimalloc",
                   help="rlvr's side: mimalloc (as `rlvr` runs) or glibc with rlvr's 1 MB mmap threshold")
    p.add_argument("--trl-allocator", choices=("glibc", "mmap", "mimalloc"), default="glibc",
                   help="TRL's side: glibc's default (as TRL's users get it), or rlvr's settings")
    p.add_argument("--tiny", action="store_true", help="a tiny random model (smoke run)")
    p.add_argument("--model", default="smollm2-135m",
                   help="the model both sides start from, e.g. the main job's SFT model runs/main/sft/final/merged")
    p.add_argument("--task-config", type=Path, default=None,
                   help="take the task options and system prompt from this rlvr config (e.g. configs/main.yaml)")
    p.add_argument("--rlvr-skip", action="store_true",
                   help="let rlvr skip flat groups in the update, its default (off: both sides compute every row)")
    p.add_argument("--out", type=Path, default=None, help=f"JSON results (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--worker-settings", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_settings:
        return args, Settings(**json.loads(args.worker_settings))
    s = Settings(steps=args.steps, prompts=args.prompts, generations=args.generations,
                 max_completion=args.max_completion, threads=args.threads, micro_batch=args.micro_batch,
                 learning_rate=args.lr, gradient_checkpointing=args.gradient_checkpointing, tiny=args.tiny,
                 rlvr_allocator=args.rlvr_allocator, trl_allocator=args.trl_allocator, rlvr_skip=args.rlvr_skip, model=args.model)
    if args.task_config:
        from rlvr.config import load_config

        task = load_config(args.task_config).task
        if task.name != "subtraction":
            raise SystemExit(f"{args.task_config}: task {task.name!r}; this benchmark runs the subtraction task")
        s.task_options, s.system_prompt = dict(task.options or {}), task.system_prompt
    s.micro  # noqa: B018 - fail early on a micro-batch that does not divide B*G
    return args, s


def main(argv=None) -> dict | None:
    args, s = parse_args(argv)
    if args.worker:
        return worker(args.worker, s)
    import torch

    torch.set_num_threads(s.threads)
    print(f"B={s.prompts} x G={s.generations}, {s.max_completion} tokens, {s.steps} steps, LoRA r={s.lora_r} "
          f"alpha={s.lora_alpha} all-linear, micro-batch {s.micro}, {s.threads} threads, "
          f"{'tiny random model' if s.tiny else s.model}, task options {s.task_options}, gradient checkpointing "
          f"{'on' if s.gradient_checkpointing else 'off'}", flush=True)
    ceilings = [matmul_gflops(seconds=1.0 if s.tiny else 3.0)]
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    for k in range(args.repeats):
        for side in SIDES:  # alternately: rlvr, TRL, rlvr, TRL, ...
            results[side].append(run_side(side, s))
            print(f"  run {k + 1} {side}: {', '.join(f'{x:.2f}' for x in results[side][-1]['step_s'])} s/step",
                  flush=True)
    ceilings.append(matmul_gflops(seconds=1.0 if s.tiny else 3.0))
    summary = summarize(results, max(ceilings))
    print(format_table(summary, s))
    out = args.out or (DEFAULT_OUT.with_name("trl_vs_rlvr_tiny.json") if s.tiny else DEFAULT_OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"settings": dataclasses.asdict(s), "machine": machine(), "ceilings_gflops": ceilings,
              "trl_arguments": trl_arguments(s, Path("OUT")), "rlvr_overrides": rlvr_overrides(s, Path("OUT")),
              **summary, "runs": results}
    out.write_text(json.dumps(record, indent=1, default=str))
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
