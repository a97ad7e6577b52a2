"""`rlvr sft` on a tiny model: the completion-only loss falls, evaluation before and after, and the output
is a model that `rlvr train` starts from."""

from __future__ import annotations

import json

from rlvr.config import load_config
from rlvr.sft import run_sft


def test_sft_learns_its_demonstrations_and_evaluates_before_and_after(tmp_path, tiny_dir):
    cfg = load_config(None, [
        f"model.name={tiny_dir}", "model.use_peft=false", "task.name=subtraction", "task.options={n: 100, high: 10}",
        f"run.output_dir={tmp_path / 'sft'}", "sft.num_examples=8", "sft.batch_size=4", "sft.epochs=6",
        "sft.learning_rate=3e-3", "sft.warmup_ratio=0", "eval.n=4", "eval.max_new_tokens=8", "run.quiet=true",
    ])
    result, _ = run_sft(cfg)
    assert result.steps == 12 and result.num_demos == 8
    # from chance (ln 49152 = 10.8 nats per token) down: measured 10.8 -> 8.5 over the 12 steps
    assert result.losses[0] > 10 and sum(result.losses[-2:]) / 2 < 0.85 * sum(result.losses[:2]) / 2, result.losses
    summary = json.loads((tmp_path / "sft" / "sft_summary.json").read_text())
    assert [r["stage"] for r in summary["before_after"]] == ["before", "after"]
    assert all(r["n"] == 4 for r in summary["before_after"])
    assert len((tmp_path / "sft" / "eval" / "after.jsonl").read_text().splitlines()) == 4

    # the run directory is a model spec: GRPO starts from the SFT output
    from rlvr.trainer import train

    grpo = load_config(None, [
        f"model.name={tmp_path / 'sft'}", "task.name=subtraction", "task.options={n: 100, high: 10}",
        f"run.output_dir={tmp_path / 'grpo'}", "grpo.max_steps=1", "grpo.prompts_per_step=2", "grpo.num_generations=2",
        "sampling.max_completion_length=6", "eval.n=0", "run.quiet=true", "run.doctor=off",
    ])
    assert train(grpo).steps == 1


def test_sft_use_peft_overrides_the_model_setting(tmp_path, tiny_dir):
    """sft.use_peft=false: the warm-up fine-tunes every weight while GRPO (model.use_peft) keeps LoRA."""
    cfg = load_config(None, [
        f"model.name={tiny_dir}", "model.use_peft=true", "sft.use_peft=false", "task.name=subtraction",
        "task.options={n: 100, high: 10}", f"run.output_dir={tmp_path / 'sft'}", "sft.num_examples=4",
        "sft.batch_size=4", "eval.n=0", "run.quiet=true",
    ])
    _, policy = run_sft(cfg)
    assert getattr(policy, "peft_config", None) is None
    assert all(p.requires_grad for p in policy.parameters())
    lora = load_config(None, [*[f"{k}={v}" for k, v in (("model.name", tiny_dir), ("task.name", "subtraction"))],
                              "task.options={n: 100, high: 10}", f"run.output_dir={tmp_path / 'sft2'}",
                              "sft.num_examples=4", "sft.batch_size=4", "eval.n=0", "run.quiet=true"])
    _, policy = run_sft(lora)  # null: follows model.use_peft (true by default)
    assert getattr(policy, "peft_config", None) is not None
