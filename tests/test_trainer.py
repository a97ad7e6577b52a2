"""The GRPO trainer end to end on tiny models: it learns, it resumes exactly, it saves usable models."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ROOT, DigitTask, char_model
from rlvr.config import load_config
from rlvr.trainer import TrainingDiverged, train


def digit_config(tmp_path, *overrides):
    return load_config(None, [
        f"run.output_dir={tmp_path / 'run'}", "model.use_peft=false", "task.system_prompt=",
        f"task.rewards={{{ROOT / 'tests' / 'toy_rewards.py'}:digit_reward: 1.0}}",
        "sampling.max_completion_length=8", "sampling.stop_at_answer=false", "sampling.temperature=1.0",
        "grpo.prompts_per_step=4", "grpo.num_generations=8", "grpo.learning_rate=0.01",
        "grpo.per_device_train_batch_size=32", "grpo.max_steps=25", "eval.on_start=false", "eval.n=0",
        "run.save_steps=0", "run.quiet=true", "run.log_samples_every=0", *overrides,
    ])


def rewards_of(run_dir):
    return [json.loads(line)["reward/digit_reward/mean"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss_type", ["grpo", "cispo", "sapo"])
def test_grpo_learns_toy_digit_task(tmp_path, loss_type):
    """A random model rarely says '7' (about 1 character in 70); GRPO makes it say little else, with
    PPO's clipped surrogate, CISPO's clipped-weight REINFORCE and SAPO's soft gate alike."""
    model, tok = char_model(seed=0)
    cfg = digit_config(tmp_path, f"grpo.loss_type={loss_type}")
    train(cfg, model=model, tokenizer=tok, task=DigitTask("7"))
    rewards = rewards_of(tmp_path / "run")
    assert len(rewards) == 25
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert first < 0.1, rewards
    assert last > 0.6, rewards


def test_lora_smoke_parameters_change_and_model_saved(tmp_path, tiny_smol):
    """Two LoRA steps on the real tokenizer: finite loss, adapter weights changed, HF-loadable output."""
    from transformers import AutoModelForCausalLM

    model, tok = tiny_smol
    cfg = load_config(None, [
        f"run.output_dir={tmp_path / 'run'}", "task.name=subtraction", "task.options={n: 200, high: 10}",
        "sampling.max_completion_length=12", "grpo.prompts_per_step=2", "grpo.num_generations=4",
        "grpo.max_steps=2", "grpo.learning_rate=0.05", "eval.n=4", "run.quiet=true", "model.lora_r=4",
        f"task.rewards={{accuracy: 0.5, format: 0.5, {ROOT / 'tests' / 'toy_rewards.py'}:variety_reward: 1.0}}", "grpo.beta=0.04", "grpo.num_iterations=2",
    ])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(cfg, model=model, tokenizer=tok)
    run = tmp_path / "run"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(torch.isfinite(torch.tensor(m["loss/policy"])) for m in metrics)
    # The LoRA B matrices start at zero; after training some are not.
    from safetensors.torch import load_file

    adapter = load_file(str(run / "final" / "adapter" / "adapter_model.safetensors"))
    assert any(("lora_B" in k) and v.abs().sum() > 0 for k, v in adapter.items())
    merged = AutoModelForCausalLM.from_pretrained(run / "final" / "merged")
    changed = [n for n, p in merged.named_parameters() if n in before and not torch.equal(before[n], p)]
    assert changed, "merged weights should differ from the base model"
    summary = json.loads((run / "summary.json").read_text())
    assert [r["stage"] for r in summary["before_after"]] == ["before", "after"]


def test_resume_reaches_the_same_state(tmp_path):
    """4 steps straight == 2 steps, stop, resume for 2 more (weights, optimizer, RNG all restored)."""
    def run(out, steps, resume=False, seed_model=True):
        model, tok = char_model(seed=0)
        cfg = digit_config(tmp_path, f"run.output_dir={out}", f"grpo.max_steps={steps}", "run.save_steps=2",
                           "grpo.num_iterations=2")
        return train(cfg, model=model, tokenizer=tok, task=DigitTask("7"), resume=resume)

    run(tmp_path / "straight", 4)
    run(tmp_path / "split", 2)
    run(tmp_path / "split", 4, resume=True)
    a = rewards_of(tmp_path / "straight")
    b = rewards_of(tmp_path / "split")
    assert len(b) == 4
    assert a == pytest.approx(b, abs=1e-6)
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "straight" / "final" / "merged" / "model.safetensors"))
    wb = load_file(str(tmp_path / "split" / "final" / "merged" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)


def test_nan_loss_stops_the_run_and_keeps_the_checkpoint(tmp_path):
    model, tok = char_model(seed=0)
    cfg = digit_config(tmp_path, "grpo.max_steps=6", "run.save_steps=1", "run.max_bad_steps=2")
    state = {"step": 0}
    original = torch.nn.utils.clip_grad_norm_

    def poisoned(params, max_norm, *a, **k):
        state["step"] += 1
        if state["step"] > 2:  # from the third update on, gradients are NaN
            for p in params:
                p.grad.fill_(float("nan"))
        return original(params, max_norm, *a, **k)

    torch.nn.utils.clip_grad_norm_ = poisoned
    try:
        with pytest.raises(TrainingDiverged, match="NaN/inf"):
            train(cfg, model=model, tokenizer=tok, task=DigitTask("7"))
    finally:
        torch.nn.utils.clip_grad_norm_ = original
    from rlvr.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt is not None and json.loads((ckpt / "state.json").read_text())["step"] >= 2


def test_existing_run_directory_needs_resume(tmp_path):
    model, tok = char_model(seed=0)
    cfg = digit_config(tmp_path, "grpo.max_steps=1")
    train(cfg, model=model, tokenizer=tok, task=DigitTask("7"))
    from rlvr.config import ConfigError

    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, model=model, tokenizer=tok, task=DigitTask("7"))


