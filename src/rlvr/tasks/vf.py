"""`vf:NAME`: a taskset of the `verifiers` package (0.4, its `verifiers.v1` stack) as an rlvr task.

    pip install "rlvr[verifiers]"            (verifiers==0.4.0; about 45 packages, torch untouched)
    rlvr train --task vf:my_taskset          NAME: an installed taskset package (or a module on sys.path)

What runs here: the taskset's tasks become the examples (the prompt text, the system prompt,
an `answer` field when the task data has one), and the score is the task's own `@vf.reward`
hooks (and plugged judges), weighted as verifiers weights them, run on a `verifiers.v1.Trace`
built from rlvr's conversation: `score(example, messages)` for a whole episode, `verify(answer,
example)` for an extracted answer (the reply is then the answer alone).

What does not, and why: verifiers 0.4 no longer has the `load_environment(name) -> Environment`
(dataset + rubric) of its 0.1-0.3 releases; `verifiers.v1.utils.loaders.load_environment(config:
EnvConfig) -> Env` builds an `Env` whose `run` drives *agents*: a harness program (even the
`null` one is a PEP 723 script it prepares with uv) launched in a runtime (subprocess, Docker,
Prime sandboxes) that talks to the model through an interception server at an OpenAI-compatible
endpoint, with tools served as MCP toolsets. rlvr samples turn by turn from the policy in
process, so it takes the data and the reward half of an environment (the `Taskset`), not its
agent half: multi-turn envs (user simulators, games), MCP toolsets and rewards that need the
runtime (`runtime` argument; verifiers skips them when scoring offline, as here) are not run.
"""

from __future__ import annotations

import asyncio
from itertools import islice
from typing import Any

from rlvr.tasks.base import Example, Task, split_train_test

MAX_TASKS = 100_000
"""an infinite taskset is cut here unless `n` says fewer"""


class VerifiersTask(Task):
    """The tasks and rewards of a `verifiers` taskset (verifiers 0.4)."""

    name = "vf"
    description = "a verifiers (0.4) taskset: its tasks and @vf.reward scoring"

    def __init__(self, taskset_id: str, *, n: int | None = None, test_fraction: float = 0.2,
                 n_test: int | None = None, seed: int = 42):
        try:
            from verifiers.v1.configs.taskset import TasksetConfig
            from verifiers.v1.utils.loaders import load_taskset
        except ImportError as e:
            raise ImportError(f"task 'vf:{taskset_id}' needs the verifiers package: pip install "
                              f"'rlvr[verifiers]' ({e})") from e
        if not taskset_id:
            raise ValueError("task 'vf:NAME' needs a taskset name, e.g. vf:my_taskset")
        try:
            taskset = load_taskset(TasksetConfig(id=taskset_id))
        except (ImportError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"task 'vf:{taskset_id}': {e}") from e
        self.name = f"vf:{taskset_id}"
        self._tasks = list(islice(taskset, n if n is not None else MAX_TASKS))
        if not self._tasks:
            raise ValueError(f"task 'vf:{taskset_id}': the taskset has no tasks")
        examples = [_example(k, t) for k, t in enumerate(self._tasks)]
        self._train, self._test = split_train_test(examples, test_fraction=test_fraction, n_test=n_test, seed=seed)
        systems = {t.data.system_prompt for t in self._tasks}
        self.system_prompt = systems.pop() if len(systems) == 1 else None

    def train_examples(self) -> list[Example]:
        return self._train

    def test_examples(self) -> list[Example]:
        return self._test

    def verify(self, answer: str | None, example: Example) -> float:
        """The task's weighted reward with `answer` as the whole reply, clipped to [0, 1]."""
        if answer is None:
            return 0.0
        messages = [{"role": "user", "content": example.question}, {"role": "assistant", "content": answer}]
        return min(1.0, max(0.0, self.score(example, messages)))

    def score(self, example: Example, messages: list[dict]) -> float:
        """The task's rewards (weighted sum, as `Trace.reward`) on a conversation in chat format."""
        task = self._tasks[example.metadata["vf_index"]]
        trace = make_trace(task, messages)
        asyncio.run(task.score(trace))
        return float(trace.reward)

    def reward(self, example: Example, messages: list[dict]) -> float:
        """An environment's episode reward (rlvr.environments): the same as `score`."""
        return self.score(example, messages)


def _example(index: int, task: Any) -> Example:
    data = task.data
    answer = getattr(data, "answer", None)
    return Example(question=data.prompt_text, answer="" if answer is None else str(answer),
                   metadata={"vf_index": index, "vf_key": task.key})


def make_trace(task: Any, messages: list[dict]) -> Any:
    """A `verifiers.v1.Trace` of a conversation: one node per message, a chain; the assistant
    messages are the sampled ones (what `trace.last_reply` and `assistant_messages` read)."""
    from verifiers.v1.configs.agent import AgentConfig
    from verifiers.v1.graph import MessageNode
    from verifiers.v1.trace import AgentInfo, Trace, TraceTask
    from verifiers.v1.types import AssistantMessage, SystemMessage, ToolMessage, UserMessage

    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    nodes = []
    for k, m in enumerate(messages):
        if m["role"] == "tool":
            message = ToolMessage(content=m["content"], name=m.get("name"), tool_call_id=m.get("tool_call_id", str(k)))
        elif m["role"] in kinds:
            message = kinds[m["role"]](content=m["content"])
        else:
            raise ValueError(f"vf: cannot score a message with role {m['role']!r}")
        nodes.append(MessageNode(parent=k - 1 if k else None, message=message, sampled=m["role"] == "assistant"))
    return Trace(task=TraceTask(type=type(task).__name__, data=task.data, key=task.key, hash=task.hash),
                 agent=AgentInfo(config=AgentConfig()), nodes=nodes, is_completed=True, ok=True)
