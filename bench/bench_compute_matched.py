"""Benchmark: SFT alone vs warm-up + GRPO at equal compute, held-out accuracy against training minutes.

Issue 20, item 4. Per task, the same budget of training time goes to

    (a) SFT only: fresh demonstrations in chunks (--sft-chunk), one pass, as many as the budget buys;
        held-out accuracy after every chunk;
    (b) warm-up then GRPO: SFT on --warmup-demos demonstrations (the config's sft recipe), then GRPO
        (the config's grpo recipe) evaluated every --grpo-eval-every steps.

Training time counts only training: every held-out evaluation (greedy, the first --eval-n test
examples, the same ones for both arms) is left out of the clock, so the arms are compared at equal
training compute however often they are evaluated. The clock is wall time of this process with
--threads torch threads: run it on a quiet machine (the record keeps the load average, `rlvr env`
and the process's CPU seconds, which a busy host inflates less than wall time). Demonstrations come
from the task itself (procedural worked solutions: subtraction, countdown, gsm8k) or from --demos
PATH.jsonl (e.g. for a reasoning-gym task: a teacher's, or a self warm-up's kept completions), or with
--demos answers from the task's question/answer pairs (a one-line think part, then the answer).
Each SFT chunk restarts the warm-up/cosine schedule of `rlvr.sft.sft_train` (continued training on
fresh data, not one schedule over all of it). GRPO runs grpo.max_steps steps (set it so that they fill the
budget: ~45 s a step for the main job); points past the budget are plotted, not counted as "within".

    .venv/bin/python bench/bench_compute_matched.py --task subtraction --budget-min 30
    .venv/bin/python bench/bench_compute_matched.py --task countdown --budget-min 30 -- task.options='{num_numbers: 3}'
    .venv/bin/python bench/bench_compute_matched.py --task rg:chain_sum --demos answers --budget-min 15

Because arm (a) restarts its schedule every chunk, `--single-sft N [N ...]` adds a third curve to an
existing record (--out): for each N, the base model fine-tuned once on the first N demonstrations (one
schedule, as the warm-up is), timed and evaluated the same way; the two arms are not re-run.

Writes bench/results/compute_matched_<task>.json and .png (accuracy vs training minutes, both arms).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

from ceiling import machine  # bench/ is on the path when a bench runs as a script

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    """Training time: wall and process-CPU seconds, accumulated only inside `with clock:`."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c

    def add(self, wall: float, cpu: float = 0.0) -> None:
        self.wall, self.cpu = self.wall + wall, self.cpu + cpu


def evaluate(policy, tokenizer, task, cfg) -> dict:
    from rlvr.config import sampler_options
    from rlvr.evaluate import evaluate_config
    from rlvr.sampling import make_sampler

    policy.eval()
    res = evaluate_config(make_sampler(cfg.sampling.backend, policy, tokenizer, **sampler_options(cfg)), tokenizer,
                          task, cfg, progress=False)
    return {"accuracy": res.accuracy, "format_rate": res.format_rate, "majority_baseline": res.majority_baseline,
            "correct": correct_bits(res.records)}


def correct_bits(records: list[dict]) -> str:
    """'1'/'0' per held-out example, in example order: what `paired_test` compares."""
    return "".join("1" if r["correct"] else "0" for r in sorted(records, key=lambda r: r["index"]))


def fresh_policy(cfg):
    """(policy, tokenizer): the base model, prepared for SFT as the config says (full or LoRA)."""
    import dataclasses

    from rlvr.models import load_model, prepare_policy

    model, tok = load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype)
    model_cfg = cfg.model if cfg.sft.use_peft is None else dataclasses.replace(cfg.model, use_peft=bool(cfg.sft.use_peft))
    return prepare_policy(model, model_cfg), tok


def last_within(points: list[dict], budget_min: float) -> dict:
    """An arm's last evaluation within the budget: what a user gets without choosing a checkpoint on the test set."""
    return [p for p in points if p["train_min"] <= budget_min][-1]


