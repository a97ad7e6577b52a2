"""Environments: an episode is a conversation between the model and its environment.

    messages = env.reset(example)                  the first messages (system, user)
    loop:  the model writes an assistant turn
           step = env.step(example, messages)      messages to append (tool results, a user turn)
           until step.done                         ... and the episode's reward sees it all

Only the tokens the model wrote carry loss: each rollout holds a per-token loss mask
(`rlvr.buffer.Rollout.loss_mask`), 0 on what the environment appended, so the update needs no
notion of turns. The default environment is `SingleTurn`, the Task as rlvr always ran it: one
user turn, one answer, done. Multi-turn environments (tools, dialogue) implement the same two
methods; the rollout drives them turn by turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from rlvr import prompts as prompt_lib
from rlvr.tasks.base import Example, Task


@dataclass
class Step:
    """What the environment answers to an assistant turn."""

    messages: list[dict] = field(default_factory=list)
    """messages to append before the model's next turn (role "tool" or "user")"""
    done: bool = True
    """the episode is over: no further assistant turn"""


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
