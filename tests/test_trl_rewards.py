"""TRL's reward contract: reward callables by name, the keyword arguments TRL passes, async
rewards, None masked, broken rewards stop the run, per-run health."""

from __future__ import annotations

import json
import math

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
        "grpo.prompts_per_step=2", "grpo.num_generations=4", "grpo.max_steps=2", "eval.on_start=false",
        "eval.n=0", "run.save_steps=0", "run.quiet=true", "run.log_samples_every=1",
    ])
    def logged_sevens(completions, trainer_state, log_extra, log_metric, **kwargs):
        log_metric("sevens/step_seen", trainer_state.global_step + 1)
        log_extra("length", [len(c) for c in completions])
        return sevens(completions)

    model, tok = char_model(seed=0)
    train(cfg, model=model, tokenizer=tok, task=DigitTask("7"), reward_funcs={"sevens": logged_sevens})
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "reward/sevens/mean" in metrics[0]
    assert [m["sevens/step_seen"] for m in metrics] == [1.0, 2.0]  # TRL's log_metric, the step's mean
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["extra"]["length"] == len(s["completion"]) for s in samples)  # TRL's log_extra


# ------------------------------------------------------------------------ TRL's keyword arguments

CONVERSATION = [{"role": "system", "content": "Think, then answer."}, {"role": "user", "content": "2+2?"}]


def seen_kwargs(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, **columns):
    """Logs what it was given (it runs in a forked child: log_extra is how it reaches the parent)."""
    log_extra("prompts", [json.dumps(p) for p in prompts])
    log_extra("completions", [json.dumps(c) for c in completions])
    log_extra("completion_ids", [json.dumps(ids) for ids in completion_ids])
    log_extra("columns", [json.dumps(sorted(columns))] * len(completions))
    log_extra("solution", list(columns["solution"]))
    log_extra("level", list(columns["level"]))
    log_metric("seen/global_step", trainer_state.global_step)
    return [1.0] * len(completions)


def test_a_user_reward_gets_what_trl_passes_it():
    """Conversational data with a prefill: prompts are the conversation plus the prefill as a final
    assistant turn, completions the sampled text alone as an assistant message (TRL's
    continue_final_message), every other column unchanged, rlvr's internals not at all."""
    from rlvr.reward_context import TrainerState
    from rlvr.tasks import dataset_task

    task = dataset_task([{"prompt": CONVERSATION, "solution": "$4$", "level": 3}], n_test=0)
    ex = task.train_examples()[0]
    fns = build_reward_fns(task, {"seen": 1.0}, {"seen": seen_kwargs})
    fmt = PromptFormat(prefill="<think>")
    result = score_texts(fns, task, [ex, ex], [" 2+2=4 </think><answer>4</answer>", "x"], fmt, 10.0,
                         conversational=True, completion_ids=[[5, 6], [7]],
                         trainer_state=TrainerState(global_step=3, max_steps=10))
    extra = result.logs.extra
    assert [json.loads(p) for p in extra["prompts"]] == [CONVERSATION + [{"role": "assistant", "content": "<think>"}]] * 2
    assert [json.loads(c) for c in extra["completions"]] == [
        [{"role": "assistant", "content": " 2+2=4 </think><answer>4</answer>"}], [{"role": "assistant", "content": "x"}]]
    assert [json.loads(i) for i in extra["completion_ids"]] == [[5, 6], [7]]
    assert json.loads(extra["columns"][0]) == ["level", "solution"]  # no prompt, question, answer, _example
    assert extra["solution"] == ["$4$", "$4$"] and extra["level"] == [3, 3]
    assert result.logs.metric_means() == {"seen/global_step": 3.0}
    assert result.parts["seen"] == [1.0, 1.0]


