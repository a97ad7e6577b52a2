"""Prompts in, answers out: the chat / plain templates, the assistant prefill, answer extraction.

One canonical completion format is used everywhere (the system prompt, the procedural
demonstrations of the SFT warm-up, the format rewards):

    <think>
    ...short reasoning...
    </think>
    <answer>ANSWER</answer>

`extract_answer` returns the content of the last `<answer>` tag that lies *outside* every
`<think>` block, so an answer written while still thinking never counts. Departure from the
R1-Zero recipes (seed 000, docs/SEEDS.md, TinyZero): those search `<answer>(.*?)</answer>` anywhere in the text.

With a prefill (e.g. "<think>" placed at the start of the assistant turn), the sampled completion
lacks the opening tag: call these functions on `prefill + completion`. A completion whose first
tag is a stray `</think>` is read as if it began inside a think block, so forgetting the prefill
costs nothing.

This module duck-types the tokenizer (anything with `apply_chat_template` and `chat_template`);
it does not import transformers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # no runtime import: the task modules import this one
    from rlvr.tasks.base import Example, Task

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful assistant. Think briefly step by step inside <think> </think>, "
    "then give only the final answer inside <answer> </answer>, like this:\n"
    "<think>\nyour reasoning\n</think>\n<answer>your answer</answer>"
)
"""Asks for the canonical format; short, because every prompt token costs time on a CPU."""

PLAIN_TEMPLATE = "{system}\n\nQuestion: {question}\nAnswer: "
"""The prompt for models without a chat template (seed 001's `is_chat=False`); prefill follows."""


def format_completion(think: str, answer: str) -> str:
    """The canonical completion: `<think>\\n{think}\\n</think>\\n<answer>{answer}</answer>`."""
    return f"{THINK_OPEN}\n{think.strip()}\n{THINK_CLOSE}\n{ANSWER_OPEN}{answer.strip()}{ANSWER_CLOSE}"


def build_messages(task: Task, example: Example, *, system_prompt: str | None = None) -> list[dict]:
    """The chat messages: the system prompt (unless it is "") and the task's user turn.

    The system prompt is `system_prompt` if given, else the task's own, else DEFAULT_SYSTEM_PROMPT.
    An example that carries its own conversation (`Example.messages`, a TRL dataset's
    conversational `prompt`) starts with it as it is; only an explicit `system_prompt` changes it
    (replacing its system turn; "" removes it).
    """
    if example.messages is not None:
        return conversation_messages(example.messages, system_prompt)
    system = _system_text(task, system_prompt)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": task.user_message(example)})
    return messages


def conversation_messages(messages: list[dict], system_prompt: str | None = None) -> list[dict]:
    """A copy of a data conversation; with `system_prompt` given, its system turns are replaced
    by that one ("": none)."""
    out = [dict(m) for m in messages]
    if system_prompt is None:
        return out
    out = [m for m in out if m.get("role") != "system"]
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + out


def build_prompt(
    tokenizer: Any,
    task: Task,
    example: Example,
    *,
    chat: bool | None = None,
    system_prompt: str | None = None,
    prefill: str = "",
) -> str:
    """The full prompt text of a single-turn example: chat template (or plain template) + prefill."""
    return render_prompt(tokenizer, build_messages(task, example, system_prompt=system_prompt), chat=chat,
                         prefill=prefill)


def render_prompt(tokenizer: Any, messages: list[dict], *, chat: bool | None = None, prefill: str = "") -> str:
    """The prompt text of a conversation so far, ready for the model's next turn, + prefill.

    chat=None picks the chat template when the tokenizer has one. A template that refuses the
    system role (some do) gets the system text prepended to the first user turn instead. Without a
    chat template (seed 001's `is_chat=False`): the plain template, system text then
    "Question: ... Answer: " (one user turn only). The tokenizer may be None for plain prompts.
    """
    if chat is None:
        chat = bool(getattr(tokenizer, "chat_template", None))
    if not chat:
        system = "".join(m["content"] for m in messages if m["role"] == "system")
        question = "\n\n".join(m["content"] for m in messages if m["role"] != "system")
        if not system:
            return f"Question: {question}\nAnswer: {prefill}"
        return PLAIN_TEMPLATE.format(system=system, question=question) + prefill
    try:
        text = _apply_template(tokenizer, messages)
    except Exception:
        if messages[0]["role"] != "system":
            raise
        merged = f"{messages[0]['content']}\n\n{messages[1]['content']}"
        text = _apply_template(tokenizer, [{"role": "user", "content": merged}, *messages[2:]])
    return text + prefill


def _system_text(task: Task, system_prompt: str | None) -> str:
    if system_prompt is not None:
        return system_prompt
    if getattr(task, "system_prompt", None) is not None:
        return task.system_prompt
    return DEFAULT_SYSTEM_PROMPT


def _apply_template(tokenizer: Any, messages: list[dict]) -> str:
    """The chat template with the generation prompt; a conversation that ends with an assistant
    turn is continued instead (TRL's `continue_final_message`: a prefill written in the data)."""
    if messages and messages[-1].get("role") == "assistant":
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False,
                                             continue_final_message=True)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ------------------------------------------------------------------ parsing completions

