"""rlvr from Python in TRL's shape: `from rlvr import GRPOConfig, GRPOTrainer`.

TRL's GRPO quickstart runs with the import changed; GRPOConfig converts TRL's options (batch sizes,
steps counted in optimizer steps, epochs) to rlvr's Config by hand-computed rules; a Config that was
never finalized trains to the end; the run records the task it trained on.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import DigitTask, char_model
from rlvr.api import GRPOConfig, reward_specs, to_config
from rlvr.config import Config, ConfigError


def test_import_rlvr_is_light_and_exports_the_trainer():
    import subprocess
    import sys

    code = ("import sys, rlvr; assert 'torch' not in sys.modules, 'import rlvr loaded torch'; "
            "from rlvr import GRPOConfig, GRPOTrainer; print(GRPOTrainer.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "rlvr.api"


# ----------------------------------------------------------------------------- GRPOConfig -> Config

def test_the_default_grpoconfig_is_the_default_config():
    """rlvr's defaults, whichever door: GRPOConfig() converts to Config() (8 prompts x 8 completions)."""
    assert to_config(GRPOConfig()).to_dict() == Config().finalize().to_dict()


def test_trl_batch_options_become_rlvrs_batch():
    # 4 completions per micro-batch, 8 micro-batches per sampled batch (steps_per_generation), 2 per
    # optimizer step: 32 completions = 8 prompts x 4 sampled at once, learned in 8 / 2 = 4 optimizer
    # steps. max_steps=10 optimizer steps = ceil(10 / 4) = 3 sampled batches.
    args = GRPOConfig(per_device_train_batch_size=4, gradient_accumulation_steps=2, steps_per_generation=8,
                      num_generations=4, max_steps=10)
    g = to_config(args).grpo
    assert args.generation_batch_size == 32
    assert (g.prompts_per_step, g.num_generations, g.steps_per_generation, g.per_device_train_batch_size,
            g.max_steps) == (8, 4, 4, 4, 3)


def test_generation_batch_size_sets_the_prompts_per_step():
    # 24 completions / 4 per micro-batch = 6 micro-batches = 3 optimizer steps of 2; 24 / 4 = 6 prompts.
    # num_iterations=2: each batch is 3 x 2 = 6 optimizer steps, so max_steps=12 is 2 batches.
    args = GRPOConfig(per_device_train_batch_size=4, gradient_accumulation_steps=2, generation_batch_size=24,
                      num_generations=4, num_iterations=2, max_steps=12, save_steps=7)
    cfg = to_config(args)
    assert args.steps_per_generation == 6
    assert (cfg.grpo.prompts_per_step, cfg.grpo.steps_per_generation, cfg.grpo.max_steps) == (6, 3, 2)
    assert cfg.run.save_steps == 2  # ceil(7 / 6)


def test_epochs_count_passes_over_the_training_prompts():
    # 2 epochs x 20 prompts / 8 prompts per step = 5 steps
    cfg = to_config(GRPOConfig(max_steps=-1, num_train_epochs=2), train_size=20)
    assert cfg.grpo.max_steps == 5
    with pytest.raises(ConfigError, match="size"):
        to_config(GRPOConfig(max_steps=-1))


@pytest.mark.parametrize("kwargs, message", [
    ({"generation_batch_size": 30, "per_device_train_batch_size": 4}, "divisible by per_device_train_batch_size"),
    ({"generation_batch_size": 12, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
      "num_generations": 8}, "divisible by num_generations"),
    ({"steps_per_generation": 3, "gradient_accumulation_steps": 2}, "multiple of gradient_accumulation_steps"),
    ({"steps_per_generation": 4, "generation_batch_size": 64}, "cannot both be set"),
    ({"learning_rate": "fast"}, "GRPOConfig.learning_rate"),
    ({"epsilon": 2.0}, "grpo.epsilon"),
    ({"report_to": "all"}, "report_to"),
    ({"rlvr_options": {"eval.nn": 3}}, "eval.nn"),
])
def test_a_bad_option_fails_at_construction_naming_it(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        GRPOConfig(**kwargs)


def test_trls_boolean_and_string_forms():
    assert GRPOConfig(scale_rewards=True).scale_rewards == "group"
    assert GRPOConfig(scale_rewards=False).scale_rewards == "none"
    assert to_config(GRPOConfig(scale_rewards=False)).grpo.scale_rewards == "none"
    assert GRPOConfig(report_to="none").report_to == []
    assert GRPOConfig(report_to="trackio,mlflow").report_to == ["trackio", "mlflow"]
    cfg = to_config(GRPOConfig(bf16=True, warmup_steps=0.25, rlvr_options={"eval.n": 3, "run.doctor": "off"}))
    assert (cfg.model.dtype, cfg.grpo.warmup_ratio, cfg.eval.n, cfg.run.doctor) == ("bf16", 0.25, 3, "off")
    # 5 warm-up steps of 20 optimizer steps
    assert to_config(GRPOConfig(warmup_steps=5)).grpo.warmup_ratio == 0.25


def test_reward_funcs_become_named_weighted_rewards():
    def brevity(completions, **kw):
        return [0.0] * len(completions)

    rewards, fns = reward_specs([brevity, "format", lambda completions, **kw: [1.0] * len(completions), brevity],
                                [1.0, 0.5, 2.0, 3.0])
    assert rewards == {"brevity": 1.0, "format": 0.5, "reward_2": 2.0, "brevity_2": 3.0}
    assert set(fns) == {"brevity", "reward_2", "brevity_2"} and fns["brevity"] is brevity
    with pytest.raises(ConfigError, match="2 weights for 1"):
        reward_specs(brevity, [1.0, 2.0])
    with pytest.raises(ConfigError, match="no reward models"):
        reward_specs(torch.nn.Linear(2, 2), None)


# ----------------------------------------------------------------------------- training

def _tiny_args(tmp_path, **kw):
    kw["rlvr_options"] = {"run.doctor": "off", **kw.get("rlvr_options", {})}
    return GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=4,
                      gradient_accumulation_steps=1, num_generations=4, max_completion_length=12,
                      disable_tqdm=True, **kw)