def test_plain_text_prompts_give_plain_completions_as_trl_decides():
    """Conversational iff the prompt is a list of messages: a plain-text dataset gives strings
    even to a chat model; rlvr's own tasks follow the prompt format."""
    from rlvr.rollout import _is_chat
    from rlvr.tasks import dataset_task

    class Chatty:
        chat_template = "{{ messages }}"

    plain = dataset_task([{"prompt": "2+2?", "solution": "4", "level": 1}], n_test=0)
    chat = dataset_task([{"prompt": CONVERSATION, "solution": "4"}], n_test=0)
    assert _is_chat(Chatty(), PromptFormat(), plain) is False
    assert _is_chat(None, PromptFormat(chat=False), chat) is True
    assert _is_chat(Chatty(), PromptFormat(), DigitTask("7")) is True
    ex = plain.train_examples()[0]
    fns = build_reward_fns(plain, {"seen": 1.0}, {"seen": seen_kwargs})
    result = score_texts(fns, plain, [ex], ["4"], PromptFormat(prefill="<think>"), 10.0, conversational=False)
    assert json.loads(result.logs.extra["prompts"][0]) == "2+2?<think>"  # the data's text, then the prefill
    assert json.loads(result.logs.extra["completions"][0]) == "4"


_events: dict = {}


def _pair(me: str, other: str):
    import asyncio

    loop_events = _events.setdefault(id(asyncio.get_running_loop()), {"a": asyncio.Event(), "b": asyncio.Event()})
    loop_events[me].set()
    await_other = loop_events[other].wait()
    return asyncio.wait_for(await_other, timeout=5)


async def async_a(completions, **kwargs):
    await _pair("a", "b")  # finishes only if async_b runs at the same time (else a 5 s TimeoutError)
    return [0.25] * len(completions)


async def async_b(completions, **kwargs):
    await _pair("b", "a")
    return [None] * (len(completions) - 1) + [0.5]


def test_async_rewards_run_concurrently_and_none_is_masked():
    ex = [Example("say 7", "7")] * 2
    fns = build_reward_fns(DigitTask("7"), {"async_a": 1.0, "async_b": 2.0}, {"async_a": async_a, "async_b": async_b})
    result = score_texts(fns, DigitTask("7"), ex, ["7", "8"], PromptFormat(chat=False), 20.0, conversational=False)
    assert result.errors == {"async_a": 0, "async_b": 0}
    assert result.parts["async_a"] == [0.25, 0.25]
    assert result.parts["async_b"][0] != result.parts["async_b"][0] and result.parts["async_b"][1] == 0.5  # None: NaN
    assert result.total == [0.25, 0.25 + 2 * 0.5]  # the masked value is left out of the total


# ------------------------------------------------------------- Open-R1's reward functions, unchanged

SYSTEM = "Think in <think> </think>, then answer in <answer> </answer>."
OPENR1_ROWS = [
    {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 1/2 + 1/4?"}],
     "solution": "$\\frac{3}{4}$"},
    {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 2 + 2?"}],
     "solution": "$4$"},
    {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Not math."}],
     "solution": "no latex here"},  # accuracy_reward returns None for a gold it cannot parse
]
OPENR1_COMPLETIONS = [  # (row, completion): right, wrong, formatted or not, stepwise, repetitive
    (0, "<think>\nStep 1: 1/2 = 2/4.\nStep 2: 2/4 + 1/4 = 3/4.\n</think>\n<answer>\n$\\frac{3}{4}$\n</answer>"),
    (0, "<think>\nFirst, add.\n</think>\n<answer>\n\\boxed{0.75}\n</answer>"),
    (0, "the answer is \\boxed{\\frac{1}{2}} the answer is the answer is the answer is"),
    (1, "<think>\n1. two\n2. plus two\n3. four\n</think>\n<answer>\n\\boxed{4}\n</answer>"),
    (1, "<think>\nhmm\n</think>\n<answer>\n$5$\n</answer>"),
    (1, "four four four four four four four four"),
    (2, "<think>\nNext, think.\n</think>\n<answer>\nsomething\n</answer>"),
    (2, ""),
]


