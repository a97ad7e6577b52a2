"""Which GRPO settings raise held-out accuracy over an SFT model? Run them and record before/after.

Each variant is `rlvr train --config CONFIG --model SFT_MODEL <overrides>` in its own run directory,
evaluated greedily on the same first eval.n held-out examples at the end; the SFT model's own
accuracy on those examples (the "before") is measured once with `rlvr eval --config`. Up to
--parallel variants run at once, each on --threads threads (default 1; on 2 cores the record's
12-step variants ran 2 at a time on 1 thread each, the 24-step one alone on 2). The record (each variant's overrides, before/after accuracy,
training accuracy per step, seconds) goes to bench/results/grpo_settings.json.

    .venv/bin/python bench/bench_grpo_settings.py --sft runs/main/sft/final           # the variants below
    .venv/bin/python bench/bench_grpo_settings.py --sft runs/main/sft/final --only lora_lr2e-4_ds

An SFT model: the main job's runs/main/sft/final, or `rlvr sft --config configs/main.yaml`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

VARIANTS: dict[str, list[str]] = {
    # full fine-tuning of the RL stage, as the main job does
    "full_dapo_lr3e-6": ["grpo.learning_rate=3e-6"],
    "full_t0.7_lr1e-5": ["sampling.temperature=0.7", "grpo.learning_rate=1e-5"],
    # LoRA r16 on top of the fully fine-tuned SFT model
    "lora_t0.7_lr5e-5": ["model.use_peft=true", "sampling.temperature=0.7", "grpo.learning_rate=5e-5"],
    "lora_lr2e-4_ds": ["model.use_peft=true", "grpo.learning_rate=2e-4", "grpo.dynamic_sampling=true",
                       "grpo.max_steps=12", "eval.every=6"],
    "lora_lr5e-4_ds": ["model.use_peft=true", "grpo.learning_rate=5e-4", "grpo.dynamic_sampling=true",
                       "grpo.max_steps=12", "eval.every=6"],
    # the main job's GRPO stage (configs/main.yaml as it is), evaluated every 5 steps
    "main_grpo": ["eval.every=5"],
    # sampling nearer the greedy answer: the signal comes from near-ties, where greedy can flip
    "lora_t0.7_lr2e-4_ds": ["model.use_peft=true", "sampling.temperature=0.7", "grpo.learning_rate=2e-4",
                            "grpo.dynamic_sampling=true", "grpo.max_steps=10", "eval.every=5"],
    # the main job's GRPO stage with the `steps` process reward (the worked solution's statements
    # the reasoning reproduces), so the completions of an all-wrong group are still ranked
    "main_grpo_steps": ["task.rewards={accuracy: 0.7, steps: 0.15, format: 0.15}", "eval.every=5"],
    # the same with the batch's std: a group whose answers are all wrong no longer has its small
    # `steps` differences scaled up to unit advantages by its own small std
    "main_grpo_steps_batch": ["task.rewards={accuracy: 0.7, steps: 0.15, format: 0.15}", "eval.every=5",
                              "grpo.scale_rewards=batch"],
    "lora_lr2e-4_ds_24": ["model.use_peft=true", "grpo.learning_rate=2e-4", "grpo.dynamic_sampling=true",
                          "grpo.max_steps=24", "eval.every=6"],
}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run(cmd: list[str], log: Path, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
    t0 = time.time()
    with log.open("w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return time.time() - t0


def before(args, out_dir: Path) -> dict:
    """The SFT model's accuracy on the held-out examples every variant is evaluated on."""
    stamp = out_dir / "sft_eval" / "model.txt"  # which model sft_eval/ measured: measured again if another
    if not args.collect and not (stamp.exists() and stamp.read_text() == args.sft):
        run([sys.executable, "-m", "rlvr", "eval", "--config", args.config, "--model", args.sft,
             "-o", str(out_dir / "sft_eval"), f"run.threads={args.threads}"], out_dir / "sft_eval.log", args.threads)
        stamp.write_text(args.sft)
    rows = read_jsonl(out_dir / "sft_eval" / "eval.jsonl")
    return {"accuracy": sum(r["correct"] for r in rows) / max(1, len(rows)), "n": len(rows)}


def variant(args, out_dir: Path, name: str) -> dict:
    run_dir = out_dir / name
    overrides = VARIANTS[name]
    cmd = [sys.executable, "-m", "rlvr", "train", "--config", args.config, "--model", args.sft, "-o", str(run_dir),
           "eval.on_start=false", f"run.threads={args.threads}", "run.doctor=off", "run.quiet=true", *overrides]
    seconds = None if args.collect else run(cmd, out_dir / f"{name}.log", args.threads)
    evals = read_jsonl(run_dir / "eval.jsonl")
    steps = read_jsonl(run_dir / "metrics.jsonl")
    flips = None
    if evals:  # per example, against the SFT model: how many changed which way (a paired comparison)
        sft = [r["correct"] for r in read_jsonl(out_dir / "sft_eval" / "eval.jsonl")]
        after = [r["correct"] for r in read_jsonl(run_dir / "eval" / f"step-{evals[-1]['step']:06d}.jsonl")]
        flips = {"wrong_to_right": sum(1 for a, b in zip(sft, after) if b and not a),
                 "right_to_wrong": sum(1 for a, b in zip(sft, after) if a and not b)}
    return {"overrides": overrides, "seconds": seconds, "flips": flips,
            "eval": [{k: e[k] for k in ("step", "accuracy", "format_rate", "mean_length")} for e in evals],
            "train_accuracy": [round(s.get("train/accuracy", 0.0), 4) for s in steps],
            "zero_signal": [round(s.get("signal/zero_std_groups", 0.0), 4) for s in steps]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sft", required=True, help="the SFT model (a run directory or its final/merged)")
    p.add_argument("--config", default="configs/main.yaml")
    p.add_argument("--only", nargs="*", default=None, help=f"variants to run (default all: {', '.join(VARIANTS)})")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="threads of each run")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-grpo-settings")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grpo_settings.json")
    p.add_argument("--collect", action="store_true",
                   help="run nothing: read the runs already in --work (sft_eval/eval.jsonl and one directory per variant)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    names = args.only or [n for n in VARIANTS if not args.collect or (args.work / n / "eval.jsonl").exists()]
    record = {"sft_model": args.sft, "config": args.config, "date": time.strftime("%Y-%m-%d %H:%M"),
              "before": before(args, args.work)}
    print(f"SFT model: {record['before']['accuracy']:.1%} on {record['before']['n']} held-out examples")
    with ThreadPoolExecutor(args.parallel) as pool:
        results = dict(zip(names, pool.map(lambda n: variant(args, args.work, n), names)))
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    if old.get("sft_model") == args.sft:  # add to the record of the same SFT model
        results = {**old.get("variants", {}), **results}
    record["variants"] = results
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    for name, r in results.items():
        last = r["eval"][-1]["accuracy"] if r["eval"] else float("nan")
        minutes = f"{r['seconds'] / 60:.1f} min" if r["seconds"] else ""
        flips = r["flips"] or {}
        print(f"{name:<22} after {last:.1%}  ({last - record['before']['accuracy']:+.1%}; "
              f"{flips.get('wrong_to_right')} wrong -> right, {flips.get('right_to_wrong')} right -> wrong)  {minutes}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
