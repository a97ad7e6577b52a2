"""Environments: tools that fail or hang, and TRL `environment_factory` classes run unchanged."""

from __future__ import annotations

import json
import time

import torch

from rlvr.environments import SingleTurn, ToolEnvironment, TRLEnvironment, environment_for
from rlvr.episodes import Limits
from rlvr.rollout import PromptFormat, WeightedReward, collect_experience, sampling_params
from rlvr.sampling.base import Completion
from rlvr.tasks.base import Example, Task


class ScriptedSampler:
    """Writes the given texts in order (call k: texts[k], encoded, + <|im_end|>) for every prompt."""

    def __init__(self, tok, texts: list[str]):
        self.tok, self.texts, self.calls = tok, texts, 0

    def generate(self, prompts, params, *, num_samples=1, generator=None, progress=None):
        end = self.tok.convert_tokens_to_ids("<|im_end|>")
        ids = self.tok(self.texts[self.calls], add_special_tokens=False)["input_ids"] + [end]
        self.calls += 1
        return [Completion(i, ids, [-1.0] * len(ids), "stop") for i in range(len(prompts)) for _ in range(num_samples)]


def call(name: str, **arguments) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def hang(seconds: int) -> str:
    """Sleep.

    Args:
        seconds: How long.
    """
    time.sleep(seconds)
    return "woke up"


def divide(a: int, b: int) -> float:
    """Divide a by b.

    Args:
        a: The dividend.
        b: The divisor.
    """
    return a / b


class ToolTask(Task):
    name = "tooltask"
    system_prompt = ""

    def __init__(self, tools=(), examples=None):
        self.tools = list(tools)
        self.examples = examples or [Example("What is 6/3?", "2")]

    def train_examples(self):
        return self.examples

    def test_examples(self):
        return self.examples

    def verify(self, answer, example):
        return float(answer is not None and answer.strip() == example.answer)


def experience(tok, sampler, task, g=2, limits=Limits(), rewards=()):
    fmt = PromptFormat(chat=True, system_prompt="", limits=limits, tool_timeout=1.0)
    params = sampling_params(tok, max_new_tokens=200, temperature=1.0)
    return collect_experience(
        sampler, tok, task, iter(task.train_examples() * 4), batch_size=1, num_generations=g, params=params,
        fmt=fmt, reward_fns=list(rewards), scale_rewards="group", dynamic_sampling=False, max_resample_rounds=0,
        reward_timeout=5.0, generator=torch.Generator().manual_seed(0))


def test_a_task_with_tools_runs_as_a_tool_environment():
    assert isinstance(environment_for(ToolTask()), SingleTurn)
    env = environment_for(ToolTask([divide]))
    assert isinstance(env, ToolEnvironment)
    system = env.reset(Example("q", "a"))[0]["content"]
    assert '"name": "divide"' in system and "<tool_call>" in system


def test_a_hanging_tool_is_cut_at_its_time_out_and_the_run_goes_on(smol_tokenizer):
    """A real forked process sleeps 60 s; the episode gets an error message after the 1 s time-out,
    the model's next turn is sampled, and a raising tool is an error message too."""
    tok = smol_tokenizer
    task = ToolTask([hang, divide])
    sampler = ScriptedSampler(tok, [call("hang", seconds=60) + call("divide", a=1, b=0), "<answer>2</answer>"])
    t0 = time.perf_counter()
    exp = experience(tok, sampler, task, g=1)
    took = time.perf_counter() - t0
    assert took < 20, took
    [ep] = exp.episodes
    tool = [m for m in ep.messages if m["role"] == "tool"]
    assert "did not finish within 1 s" in tool[0]["content"]
    assert "ZeroDivisionError" in tool[1]["content"]
    assert ep.tool_calls == 2 and ep.tool_errors == 2 and len(ep.turns) == 2 and ep.limit is None
    assert exp.correct == [1.0] and exp.metrics["episode/tool_errors"] == 2
    assert 1.0 <= ep.tool_seconds < 10


