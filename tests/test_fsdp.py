"""FSDP2 on 2 CPU processes (gloo): sharded training gives the same weights as 1 process, and resumes.

Real runs in subprocesses, as a user starts them: `accelerate launch --config_file
configs/accelerate/fsdp.yaml --num_processes 2 -m rlvr train` on the tiny random character-level
Llama of test_distributed.py and its toy digit task. Every process runs one thread.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT
from rlvr.config import load_config
from rlvr.distributed import Dist, DistributedError, _configure_fsdp, _state_by_index, _state_by_name
from rlvr.trainer import train
from test_distributed import Launch, char_dir, free_port, metrics, overrides, weights  # noqa: F401 - char_dir is a fixture

# the worker processes import this checkout's rlvr, whatever is installed
ENV = {"PYTHONPATH": str(ROOT / "src")}


def fsdp_launch(args: list[str], tmp_path: Path, name: str) -> Launch:
    log_dir = tmp_path / f"{name}-logs"
    log_dir.mkdir()
    return Launch([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "2",
                   "--main_process_port", str(free_port()), "-m", "rlvr", "train", *args], log_dir, env=ENV)


def run_fsdp(args: list[str], tmp_path: Path, name: str, timeout: float = 120) -> None:
    with fsdp_launch(args, tmp_path, name) as run:
        assert run.wait(timeout=timeout) == 0, run.stderr()[-3000:]


def max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def checkpoint_diffs(one: Path, two: Path) -> tuple[float, float]:
    """Max differences of two checkpoints' trainable weights and Adam state (same layout asserted)."""
    from rlvr.checkpoint import read_checkpoint

    c1, c2 = read_checkpoint(one), read_checkpoint(two)
    w_diff = max_diff(c1["trainable"], c2["trainable"])
    o1, o2 = c1["optimizer"], c2["optimizer"]
    assert o1["param_groups"] == o2["param_groups"]
    assert o1["state"].keys() == o2["state"].keys() and len(o1["state"]) > 0
    o_diff = max(float((o1["state"][i][k] - o2["state"][i][k]).abs().max())
                 for i in o1["state"] for k in ("exp_avg", "exp_avg_sq", "step"))
    return w_diff, o_diff