_TAG = re.compile(r"</?think>|</?answer>")


@dataclass
class Parsed:
    """The tag structure of a completion (see `parse_completion`)."""

    thinks: list[str] = field(default_factory=list)
    """contents of the closed top-level think blocks, in order"""
    open_think: str | None = None
    """content of a think block left open at the end (truncated completions)"""
    answers: list[tuple[int, str]] = field(default_factory=list)
    """(start offset, content) of each closed answer tag outside every think block"""
    think_closes: list[int] = field(default_factory=list)
    """offsets of the `</think>` tags that closed a top-level think block"""


def parse_completion(text: str) -> Parsed:
    """One linear scan over the tags; an `<answer>` inside `<think>...</think>` is skipped.

    A `</think>` with no open think block (a completion sampled after a "<think>" prefill but
    passed without it) means everything before it was thinking: earlier answers are dropped.
    """
    out = Parsed()
    spans: list[tuple[int, int]] = []  # think blocks, sliced once at the end (stays linear)
    depth, think_start, pos = 0, 0, 0
    while (m := _TAG.search(text, pos)) is not None:
        tag, pos = m.group(), m.end()
        if tag == THINK_OPEN:
            if depth == 0:
                think_start = m.end()
            depth += 1
        elif tag == THINK_CLOSE:
            if depth == 0:  # stray close: the text so far was a think block
                spans, out.answers = [(0, m.start())], []
            else:
                depth -= 1
                if depth == 0:
                    spans.append((think_start, m.start()))
            if depth == 0:
                out.think_closes.append(m.start())
        elif tag == ANSWER_OPEN and depth == 0:
            close = text.find(ANSWER_CLOSE, m.end())
            if close < 0:
                break  # an unclosed answer (truncated) does not count
            out.answers.append((m.start(), text[m.end() : close]))
            pos = close + len(ANSWER_CLOSE)
    out.thinks = [text[a:b] for a, b in spans]
    if depth > 0:
        out.open_think = text[think_start:]
    return out


def extract_answer(text: str) -> str | None:
    """The stripped content of the last answer tag outside every think block; None if none."""
    answers = parse_completion(text).answers
    return answers[-1][1].strip() if answers else None


def split_think_answer(text: str) -> tuple[str | None, str | None]:
    """(reasoning, answer) for display: the first think block (or an unclosed one), the answer."""
    parsed = parse_completion(text)
    think = parsed.thinks[0] if parsed.thinks else parsed.open_think
    answer = parsed.answers[-1][1].strip() if parsed.answers else None
    return (think.strip() if think is not None else None), answer