def test_tool_time_limit_ends_the_episode(smol_tokenizer):
    tok = smol_tokenizer
    sampler = ScriptedSampler(tok, [call("hang", seconds=60), "<answer>2</answer>"])
    exp = experience(tok, sampler, ToolTask([hang]), g=1, limits=Limits(max_tool_seconds=0.5))
    [ep] = exp.episodes
    assert ep.limit == "tool_seconds" and len(ep.turns) == 1 and exp.correct == [0.0]
    assert exp.metrics["episode/limit_tool_seconds_frac"] == 1.0


def test_no_tool_runs_past_the_turn_limit(smol_tokenizer):
    """max_tool_calling_iterations=0 (one turn): a turn that calls a tool ends the episode, marked,
    and the tool is not run."""
    tok = smol_tokenizer
    sampler = ScriptedSampler(tok, [call("hang", seconds=60)])
    t0 = time.perf_counter()
    exp = experience(tok, sampler, ToolTask([hang]), g=2, limits=Limits(max_turns=1))
    assert time.perf_counter() - t0 < 5
    assert [(ep.limit, ep.tool_calls, len(ep.turns)) for ep in exp.episodes] == [("turns", 0, 1)] * 2
    # a final answer at the limit is no limit
    exp = experience(tok, ScriptedSampler(tok, ["<answer>2</answer>"]), ToolTask([hang]), g=1, limits=Limits(max_turns=1))
    assert exp.episodes[0].limit is None and exp.correct == [1.0]


# ------------------------------------------------------------------ TRL's environment_factory

class IncrementEnv:
    """Copied from TRL's docs (docs/source/grpo_trainer.md, "Providing an external dataset"), with
    the full docstring of its first example."""

    def reset(self, target, **kwargs) -> None:  # the row's `target` column arrives as a keyword argument
        self.counter = 0
        self.target = target

    def get_reward(self) -> float:
        return float(self.counter == self.target)

    def increment(self, step: int) -> int:
        """
        Increment the internal counter.

        Args:
            step: Value to add to the counter.

        Returns:
            The updated counter value.
        """
        self.counter += step
        return self.counter


class SelfSamplingIncrementEnv:
    """TRL's first example: `reset` returns the prompt text (here derived from the row, not random,
    so the G episodes of a group share it, as TRL's docs advise)."""

    def reset(self, **kwargs) -> str | None:
        self.counter = 0
        self.target = int(kwargs["answer"])
        return f"Increment the counter by {self.target}."

    def get_reward(self) -> float:
        return float(self.counter == self.target)

    def increment(self, step: int) -> int:
        """
        Increment the internal counter.

        Args:
            step: Value to add to the counter.

        Returns:
            The updated counter value.
        """
        self.counter += step
        return self.counter


class FactoryTask(ToolTask):
    def __init__(self, factory, examples):
        super().__init__((), examples)
        self.environment_factory = factory


def test_a_trl_environment_class_runs_unchanged(smol_tokenizer):
    """Each episode has its own instance (the counters do not add up across the group), the tool
    methods change its state, and `get_reward` is a reward of weight 1 named after the class."""
    tok = smol_tokenizer
    task = FactoryTask(IncrementEnv, [Example("Increment the counter to 3.", "3", {"target": 3})])
    env = environment_for(task)
    assert isinstance(env, TRLEnvironment) and [m.__name__ for m in env.tools()] == ["increment"]
    sampler = ScriptedSampler(tok, [call("increment", step=1) + call("increment", step=2), "done"])
    exp = experience(tok, sampler, task, g=3)
    assert exp.rewards.parts["IncrementEnv"] == [1.0, 1.0, 1.0] and exp.rewards.total == [1.0, 1.0, 1.0]
    assert [ep.env.instance.counter for ep in exp.episodes] == [3, 3, 3]
    assert [m["content"] for m in exp.episodes[0].messages if m["role"] == "tool"] == ["1", "3"]


def counter_reward(completions, environments, **kwargs):
    """TRL passes a reward function the episodes' environment instances (`environments`)."""
    return [float(env.counter) for env in environments]


def conversation_turns(completions, **kwargs):
    """TRL passes a chat model's multi-turn completion as the conversation after the prompt."""
    return [float(len(c)) for c in completions]