def paired_test(a: str, b: str) -> dict:
    """Exact McNemar test of two evaluations of the same examples ('1'/'0' per example, same order):
    the examples only `a` gets right, only `b` gets right, and the two-sided binomial p-value of that
    split under "equally good" (both arms answer the same held-out questions, so their difference is
    judged on the questions where they disagree, not on two independent accuracies)."""
    from math import comb

    only_a = sum(x == "1" and y == "0" for x, y in zip(a, b))
    only_b = sum(x == "0" and y == "1" for x, y in zip(a, b))
    n, k = only_a + only_b, min(only_a, only_b)
    p = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {"only_sft": only_a, "only_grpo": only_b, "p_value": p}


def demonstrations(task, cfg, path: str | None, count: int) -> list:
    """`count` demonstrations in a seeded order: the task's own, a JSONL file's, or (`path` "answers")
    the training split's question/answer pairs with the self warm-up's short think part (the only
    demonstrations a task that has answers but no worked solutions, e.g. most of reasoning-gym, gives)."""
    import torch

    from rlvr import demos as demo_lib
    from rlvr.selftrain import few_shot_examples

    if path and path != "answers":
        return demo_lib.load_demos_jsonl(path)[:count]
    examples = task.train_examples()
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.run.seed)).tolist()
    chosen = [examples[i] for i in order[:count]]
    if path == "answers":
        return [demo_lib.Demo(e.question, completion, e.answer, dict(e.metadata), "answers")
                for e, completion in few_shot_examples(task, chosen, len(chosen), "answers")]
    found = demo_lib.procedural_demos(task, chosen)
    if not found:
        sys.exit(f"task {task.name} writes no demonstrations: pass --demos PATH.jsonl or --demos answers")
    return found


def sft_only(cfg, task, demos, args, log) -> list[dict]:
    """Arm (a): chunks of fresh demonstrations until the budget is spent."""
    from rlvr.sft import sft_train

    (policy, tok), clock = fresh_policy(cfg), Clock()
    points = [{"demos": 0, "train_min": 0.0, "cpu_min": 0.0, **evaluate(policy, tok, task, cfg)}]
    for start in range(0, len(demos), args.sft_chunk):
        if clock.wall >= args.budget_min * 60:
            break
        with clock:
            sft_train(policy, tok, task, demos[start:start + args.sft_chunk], cfg, run_dir=Path(args.work))
        points.append({"demos": min(len(demos), start + args.sft_chunk), "train_min": clock.wall / 60,
                       "cpu_min": clock.cpu / 60, **evaluate(policy, tok, task, cfg)})
        log("sft-only", points[-1])
    return points


def single_sft(cfg, task, demos, args, log) -> list[dict]:
    """Arm (c): for each N of --single-sft, the base model fine-tuned once on the first N demonstrations."""
    from rlvr.sft import sft_train

    points = []
    for n in args.single_sft:
        (policy, tok), clock = fresh_policy(cfg), Clock()
        with clock:
            sft_train(policy, tok, task, demos[:n], cfg, run_dir=Path(args.work))
        points.append({"demos": n, "train_min": clock.wall / 60, "cpu_min": clock.cpu / 60, **evaluate(policy, tok, task, cfg)})
        log("single-sft", points[-1])
    return points