def test_trls_grpo_quickstart_trains_and_saves(tmp_path, tiny_dir):
    """TRL's docs/source/grpo_trainer.md quick start: `from trl import` -> `from rlvr import`; the model a
    tiny random one in a directory, the dataset a local one in DeepMath-103K's format, max_steps 1."""
    from datasets import Dataset, DatasetInfo
    from transformers import AutoModelForCausalLM

    from rlvr import GRPOConfig, GRPOTrainer  # was: from trl import GRPOTrainer
    from rlvr.rewards import accuracy_reward  # was: from trl.rewards import accuracy_reward

    dataset = Dataset.from_list(  # was: load_dataset("trl-lib/DeepMath-103K", split="train")
        [{"prompt": [{"role": "user", "content": f"What is {a} + {a}?"}], "solution": str(2 * a)} for a in range(8)],
        info=DatasetInfo(dataset_name="deepmath-mini"))

    trainer = GRPOTrainer(
        model=str(tiny_dir),  # was: "Qwen/Qwen2.5-0.5B-Instruct"
        reward_funcs=accuracy_reward,
        train_dataset=dataset,
        args=_tiny_args(tmp_path),  # added: 1 step, short completions
    )
    trainer.train()
    saved = trainer.save_model(tmp_path / "model")
    # as in TRL, trainer.model is the trained model afterwards (here: the policy with its LoRA adapter)
    assert isinstance(trainer.model, torch.nn.Module) and hasattr(trainer.model, "peft_config")

    run = tmp_path / "run"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and "reward/accuracy_reward/mean" in metrics[0]
    assert json.loads((run / "summary.json").read_text())["task"] == "deepmath-mini"
    assert "name: deepmath-mini" in (run / "config.yaml").read_text()
    assert "accuracy_reward: 1.0" in (run / "config.yaml").read_text()
    assert "deepmath-mini" in (run / "report.html").read_text()
    model = AutoModelForCausalLM.from_pretrained(saved)
    assert model.config.num_hidden_layers == AutoModelForCausalLM.from_pretrained(tiny_dir).config.num_hidden_layers


