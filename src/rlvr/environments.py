"""Environments: an episode is a conversation between the model and its environment.

    messages = env.reset(example)                  the first messages (system, user)
    loop:  the model writes an assistant turn
           step = env.step(example, messages)      messages to append (tool results, a user turn)
           until step.done                         ... and the episode's reward sees it all

Only the tokens the model wrote carry loss: each rollout holds a per-token loss mask
(`rlvr.buffer.Rollout.loss_mask`), 0 on what the environment appended, so the update needs no
notion of turns. The default environment is `SingleTurn`, the Task as rlvr always ran it: one
user turn, one answer, done. Multi-turn environments (tools, dialogue) implement the same two
methods; the rollout drives them turn by turn (rlvr.episodes).

An environment that keeps state per episode (a game, a TRL `environment_factory` class) defines
`fresh()`, which returns a new instance for one episode; the rollout calls it and then `reset` on
that instance once per episode. One that scores episodes itself defines `reward(example, messages)
-> float | None` (TRL's `get_reward`): it joins the reward functions with weight 1.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Protocol

from rlvr import prompts as prompt_lib
from rlvr.tasks.base import Example, Task
from rlvr.tools import ToolResult, parse_tool_calls, run_tool_call, tool_map, tool_message, tools_system_prompt


@dataclass
class Step:
    """What the environment answers to an assistant turn."""

    messages: list[dict] = field(default_factory=list)
    """messages to append before the model's next turn (role "tool" or "user")"""
    done: bool = True
    """the episode is over: no further assistant turn"""
    tool_calls: int = 0
    """tool calls the step ran (for the episode's metrics)"""
    tool_errors: int = 0
    """of them, those that raised, timed out or named no known tool"""
    seconds: float = 0.0
    """time the step took in tools (counts towards the episode's tool-time limit)"""


def fresh_environment(env, example: Example):
    """The environment one episode runs in: `env` itself, or for a stateful one a new instance, reset."""
    if not hasattr(env, "fresh"):
        return env
    instance = env.fresh()
    instance.reset(example)
    return instance


class Environment(Protocol):
    def reset(self, example: Example) -> list[dict]:
        """The episode's first messages (chat format: dicts with "role" and "content")."""
        ...

    def step(self, example: Example, messages: list[dict]) -> Step:
        """React to the conversation so far, whose last message is the model's assistant turn."""
        ...


@dataclass
class SingleTurn:
    """A `Task` as an environment: the system prompt and the task's question, then one answer."""

    task: Task
    system_prompt: str | None = None
    """None: the task's own system prompt (else rlvr's default); "": none"""

    def reset(self, example: Example) -> list[dict]:
        return prompt_lib.build_messages(self.task, example, system_prompt=self.system_prompt)

    def step(self, example: Example, messages: list[dict]) -> Step:
        return Step(messages=[], done=True)


@dataclass
class ToolEnvironment:
    """A `Task` whose model may call `tools` (plain functions, TRL's `tools=[...]`) before answering.

    reset: the task's messages with the tools described in the system message
    (`rlvr.tools.tools_system_prompt`: the `<tool_call>` JSON format, for any chat template).
    step: every `<tool_call>` in the assistant's turn is run (`rlvr.tools.run_tool_call`: user code
    in a forked process, killed at `timeout`) and its result appended as a tool message; a turn
    with no call ends the episode, and its text is the answer the task judges. A call that is
    malformed, names no tool, raises or hangs is an error message to the model, never a dead run.
    """

    task: Task
    tools: list = field(default_factory=list)
    system_prompt: str | None = None
    timeout: float = 5.0
    """seconds one tool call may run"""
    isolate: bool | None = None
    """None: fork for every tool not marked `@trusted`; True: always; False: run in this process"""
    parse: object = None
    """the call parser (text -> list[ToolCall]); None: `rlvr.tools.parse_tool_calls`"""
    max_calls: int = 8
    """tool calls run per turn; the rest get an error"""
    stop_strings: tuple[str, ...] = ("</tool_call>",)
    """a turn stops after a call: the result comes back before the model goes on"""
    describe_tools: bool = True
    """append the tools' schemas and the call format to the system message (off: the prompt says it)"""

    def reset(self, example: Example) -> list[dict]:
        messages = prompt_lib.build_messages(self.task, example, system_prompt=self.system_prompt)
        if not self.tools or not self.describe_tools:
            return messages
        text = tools_system_prompt(self.tools)
        if messages and messages[0]["role"] == "system":
            return [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]]
        return [{"role": "system", "content": text}, *messages]

    def step(self, example: Example, messages: list[dict]) -> Step:
        return run_tools(messages[-1]["content"], self.tools, parse=self.parse, timeout=self.timeout,
                         isolate=self.isolate, max_calls=self.max_calls)

    def pending(self, example: Example, messages: list[dict]) -> bool:
        """The last turn calls a tool (the episode would go on): asked at the turn limit instead of `step`."""
        return bool(_parser(self.parse)(messages[-1]["content"]))


