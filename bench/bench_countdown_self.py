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
    .venv/bin/python bench/bench_countdown_self.py --tools               # with the calculator tool
    .venv/bin/python bench/bench_countdown_self.py --partial --run-dir RUN --out R.json  # a run stopped by hand
    .venv/bin/python bench/bench_countdown_self.py --control random-reward --warm-up-from RUN -- OVERRIDES

`--tools`: the same task with the calculator tool (`task.options.tools: true`, multi-turn
episodes): the model may compute an equation before it answers and try another when the result is
not the target. Its four hand-written shots are trajectories (`HAND_TOOL_SHOTS`: two try once, two
try twice), and the record goes to bench/results/countdown_self_tools.json.

`--control random-reward` (or format-only): the same pipeline with the reward replaced (`rlvr run
--control`), to tell a gain the verifier taught from one any reward of that shape gives. The warm-up
does not use the reward (it keeps what the verifier accepts), so with `--warm-up-from RUN` (a
finished run of the same config and overrides) the control takes RUN's base evaluation and warm-up
model and runs only GRPO (`rlvr run --resume` skips finished stages); the record checks that GRPO
starts from the same accuracy and puts the control's change beside the real run's
(`rlvr.report.compare_to_control`). Record: bench/results/countdown_self_control_<name>.json.

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

from ceiling import compare_with_real, machine, stopped_run  # bench/ is on the path when a bench runs as a script

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


TOOLS_CONFIG_CHANGES = {  # the --tools run: what differs from CONFIG
    "options: {num_numbers: 3, n: 5000, n_test: 200}": "options: {num_numbers: 3, n: 5000, n_test: 200, tools: true}\n"
    "  # up to three calculator calls, then the answer\n  max_tool_calling_iterations: 3",
    "max_completion_length: 128": "max_completion_length: 320",
}

HAND_TOOL_SHOTS = [  # (nums, target, [equation tried, ...]): the last try is right; checked below
    ([12, 4], 48, ["12 * 4"]),
    ([3, 5, 7], 22, ["3 + 5 + 7", "3 * 5 + 7"]),
    ([35, 9], 26, ["35 + 9", "35 - 9"]),
    ([50, 2, 8], 33, ["50 / 2 + 8"]),
]


def tool_trajectory(nums: list[int], target: int, tries: list[str]) -> list[dict]:
    """A countdown episode with the calculator: each try computed, a wrong result said to be wrong,
    the right one answered."""
    from rlvr.prompts import format_completion
    from rlvr.tasks.calculator import calculator_turns

    messages, why = [], f"Try {tries[0]}."
    for expression in tries:
        messages += calculator_turns(expression, why)
        result = messages[-1]["content"]
        why = f"{result} is not {target}. Try another."
        if result != str(target):
            continue
        messages.append({"role": "assistant", "content": format_completion(f"{expression} = {target}, the target.",
                                                                           expression)})
        return messages
    raise AssertionError(f"no try reaches {target}: {tries}")


def write_hand_tool_shots(path: Path) -> Path:
    """HAND_TOOL_SHOTS as a demonstrations JSONL whose completions are trajectories (message lists),
    each answer checked by the verifier."""
    from rlvr.tasks.countdown import make_countdown_example, verify_countdown

    lines = []
    for nums, target, tries in HAND_TOOL_SHOTS:
        assert verify_countdown(tries[-1], nums, target) == 1.0, tries
        ex = make_countdown_example(nums, target)
        lines.append(json.dumps({"prompt": ex.question, "completion": tool_trajectory(nums, target, tries),
                                 "answer": ex.answer, **ex.metadata}))
    path.write_text("\n".join(lines) + "\n")
    return path


def tools_config() -> str:
    text = CONFIG.replace("(bench_countdown_self.py)", "(bench_countdown_self.py --tools: with the calculator)")
    for old, new in TOOLS_CONFIG_CHANGES.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


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


