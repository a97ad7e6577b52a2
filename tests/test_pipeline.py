"""`rlvr run` on a tiny model: base eval, SFT, GRPO, before/after table; resume skips finished stages."""

from __future__ import annotations

import json

from rlvr.config import load_config
from rlvr.pipeline import run_pipeline


def test_pipeline_stages_and_resume(tmp_path, smol_tokenizer):
    from rlvr.models import tiny_random_model

    model, tok = tiny_random_model(0, tokenizer=smol_tokenizer)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    cfg = load_config(None, [
        f"model.name={tmp_path / 'tiny'}", f"run.output_dir={tmp_path / 'run'}", "task.name=subtraction",
        "task.options={n: 100, high: 10}", "sft.num_examples=8", "sft.batch_size=4", "grpo.max_steps=1",
        "grpo.prompts_per_step=2", "grpo.num_generations=2", "sampling.max_completion_length=8", "eval.n=4",
        "run.quiet=true",
    ])
    rows = run_pipeline(cfg)
    assert [r["stage"] for r in rows] == ["base", "sft", "grpo"]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert [r["stage"] for r in summary["before_after"]] == ["base", "sft", "grpo"]
    assert (run / "sft" / "final" / "merged" / "config.json").exists()
    assert (run / "grpo" / "final" / "merged" / "config.json").exists()
    assert (run / "report.html").exists()
    sft_mtime = (run / "sft" / "final" / "merged" / "model.safetensors").stat().st_mtime
    # resume: nothing left to do for base and SFT; GRPO is already at max_steps
    rows_again = run_pipeline(cfg, resume=True)
    assert [r["stage"] for r in rows_again] == ["base", "sft", "grpo"]
    assert (run / "sft" / "final" / "merged" / "model.safetensors").stat().st_mtime == sft_mtime


def test_stage_rows_keep_a_tool_tasks_episode_numbers():
    """The base row of a multi-turn task keeps tool calls, errors and cut episodes, as the SFT and GRPO
    rows do (base_summary.json used to drop them)."""
    from rlvr.pipeline import _row

    row = _row("base", {"accuracy": 0.5, "n": 4, "tool_calls": 1.25, "tool_errors": 0.25, "limit_frac": 0.5,
                        "records": "not kept"})
    assert row == {"stage": "base", "accuracy": 0.5, "n": 4, "tool_calls": 1.25, "tool_errors": 0.25,
                   "limit_frac": 0.5}
