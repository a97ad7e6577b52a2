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


# -------------------------------------------------------------------- math answers (math-verify)

@pytest.mark.parametrize("answer, truth, right", [
    ("\\boxed{4}", "4", True),  # the case: rlvr's exact path alone said wrong
    ("4", "$4$", True),  # exact path: parse_number reads LaTeX's $...$
    ("\\frac{1}{2}", "0.5", True),
    ("1/2", "$\\frac{1}{2}$", True),
    ("0.5", "\\dfrac{1}{2}", True),
    ("\\boxed{\\frac{3}{4}}", "$\\frac{3}{4}$", True),
    ("\\sqrt{2}", "$\\sqrt 2$", True),  # LaTeX without delimiters is read as if in $...$
    ("2\\sqrt{2}", "\\sqrt{8}", True),  # equal values, different forms
    ("\\boxed{5}", "4", False),
    ("3/4", "0.7", False),  # both numbers: the exact path decides
    ("\\frac{2}{3}", "0.66", False),
    ("x", "4", False),
    ("1080 dollars", "1080", False),  # words: not asked of math-verify (it would read 1080)
    ("5, 4", "4", False),  # nor a list (math-verify reads the last number)
    ("$2^{10}$", "1024", True),
    ("$9^{9^{9}}$", "1", False),  # a tower of powers is never handed to sympy
    ("Paris", "paris", True),  # normalised text, math-verify never asked
    ("Rome", "Paris", False),
])
def test_math_answers_match_by_value(answer, truth, right):
    from rlvr.tasks.custom import match_answer

    assert match_answer(answer, truth) == float(right)


def test_math_verify_is_asked_only_for_math_truths():
    from rlvr.tasks.mathcheck import looks_like_math, math_equal

    assert looks_like_math("4") and looks_like_math("\\frac{1}{2}") and looks_like_math("$x^2$")
    assert not looks_like_math("Paris") and not looks_like_math("yes")
    assert math_equal("\\boxed{4}", "4") and not math_equal("\\boxed{4}", "5")
    assert not math_equal("9" * 400, "9" * 400)  # too long to parse: no sympy on huge inputs


def test_gsm8k_verify_takes_boxed_and_fractions_but_keeps_its_comma_rule():
    from rlvr.tasks.gsm8k import GSM8KTask

    task = GSM8KTask.__new__(GSM8KTask)
    task.remove_comma = True
    ex = Example("q", "18")
    assert task.verify("\\boxed{18}", ex) == 1.0 and task.verify("\\frac{36}{2}", ex) == 1.0
    assert task.verify("\\boxed{17}", ex) == 0.0
    task.remove_comma = False  # seed 001's not_remove_comma: "1,234" is not a number
    assert task.verify("1,234", Example("q", "1234")) == 0.0


def test_built_in_accuracy_reward_scores_boxed_answers():
    from rlvr.rewards import make_accuracy_reward

    task = dataset_task([{"prompt": "2+2?", "solution": "$4$"}], n_test=0)
    reward = make_accuracy_reward(task)
    ex = task.train_examples()[0]
    assert reward(["<think>2+2</think><answer>\\boxed{4}</answer>", "<answer>\\boxed{5}</answer>"],
                  _example=[ex, ex]) == [1.0, 0.0]


# ------------------------------------------------------------------ hf: files, directories, offline

ROWS = [{"prompt": f"{i}+1?", "solution": f"${i + 1}$", "level": i % 2} for i in range(10)]


def _write_rows(tmp_path, kind):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    path = tmp_path / f"data.{kind}"
    {"parquet": ds.to_parquet, "jsonl": lambda p: ds.to_json(p, lines=True), "csv": ds.to_csv}[kind](str(path))
    return path


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "csv"])
def test_hf_takes_a_single_file(tmp_path, kind):
    from rlvr.tasks import get_task

    task = get_task(f"hf:{_write_rows(tmp_path, kind)}", answer_column="solution", n_test=2)
    assert len(task.train_examples()) == 8 and len(task.test_examples()) == 2
    ex = task.train_examples()[0]
    assert ex.question == ex.metadata["prompt"] and ex.answer == ex.metadata["solution"]  # prompt is the default
    assert task.reward_columns(ex)["solution"] == ex.answer  # under its own name, not only as `answer`


def test_hf_takes_a_save_to_disk_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    from rlvr.tasks import get_task

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    task = get_task(f"hf:{tmp_path / 'one'}", answer_column="solution", n_test=3)
    assert len(task.test_examples()) == 3
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:7]), "test": datasets.Dataset.from_list(ROWS[7:])})
    dd.save_to_disk(str(tmp_path / "two"))
    task = get_task(f"hf:{tmp_path / 'two'}", answer_column="solution")
    assert (len(task.train_examples()), len(task.test_examples())) == (7, 3)


def test_a_conversational_prompt_column_in_jsonl_is_used_as_is(tmp_path):
    import json

    from rlvr.tasks import get_task

    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": CONVERSATION, "answer": "4"}) for _ in range(3)) + "\n")
    task = get_task(f"jsonl:{path}", n_test=0)
    ex = task.train_examples()[0]
    assert ex.messages == CONVERSATION and build_messages(task, ex) == CONVERSATION
    assert task.conversational is True and ex.question == "2+2?"


def test_a_hub_id_without_network_fails_at_once_naming_it(tmp_path):
    """No network here: the Hub client used to retry for ~24 s before a bare ConnectionError."""
    import os
    import subprocess
    import sys

    code = ("import sys, time, datasets\n"
            "from rlvr.tasks import get_task\n"
            "t0 = time.perf_counter()\n"
            "try:\n"
            "    get_task('hf:nobody/no-such-dataset')\n"
            "except RuntimeError as e:\n"
            "    print(time.perf_counter() - t0, e)\n")
    for offline in ("1", None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "proxy" not in k.lower()}
        env["HF_HOME"] = str(tmp_path / "hf")
        if offline:
            env["HF_HUB_OFFLINE"] = offline
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        seconds, message = proc.stdout.split(" ", 1)
        assert "hf:nobody/no-such-dataset: the Hugging Face Hub cannot be reached" in message, proc.stderr[-2000:]
        assert float(seconds) < 8, seconds  # at once: a 3 s probe at most (the Hub client retried for 24 s)


def test_a_plain_prompt_column_follows_trls_rules(tmp_path):
    """TRL-format data in a file: plain-text prompts give string completions, and `prompts` is the
    data's text; question/answer data keeps rlvr's rule (the prompt format decides)."""
    import json

    from rlvr.rollout import PromptFormat, _is_chat, trl_prompt
    from rlvr.tasks import get_task

    class Chatty:
        chat_template = "{{ messages }}"

    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"prompt": "2+2?", "answer": "4"}) + "\n")
    task = get_task(f"jsonl:{path}", n_test=0)
    assert task.conversational is False and not _is_chat(Chatty(), PromptFormat(), task)
    assert trl_prompt(task, task.train_examples()[0], PromptFormat(prefill="<think>"), False) == "2+2?<think>"
    path.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n")
    task = get_task(f"jsonl:{path}", n_test=0)
    assert task.conversational is None and _is_chat(Chatty(), PromptFormat(), task)
