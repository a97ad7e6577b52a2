"""TRL's data formats: `dataset_task` on a `datasets.Dataset`, a DatasetDict or a list of dicts,
with TRL's `prompt` column (text or a conversation) and every column passed on unchanged."""

from __future__ import annotations

import pytest

from rlvr.prompts import DEFAULT_SYSTEM_PROMPT, build_messages, render_prompt
from rlvr.tasks import dataset_task
from rlvr.tasks.base import Example

CONVERSATION = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "2+2?"}]


def test_plain_prompt_rows_keep_every_column_under_its_own_name():
    rows = [{"prompt": f"what is {i}+{i}?", "solution": f"${2 * i}$", "level": i} for i in range(10)]
    task = dataset_task(rows, n_test=2, seed=0)
    assert len(task.train_examples()) == 8 and len(task.test_examples()) == 2
    ex = task.train_examples()[0]
    i = ex.metadata["level"]
    assert ex.question == f"what is {i}+{i}?"
    assert ex.answer == f"${2 * i}$"  # the accuracy reward's truth: `solution` when there is no `answer`
    cols = ex.columns()
    assert cols["solution"] == f"${2 * i}$" and cols["level"] == i  # unchanged: an int stays an int
    assert task.conversational is False and ex.messages is None
    assert task.name == "dataset"


def test_answer_column_precedence_and_unchanged_answer_values():
    rows = [{"prompt": "p", "answer": 4, "solution": "\\boxed{4}", "truth": "four"}]
    assert dataset_task(rows, n_test=0).train_examples()[0].answer == "4"
    assert dataset_task(rows, n_test=0, answer_column="truth").train_examples()[0].answer == "four"
    ex = dataset_task(rows, n_test=0).train_examples()[0]
    assert ex.columns()["answer"] == 4  # the column as the data has it, not the text
    no_truth = dataset_task([{"prompt": "p", "x": 1}], n_test=0)
    assert no_truth.answers is False and no_truth.verify("1", no_truth.train_examples()[0]) == 0.0


def test_dataset_and_datasetdict_with_their_splits_and_name():
    datasets = pytest.importorskip("datasets")
    info = datasets.DatasetInfo(dataset_name="toy-math")
    train = datasets.Dataset.from_list([{"prompt": f"q{i}", "answer": str(i)} for i in range(6)], info=info)
    test = datasets.Dataset.from_list([{"prompt": "t", "answer": "9"}])
    task = dataset_task(datasets.DatasetDict({"train": train, "test": test}))
    assert task.name == "toy-math"
    assert [e.question for e in task.test_examples()] == ["t"]
    assert len(task.train_examples()) == 6
    task = dataset_task(train, [{"prompt": "e", "answer": "1"}], name="mine")
    assert task.name == "mine" and [e.question for e in task.test_examples()] == ["e"]


def test_conversational_prompt_reaches_the_model_as_its_messages(smol_tokenizer):
    task = dataset_task([{"prompt": CONVERSATION, "answer": "4"}], n_test=0)
    ex = task.train_examples()[0]
    assert task.conversational is True and ex.question == "2+2?"
    assert build_messages(task, ex) == CONVERSATION  # its own system turn, not rlvr's default
    text = render_prompt(smol_tokenizer, build_messages(task, ex))
    assert "Answer in French." in text and DEFAULT_SYSTEM_PROMPT not in text
    assert text == smol_tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    # an explicit system prompt (task.system_prompt) replaces the conversation's
    assert build_messages(task, ex, system_prompt="Be brief.")[0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in build_messages(task, ex, system_prompt="")] == ["user"]


def test_conversation_ending_with_an_assistant_turn_is_continued(smol_tokenizer):
    """TRL's prefill in the data: the final assistant message is continued, not closed."""
    prompt = [*CONVERSATION, {"role": "assistant", "content": "<think>"}]
    ex = Example("2+2?", "4", messages=prompt)
    text = render_prompt(smol_tokenizer, build_messages(dataset_task([{"prompt": prompt}], n_test=0), ex))
    assert text.endswith("<think>")


def test_bad_data_is_named():
    with pytest.raises(ValueError, match="column 'prompt' not found.*question"):
        dataset_task([{"question": "q"}])
    with pytest.raises(ValueError, match="answer column 'truth' not found"):
        dataset_task([{"prompt": "q"}], answer_column="truth")
    with pytest.raises(TypeError, match="row 1 is a str"):
        dataset_task([{"prompt": "q"}, "oops"])
    with pytest.raises(ValueError, match="unknown option.*test_frac"):
        dataset_task([{"prompt": "q"}], test_frac=0.5)
    with pytest.raises(ValueError, match="row 0: column 'prompt' must be text"):
        dataset_task([{"prompt": 3}])
