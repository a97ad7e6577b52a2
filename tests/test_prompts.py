"""Prompt building (chat and plain) and answer extraction from completions."""

import copy

import pytest

from rlvr.prompts import (
    DEFAULT_SYSTEM_PROMPT,
    build_messages,
    build_prompt,
    extract_answer,
    format_completion,
    parse_completion,
    split_think_answer,
)
from rlvr.rewards import is_lenient_format, is_strict_format
from rlvr.tasks import get_task


@pytest.fixture(scope="module")
def tokenizer():
    """The real SmolLM2 tokenizer (with its chat template), via the tiny random model."""
    from rlvr.models import tiny_random_model

    _, tok = tiny_random_model(seed=0)
    return tok


@pytest.fixture(scope="module")
def task():
    return get_task("subtraction", n=10)


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>\n5 - 3\n</think>\n<answer>2</answer>", "2"),
        ("<think>a</think><answer>  42 \n</answer>", "42"),  # stripped
        ("<think>x</think><answer>1</answer> then <answer>7</answer>", "7"),  # the last one
        ("<think>maybe <answer>9</answer></think><answer>3</answer>", "3"),  # not the one inside think
        ("<think>maybe <answer>9</answer></think> I am done", None),  # only inside think: none
        ("<think>still thinking <answer>9</answer>", None),  # unclosed think: still inside
        ("<think>x</think><answer>5", None),  # unclosed answer (truncated)
        ("no tags at all", None),
        ("<answer>8</answer>", "8"),  # no think block: the answer still counts
        # completion sampled after a "<think>" prefill but passed without it: a stray </think>
        ("5 - 3 is 2 <answer>0</answer></think>\n<answer>2</answer>", "2"),
        ("<think><think>nested</think> <answer>1</answer></think><answer>4</answer>", "4"),
        ("<think>a</think>\n<answer></answer>", ""),  # an empty answer is an answer
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_with_prefill_text():
    prefill = "Let me solve this step by step.\n<think>"
    completion = " 44 + 19 = 63 <answer>63</answer> no wait</think>\n<answer>44 + 19 + 35</answer>"
    assert extract_answer(prefill + completion) == "44 + 19 + 35"


@pytest.mark.timeout(10)
def test_extract_answer_on_a_megabyte():
    text = "<think>" + "<answer>1</answer>" * 60_000 + "</think><answer>ok</answer>"  # ~1 MB
    assert extract_answer(text) == "ok"
    assert extract_answer("x" * 1_000_000) is None


def test_split_think_answer():
    assert split_think_answer("<think>\n a \n</think><answer> b </answer>") == ("a", "b")
    assert split_think_answer("<think>half a thou") == ("half a thou", None)
    assert split_think_answer("just text") == (None, None)
    assert split_think_answer("reasoning</think><answer>1</answer>") == ("reasoning", "1")


def test_parse_completion_records_think_closes():
    parsed = parse_completion("<think>a</think><answer>1</answer>")
    assert parsed.thinks == ["a"] and parsed.answers == [(16, "1")] and parsed.think_closes == [8]


def test_format_completion_is_the_canonical_format():
    text = format_completion(" 2 + 2 ", "4")
    assert text == "<think>\n2 + 2\n</think>\n<answer>4</answer>"
    assert is_strict_format(text) and is_lenient_format(text) and extract_answer(text) == "4"
    assert "<think>" in DEFAULT_SYSTEM_PROMPT and "<answer>" in DEFAULT_SYSTEM_PROMPT


# --------------------------------------------------------------------------------- prompts


def test_plain_prompt(task):
    ex = task.train_examples()[0]
    text = build_prompt(None, task, ex, chat=False, prefill="<think>")
    assert text == f"{DEFAULT_SYSTEM_PROMPT}\n\nQuestion: {ex.question}\nAnswer: <think>"
    assert build_prompt(None, task, ex, chat=False, system_prompt="") == f"Question: {ex.question}\nAnswer: "


def test_chat_prompt_uses_the_template(tokenizer, task):
    ex = task.train_examples()[0]
    text = build_prompt(tokenizer, task, ex, prefill="<think>")  # chat=None: auto, template present
    expected = (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{ex.question}<|im_end|>\n<|im_start|>assistant\n<think>"
    )
    assert text == expected
    custom = build_prompt(tokenizer, task, ex, system_prompt="Be brief.")
    assert custom.startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_chat_template_without_system_role(tokenizer, task):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    ex = task.train_examples()[0]
    text = build_prompt(tok, task, ex, system_prompt="S")
    assert text == f"<user>S\n\n{ex.question}</user><assistant>"


def test_build_messages_task_system_prompt(task):
    ex = task.train_examples()[0]
    assert build_messages(task, ex)[0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    assert build_messages(task, ex, system_prompt="") == [{"role": "user", "content": ex.question}]
