"""`vf:NAME`: a taskset written for the verifiers package (0.4) runs as an rlvr task, scored by its own rewards."""

import textwrap

import pytest

pytest.importorskip("verifiers.v1", reason="pip install 'rlvr[verifiers]'")

from rlvr.tasks import get_task  # noqa: E402

TASKSET = '''
import verifiers.v1 as vf


class AddData(vf.TaskData):
    answer: str


class AddTask(vf.Task[AddData, vf.State, vf.TaskConfig]):
    @vf.reward
    async def correct(self, task: AddData, trace: vf.Trace) -> float:
        return float(trace.last_reply.strip() == task.answer)

    @vf.reward(weight=0.5)
    async def used_a_tool(self, trace: vf.Trace) -> float:
        return float(len(trace.tool_messages) > 0)


class AddTaskset(vf.Taskset[AddTask, vf.TasksetConfig]):
    def load(self):
        for a in range(10):
            yield AddTask(AddData(prompt=f"What is {a} + 2?", answer=str(a + 2), system_prompt="Add."))


__all__ = ["AddTaskset"]
'''


@pytest.fixture
def taskset(tmp_path, monkeypatch):
    """A taskset package written as verifiers' docs write one, importable by name (as if pip-installed)."""
    (tmp_path / "rlvr_toy_add_taskset.py").write_text(textwrap.dedent(TASKSET))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "vf:rlvr_toy_add_taskset"


def test_a_verifiers_taskset_is_an_rlvr_task(taskset):
    task = get_task(taskset, n_test=3)
    assert task.name == "vf:rlvr_toy_add_taskset" and task.system_prompt == "Add."
    test, train = task.test_examples(), task.train_examples()
    assert len(test) == 3 and len(train) == 7
    e = train[0]
    a = int(e.question.removeprefix("What is ").split(" ")[0])
    assert e.answer == str(a + 2)
    assert task.verify(str(a + 2), e) == 1.0  # correct: 1 x weight 1; no tool message: 0 x 0.5
    assert task.verify(str(a + 3), e) == 0.0
    assert task.verify(None, e) == 0.0


def test_the_tasks_rewards_score_a_whole_conversation_with_their_weights(taskset):
    task = get_task(taskset, n_test=3)
    e = task.test_examples()[0]
    messages = [{"role": "system", "content": "Add."}, {"role": "user", "content": e.question},
                {"role": "assistant", "content": "<tool_call>{}</tool_call>"},
                {"role": "tool", "name": "calculator", "content": e.answer},
                {"role": "assistant", "content": e.answer}]
    assert task.score(e, messages) == 1.5  # correct (weight 1) + used_a_tool (weight 0.5)
    assert task.reward(e, messages[:2] + [{"role": "assistant", "content": "no"}]) == 0.0


def test_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="vf:no_such_taskset_xyz.*not found"):
        get_task("vf:no_such_taskset_xyz")
    with pytest.raises(ValueError, match="needs a taskset name"):
        get_task("vf:")
