"""Smoke test of bench/bench_trl.py (rlvr against TRL's GRPOTrainer) on a tiny random model.

TRL is a benchmark dependency (`pip install -e .[bench]`), never a runtime one: without it these
tests are skipped. No timings are asserted, only that both sides train on the same settings and
prompts and that the script reports what it promises.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest

from conftest import ROOT

pytest.importorskip("trl", reason="TRL is not installed (a benchmark extra: pip install -e .[bench])")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_trl", ROOT / "bench" / "bench_trl.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_trl"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def tiny(bench, **kw):
    return bench.Settings(**{"steps": 1, "prompts": 2, "generations": 2, "max_completion": 16, "threads": 1,
                             "tiny": True, **kw})


def test_trl_and_rlvr_configs_describe_the_same_step(bench, tmp_path):
    """B=4, G=4, micro-batch 8: both sides take one optimizer step of 16 completions per generation."""
    from trl import GRPOConfig

    from rlvr.config import load_config

    s = bench.Settings(prompts=4, generations=4, micro_batch=8, max_completion=24, learning_rate=3e-5)
    trl = GRPOConfig(**bench.trl_arguments(s, tmp_path / "trl"))
    cfg = load_config(None, bench.rlvr_overrides(s, tmp_path / "rlvr"))
    assert trl.generation_batch_size == 16 and trl.steps_per_generation == 2  # 2 micro-batches of 8
    assert trl.per_device_train_batch_size * trl.gradient_accumulation_steps == 16
    assert cfg.grpo.prompts_per_step * cfg.grpo.num_generations == 16
    assert cfg.grpo.per_device_train_batch_size == trl.per_device_train_batch_size == 8
    assert cfg.grpo.steps_per_generation == 1 and cfg.grpo.num_iterations == trl.num_iterations == 1
    assert cfg.grpo.num_generations == trl.num_generations == 4
    assert cfg.sampling.max_completion_length == trl.max_completion_length == 24
    assert cfg.sampling.temperature == trl.temperature and not cfg.sampling.stop_at_answer
    assert cfg.grpo.learning_rate == trl.learning_rate == 3e-5
    assert (cfg.grpo.adam_beta1, cfg.grpo.adam_beta2) == (trl.adam_beta1, trl.adam_beta2)
    assert cfg.grpo.loss_type == trl.loss_type == "grpo" and cfg.grpo.beta == trl.beta == 0.0
    assert cfg.grpo.epsilon == trl.epsilon and cfg.grpo.scale_rewards == trl.scale_rewards == "group"
    assert cfg.model.gradient_checkpointing is trl.gradient_checkpointing is False
    assert not trl.bf16 and not trl.use_vllm and trl.lr_scheduler_type == "constant"
    lora = bench.trl_lora(s)
    assert (lora.r, lora.lora_alpha, lora.target_modules) == (cfg.model.lora_r, cfg.model.lora_alpha, "all-linear")
    assert trl.reward_weights == list(cfg.task.rewards.values()) == [0.85, 0.15]


def test_rlvr_trains_on_the_prompts_given_to_trl(bench, tmp_path):
    """rlvr's first step samples bench_rows' first B prompts (its samples.jsonl shows which)."""
    s = tiny(bench)
    result = bench.run_rlvr(s, tmp_path, extra_overrides=("run.log_samples_every=1",))
    samples = [json.loads(line) for line in (tmp_path / "rlvr-run" / "samples.jsonl").read_text().splitlines()]
    model, tok = bench.policy_model(s)
    rows = bench.bench_rows(s, tok)
    # 4 completions logged = 2 prompts x G=2, grouped by prompt
    assert [x["prompt"] for x in samples] == [rows[0]["question"]] * 2 + [rows[1]["question"]] * 2
    assert rows[0]["prompt"].startswith("<|im_start|>system") and rows[0]["prompt"].endswith("assistant\n")
    assert len(result["step_s"]) == 1 and result["lora_params"] > 0


def test_script_runs_both_sides_and_reports_ratios(bench, tmp_path, capsys):
    """The whole script, tiny: a subprocess per side, one step each, a table and a JSON record."""
    import torch

    out = tmp_path / "result.json"
    threads = torch.get_num_threads()
    bench.main(["--tiny", "--steps", "1", "--prompts", "2", "--generations", "2", "--max-completion", "16",
                "--threads", "1", "--out", str(out)])
    torch.set_num_threads(threads)  # main() set this process's threads for the matmul ceiling
    printed = capsys.readouterr().out
    assert "TRL/rlvr" in printed and "of the ceiling" in printed
    record = json.loads(out.read_text())
    rlvr, trl = record["runs"]["rlvr"][0], record["runs"]["trl"][0]
    assert len(rlvr["step_s"]) == len(trl["step_s"]) == 1
    assert rlvr["lora_params"] == trl["lora_params"] > 0  # the same adapter on both sides
    assert trl["eos_token_ids"] == [2]  # <|im_end|>, rlvr's only stop id for this tokenizer
    for side in (rlvr, trl):
        assert 0 < side["completion_tokens"][0] <= 2 * 2 * 16
        assert side["rss_process_gb"] >= side["rss_step_gb"][-1] > 0
    assert record["machine"]["trl"] and record["ceiling_gflops"] > 0
    for value in record["ratios_trl_over_rlvr"].values():
        assert math.isfinite(value) and value > 0
    fractions = record["rlvr_vs_ceiling"]
    assert 0 < fractions["rollout_frac"] and 0 < fractions["update_frac"]