def warmup_grpo(cfg, task, demos, args, log) -> list[dict]:
    """Arm (b): SFT on the first --warmup-demos demonstrations, then GRPO with evaluations."""
    import shutil

    from rlvr.models import merged_copy
    from rlvr.sft import sft_train
    from rlvr.tracking import read_jsonl
    from rlvr.trainer import train

    (policy, tok), clock = fresh_policy(cfg), Clock()
    with clock:
        sft_train(policy, tok, task, demos[:args.warmup_demos], cfg, run_dir=Path(args.work))
    points = [{"stage": "warm-up", "demos": args.warmup_demos, "train_min": clock.wall / 60, "cpu_min": clock.cpu / 60,
               **evaluate(policy, tok, task, cfg)}]
    log("warm-up", points[-1])
    grpo = copy.deepcopy(cfg)
    grpo.run.output_dir = str(Path(args.work) / "grpo")
    shutil.rmtree(grpo.run.output_dir, ignore_errors=True)
    grpo.eval.on_start, grpo.eval.every, grpo.run.doctor = False, args.grpo_eval_every, "off"
    t0, c0 = time.time(), time.process_time()
    train(grpo, model=merged_copy(policy), tokenizer=tok, task=task, write_report=False)
    evals = read_jsonl(Path(grpo.run.output_dir) / "eval.jsonl")
    spent = 0.0  # evaluation seconds so far, off the clock
    for row in evals:
        spent += row["seconds"]
        per_example = read_jsonl(Path(grpo.run.output_dir) / "eval" / f"step-{row['step']:06d}.jsonl")
        points.append({"stage": "grpo", "step": row["step"], "train_min": clock.wall / 60 + (row["time"] - t0 - spent) / 60,
                       "accuracy": row["accuracy"], "format_rate": row["format_rate"],
                       "majority_baseline": row.get("majority_baseline"),
                       "correct": correct_bits(per_example)})
        log("grpo", points[-1])
    points[-1]["cpu_min_total"] = clock.cpu / 60 + (time.process_time() - c0) / 60  # evaluations included
    return points