def sampled_rounds(run_dir: Path) -> list[dict] | None:
    """What each self-warm-up round sampled, from RUN/sft/self/round-R.jsonl, counted as the run counts it
    (`rlvr.selftrain.round_record`): for a run that stopped before its summary (the warm-up accepted
    nothing, or it was stopped by hand)."""
    from rlvr.judge import Verdict
    from rlvr.selftrain import Candidate, round_record
    from rlvr.tasks.base import Example
    from rlvr.tracking import read_jsonl

    out = []
    for path in sorted((run_dir / "sft" / "self").glob("round-*.jsonl")):
        rows = read_jsonl(path)
        cands = [Candidate(r["question"], Example(r["prompt"], r["ground_truth"]), r["completion"],
                           Verdict(r["answer"], r["correct"], r["format"]), r.get("conversation"), r.get("limit"),
                           r.get("tool_calls", 0)) for r in rows]
        record = round_record(int(path.stem.split("-")[1]), cands, [c for c, r in zip(cands, rows) if r["kept"]],
                              len({r["question"] for r in rows}))
        out.append({**record, "from_round_file": True})
    return out or None


def partial_record(run_dir: Path, budget_min: float) -> dict:
    """The record of a run stopped by hand during GRPO, from what its directory holds: the base
    evaluation, the warm-up's rounds, GRPO's evaluations (before = after the warm-up, then every
    eval.every steps) and each step's sampled accuracy; wall time from the directory's files. Nothing
    is run."""
    rows, steps, sft = stopped_run(run_dir, ("accuracy", "format_rate", "mean_length", "n", "seconds"))
    first = (run_dir / "config.yaml").stat().st_mtime
    last = max(f.stat().st_mtime for f in run_dir.rglob("*") if f.is_file())
    grpo = [r for stage, r in rows.items() if stage != "base"]  # sft (GRPO's start), then its evaluations
    gain = 100 * (grpo[-1]["accuracy"] - grpo[0]["accuracy"]) if len(grpo) > 1 else None
    return {"stopped_by_hand": f"after GRPO step {steps[-1]['step'] if steps else 0}; this record is read from {run_dir}",
            "config": (run_dir / "config.yaml").read_text(), "self_rounds": sft.get("self_rounds"), "rows": rows,
            "grpo_steps": [{"step": m["step"], "sampled_accuracy": m.get("reward/accuracy/mean")} for m in steps],
            "wall_s_to_last_file": last - first, "grpo_gain_points_last_eval": gain,
            "checks": {f"wall <= {budget_min:g} min (to the last file)": last - first <= budget_min * 60,
                       "GRPO >= +15 points over the self warm-up (last evaluation)": gain is not None and gain >= 15},
            "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M")}


