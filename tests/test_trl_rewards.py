"""TRL's reward contract: reward callables by name, the keyword arguments TRL passes, async
rewards, None masked, broken rewards stop the run, per-run health."""

from __future__ import annotations

import json

import pytest

from conftest import DigitTask, char_model
from rlvr import rewards as reward_lib
from rlvr.rollout import PromptFormat, build_reward_fns, score_texts
from rlvr.tasks.base import Example


def sevens(completions, **kwargs):
    return [c.count("7") / max(1, len(c)) for c in completions]


def test_a_name_resolves_from_the_callables_first_then_as_a_builtin():
    def accuracy(completions, **kwargs):  # shadows the built-in of the same name
        return [0.25] * len(completions)

    fns = build_reward_fns(DigitTask("7"), {"accuracy": 1.0, "sevens": 0.5, "format": 0.1},
                           {"accuracy": accuracy, "sevens": sevens})
    by_name = {r.name: r for r in fns}
    assert by_name["accuracy"].fn is accuracy and not by_name["accuracy"].builtin
    assert by_name["sevens"].fn is sevens and by_name["sevens"].weight == 0.5
    assert by_name["format"].builtin
    fns = build_reward_fns(DigitTask("7"), {sevens: 2.0})  # a function as the key: named by __name__
    assert [(r.name, r.fn, r.weight) for r in fns] == [("sevens", sevens, 2.0)]


def test_bad_reward_callables_are_named():
    with pytest.raises(ValueError, match=r"reward_funcs \['sevens'\] have no weight"):
        build_reward_fns(DigitTask("7"), {"format": 1.0}, {"sevens": sevens})
    with pytest.raises(TypeError, match=r"reward_funcs\['x'\] is a int"):
        build_reward_fns(DigitTask("7"), {"x": 1.0}, {"x": 3})
    from rlvr.tasks import dataset_task

    no_truth = dataset_task([{"prompt": "p"}], n_test=0)
    with pytest.raises(ValueError, match="accuracy reward needs the task's answers"):
        build_reward_fns(no_truth, {"accuracy": 1.0})


def test_each_run_starts_with_clean_reward_health():
    """A reward's failures in one run do not count in the next run of the process: two runs that
    each call a raising reward once stop neither (one run calling it twice stops)."""
    def broken(completions, **kwargs):
        raise RuntimeError("warming up")

    ex, fmt = [Example("say 7", "7")], PromptFormat(chat=False)
    for _run in range(reward_lib.BROKEN_AFTER_CALLS):
        fns = build_reward_fns(DigitTask("7"), {"broken": 1.0}, {"broken": broken})
        result = score_texts(fns, DigitTask("7"), ex, ["7"], fmt, 5.0, conversational=False)
        assert result.errors == {"broken": 1} and fns[0].health.failed_calls == 1


def test_a_reward_failing_on_everything_stops_with_its_name():
    def broken(completions, **kwargs):
        raise KeyError("solution")

    fns = build_reward_fns(DigitTask("7"), {"broken": 1.0}, {"broken": broken})
    ex = [Example("say 7", "7")] * 2
    with pytest.raises(reward_lib.RewardFunctionError, match="'broken' raised on every completion.*KeyError"):
        for _ in range(reward_lib.BROKEN_AFTER_CALLS):
            score_texts(fns, DigitTask("7"), ex, ["7", "8"], PromptFormat(chat=False), 5.0, conversational=False)


def test_train_takes_reward_callables_by_name(tmp_path):
    from rlvr.config import load_config
    from rlvr.trainer import train

    cfg = load_config(None, [
        f"run.output_dir={tmp_path / 'run'}", "model.use_peft=false", "task.system_prompt=",
        "task.rewards={sevens: 1.0}", "sampling.max_completion_length=4", "sampling.stop_at_answer=false",
        "grpo.prompts_per_step=2", "grpo.num_generations=4", "grpo.max_steps=1", "eval.on_start=false",
        "eval.n=0", "run.save_steps=0", "run.quiet=true", "run.log_samples_every=0",
    ])
    model, tok = char_model(seed=0)
    train(cfg, model=model, tokenizer=tok, task=DigitTask("7"), reward_funcs={"sevens": sevens})
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "reward/sevens/mean" in metrics[0]
