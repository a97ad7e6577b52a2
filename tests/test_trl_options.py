"""TRL's GRPOConfig option names in rlvr: every option classified, the table in the docs up to date,
each supported name reaching the rlvr option it names, and a TRL name in the wrong YAML section
pointing to the right one."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest

from conftest import ROOT
from rlvr import api, trl_options
from rlvr.api import GRPOConfig, to_config
from rlvr.config import TRL_NAMES, Config, ConfigError, load_config


def _script():
    spec = importlib.util.spec_from_file_location("trl_options", ROOT / "scripts" / "trl_options.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DATA = json.loads((ROOT / "docs" / "trl_grpo_options.json").read_text())
TRL = {o["name"]: o["default"] for o in DATA["options"] + DATA["inherited"]}
FIELDS = {f.name: f for f in dataclasses.fields(GRPOConfig) if f.init}


def test_the_data_file_holds_all_of_trls_own_options():
    names = [o["name"] for o in DATA["options"]]
    assert len(names) == len(set(names)) == 79  # TRL's GRPOConfig declares 79 options of its own
    assert {"num_generations", "loss_type", "scale_rewards", "vllm_importance_sampling_cap"} <= set(names)


def test_the_table_in_the_docs_is_what_the_code_gives():
    assert (ROOT / "docs" / "TRL_OPTIONS.md").read_text() == _script().render(DATA), \
        "docs/TRL_OPTIONS.md is out of date: run python scripts/trl_options.py"


def test_every_trl_option_is_supported_or_has_a_reason_not_to_be():
    for name in TRL:
        if name in FIELDS:
            assert name not in trl_options.NOT_APPLICABLE, f"{name} is both supported and not applicable"
        else:
            assert trl_options.NOT_APPLICABLE.get(name, "").strip(), f"TRL option {name} is not classified"
    stale = set(trl_options.NOT_APPLICABLE) - set(TRL)
    assert not stale, f"NOT_APPLICABLE names options TRL does not have: {stale}"


def test_a_default_that_differs_from_trls_says_why():
    for name, trl_default in TRL.items():
        if name in FIELDS:
            ours = FIELDS[name].default
            if ours != trl_default:
                assert trl_options.DIFFERENT_DEFAULTS.get(name, "").strip(), f"{name}: default {ours!r} != TRL's {trl_default!r}"
    assert set(trl_options.DIFFERENT_DEFAULTS) <= set(FIELDS) & set(TRL)
    assert set(trl_options.NO_EFFECT) <= set(FIELDS)


def test_every_option_of_rlvrs_grpoconfig_has_a_destination():
    for name in FIELDS:
        assert trl_options.destination(name)


def test_the_trl_name_table_points_at_real_rlvr_options():
    cfg = Config()
    for name, key in TRL_NAMES.items():
        section, option = key.split(".")
        assert hasattr(getattr(cfg, section), option), f"TRL_NAMES[{name!r}] = {key!r} is not an rlvr option"


# a value other than the default, valid for each option named in TRL_NAMES
CHANGED = {
    "temperature": 0.7, "top_p": 0.9, "top_k": 5, "max_completion_length": 64, "use_vllm": False,
    "vllm_mode": "colocate", "vllm_enable_sleep_mode": True, "vllm_gpu_memory_utilization": 0.5,
    "vllm_max_model_length": 1024, "num_generations": 4, "learning_rate": 3e-4, "beta": 0.04, "epsilon": 0.1,
    "epsilon_high": 0.28, "delta": 1.5, "sapo_temperature_pos": 0.9, "sapo_temperature_neg": 1.2,
    "num_iterations": 2, "importance_sampling_level": "sequence", "scale_rewards": "batch", "loss_type": "dapo",
    "mask_truncated_completions": True, "weight_decay": 0.1, "adam_beta1": 0.8, "adam_beta2": 0.95,
    "warmup_ratio": 0.1, "lr_scheduler_type": "cosine", "max_grad_norm": 0.5,
    "vllm_importance_sampling_correction": False, "vllm_importance_sampling_mode": "token_truncate",
    "vllm_importance_sampling_clip_max": 2.0, "gradient_checkpointing": True, "use_peft": False, "lora_r": 8,
    "lora_alpha": 16, "lora_dropout": 0.1, "lora_target_modules": ["q_proj", "v_proj"], "output_dir": "runs/x",
    "seed": 7, "report_to": ["trackio"], "save_total_limit": 5, "vllm_importance_sampling_cap": 2.5,
}


def test_each_trl_name_reaches_the_rlvr_option_it_names():
    assert set(CHANGED) == set(TRL_NAMES)
    for name, value in CHANGED.items():
        if name == "use_vllm":
            continue  # true needs vllm installed; false is the default
        cfg = to_config(GRPOConfig(**{name: value}))
        section, option = TRL_NAMES[name].split(".")
        assert getattr(getattr(cfg, section), option) == value, name


@pytest.mark.parametrize("override, points_to", [
    ("grpo.temperature=0.5", "sampling.temperature"),
    ("sampling.learning_rate=0.1", "grpo.learning_rate"),
    ("seed=3", "run.seed"),
    ("grpo.save_total_limit=3", "run.keep_checkpoints"),
    ("grpo.gradient_accumulation_steps=2", "grpo.prompts_per_step"),
])
def test_a_trl_name_in_the_wrong_section_points_to_rlvrs(override, points_to):
    with pytest.raises(ConfigError, match=points_to.replace(".", r"\.")):
        load_config(None, [override])


def test_the_script_check_mode_fails_on_a_stale_table(tmp_path, monkeypatch):
    script = _script()
    monkeypatch.setattr(script, "TABLE", tmp_path / "TRL_OPTIONS.md")
    (tmp_path / "TRL_OPTIONS.md").write_text("old\n")
    assert script.main(["--check"]) == 1
    assert script.main([]) == 0
    assert script.main(["--check"]) == 0