def test_user_rewards_get_the_conversation_and_the_environments(smol_tokenizer):
    tok = smol_tokenizer
    task = FactoryTask(IncrementEnv, [Example("Increment the counter to 3.", "3", {"target": 3})])
    sampler = ScriptedSampler(tok, [call("increment", step=2), "done"])
    rewards = [WeightedReward("counter_reward", counter_reward, 1.0, False),
               WeightedReward("conversation_turns", conversation_turns, 1.0, False)]
    exp = experience(tok, sampler, task, g=2, rewards=rewards)
    assert exp.rewards.parts["counter_reward"] == [2.0, 2.0]
    assert exp.rewards.parts["conversation_turns"] == [3.0, 3.0]  # assistant, tool, assistant
    assert exp.rewards.parts["IncrementEnv"] == [0.0, 0.0]


def test_a_trl_environment_whose_reset_returns_the_prompt(smol_tokenizer):
    tok = smol_tokenizer
    task = FactoryTask(SelfSamplingIncrementEnv, [Example("", "2")])
    sampler = ScriptedSampler(tok, [call("increment", step=5), "done"])
    exp = experience(tok, sampler, task, g=2, rewards=[])
    ep = exp.episodes[0]
    assert ep.messages[ep.n_prompt_messages - 1]["content"].endswith("Increment the counter by 2.")
    assert exp.rewards.parts["SelfSamplingIncrementEnv"] == [0.0, 0.0]
    assert '"name": "increment"' in ep.messages[0]["content"]


# ------------------------------------------------------------------ eval and report

def test_eval_reports_tool_calls_errors_and_limits(smol_tokenizer):
    from rlvr.evaluate import evaluate, format_table, tool_summary

    tok = smol_tokenizer
    task = ToolTask([divide], [Example("What is 6/3?", "2.0"), Example("What is 1/0?", "none")])
    sampler = ScriptedSampler(tok, [call("divide", a=6, b=3) + call("divide", a=1, b=0), "<answer>2.0</answer>"])
    fmt = PromptFormat(chat=True, system_prompt="")
    result = evaluate(sampler, tok, task, task.test_examples(), fmt=fmt, max_new_tokens=200, progress=False)
    assert result.accuracy == 0.5 and result.tool_calls == 2.0 and result.tool_errors == 1.0
    assert result.limit_frac == 0.0
    summary = result.summary()
    assert summary["tool_calls"] == 2.0 and "tool_errors" in summary
    rec = result.records[0]
    assert [m["role"] for m in rec["conversation"]] == ["assistant", "tool", "tool", "assistant"]
    table = format_table([{"stage": "base", **summary}])
    assert "tools/ep" in table and "2.00" in table
    assert tool_summary(result).startswith("tools: 2.00 calls per episode, 1.00 errors per episode, 0.0% of")
    # a single-turn task's summary has no tool fields
    plain = evaluate(ScriptedSampler(tok, ["<answer>2.0</answer>"]), tok, ToolTask(), task.test_examples()[:1],
                     fmt=fmt, max_new_tokens=50, progress=False)
    assert "tool_calls" not in plain.summary()


def test_report_shows_an_episode_as_a_conversation():
    from rlvr.report.html import render_sample

    sample = {"step": 1, "prompt": "What is 6/3?", "completion": "<answer>2</answer>", "answer": "2",
              "ground_truth": "2", "rewards": {"accuracy": 1.0, "total": 1.0}, "tool_calls": 2, "tool_errors": 1,
              "conversation": [
                  {"role": "assistant", "content": "<think>divide</think>" + call("divide", a=6, b=3)},
                  {"role": "tool", "name": "divide", "content": "2.0"},
                  {"role": "assistant", "content": call("divide", a=1, b=0)},
                  {"role": "tool", "name": "divide", "content": "error: ZeroDivisionError: <b>division</b>"},
                  {"role": "assistant", "content": "<answer>2</answer>"}]}
    out = render_sample(sample)
    assert out.count('class="part toolcall"') == 2
    assert out.count('class="part toolresult"') == 1 and out.count('class="part toolresult error"') == 1
    assert "tool error — divide" in out and "&lt;b&gt;division&lt;/b&gt;" in out  # escaped
    assert 'class="part think"' in out and 'class="part answer"' in out
    assert "tool calls 2" in out and "tool errors 1" in out
    # a single-turn sample renders as before
    assert "toolcall" not in render_sample({k: v for k, v in sample.items() if k != "conversation"})