def run_tools(text: str, tools, *, parse=None, timeout: float = 5.0, isolate: bool | None = None,
              max_calls: int = 8) -> Step:
    """The step of a tool-calling environment: run the turn's calls, answer with their results;
    done when the turn has none."""
    calls = _parser(parse)(text)
    if not calls:
        return Step(messages=[], done=True)
    table = tool_map(tools)
    results = [run_tool_call(c, table, timeout=timeout, isolate=isolate) if k < max_calls
               else ToolResult(c.name, f"error: at most {max_calls} tool calls per turn", error=True)
               for k, c in enumerate(calls)]
    return Step(messages=[tool_message(r) for r in results], done=False, tool_calls=len(results),
                tool_errors=sum(bool(r.error or r.timed_out) for r in results),
                seconds=sum(r.seconds for r in results))


def _parser(parse):
    """The tool-call parser: `parse`, else `rlvr.tools.parse_tool_calls`."""
    return parse if parse is not None else parse_tool_calls


RESERVED = ("reset", "get_reward")
"""methods of a TRL environment class that are not tools"""


def trl_tool_methods(instance) -> list:
    """A TRL environment's tools: its public methods other than `reset` and `get_reward` (TRL's rule)."""
    return [m for name, m in inspect.getmembers(instance, predicate=inspect.ismethod)
            if name not in RESERVED and not name.startswith("_")]


def _in_process(method):
    """A method that runs here (it changes its instance's state, which a forked child would lose)."""
    @functools.wraps(method)
    def call(*args, **kwargs):
        return method(*args, **kwargs)

    call.__rlvr_trusted__ = True  # rlvr.tools.run_tool_call: no fork
    return call


class TRLEnvironment:
    """An environment class written for TRL's `GRPOTrainer(environment_factory=...)`, run unchanged.

    TRL's contract (trl/trainer/grpo_trainer.py): one instance per rollout, made by calling the
    factory with no argument; `reset(**row)` gets the example's columns as keyword arguments and
    may return a string, appended to the last user message; every public method other than
    `reset` and `get_reward` is a tool the model calls by name; `get_reward()` (optional) scores
    the finished episode from the instance's state, a reward of weight 1 named after the class.
    Tool methods run in this process (they change the instance's state), with no time-out, as in TRL.

    `task` gives the prompt (its user message, as TRL's dataset "prompt" column) and the columns.
    """

    def __init__(self, factory, task: Task, *, tools=(), system_prompt: str | None = None, parse=None,
                 timeout: float = 5.0, max_calls: int = 8, describe_tools: bool = True):
        if not callable(factory):
            raise ValueError(f"environment_factory must be a class or a function, not {factory!r}")
        self.factory, self.task, self.system_prompt, self.parse = factory, task, system_prompt, parse
        self.standalone, self.timeout, self.max_calls = list(tools), timeout, max_calls
        self.describe_tools = describe_tools
        self.instance = factory()
        if not callable(getattr(self.instance, "reset", None)):
            raise ValueError(f"{type(self.instance).__name__}: an environment_factory class must define reset()")
        self.name = type(self.instance).__name__
        self.has_reward = callable(getattr(self.instance, "get_reward", None))
        self.stop_strings = ("</tool_call>",)

    def fresh(self) -> "TRLEnvironment":
        """A new instance for one episode (TRL: one per rollout)."""
        return TRLEnvironment(self.factory, self.task, tools=self.standalone, system_prompt=self.system_prompt,
                              parse=self.parse, timeout=self.timeout, max_calls=self.max_calls,
                              describe_tools=self.describe_tools)

    def tools(self) -> list:
        return self.standalone + trl_tool_methods(self.instance)

    def reset(self, example: Example) -> list[dict]:
        observation = self.instance.reset(**{"prompt": self.task.user_message(example), **example.columns()})
        env = ToolEnvironment(self.task, self.tools(), self.system_prompt, describe_tools=self.describe_tools)
        messages = env.reset(example)
        if isinstance(observation, str):
            messages[-1] = {**messages[-1], "content": messages[-1]["content"] + observation}
        return messages

    def step(self, example: Example, messages: list[dict]) -> Step:
        table = {fn.__name__: fn for fn in self.standalone}  # plain functions: forked, with the time-out
        table.update({m.__name__: _in_process(m) for m in trl_tool_methods(self.instance)})
        return run_tools(messages[-1]["content"], table, parse=self.parse, timeout=self.timeout,
                         max_calls=self.max_calls)

    def pending(self, example: Example, messages: list[dict]) -> bool:
        return bool(_parser(self.parse)(messages[-1]["content"]))

    def reward(self, example: Example, messages: list[dict]) -> float | None:
        return float(self.instance.get_reward()) if self.has_reward else None


def environment_for(task: Task, system_prompt: str | None = None, *, tool_timeout: float = 5.0) -> Environment:
    """The environment a task runs in: its own (`task.environment(system_prompt)`) if it makes one,
    its `environment_factory` (a TRL environment class) if it has one, a `ToolEnvironment` if it has
    `tools` (plain functions), else `SingleTurn`."""
    own = getattr(task, "environment", None)
    if callable(own):
        return own(system_prompt)
    factory = getattr(task, "environment_factory", None)
    tools = list(getattr(task, "tools", None) or ())
    if factory is not None:
        return TRLEnvironment(factory, task, tools=tools, system_prompt=system_prompt, timeout=tool_timeout)
    if tools:
        return ToolEnvironment(task, tools, system_prompt, timeout=tool_timeout)
    return SingleTurn(task, system_prompt)