def openr1_funcs():
    import openr1_rewards as r1

    return {"accuracy_reward": r1.accuracy_reward, "format_reward": r1.format_reward,
            "tag_count_reward": r1.tag_count_reward, "reasoning_steps_reward": r1.reasoning_steps_reward,
            "len_reward": r1.len_reward, "cosine_scaled_reward": r1.get_cosine_scaled_reward(max_len=200),
            "repetition_penalty_reward": r1.get_repetition_penalty_reward(ngram_size=2, max_penalty=-1.0),
            "soft_overlong_punishment_reward": r1.get_soft_overlong_punishment(12, 4)}


def _direct(fn, completions: list[str], solutions: list[str], completion_ids: list[list[int]]) -> list[float]:
    """The function called as TRL calls it; None as NaN (TRL's mask)."""
    out = fn(prompts=None, completions=[[{"role": "assistant", "content": c}] for c in completions],
             completion_ids=completion_ids, solution=solutions)
    return [math.nan if v is None else float(v) for v in out]


def _same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all((x != x and y != y) or x == y for x, y in zip(a, b))


def test_openr1_rewards_score_in_rlvr_exactly_as_called_directly():
    """Open-R1's functions, copied unchanged, on a TRL-format dataset with a `solution` column
    (dataset_task): what rlvr's scoring gives each completion equals the direct call's value."""
    from rlvr.tasks import dataset_task

    task = dataset_task(OPENR1_ROWS, n_test=0)
    rows = {ex.metadata["solution"]: ex for ex in task.train_examples()}
    examples = [rows[OPENR1_ROWS[i]["solution"]] for i, _ in OPENR1_COMPLETIONS]
    completions = [c for _, c in OPENR1_COMPLETIONS]
    ids = [list(range(len(c) // 4)) for c in completions]  # token ids of different lengths (the overlong reward)
    funcs = openr1_funcs()
    fns = build_reward_fns(task, {name: 1.0 for name in funcs}, funcs)
    result = score_texts(fns, task, examples, completions, PromptFormat(), 60.0, conversational=task.conversational,
                         completion_ids=ids)
    solutions = [ex.metadata["solution"] for ex in examples]
    for name, fn in funcs.items():
        expected = _direct(fn, completions, solutions, ids)
        assert _same(result.parts[name], expected), (name, result.parts[name], expected)
        assert result.errors[name] == 0
    acc = result.parts["accuracy_reward"]
    assert acc[:4] == [1.0, 1.0, 0.0, 1.0] and acc[4] == 0.0 and math.isnan(acc[6])  # the data speaks LaTeX
    assert len({v for v in result.parts["len_reward"]}) > 2  # a batch-wide function, on the whole batch


def test_openr1_rewards_in_a_real_training_step(tmp_path):
    """One GRPO step of a tiny model on the same dataset with Open-R1's rewards by name: the
    recorded parts of the sampled completions equal the functions' direct values."""
    from rlvr.config import load_config
    from rlvr.tasks import dataset_task
    from rlvr.trainer import train

    funcs = openr1_funcs()
    per_completion = {k: v for k, v in funcs.items() if k not in ("len_reward", "soft_overlong_punishment_reward")}
    weights = ", ".join(f"{name}: 1.0" for name in per_completion)
    cfg = load_config(None, [
        f"run.output_dir={tmp_path / 'run'}", "model.use_peft=false", f"task.rewards={{{weights}}}",
        "sampling.max_completion_length=24", "sampling.stop_at_answer=false", "grpo.prompts_per_step=2",
        "grpo.num_generations=4", "grpo.max_steps=1", "eval.on_start=false", "eval.n=0", "run.save_steps=0",
        "run.quiet=true", "run.log_samples_every=1", "run.doctor=off",
    ])
    model, tok = char_model(seed=0)
    task = dataset_task(OPENR1_ROWS[:2] * 4, n_test=0)
    train(cfg, model=model, tokenizer=tok, task=task, reward_funcs=per_completion)
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples
    solution_of = {ex.question: ex.metadata["solution"] for ex in task.train_examples()}
    for s in samples:
        for name, fn in per_completion.items():
            expected = _direct(fn, [s["completion"]], [solution_of[s["prompt"]]], [[]])[0]
            got = s["rewards"][name]
            assert (got != got and expected != expected) or got == expected, (name, s["completion"], got, expected)
