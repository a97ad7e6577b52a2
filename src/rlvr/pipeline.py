"""`rlvr run`: evaluate the base model, SFT warm-up, GRPO, with a before/after table at the end.

All stages live in one run directory and each is resumable:

    RUN/eval/     held-out evaluation of the base model (base.jsonl per example, base_summary.json)
    RUN/sft/      the SFT warm-up (final/merged is the model GRPO starts from)
    RUN/grpo/     the GRPO run (its start-of-run evaluation is the "after SFT" row)
    RUN/summary.json, RUN/report.html

`rlvr run --resume` skips finished stages and resumes GRPO from its latest checkpoint. Every
evaluation uses the same first `eval.n` test examples, greedy, so the three rows compare.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from rlvr.config import Config
from rlvr.evaluate import format_table, verdict


FINISHED = {"eval": "eval/base_summary.json", "sft": "sft/final/merged/config.json"}
"""stage -> the file a finished stage leaves in the run directory (what `--resume` skips on)"""


def finished(run_dir: Path, stage: str) -> bool:
    """Whether `stage` (eval: the base model's evaluation, sft: the warm-up) finished in `run_dir`."""
    return (Path(run_dir) / FINISHED[stage]).exists()


def _stage_config(cfg: Config, run_dir: Path, name: str) -> Config:
    sub = copy.deepcopy(cfg)
    sub.run.output_dir = str(run_dir / name)
    return sub


def _row(stage: str, record: dict) -> dict:
    keys = ("accuracy", "pass_at_k", "maj_at_k", "format_rate", "mean_length", "truncated_frac", "n", "seconds",
            "majority_baseline", "majority_answer", "chance_baseline",
            "tool_calls", "tool_errors", "limit_frac")  # the last three: a multi-turn task's episodes
    return {"stage": stage, **{k: record[k] for k in keys if k in record}}


def run_pipeline(cfg: Config, *, resume: bool = False) -> list[dict]:
    """Run the stages in order and return the before/after rows (base, sft, grpo)."""
    from rlvr.evaluate import evaluate_config
    from rlvr.models import load_model, merged_copy
    from rlvr.sft import run_sft
    from rlvr.tasks import get_task
    from rlvr.runs import peak_rss_gb, write_report_safely
    from rlvr.sampling import make_sampler
    from rlvr.config import sampler_options
    from rlvr.trainer import train

    t0 = time.time()
    cfg.finalize()  # a Config() built in Python is checked and derived here (idempotent)
    run_dir = Path(cfg.run.output_dir)
    if run_dir.exists() and (run_dir / "summary.json").exists() and not resume:
        from rlvr.config import ConfigError

        raise ConfigError(f"run directory {run_dir} already holds a finished run; choose another run.output_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    task = get_task(cfg.task.name, **cfg.task.options)
    model, tokenizer = load_model(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype,
                                      load_in_4bit=cfg.model.load_in_4bit)
    rows: list[dict] = []

    # 1. The base model, on the held-out examples.
    base_summary = run_dir / FINISHED["eval"]
    if resume and finished(run_dir, "eval"):
        rows.append(json.loads(base_summary.read_text()))
    else:
        result = evaluate_config(make_sampler(cfg.sampling.backend, model, tokenizer, **sampler_options(cfg)), tokenizer, task, cfg,
                                 progress=not cfg.run.quiet, out_path=run_dir / "eval" / "base.jsonl")
        rows.append(_row("base", result.summary()))
        base_summary.write_text(json.dumps(rows[-1], indent=1))
        if not cfg.run.quiet:
            print(f"base model: accuracy {result.accuracy:.1%}, format {result.format_rate:.1%}")

    # 2. The SFT warm-up (skipped when disabled or already done).
    sft_dir = run_dir / "sft"
    if cfg.sft.enabled:
        if resume and finished(run_dir, "sft"):
            model, tokenizer = load_model(str(sft_dir / "final" / "merged"), device=cfg.model.device,
                                          dtype=cfg.model.dtype)
        else:
            sft_cfg = _stage_config(cfg, run_dir, "sft")
            sft_cfg.eval.n = 0  # evaluated here: base before, GRPO's first evaluation after
            _, policy = run_sft(sft_cfg, model=model, tokenizer=tokenizer, task=task, resume=resume)
            model = merged_copy(policy)

    # 3. GRPO from the warmed-up model; its first evaluation is the after-SFT row.
    grpo_cfg = _stage_config(cfg, run_dir, "grpo")
    grpo_cfg.eval.on_start = True
    result = train(grpo_cfg, resume=resume, model=model, tokenizer=tokenizer, task=task, write_report=False)
    evals = {r["stage"]: r for r in result.eval_rows}
    if "before" in evals and cfg.sft.enabled:
        rows.append(_row("sft", evals["before"]))
    if "after" in evals:
        rows.append(_row("grpo", evals["after"]))
    summary = {"model": cfg.model.name, "task": cfg.task.name, "before_after": rows,
               "wall_time_s": time.time() - t0, "peak_rss_gb": peak_rss_gb(), "control": cfg.run.control}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    write_report_safely(run_dir)
    if not cfg.run.quiet:
        print(format_table(rows))
        print(verdict(rows))
        print(f"wall time {summary['wall_time_s'] / 60:.1f} min, peak memory {summary['peak_rss_gb']:.2f} GB; "
              f"report: {run_dir / 'report.html'}")
    return rows