def test_optimizer_state_by_name_and_back():
    """The one-process optimizer layout (indices) <-> torch.distributed.checkpoint's (names)."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    opt = torch.optim.AdamW([{"params": [model[0].weight, model[1].weight]}, {"params": [model[0].bias], "lr": 0.1}])
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    state = opt.state_dict()
    names = [["0.weight", "1.weight"], ["0.bias"]]
    by_name = _state_by_name(state, names)
    assert list(by_name["state"]) == ["0.weight", "1.weight", "0.bias"]
    assert by_name["param_groups"][1]["params"] == ["0.bias"] and by_name["param_groups"][1]["lr"] == 0.1
    back = _state_by_index(by_name)
    assert back["param_groups"] == state["param_groups"]
    assert back["state"].keys() == state["state"].keys()
    assert all(back["state"][i]["exp_avg"] is state["state"][i]["exp_avg"] for i in state["state"])


@pytest.mark.parametrize("env, mixed, refused", [
    ({"FSDP_VERSION": "1"}, "no", "fsdp_version 1"),
    ({"FSDP_VERSION": "2", "FSDP_OFFLOAD_PARAMS": "true"}, "no", "fsdp_offload_params"),
    ({"FSDP_VERSION": "2", "FSDP_ACTIVATION_CHECKPOINTING": "true"}, "no", "model.gradient_checkpointing"),
    ({"FSDP_VERSION": "2"}, "bf16", "mixed_precision bf16"),
])
def test_fsdp_options_rlvr_cannot_honour_are_refused(monkeypatch, env, mixed, refused):
    """What `accelerate launch` exports from an FSDP config; on CPU accelerate holds no FSDP plugin."""
    for key, value in {"ACCELERATE_USE_FSDP": "true", **env}.items():
        monkeypatch.setenv(key, value)
    accelerator = SimpleNamespace(state=SimpleNamespace(), mixed_precision=mixed)
    with pytest.raises(DistributedError, match=refused):
        _configure_fsdp(Dist(), accelerator)
    monkeypatch.setenv("FSDP_VERSION", "2")
    for key in ("FSDP_OFFLOAD_PARAMS", "FSDP_ACTIVATION_CHECKPOINTING"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")  # accelerate launch's default
    dist = Dist()
    _configure_fsdp(dist, SimpleNamespace(state=SimpleNamespace(), mixed_precision="no"))
    assert dist.fsdp and not dist.reshard_after_forward
    assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"  # every process loads the full model


@pytest.mark.timeout(120)
def test_deepspeed_is_refused_at_start(tmp_path, char_dir):  # noqa: F811
    """On CPU accelerate ignores a DeepSpeed config (as it does FSDP): rlvr stops with a clear message."""
    args = overrides(char_dir, tmp_path / "run", "grpo.max_steps=1")
    with Launch([sys.executable, "-m", "rlvr", "train", "--num-processes", "2", *args], tmp_path,
                env={**ENV, "ACCELERATE_USE_DEEPSPEED": "true"}) as run:
        assert run.wait(timeout=100) != 0
    assert "accelerate is configured for DEEPSPEED, which rlvr does not support" in run.stderr()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("setup", [
    # DAPO, full fine-tuning: 3 prompts split 2 + 1, two optimizer steps per batch, micro-batches of 4
    # (so the processes have different numbers of them: the short one adds zero passes), batch-std advantages
    ["grpo.loss_type=dapo", "grpo.prompts_per_step=3", "grpo.steps_per_generation=2",
     "grpo.per_device_train_batch_size=4", "grpo.scale_rewards=batch"],
    # GRPO with LoRA, a KL term against the adapter-free model (a sharded forward too), two passes
    ["grpo.loss_type=grpo", "grpo.prompts_per_step=3", "model.use_peft=true", "model.lora_r=4",
     "grpo.learning_rate=0.005", "grpo.beta=0.04", "grpo.num_iterations=2", "grpo.per_device_train_batch_size=4"],
    # full fine-tuning with a KL term (against a frozen copy, not sharded), transformers' generate (which
    # decodes in lockstep under FSDP unless told not to) for sampling and the main process's evaluation,
    # and layer checkpointing (forwards recomputed in the backward pass)
    ["grpo.loss_type=grpo", "grpo.prompts_per_step=3", "grpo.per_device_train_batch_size=4", "grpo.beta=0.04",
     "sampling.backend=hf", "model.gradient_checkpointing=true"],
], ids=["dapo-full", "grpo-lora-kl", "full-kl-hf-sampler-checkpointing"])
def test_fsdp_trains_the_same_weights_as_one_process(tmp_path, char_dir, setup):  # noqa: F811
    """3 steps on 2 FSDP processes == 3 steps on one process, to 1e-5 in every weight."""
    from transformers import AutoModelForCausalLM

    steps = [*setup, "grpo.max_steps=3", "run.save_steps=3", "eval.n=4"]
    run_fsdp(overrides(char_dir, tmp_path / "two", *steps), tmp_path, "two")
    train(load_config(None, overrides(char_dir, tmp_path / "one", *steps)))
    one, two = weights(tmp_path / "one" / "final" / "merged"), weights(tmp_path / "two" / "final" / "merged")
    start = weights(char_dir)
    diff = max_diff(one, two)
    moved = max(float((one[k] - start[k]).abs().max()) for k in start)
    ckpt_w, ckpt_adam = checkpoint_diffs(*(tmp_path / run / "checkpoints" / "step-000003" for run in ("one", "two")))
    print(f"max |w_1proc - w_fsdp| = {diff:.2e}; max |w - w_start| = {moved:.2e}; "
          f"checkpoint: trainable {ckpt_w:.2e}, Adam state {ckpt_adam:.2e}")
    assert moved > 1e-3  # training did change the weights
    assert diff < 1e-5
    assert ckpt_w < 1e-5 and ckpt_adam < 1e-5  # the LoRA tensors, or all weights, gathered from the shards
    m1, m2 = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["step"] for m in m2] == [1, 2, 3]
    # sharded: outside generation each process held half of the weights (hence of gradients and Adam state)
    assert [m["fsdp/local_param_frac"] for m in m2] == pytest.approx([0.5] * 3, abs=0.02)
    assert "fsdp/local_param_frac" not in m1[0]
    for key in ("reward/digit_reward/mean", "completion/length_mean", "optim/grad_norm", "train/groups"):
        assert [m[key] for m in m2] == pytest.approx([m[key] for m in m1], rel=1e-4, abs=1e-6), key
    # the main process evaluated on gathered weights: the same completions as one process
    evals = [[json.loads(line) for line in (tmp_path / run / "eval" / "step-000003.jsonl").read_text().splitlines()]
             for run in ("one", "two")]
    assert len(evals[1]) == 4 and [e["completion"] for e in evals[1]] == [e["completion"] for e in evals[0]]
    # the final model is a plain Hugging Face model
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "final" / "merged")
    assert float((model.lm_head.weight - two["model.embed_tokens.weight"]).abs().max()) == 0.0
    if "model.use_peft=true" in setup:
        assert (tmp_path / "two" / "final" / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.timeout(180)
def test_an_fsdp_checkpoint_holds_the_full_state_and_resumes(tmp_path, char_dir):  # noqa: F811
    """2 FSDP steps, then resumed on FSDP to step 4 == 4 steps on one process; the FSDP checkpoint
    holds the same full weights and Adam state as the one-process checkpoint of step 2."""
    common = ["grpo.loss_type=dapo", "grpo.prompts_per_step=3", "grpo.per_device_train_batch_size=4",
              "grpo.lr_scheduler_type=constant", "grpo.warmup_ratio=0",  # the same schedule when stopped at 2
              "run.save_steps=1", "run.keep_checkpoints=5"]
    args = overrides(char_dir, tmp_path / "two", *common, "grpo.max_steps=4")
    run_fsdp([*args, "grpo.max_steps=2"], tmp_path, "first")
    ckpt_two = tmp_path / "two" / "checkpoints" / "step-000002"
    run_fsdp([*args, "--resume"], tmp_path, "resumed")
    train(load_config(None, overrides(char_dir, tmp_path / "one", *common, "grpo.max_steps=4")))
    w_diff, o_diff = checkpoint_diffs(tmp_path / "one" / "checkpoints" / "step-000002", ckpt_two)
    final_diff = max_diff(weights(tmp_path / "one" / "final" / "merged"), weights(tmp_path / "two" / "final" / "merged"))
    print(f"checkpoint: weights {w_diff:.2e}, Adam state {o_diff:.2e}; after resuming: {final_diff:.2e}")
    assert w_diff < 1e-5 and o_diff < 1e-5
    assert final_diff < 1e-5
    assert [m["step"] for m in metrics(tmp_path / "two")] == [1, 2, 3, 4]