def test_adaptive_difficulty_runs_and_resumes(tmp_path, tiny_smol):
    """curriculum.enabled: training problems come from the curriculum; its level is logged and checkpointed."""
    model, tok = tiny_smol
    cfg = load_config(None, [
        f"run.output_dir={tmp_path / 'run'}", "task.name=subtraction", "task.options={n: 100, high: 100}",
        "curriculum.enabled=true", "curriculum.window=2", "sampling.max_completion_length=6",
        "grpo.prompts_per_step=2", "grpo.num_generations=2", "grpo.max_steps=2", "eval.n=0", "run.quiet=true",
        "run.save_steps=1",
    ])
    train(cfg, model=model, tokenizer=tok)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("curriculum/level" in m for m in metrics)
    # nobody solves anything, so the level falls to the floor (subtraction level 1: numbers 0-9)
    assert metrics[-1]["curriculum/level"] <= metrics[0]["curriculum/level"]
    from rlvr.checkpoint import latest_checkpoint

    state = json.loads((latest_checkpoint(tmp_path / "run") / "state.json").read_text())
    assert state["curriculum"] is not None


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_skipping_zero_advantage_rows_gives_the_same_step(loss_type):
    """Flat groups (advantage 0) are left out of the forward/backward but still normalise the loss:
    the weights after two steps equal those of the update that computes every row."""
    import copy
    import dataclasses

    from rlvr.buffer import Buffer, Rollout
    from rlvr.config import GRPOConfig
    from rlvr.update import update_policy

    model, tok = char_model(seed=1)
    g = torch.Generator().manual_seed(0)
    advantages = [0.0] * 4 + [1.2, -0.4, -0.4, -0.4] + [0.0] * 4 + [0.5, -0.5, 0.5, -0.5]  # groups 0 and 2 flat
    rollouts = [Rollout(prompt_ids=[5 + i // 4, 6, 7], completion_ids=torch.randint(3, 50, (3 + i % 3,), generator=g).tolist(),
                        old_logprobs=[0.0] * 5, advantage=a, truncated=False, group=i // 4)
                for i, a in enumerate(advantages)]
    cfg = dataclasses.replace(GRPOConfig(), loss_type=loss_type, per_device_train_batch_size=3, num_iterations=2,
                              max_grad_norm=1e9)
    results = []
    for skip in (False, True):
        policy = copy.deepcopy(model)
        # plain SGD, no clipping: a wrongly scaled gradient shows (AdamW would normalise it away)
        optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
        metrics = update_policy(policy, optimizer, scheduler, Buffer(list(rollouts)), cfg, temperature=1.0,
                                max_completion_length=8, pad_token_id=tok.pad_token_id,
                                generator=torch.Generator().manual_seed(3), skip_zero_advantage=skip)
        results.append((policy, metrics))
    (full, m_full), (lean, m_lean) = results
    assert m_lean["update/skipped_frac"] == 0.5 and "update/skipped_frac" not in m_full
    changed = 0
    for a, b, before in zip(full.parameters(), lean.parameters(), model.parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
        changed += int(not torch.equal(a, before))
    assert changed > 0


def test_all_groups_flat_skips_the_whole_update(tmp_path):
    """A reward that never differs: every row is skipped, the step still runs (zero gradients) and
    the weights move only by what AdamW does with a zero gradient (nothing, from a fresh state)."""
    model, tok = char_model(seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = digit_config(tmp_path, f"task.rewards={{{ROOT / 'tests' / 'toy_rewards.py'}:constant_reward: 1.0}}",
                       "grpo.max_steps=2")
    train(cfg, model=model, tokenizer=tok, task=DigitTask("7"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["update/skipped_frac"] for r in rows] == [1.0, 1.0]
    assert all(r["signal/zero_std_groups"] == 1.0 for r in rows)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_the_update_learns_only_from_tokens_the_loss_mask_keeps(loss_type):
    """A token with loss_mask 0 (say, a tool's output) has no say in the step: two rollouts that differ
    only in a masked last token give the same weights; unmasked, they do not."""
    import copy

    from rlvr.buffer import Buffer, Rollout, collate
    from rlvr.config import GRPOConfig
    from rlvr.update import update_policy

    model, tok = char_model(seed=2)

    def step(last_token: int, mask: list[float]):
        policy = copy.deepcopy(model)
        rollouts = [Rollout(prompt_ids=[5, 6], completion_ids=[10, 11, last_token], old_logprobs=[0.0] * 3,
                            advantage=a, truncated=False, group=0, loss_mask=mask) for a in (1.0, -1.0)]
        rollouts[1].completion_ids = [12, 13, last_token]
        assert collate(rollouts, tok.pad_token_id).completion_mask.tolist() == [mask, mask]
        optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
        cfg = GRPOConfig(loss_type=loss_type, max_grad_norm=1e9)
        update_policy(policy, optimizer, scheduler, Buffer(rollouts), cfg, temperature=1.0, max_completion_length=3,
                      pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0))
        return list(policy.parameters())

    same = zip(step(20, [1.0, 1.0, 0.0]), step(30, [1.0, 1.0, 0.0]))
    assert all(torch.equal(a, b) for a, b in same)
    differ = zip(step(20, [1.0, 1.0, 1.0]), step(30, [1.0, 1.0, 1.0]))
    assert not all(torch.equal(a, b) for a, b in differ)
