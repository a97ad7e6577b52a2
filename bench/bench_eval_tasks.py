"""Benchmark: the bundled base model on every built-in task family, before any training.

Runs `rlvr eval` (greedy, the default system prompt) on the first --n held-out examples of
subtraction, countdown, gsm8k and rg:syllogism, each in its own process, and prints one table:
accuracy, format rate, mean length, truncated fraction, wall seconds and tokens/s. The record goes
to bench/results/eval_tasks.json.

    .venv/bin/python bench/bench_eval_tasks.py                  # n=200, smollm2-135m
    .venv/bin/python bench/bench_eval_tasks.py --n 50 --tasks subtraction countdown
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["subtraction", "countdown", "gsm8k", "rg:syllogism"]
MAX_NEW_TOKENS = {"gsm8k": 256}  # word problems need room to reason; the others fit in 128


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval_tasks.json"))
    args = ap.parse_args()

    rows = []
    for task in args.tasks:
        out_dir = ROOT / "runs" / f"bench-eval-{task.replace(':', '_')}"
        cmd = [sys.executable, "-m", "rlvr", "eval", "--model", args.model, "--task", task, "--n", str(args.n),
               "--batch-size", str(args.batch_size), "--max-new-tokens", str(MAX_NEW_TOKENS.get(task, 128)),
               "-o", str(out_dir)]
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode != 0:
            print(f"{task}: failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            continue
        summary = json.loads((out_dir / "summary.json").read_text())
        rows.append({"task": task, "wall_s": wall, "load_after": os.getloadavg()[0], **summary})
        print(proc.stdout.strip().splitlines()[-1], flush=True)

    print(f"\n{'task':<14} {'accuracy':>9} {'format':>7} {'length':>7} {'trunc':>6} {'eval s':>7} {'tok/s':>6}")
    for r in rows:
        print(f"{r['task']:<14} {r['accuracy']:>9.1%} {r['format_rate']:>7.1%} {r['mean_length']:>7.1f} "
              f"{r['truncated_frac']:>6.1%} {r['seconds']:>7.0f} {r.get('tokens_per_s', 0):>6.0f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "n": args.n, "cores": os.cpu_count(),
                                          "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, indent=1))
    print(f"record: {args.out}")


if __name__ == "__main__":
    main()
