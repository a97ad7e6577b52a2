"""Benchmark: how many tool-calling demonstrations the calculator task's SFT warm-up needs (issue 19).

For each count N, `rlvr sft --config configs/calculator.yaml sft.num_examples=N` (procedural
demonstrations: call the calculator, read its result, answer), then greedy held-out accuracy with
the tool on the first --n test examples, tool calls and errors per episode and the episodes cut by
a limit. This is what chooses the warm-up that the GRPO stage of bench_tool_task.py starts from: a
warm-up that already solves the task leaves GRPO nothing to show.

    .venv/bin/python bench/bench_tool_sft_demos.py --demos 16 24 32 36 40 --n 100

With --reuse, a count whose run directory (WORK/sft-N) already holds its evaluation is read, not
re-run (the row says so). Record: bench/results/tool_task_sft_demos.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from ceiling import machine  # bench/ is on the path when a bench runs as a script

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("accuracy", "format_rate", "mean_length", "tool_calls", "tool_errors", "limit_frac")


def after_row(run: Path) -> dict | None:
    """The run's final ("after") evaluation row, or None when it has none."""
    from rlvr.tracking import read_jsonl

    return next((r for r in reversed(read_jsonl(run / "eval.jsonl")) if r.get("stage") == "after"), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demos", type=int, nargs="+", default=[16, 24, 32, 36, 40])
    ap.add_argument("--n", type=int, default=100, help="held-out examples per evaluation")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-tool-sft-demos")
    ap.add_argument("--reuse", action="store_true", help="read a count's finished run instead of re-running it")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tool_task_sft_demos.json")
    ap.add_argument("overrides", nargs="*", help="section.option=value, passed to every run")
    args = ap.parse_args()
    rows = []
    for n in args.demos:
        run = args.work / f"sft-{n}"
        cmd = [sys.executable, "-m", "rlvr", "sft", "--config", str(ROOT / "configs" / "calculator.yaml"), "-o", str(run),
               f"sft.num_examples={n}", f"eval.n={args.n}", "eval.on_start=false", *args.overrides]
        reused = args.reuse and after_row(run) is not None
        if not reused:
            print("$", " ".join(cmd), flush=True)
            if subprocess.run(cmd, cwd=ROOT).returncode != 0:
                sys.exit(f"failed: {' '.join(cmd)}")
        row, sft = after_row(run), json.loads((run / "sft_summary.json").read_text())
        rows.append({"demos": n, "sft_steps": sft["steps"], "sft_seconds": sft["seconds"], "n": row["n"],
                     "eval_seconds": row["seconds"], "reused": reused, **{k: row.get(k) for k in KEYS}})
        print(f"{n:>4} demos, {sft['steps']} steps: accuracy {row['accuracy']:.1%}, format {row['format_rate']:.1%}, "
              f"{row.get('tool_calls') or 0:.2f} calls/episode, cut {row.get('limit_frac') or 0:.0%}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "overrides": args.overrides, "machine": machine(),
                                    "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1) + "\n")
    print(f"record {args.out}")


if __name__ == "__main__":
    main()
