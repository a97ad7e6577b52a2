"""Benchmark: the README's main job, timed end to end, with the numbers issue #4 asks for.

Runs `rlvr run --config configs/main.yaml` (or --config) in a child process, on a fresh run
directory, and prints:

    accuracy / format rate / mean length of the base model, after SFT and after GRPO (the same
    held-out examples, greedy), the seconds of every stage, the wall time, and the peak RSS of
    the whole job (the child's ru_maxrss, so everything it loaded counts);

then checks the targets: <= 30 min, < 8 GB, GRPO >= +10 points over SFT. The record goes to
bench/results/main_job.json (with the machine's CPU, core count and load average, because a
shared CPU changes the seconds, never the accuracies: every random choice is seeded).

    .venv/bin/python bench/bench_main_job.py                 # the main job as the README runs it
    .venv/bin/python bench/bench_main_job.py -- grpo.max_steps=20   # extra overrides after --
    .venv/bin/python bench/bench_main_job.py --control random-reward  # the same job, reward replaced

With --control (random-reward or format-only) the job runs as `rlvr run --control ...`: the same
base model, the same SFT, GRPO with the reward replaced. The record (main_job_control_<name>.json)
puts its GRPO change beside the real job's (bench/results/main_job.json, or --real), labelled by
`rlvr.report.compare_to_control`.
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

from ceiling import compare_with_real, machine  # bench/ is on the path when a bench runs as a script

ROOT = Path(__file__).resolve().parent.parent


def stage_seconds(run_dir: Path) -> dict:
    """Seconds per stage, from the files each stage writes."""
    out = {}
    base = run_dir / "eval" / "base_summary.json"
    if base.exists():
        out["eval base"] = json.loads(base.read_text()).get("seconds")
    sft = run_dir / "sft" / "sft_summary.json"
    if sft.exists():
        out["sft train"] = json.loads(sft.read_text()).get("seconds")
    grpo = run_dir / "grpo" / "summary.json"
    if grpo.exists():
        record = json.loads(grpo.read_text())
        evals = {f"eval {row.get('stage')}": row["seconds"] for row in record["before_after"] if "seconds" in row}
        out.update(evals)
        out["grpo train"] = record["wall_time_s"] - sum(evals.values())  # the GRPO stage less its two evals
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "main.yaml"))
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "bench-main"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "main_job.json"))
    ap.add_argument("--control", choices=["random-reward", "format-only"], default=None,
                    help="run the job as a control run (the reward replaced); record: main_job_control_<name>.json")
    ap.add_argument("--real", default=str(ROOT / "bench" / "results" / "main_job.json"),
                    help="the real job's record, to compare a control run with")
    ap.add_argument("overrides", nargs="*", help="section.option=value, passed to rlvr run")
    args = ap.parse_args()
    if args.control and args.out == ap.get_default("out"):
        args.out = str(ROOT / "bench" / "results" / f"main_job_control_{args.control}.json")
        if args.run_dir == ap.get_default("run_dir"):
            args.run_dir = str(ROOT / "runs" / f"bench-main-control-{args.control}")

    run_dir = Path(args.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "rlvr", "run", "--config", args.config, "-o", str(run_dir), *args.overrides]
    if args.control:
        cmd[4:4] = ["--control", args.control]
    print("$", " ".join(cmd), flush=True)
    load_before = os.getloadavg()
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT)
    wall = time.time() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 2 ** 30
    if proc.returncode != 0:
        sys.exit(f"the main job failed (exit {proc.returncode})")

    summary = json.loads((run_dir / "summary.json").read_text())
    rows = {r["stage"]: r for r in summary["before_after"]}
    stages = stage_seconds(run_dir)
    gain = rows["grpo"]["accuracy"] - rows["sft"]["accuracy"] if {"grpo", "sft"} <= rows.keys() else None
    checks = {"wall <= 30 min": wall <= 30 * 60, "peak < 8 GB": peak_gb < 8,
              "GRPO >= +10 points over SFT": gain is not None and gain >= 0.10}
    record = {
        "command": cmd, "wall_s": wall, "peak_rss_gb": peak_gb, "stages_s": stages, "rows": summary["before_after"],
        "grpo_gain_points": None if gain is None else 100 * gain, "checks": checks,
        "machine": machine(load_before=load_before, load_after=os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if args.control:
        record["control"] = args.control
        record["vs_real"] = compare_with_real(summary["before_after"], Path(args.real), args.control)
        checks.pop("GRPO >= +10 points over SFT")  # a control is not expected to gain
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))

    print(f"\n{'stage':<6} {'accuracy':>9} {'format':>7} {'length':>7} {'eval s':>7}")
    for stage, row in rows.items():
        print(f"{stage:<6} {row['accuracy']:>9.1%} {row.get('format_rate', float('nan')):>7.1%} "
              f"{row.get('mean_length', float('nan')):>7.1f} {row.get('seconds', float('nan')):>7.0f}")
    print("stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items() if v is not None))
    print(f"wall {wall / 60:.1f} min, peak RSS {peak_gb:.2f} GB, load average before/after "
          f"{load_before[0]:.1f}/{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    if args.control and record["vs_real"]:
        print(record["vs_real"]["text"])
    print(f"record: {args.out}")


if __name__ == "__main__":
    main()