def evaluated_n(result: dict) -> int:
    """The held-out examples actually evaluated: --eval-n, or fewer when the task's test split is smaller."""
    correct = result["sft_only"][0].get("correct")
    return len(correct) if correct else result["eval_n"]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for arm, style in (("sft_only", "o-"), ("warmup_grpo", "s-"), ("sft_single", "^")):
        pts = result.get(arm) or []
        if not pts:
            continue
        ax.plot([p["train_min"] for p in pts], [100 * p["accuracy"] for p in pts], style,
                label={"sft_only": "SFT only (more demonstrations, in chunks)", "warmup_grpo": "warm-up, then GRPO",
                       "sft_single": "SFT only, one run of N demonstrations"}[arm])
    majority = result["sft_only"][0].get("majority_baseline")
    if majority:
        ax.axhline(100 * majority, color="grey", ls="--", lw=1, label="majority baseline")
    ax.axvline(result["budget_min"], color="black", ls=":", lw=1, label="budget")
    ax.set(xlabel="training minutes (evaluation excluded)", ylabel="held-out accuracy (%)",
           title=f"{result['task']}: equal compute, n={evaluated_n(result)} greedy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "main.yaml"))
    ap.add_argument("--task", default=None, help="task.name (default: the config's)")
    ap.add_argument("--model", default=None, help="model.name (default: the config's)")
    ap.add_argument("--budget-min", type=float, default=30.0, help="training minutes per arm")
    ap.add_argument("--sft-chunk", type=int, default=100, help="demonstrations per SFT-only chunk")
    ap.add_argument("--max-demos", type=int, default=5000, help="most demonstrations the SFT-only arm may use")
    ap.add_argument("--warmup-demos", type=int, default=None, help="warm-up demonstrations (default: sft.num_examples)")
    ap.add_argument("--grpo-eval-every", type=int, default=5)
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--demos", default=None, help="demonstrations JSONL, or 'answers': question/answer pairs "
                    "with a short think part (tasks that write no worked solutions)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--work", default=None, help="scratch directory (default runs/bench-compute-matched/<task>: "
                    "two tasks can run side by side)")
    ap.add_argument("--out", default=None, help="record path (default bench/results/compute_matched_<task>.json)")
    ap.add_argument("--single-sft", type=int, nargs="+", default=None, metavar="N",
                    help="add one-run SFT points (N demonstrations each) to the existing record --out")
    ap.add_argument("overrides", nargs="*", help="section.option=value")
    args = ap.parse_args()

    import torch

    from rlvr.config import load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    shortcuts = [f"{k}={v}" for k, v in (("task.name", args.task), ("model.name", args.model)) if v is not None]
    cfg = load_config(args.config, [*shortcuts, f"eval.n={args.eval_n}", "run.quiet=true", *args.overrides])
    args.warmup_demos = args.warmup_demos or cfg.sft.num_examples
    args.work = args.work or str(ROOT / "runs" / "bench-compute-matched" / cfg.task.name.replace(":", "_"))
    from rlvr.tasks import get_task

    task = get_task(cfg.task.name, **cfg.task.options)
    demos = demonstrations(task, cfg, args.demos, args.max_demos)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    log = lambda arm, p: print(f"[{arm}] " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"  # noqa: E731
                                                        for k, v in p.items() if k != "correct"), flush=True)
    out = Path(args.out or ROOT / "bench" / "results" / f"compute_matched_{cfg.task.name.replace(':', '_')}.json")
    if args.single_sft:
        result = json.loads(out.read_text())
        t0 = time.time()
        result["sft_single"] = single_sft(cfg, task, demos, args, log)
        result["sft_single_run"] = {"overrides": args.overrides, "wall_s": time.time() - t0, "machine": machine(),
                                    "date": time.strftime("%Y-%m-%d %H:%M")}
        grpo = last_within(result["warmup_grpo"], args.budget_min)
        for p in result["sft_single"]:
            p["vs_last_grpo_within_budget"] = paired_test(p["correct"], grpo["correct"])
            print(f"SFT once on {p['demos']} demonstrations: {p['accuracy']:.1%} in {p['train_min']:.1f} min; GRPO's last "
                  f"point within the budget {grpo['accuracy']:.1%}; McNemar p = {p['vs_last_grpo_within_budget']['p_value']:.3f}")
        out.write_text(json.dumps(result, indent=1, default=str))
        plot(result, out.with_suffix(".png"))
        return
    t0 = time.time()
    result = {"task": cfg.task.name, "task_options": cfg.task.options, "model": cfg.model.name, "eval_n": args.eval_n,
              "budget_min": args.budget_min, "sft_chunk": args.sft_chunk, "warmup_demos": args.warmup_demos,
              "overrides": args.overrides, "config": args.config, "machine_before": machine()}
    result["sft_only"] = sft_only(cfg, task, demos, args, log)
    result["warmup_grpo"] = warmup_grpo(cfg, task, demos, args, log)
    best = {arm: max((p["accuracy"] for p in result[arm] if p["train_min"] <= args.budget_min), default=None)
            for arm in ("sft_only", "warmup_grpo")}
    last = {arm: last_within(result[arm], args.budget_min) for arm in ("sft_only", "warmup_grpo")}  # question by question
    if all(p.get("correct") for p in last.values()):
        result["last_within_budget"] = {"sft_only": last["sft_only"]["accuracy"], "warmup_grpo": last["warmup_grpo"]["accuracy"],
                                        **paired_test(last["sft_only"]["correct"], last["warmup_grpo"]["correct"])}
    result.update(best_within_budget=best, wall_s=time.time() - t0, load_after=os.getloadavg(),
                  date=time.strftime("%Y-%m-%d %H:%M"),
                  grpo_wins=best["warmup_grpo"] is not None and best["sft_only"] is not None
                  and best["warmup_grpo"] > best["sft_only"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    plot(result, out.with_suffix(".png"))
    pct = lambda x: "-" if x is None else f"{x:.1%}"  # noqa: E731
    if "last_within_budget" in result:
        lw = result["last_within_budget"]
        print(f"last evaluation within the budget: SFT only {pct(lw['sft_only'])}, warm-up + GRPO {pct(lw['warmup_grpo'])}; "
              f"right only for SFT {lw['only_sft']}, only for GRPO {lw['only_grpo']}, McNemar p = {lw['p_value']:.3f}")
    print(f"best held-out accuracy within {args.budget_min:g} training minutes: SFT only {pct(best['sft_only'])}, "
          f"warm-up + GRPO {pct(best['warmup_grpo'])}; record {out}, plot {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