def reuse_warm_up(source: Path, run_dir: Path, config: Path, overrides: list[str]) -> None:
    """Copy a finished run's base evaluation and warm-up (eval/, sft/) into `run_dir`, after checking
    that `source` ran the same config as the control will, but for what a control changes (the
    reward, run.control), the run directory and the path of the few-shot file (written the same)."""
    from rlvr.config import load_config
    from rlvr.pipeline import FINISHED, finished

    if not all(finished(source, stage) for stage in FINISHED):
        sys.exit(f"--warm-up-from {source}: no finished warm-up there ({', '.join(FINISHED.values())})")
    ours = load_config(config, [f"run.output_dir={run_dir}", *overrides]).to_dict()
    theirs = load_config(source / "config.yaml").to_dict()
    for cfg in (ours, theirs):
        cfg["task"].pop("rewards"), cfg["run"].pop("control"), cfg["run"].pop("output_dir"), cfg["sft"].pop("self_shot_source")
    if ours != theirs:
        diff = sorted(f"{s}.{k}" for s in ours for k in ours[s] if ours[s].get(k) != theirs.get(s, {}).get(k))
        sys.exit(f"--warm-up-from {source}: it ran another config ({', '.join(diff)} differ); pass the same overrides")
    for stage in FINISHED:
        shutil.copytree(source / stage, run_dir / stage)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=None, help="default runs/bench-countdown-self[-tools]")
    ap.add_argument("--out", default=None, help="default bench/results/countdown_self[_tools].json")
    ap.add_argument("--shots", choices=["hand", "task", "answers"], default="hand")
    ap.add_argument("--tools", action="store_true", help="countdown with the calculator tool (multi-turn)")
    ap.add_argument("--budget-min", type=float, default=60.0, help="the target's wall-time budget")
    ap.add_argument("--partial", action="store_true",
                    help="write the record of a run stopped by hand from --run-dir (runs nothing)")
    ap.add_argument("--control", choices=["random-reward", "format-only"], default=None,
                    help="a control run: the reward replaced (rlvr run --control); record countdown_self[_tools]_control_NAME.json")
    ap.add_argument("--warm-up-from", default=None,
                    help="with --control: take the base evaluation and warm-up from this finished run of the same config")
    ap.add_argument("--real", default=None, help="with --control: the real run's record (default the real run's --out)")
    ap.add_argument("overrides", nargs="*", help="section.option=value, passed to rlvr run")
    args = ap.parse_args()
    if args.warm_up_from and not args.control:
        sys.exit("--warm-up-from is for a control run (--control): a real run makes its own warm-up")
    if args.partial:
        if not (args.run_dir and args.out):
            sys.exit("--partial needs --run-dir and --out")
        record = partial_record(Path(args.run_dir), args.budget_min)
        Path(args.out).write_text(json.dumps(record, indent=1, default=str))
        print(json.dumps(record["rows"], indent=1), json.dumps(record["checks"]), f"\nrecord: {args.out}")
        return
    suffix = "_tools" if args.tools else ""
    real = Path(args.real or ROOT / "bench" / "results" / f"countdown_self{suffix}.json")
    suffix += f"_control_{args.control}" if args.control else ""
    args.run_dir = args.run_dir or str(ROOT / "runs" / f"bench-countdown-self{suffix.replace('_', '-')}")
    args.out = args.out or str(ROOT / "bench" / "results" / f"countdown_self{suffix}.json")

    run_dir = Path(args.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = run_dir.parent / f"{run_dir.name}.yaml"
    config_text = tools_config() if args.tools else CONFIG
    config.write_text(config_text)
    hand = (write_hand_tool_shots if args.tools else write_hand_shots)(run_dir.parent / f"{run_dir.name}-shots.jsonl")
    shots = {"hand": str(hand), "task": "auto", "answers": "answers"}[args.shots]
    overrides = [f"sft.self_shot_source={shots}", *args.overrides]
    cmd = [sys.executable, "-m", "rlvr", "run", "--config", str(config), "-o", str(run_dir), *overrides]
    if args.control:
        cmd[4:4] = ["--control", args.control]
    if args.warm_up_from:
        reuse_warm_up(Path(args.warm_up_from), run_dir, config, overrides)
        cmd.append("--resume")
    print("$", " ".join(cmd), flush=True)
    load_before, t0 = os.getloadavg(), time.time()
    proc = subprocess.run(cmd, cwd=ROOT)
    wall = time.time() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 2 ** 30
    sft_summary = run_dir / "sft" / "sft_summary.json"
    rounds = json.loads(sft_summary.read_text()).get("self_rounds") if sft_summary.exists() else sampled_rounds(run_dir)
    hand_shots = (HAND_TOOL_SHOTS if args.tools else HAND_SHOTS) if args.shots == "hand" else None
    record = {"command": cmd, "config": config_text, "shots": args.shots, "tools": args.tools, "hand_shots": hand_shots,
              "exit_code": proc.returncode, "wall_s": wall, "peak_rss_gb": peak_gb, "self_rounds": rounds,
              "machine": machine(load_before=load_before, load_after=os.getloadavg()),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.warm_up_from:
        record["warm_up_from"] = args.warm_up_from  # its wall time is GRPO's and the evaluations' only
    if proc.returncode == 0:
        rows = {r["stage"]: r for r in json.loads((run_dir / "summary.json").read_text())["before_after"]}
        gain = rows["grpo"]["accuracy"] - rows["sft"]["accuracy"] if {"grpo", "sft"} <= rows.keys() else None
        record.update(rows=list(rows.values()), grpo_gain_points=None if gain is None else 100 * gain,
                      checks={f"wall <= {args.budget_min:g} min": wall <= args.budget_min * 60,
                              "GRPO >= +15 points over the self warm-up": gain is not None and gain >= 0.15})
        if args.control:  # a control is not expected to gain; what counts is its change beside the real one
            record.update(control=args.control, vs_real=compare_with_real(list(rows.values()), real, args.control))
            record["checks"] = {"GRPO starts from the real run's warm-up accuracy":
                                bool(record["vs_real"] and record["vs_real"]["same_start"])}
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
    if record.get("vs_real"):
        print(record["vs_real"]["text"], *record["vs_real"]["notes"], sep="\n")
    print(f"record: {args.out}")


if __name__ == "__main__":
    main()
