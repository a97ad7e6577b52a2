"""Benchmark: a small model learns by RL to call a tool (issue 19), measured end to end.

Runs `rlvr run --config configs/calculator.yaml` (bench_main_job.py's child process and record), then
asks the same 200 held-out questions *without* the tool (`calculator` with tools=false) of the base
model and of the trained one, so the record shows what the tool is worth:

    .venv/bin/python bench/bench_tool_task.py [--record bench/results/tool_task.json] [-- overrides]
    .venv/bin/python bench/bench_tool_task.py --partial --run-dir RUN --record R.json  # a run stopped by hand

With `-- sft.source=self ...` the warm-up is the self warm-up (rlvr.selftrain: the model's own
verified episodes, few-shot prompted with the task's trajectories, instead of procedural
demonstrations); the record's `sft` holds the warm-up's source, demonstrations, steps and rounds.

Prints and records accuracy (greedy, 200 held-out), tool calls per episode, tool errors and episodes
cut by a limit, for the base model, after SFT and after GRPO; the no-tool accuracies; wall seconds
per stage and the peak RSS of the job; the machine (`rlvr env`) and its load.
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

from ceiling import machine, stopped_run  # bench/ is on the path when a bench runs as a script

ROOT = Path(__file__).resolve().parent.parent


def no_tool_eval(model: str, out: Path, n: int) -> dict:
    """The same held-out questions, the calculator task with tools=false (greedy)."""
    cmd = [sys.executable, "-m", "rlvr", "eval", "--config", str(ROOT / "configs" / "calculator.yaml"),
           "--model", model, "--task-option", "tools=false", "--n", str(n), "-o", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return json.loads((out / "summary.json").read_text())


def partial_record(run_dir: Path) -> dict:
    """The record of a run stopped by hand during GRPO, from what its directory holds: the base
    evaluation, the warm-up's summary, GRPO's evaluations (before = after the warm-up, then every
    eval.every steps) and its per-step sampled accuracy and tool calls. Nothing is run."""
    keys = ("accuracy", "format_rate", "mean_length", "tool_calls", "tool_errors", "limit_frac", "seconds")
    rows, steps, sft_summary = stopped_run(run_dir, keys)
    return {"stopped_by_hand": f"after GRPO step {steps[-1]['step'] if steps else 0}; this record is read from {run_dir}",
            "sft": {k: sft_summary.get(k) for k in ("source", "num_demos", "steps", "seconds", "self_rounds")},
            "rows": rows,
            "grpo_steps": [{k: m.get(k) for k in ("step", "reward/accuracy/mean", "episode/tool_calls_mean",
                                                  "episode/limit_frac")} for m in steps],
            "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", type=Path, default=ROOT / "bench" / "results" / "tool_task.json")
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "bench-calculator")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--partial", action="store_true",
                    help="write the record of a run stopped by hand from --run-dir (runs nothing)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.partial:
        record = partial_record(args.run_dir)
        args.record.write_text(json.dumps(record, indent=1) + "\n")
        print(json.dumps(record["rows"], indent=1), f"\nrecord: {args.record}")
        return
    shutil.rmtree(args.run_dir, ignore_errors=True)
    load_before = os.getloadavg()
    cmd = [sys.executable, "-m", "rlvr", "run", "--config", str(ROOT / "configs" / "calculator.yaml"),
           "-o", str(args.run_dir), f"eval.n={args.n}", *args.overrides]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.time() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 2**30
    summary = json.loads((args.run_dir / "summary.json").read_text())
    rows = {r["stage"]: r for r in summary["before_after"]}
    t1 = time.time()
    no_tool = {"base": no_tool_eval("smollm2-135m", args.run_dir / "eval-no-tool-base", args.n),
               "grpo": no_tool_eval(str(args.run_dir), args.run_dir / "eval-no-tool-grpo", args.n)}
    keys = ("accuracy", "format_rate", "mean_length", "tool_calls", "tool_errors", "limit_frac", "seconds")
    sft_summary = json.loads((args.run_dir / "sft" / "sft_summary.json").read_text())
    record = {
        "command": cmd, "wall_s": wall, "no_tool_eval_s": time.time() - t1, "peak_rss_gb": peak_gb,
        "sft": {k: sft_summary.get(k) for k in ("source", "num_demos", "steps", "seconds", "self_rounds")},
        "rows": {s: {k: r.get(k) for k in keys} for s, r in rows.items()},
        "no_tool": {s: {k: r.get(k) for k in ("accuracy", "format_rate", "mean_length")} for s, r in no_tool.items()},
        "grpo_gain_points": 100 * (rows["grpo"]["accuracy"] - rows["sft"]["accuracy"]) if {"grpo", "sft"} <= rows.keys() else None,
        "machine": machine(load_before=load_before, load_after=os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    args.record.parent.mkdir(parents=True, exist_ok=True)
    args.record.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\n{'stage':<6} {'accuracy':>9} {'format':>7} {'calls':>6} {'errors':>7} {'cut':>5}")
    for stage, r in record["rows"].items():
        print(f"{stage:<6} {r['accuracy']:>9.1%} {r['format_rate']:>7.1%} {r.get('tool_calls') or 0:>6.2f} "
              f"{r.get('tool_errors') or 0:>7.2f} {r.get('limit_frac') or 0:>5.1%}")
    for stage, r in record["no_tool"].items():
        print(f"no tool, {stage}: {r['accuracy']:.1%} (format {r['format_rate']:.1%})")
    print(f"GRPO over SFT: {record['grpo_gain_points']:+.1f} points; wall {wall / 60:.1f} min, peak {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
