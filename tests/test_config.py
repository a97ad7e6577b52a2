"""Config: YAML + overrides, unknown options named, types checked, derived values set once."""

import pytest

from rlvr.config import ConfigError, load_config


def test_defaults_and_derived_values():
    cfg = load_config()
    assert cfg.grpo.epsilon_high == cfg.grpo.epsilon  # derived: clip-higher off by default
    assert cfg.eval.max_new_tokens == cfg.sampling.max_completion_length


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("grpo:\n  beta: 0.04\n  num_generations: 6\ntask:\n  name: countdown\n  options: {num_numbers: 3}\n")
    cfg = load_config(path, ["grpo.beta=0.1", "sampling.top_p=0.95", "run.report_to=[wandb]"])
    assert cfg.grpo.beta == 0.1 and cfg.grpo.num_generations == 6
    assert cfg.task.name == "countdown" and cfg.task.options == {"num_numbers": 3}
    assert cfg.sampling.top_p == 0.95 and cfg.run.report_to == ["wandb"]


@pytest.mark.parametrize("override, message", [
    ("grpo.learnin_rate=1e-5", "did you mean 'learning_rate'"),
    ("grpo.num_generation=4", "did you mean 'num_generations'"),
    ("sampler.temperature=1", "unknown option 'sampler'"),
    ("grpo.max_steps=ten", "grpo.max_steps: expected a whole number, got 'ten'"),
    ("grpo.max_steps=1.5", "whole number"),
    ("model.use_peft=maybe", "model.use_peft: expected true or false, got 'maybe'"),
    ("grpo.loss_type=ppo", "not one of grpo, dr_grpo, dapo, bnpo"),
    ("grpo.num_generations=1", "num_generations must be >= 2"),
    ("grpo", "section.option=value"),
])
def test_bad_options_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    nested = tmp_path / "nested.yaml"
    nested.write_text("grpo: 3\n")
    with pytest.raises(ConfigError, match="section 'grpo' must be a mapping"):
        load_config(nested)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["grpo.beta=0.02", "task.prefill=<think>"])
    cfg.save(tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again.to_dict() == cfg.to_dict()