def test_a_loaded_model_learns_from_a_callable_reward(tmp_path):
    """A loaded model + its tokenizer, a list of dicts, weighted rewards, an eval_dataset: the weights
    change, the held-out rows are evaluated before and after, the final model is saved, and the records
    name the task."""
    from rlvr import GRPOTrainer

    model, tok = char_model(seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def variety(completions, **kwargs):
        return [len(set(c)) / max(1, len(c)) for c in completions]

    rows = [{"prompt": f"say {d}", "answer": str(d)} for d in range(8)]
    args = _tiny_args(tmp_path, learning_rate=0.05, use_peft=False, reward_weights=[1.0, 0.5], system_prompt="")
    held_out = [{"prompt": "say 9", "answer": "9"}, {"prompt": "say 3", "answer": "3"}]
    trainer = GRPOTrainer(model, [variety, "format"], args=args, train_dataset=rows, eval_dataset=held_out,
                          processing_class=tok)
    result = trainer.train()
    assert result.steps == 1
    assert [(r["stage"], r["n"]) for r in result.eval_rows] == [("before", 2), ("after", 2)]  # the eval_dataset
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert changed, "one GRPO step with a varied reward should change the weights"
    assert (trainer.save_model() / "config.json").exists()
    config_yaml = (tmp_path / "run" / "config.yaml").read_text()
    assert "variety: 1.0" in config_yaml and "format: 0.5" in config_yaml and "name: dataset" in config_yaml


def test_an_rlvr_task_evaluates_with_its_own_test_set(tmp_path):
    from rlvr import GRPOTrainer

    model, tok = char_model(seed=0)
    trainer = GRPOTrainer(model, "accuracy", args=_tiny_args(tmp_path, rlvr_options={"eval.n": 2}),
                          train_dataset=DigitTask("7"), processing_class=tok)
    result = trainer.train()
    assert [r["stage"] for r in result.eval_rows] == ["before", "after"]
    with pytest.raises(ConfigError, match="eval_dataset"):
        GRPOTrainer(model, "accuracy", args=_tiny_args(tmp_path), train_dataset=DigitTask("7"), eval_dataset=[{}])


def test_push_to_hub_is_refused_clearly_without_a_token(tmp_path, monkeypatch):
    from rlvr import GRPOTrainer
    from rlvr.export import HubError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trainer = GRPOTrainer("unused", "format", args=_tiny_args(tmp_path, hub_model_id="me/model"),
                          train_dataset=[{"prompt": "hi"}])
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        trainer.push_to_hub()


# ----------------------------------------------------------------------------- the trainer itself

def test_train_finalizes_a_config_built_in_python(tmp_path):
    """Config() never finalized: eval.max_new_tokens is None until finalize; training used to crash in
    the final evaluation. It trains to the end, writes final/, and records the task it was given."""
    from rlvr.trainer import train

    cfg = Config()
    cfg.run.output_dir, cfg.run.quiet, cfg.run.doctor = str(tmp_path / "run"), True, "off"
    cfg.grpo.max_steps, cfg.grpo.prompts_per_step, cfg.grpo.num_generations = 1, 2, 2
    cfg.sampling.max_completion_length, cfg.eval.n, cfg.model.use_peft = 6, 2, False
    assert cfg.eval.max_new_tokens is None
    model, tok = char_model(seed=0)
    result = train(cfg, model=model, tokenizer=tok, task=DigitTask("7"))
    assert [r["stage"] for r in result.eval_rows] == ["before", "after"]
    assert (tmp_path / "run" / "final" / "merged" / "config.json").exists()
    assert "name: digit" in (tmp_path / "run" / "config.yaml").read_text()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["task"] == "digit"
    assert cfg.finalize().to_dict() == cfg.finalize().to_dict()  # idempotent


def test_a_peft_lora_config_sets_rlvrs_lora_options(tmp_path):
    from peft import LoraConfig

    from rlvr import GRPOTrainer

    trainer = GRPOTrainer("some/model", "format", args=_tiny_args(tmp_path, use_peft=False),
                          train_dataset=[{"prompt": "hi"}],
                          peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["v_proj", "q_proj"]))
    m = trainer.config.model
    assert (m.name, m.use_peft, m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_target_modules) == \
        ("some/model", True, 4, 8, 0.1, ["q_proj", "v_proj"])
    with pytest.raises(ConfigError, match="LoraConfig"):
        GRPOTrainer("some/model", "format", args=_tiny_args(tmp_path), train_dataset=[{"prompt": "hi"}],
                    peft_config={"r": 4})


# ----------------------------------------------------------------------------- SFT

def test_sft_trainer_learns_prompt_completion_and_conversational_rows(tmp_path):
    """TRL's two SFT formats; the loss falls over a few epochs on 8 demonstrations, the model is saved."""
    from rlvr import SFTConfig, SFTTrainer

    model, tok = char_model(seed=0)
    rows = [{"prompt": f"say {d}", "completion": f"<answer>{d}</answer>"} for d in range(4)]
    rows += [{"messages": [{"role": "user", "content": f"say {d}"}, {"role": "assistant", "content": f"<answer>{d}</answer>"}]}
             for d in range(4, 8)]
    args = SFTConfig(output_dir=str(tmp_path / "sft"), num_train_epochs=5, per_device_train_batch_size=4,
                     learning_rate=0.01, warmup_ratio=0.0, use_peft=False, disable_tqdm=True, system_prompt="")
    trainer = SFTTrainer(model, args=args, train_dataset=rows, processing_class=tok)
    result = trainer.train()
    assert result.num_demos == 8 and result.steps == 10  # 8 rows / 4 a step x 5 epochs
    assert result.losses[-1] < 0.7 * result.losses[0], result.losses  # 4.03 -> 2.36 when written
    assert (trainer.save_model(tmp_path / "out") / "config.json").exists()
    assert "name: dataset" in (tmp_path / "sft" / "config.yaml").read_text()


@pytest.mark.parametrize("kwargs, rows, message", [
    ({"max_steps": 10}, [{"prompt": "a", "completion": "b"}], "max_steps"),
    ({"completion_only_loss": False}, [{"prompt": "a", "completion": "b"}], "completion_only_loss"),
    ({}, [{"text": "a b"}], "not text"),
])
def test_sft_refuses_what_it_does_not_build(tmp_path, kwargs, rows, message):
    from rlvr import SFTConfig, SFTTrainer

    with pytest.raises(ConfigError, match=message):
        SFTTrainer("some/model", args=SFTConfig(output_dir=str(tmp_path / "s"), **kwargs), train_dataset=rows)
