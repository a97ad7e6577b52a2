"""Benchmark: countdown with no demonstrations from a person, a teacher or a solver.

Issue 20, item 5b. `rlvr run` on countdown with 3 numbers: the base model, then the self warm-up
(`sft.source: self`, rlvr.selftrain: few-shot sampling, only completions the verifier accepts in the
format kept, fine-tuned on, a few rounds), then GRPO; 200 held-out examples, greedy. Target (issue
20): GRPO +15 points over the warm-up, all of it within 60 minutes.

What the model sees besides the verifier: four few-shot examples (two with 2 numbers, two with 3) in
the prompt, never trained on. By default they are the four written out below (`HAND_SHOTS`, checked
by the verifier here); `--shots task` uses the task's own solver instead (`sft.self_shot_source:
auto`), `--shots answers` builds them from question/answer pairs (for countdown the answer column is
the target number, not an expression: expect nothing to be accepted, which shows what the few-shot
examples are for).

    .venv/bin/python bench/bench_countdown_self.py                      # the issue's run
    .venv/bin/python bench/bench_countdown_self.py -- grpo.max_steps=30  # overrides after --

Record: bench/results/countdown_self.json (rows, self-warm-up rounds, stage seconds, machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ceiling import machine  # bench/ is on the path when a bench runs as a script

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """\
# countdown (3 numbers), no external demonstrations: self warm-up, then GRPO (bench_countdown_self.py)
model: {name: smollm2-135m, use_peft: true}
task:
  name: countdown
  options: {num_numbers: 3, n: 5000, n_test: 200}
  rewards: {accuracy: 0.85, format: 0.15}
sampling: {max_completion_length: 128, temperature: 1.0}
sft:
  source: self
  self_rounds: 3
  # a curriculum: the base model never solves a 3-number problem (0 of 768 samples accepted in a
  # first try), so rounds 1-2 ask 2-number problems, round 3 the task's 3 numbers
  self_levels: [1, 1, 2]
  self_questions: 96
  self_samples: 8
  self_shots: 4
  self_max_per_question: 2
  self_eval_n: 100
  epochs: 2
  batch_size: 8
  learning_rate: 1.0e-4
  use_peft: false
grpo:
  max_steps: 30
  prompts_per_step: 8
  num_generations: 8
  per_device_train_batch_size: 16
  loss_type: dapo
  learning_rate: 2.0e-4
  dynamic_sampling: true
eval: {n: 200, batch_size: 100, every: 10}
run: {save_steps: 10}
"""

HAND_SHOTS = [  # (nums, target, reasoning, equation): written by hand, checked below by the verifier
    ([12, 4], 48, "12 * 4 = 48.", "12 * 4"),
    ([3, 5, 7], 22, "3 * 5 = 15, and 15 + 7 = 22.", "3 * 5 + 7"),
    ([35, 9], 26, "35 - 9 = 26.", "35 - 9"),
    ([50, 2, 8], 33, "50 / 2 = 25, and 25 + 8 = 33.", "50 / 2 + 8"),
]


def write_hand_shots(path: Path) -> Path:
    """HAND_SHOTS as a demonstrations JSONL (prompt, completion, answer; sft.self_shot_source), each
    checked by the verifier."""
    from rlvr.prompts import format_completion
    from rlvr.tasks.countdown import make_countdown_example, verify_countdown

    lines = []
    for nums, target, think, equation in HAND_SHOTS:
        assert verify_countdown(equation, nums, target) == 1.0, equation
        ex = make_countdown_example(nums, target)
        lines.append(json.dumps({"prompt": ex.question, "completion": format_completion(think, equation),
                                 "answer": ex.answer, **ex.metadata}))
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "bench-countdown-self"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "countdown_self.json"))
    ap.add_argument("--shots", choices=["hand", "task", "answers"], default="hand")
    ap.add_argument("--budget-min", type=float, default=60.0, help="the target's wall-time budget")
    ap.add_argument("overrides", nargs="*", help="section.option=value, passed to rlvr run")
    args = ap.parse_args()

    run_dir = Path(args.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = run_dir.parent / f"{run_dir.name}.yaml"
    config.write_text(CONFIG)
    shots = {"hand": str(write_hand_shots(run_dir.parent / f"{run_dir.name}-shots.jsonl")), "task": "auto",
             "answers": "answers"}[args.shots]
    cmd = [sys.executable, "-m", "rlvr", "run", "--config", str(config), "-o", str(run_dir),
           f"sft.self_shot_source={shots}", *args.overrides]
    print("$", " ".join(cmd), flush=True)
    load_before, t0 = os.getloadavg(), time.time()
    proc = subprocess.run(cmd, cwd=ROOT)
    wall = time.time() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 2 ** 30
    sft_summary = run_dir / "sft" / "sft_summary.json"
    rounds = json.loads(sft_summary.read_text()).get("self_rounds") if sft_summary.exists() else None
    record = {"command": cmd, "config": CONFIG, "shots": args.shots, "hand_shots": HAND_SHOTS if args.shots == "hand" else None,
              "exit_code": proc.returncode, "wall_s": wall, "peak_rss_gb": peak_gb, "self_rounds": rounds,
              "machine": machine(load_before=load_before, load_after=os.getloadavg()),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    if proc.returncode == 0:
        rows = {r["stage"]: r for r in json.loads((run_dir / "summary.json").read_text())["before_after"]}
        gain = rows["grpo"]["accuracy"] - rows["sft"]["accuracy"] if {"grpo", "sft"} <= rows.keys() else None
        record.update(rows=list(rows.values()), grpo_gain_points=None if gain is None else 100 * gain,
                      checks={f"wall <= {args.budget_min:g} min": wall <= args.budget_min * 60,
                              "GRPO >= +15 points over the self warm-up": gain is not None and gain >= 0.15})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1, default=str))
    if proc.returncode != 0:
        sys.exit(f"the run failed (exit {proc.returncode}); record {args.out}")
    from rlvr.selftrain import format_rounds

    if rounds:
        print(format_rounds(rounds))
    for stage, row in rows.items():
        print(f"{stage:<6} {row['accuracy']:>7.1%}  format {row.get('format_rate', float('nan')):.1%}")
    print(f"wall {wall / 60:.1f} min, peak RSS {peak_gb:.2f} GB")
    for name, ok in record["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print(f"record: {args.out}")


if __name__ == "__main__":
    main()
