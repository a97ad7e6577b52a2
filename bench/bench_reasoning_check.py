"""Benchmark: are the right answers right for the stated reason? (rlvr.reasoning over finished runs)

Reads every per-example evaluation file of the given run directories (RUN/eval/*.jsonl,
RUN/*/eval/*.jsonl, RUN/eval-*/eval.jsonl: the files `rlvr run`, `rlvr train` and `rlvr eval`
write) and counts, per file: accuracy, the right answers, those whose think part states arithmetic
rlvr.reasoning can check, and of those the ones stating a false claim ("43 - 51 = 11" on the way
to a right answer). On countdown files also the strategy the answers follow: the share written as
`a +- b +- c` with the numbers in the order given, what a uniformly random choice of those signs
scores on the same questions, and the share of questions that strategy can solve at all. No model runs: the runs are the ones other benches left (their commands are in
their records), so run those first.

    .venv/bin/python bench/bench_reasoning_check.py                        # the default runs below
    .venv/bin/python bench/bench_reasoning_check.py runs/main runs/other   # any run directories

Record: bench/results/reasoning_check.json.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from ceiling import machine  # bench/ is on the path when a bench runs as a script

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_RUNS = {  # run directory -> the bench and record it comes from
    "runs/bench-countdown-self": "bench_countdown_self.py (countdown_self.json)",
    "runs/bench-countdown-self-checked": "bench_countdown_self.py -- sft.self_check_arithmetic=true (countdown_self_checked.json)",
    "runs/bench-compute-matched/grpo": "bench_compute_matched.py --task countdown (compute_matched_countdown.json): "
                                       "the GRPO arm after the solver's demonstrations",
    "runs/bench-generalise": "bench_generalise.py (generalise.json): subtraction",
    "runs/bench-calculator": "bench_tool_task.py (tool_task.json): products with a calculator tool",
}


def eval_files(run: Path) -> list[Path]:
    """The per-example evaluation files of a run directory, in a stable order."""
    found = [*run.glob("eval/*.jsonl"), *run.glob("*/eval/*.jsonl"), *run.glob("eval-*/eval.jsonl")]
    return sorted({p for p in found if p.name != "eval.jsonl" or p.parent.name.startswith("eval-")})


COUNTDOWN = re.compile(r"Using the numbers \[([\d, ]+)\], create an equation that equals (\d+)")


def countdown_strategy(rows: list[dict]) -> dict | None:
    """For countdown records (3 numbers): the share of answers `a +- b +- c` in the given order,
    the accuracy of a uniformly random choice of the two signs, and the share of questions that
    some choice solves (the strategy's ceiling). None for other tasks."""
    problems = [COUNTDOWN.search(r.get("prompt") or "") for r in rows]
    if not all(problems):
        return None
    in_order = random_sign = solvable = 0
    for r, m in zip(rows, problems):
        nums, target = [int(x) for x in m.group(1).split(",")], int(m.group(2))
        if len(nums) != 3:
            return None
        a, b, c = nums
        right = sum(a + s1 * b + s2 * c == target for s1 in (1, -1) for s2 in (1, -1))
        random_sign += right / 4
        solvable += right > 0
        in_order += bool(re.fullmatch(rf"\s*{a}\s*[-+]\s*{b}\s*[-+]\s*{c}\s*", str(r.get("answer") or "")))
    n = len(rows)
    return {"in_order_sign_answers": in_order / n, "random_sign_accuracy": random_sign / n,
            "in_order_sign_solvable": solvable / n}


def check_file(path: Path) -> dict | None:
    """accuracy / right / checked / false claims of one file (None: not per-example records)."""
    from rlvr.reasoning import arithmetic_summary
    from rlvr.tracking import read_jsonl

    rows = read_jsonl(path)
    if not rows or not {"completion", "correct"} <= rows[0].keys():
        return None
    s = arithmetic_summary(rows)
    out = {"file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path), "n": len(rows),
           "accuracy": sum(r["correct"] for r in rows) / len(rows), "right": s.right, "checked": s.checked,
           "false_claims": s.false_claims, "false_frac": s.false_frac}
    strategy = countdown_strategy(rows)
    return {**out, "countdown": strategy} if strategy else out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", help="run directories (default: the benches' runs, where present)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "reasoning_check.json"))
    args = ap.parse_args()
    runs = [Path(r) for r in args.runs] or [ROOT / r for r in DEFAULT_RUNS]
    record = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "runs": []}
    for run in runs:
        if not run.is_dir():
            print(f"skipped {run}: not found (run its bench first)")
            continue
        rel = str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run)
        files = [r for r in (check_file(p) for p in eval_files(run)) if r]
        record["runs"].append({"run": rel, "from": DEFAULT_RUNS.get(rel), "files": files})
        print(f"\n{rel}" + (f"  [{DEFAULT_RUNS[rel]}]" if rel in DEFAULT_RUNS else ""))
        for f in files:
            share = "-" if f["false_frac"] is None else f"{f['false_frac']:.0%} ({f['false_claims']} of {f['checked']})"
            print(f"  {f['file'][len(rel) + 1:]:<34} accuracy {f['accuracy']:6.1%}  right {f['right']:4d}  "
                  f"right with false arithmetic {share}")
            if "countdown" in f:
                c = f["countdown"]
                print(f"  {'':<34} answers a +- b +- c in order {c['in_order_sign_answers']:.1%}; random signs score "
                      f"{c['random_sign_accuracy']:.1%}; that strategy can solve {c['in_order_sign_solvable']:.1%}")
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"\nrecord: {args.out}")


if __name__ == "__main__":
    main()
