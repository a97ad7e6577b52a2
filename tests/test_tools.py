"""Tools: schemas (as transformers writes them), parsing the model's calls, running them safely, the prompt."""

import os
import time
from typing import Literal

import pytest

from rlvr.tools import (
    ToolCall,
    ToolResult,
    format_tool_call,
    parse_tool_calls,
    render_tools,
    run_tool_call,
    run_tool_calls,
    supports_tools,
    tool_message,
    tool_schema,
    tools_in_messages,
    tools_system_prompt,
    trusted,
)

# ------------------------------------------------------------------------------ schemas


def get_weather(city: str, unit: Literal["c", "f"] = "c", days: int | None = None, tags: list[str] = ()) -> str:
    """Get the weather forecast for a city.

    Args:
        city: The city, e.g. Paris,
            written in English.
        unit (str): The unit of temperature
        days: How many days
        tags: extra tags

    Returns:
        The forecast.
    """
    return f"sunny in {city}"


def test_schema_of_a_typed_function_with_a_docstring():
    """Worked out by hand from the signature and the docstring (continuation lines joined, the
    "(str)" type in the Args line dropped, Optional as nullable, Literal as enum)."""
    assert tool_schema(get_weather) == {"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the weather forecast for a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "The city, e.g. Paris, written in English."},
            "unit": {"type": "string", "enum": ["c", "f"], "description": "The unit of temperature"},
            "days": {"type": "integer", "nullable": True, "description": "How many days"},
            "tags": {"type": "array", "items": {"type": "string"}, "description": "extra tags"}},
            "required": ["city"]},
        "return": {"type": "string", "description": "The forecast."}}}


def multiply(a: float, b: int | float, *, exact: bool = False) -> dict[str, float]:
    """Multiply two numbers.

    Longer explanation on a second paragraph.

    Args:
        a: the first factor
        b: the second factor
        exact: whether to use fractions
    """
    return {"product": a * b}


@pytest.mark.parametrize("fn", [get_weather, multiply])
def test_schema_agrees_with_transformers(fn):
    """TRL renders tools with transformers' get_json_schema: ours (text-only, no transformers import) agrees."""
    from transformers.utils import get_json_schema

    assert tool_schema(fn) == get_json_schema(fn)


def test_schema_errors_name_the_function_and_argument():
    def no_hint(x) -> str:
        """Does things.

        Args:
            x: a thing
        """

    def undocumented(x: int, y: int) -> int:
        """Adds.

        Args:
            x: the first
        """

    def no_doc(x: int):
        pass

    with pytest.raises(ValueError, match="'no_hint'.*'x'.*type hint"):
        tool_schema(no_hint)
    with pytest.raises(ValueError, match="'undocumented'.*'y'.*Args"):
        tool_schema(undocumented)
    with pytest.raises(ValueError, match="'no_doc'.*no docstring"):
        tool_schema(no_doc)


# ------------------------------------------------------------------------------ parsing


def test_parse_nested_json_and_several_calls():
    text = ('I will call two tools.\n<tool_call>\n{"name": "f", "arguments": {"a": {"b": [1, {"c": "}"}]}}}\n'
            '</tool_call>\nthen <tool_call>{"name": "g", "arguments": {}}</tool_call> done')
    calls = parse_tool_calls(text)
    assert [c.name for c in calls] == ["f", "g"]
    assert calls[0].arguments == {"a": {"b": [1, {"c": "}"}]}}
    assert calls[0].text.startswith("<tool_call>\n{") and calls[0].text.endswith("</tool_call>")
    assert calls[0].text in text and calls[1].text == '<tool_call>{"name": "g", "arguments": {}}</tool_call>'
    assert all(c.error == "" for c in calls)


def test_parse_no_call():
    assert parse_tool_calls("<think>\nno tools\n</think>\n<answer>4</answer>") == []


@pytest.mark.parametrize("body, error, name", [
    ("{bad json}", "not valid JSON", ""),
    ('["f", {}]', "must be a JSON object", ""),
    ('{"arguments": {"x": 1}}', 'no "name"', ""),
    ('{"name": "", "arguments": {}}', 'no "name"', ""),
    ('{"name": "f", "arguments": [1, 2]}', '"arguments" must be a JSON object', "f"),
    ('{"name": "f", "arguments": "{not json"}', "not a JSON object", "f"),
])
def test_parse_malformed_calls_report_why(body, error, name):
    (call,) = parse_tool_calls(f"x <tool_call>{body}</tool_call> y")
    assert error in call.error and call.name == name and call.arguments == {}
    assert call.text == f"<tool_call>{body}</tool_call>"


def test_parse_unclosed_call_and_argument_variants():
    (call,) = parse_tool_calls('<tool_call>{"name": "f", "arguments": {}}')
    assert "no closing </tool_call>" in call.error
    a, b, c = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"x\\": 2}"}</tool_call>'
                               '<tool_call>{"name": "f", "parameters": {"x": 3}}</tool_call>'
                               '<tool_call>{"name": "f"}</tool_call>')
    assert (a.arguments, b.arguments, c.arguments) == ({"x": 2}, {"x": 3}, {})
    assert not (a.error or b.error or c.error)


def test_format_tool_call_parses_back():
    text = format_tool_call("calculator", {"expression": "12 * (3 + 4)"})
    assert parse_tool_calls(text) == [ToolCall("calculator", {"expression": "12 * (3 + 4)"}, text)]


# ------------------------------------------------------------------------------ running


def add(a: int, b: int) -> int:
    """Add.

    Args:
        a: first
        b: second
    """
    return a + b


def fails(x: int) -> str:
    """Always raises.

    Args:
        x: ignored
    """
    raise ValueError(f"no luck with {x}")


def hangs() -> str:
    """Never returns."""
    time.sleep(600)
    return "late"


def hangs_with_child() -> str:
    """Starts a subprocess, then never returns."""
    import subprocess

    subprocess.Popen(["sleep", "600"])
    time.sleep(600)
    return "late"


def pid() -> int:
    """The process id it runs in."""
    return os.getpid()


def huge() -> str:
    """A megabyte."""
    return "x" * 1_000_000


TOOLS = {f.__name__: f for f in (add, fails, hangs, hangs_with_child, pid, huge)}


def call(name, **arguments):
    return ToolCall(name, arguments, "")


def test_run_a_tool():
    result = run_tool_call(call("add", a=2, b=3), TOOLS)
    assert (result.name, result.content, result.error, result.timed_out) == ("add", "5", False, False)
    assert tool_message(result) == {"role": "tool", "name": "add", "content": "5"}


def test_a_raising_tool_gives_an_error_message_not_an_exception():
    result = run_tool_call(call("fails", x=7), TOOLS)
    assert result.error and not result.timed_out
    assert result.content == "error: ValueError: no luck with 7"


def test_a_hanging_tool_is_cut_at_its_timeout_and_the_next_call_runs():
    start = time.monotonic()
    result = run_tool_call(call("hangs"), TOOLS, timeout=0.5)
    assert time.monotonic() - start < 5
    assert result.timed_out and result.error and "0.5 s" in result.content
    assert 0.5 <= result.seconds < 5
    assert run_tool_call(call("add", a=1, b=1), TOOLS).content == "2"


def test_a_hanging_tools_subprocesses_die_with_it():
    """The tool's own `sleep 600` is killed with its process group (rlvr.sandbox)."""
    import subprocess

    before = subprocess.run(["pgrep", "-f", "^sleep 600$"], capture_output=True, text=True).stdout.split()
    result = run_tool_call(call("hangs_with_child"), TOOLS, timeout=1.0)
    assert result.timed_out
    time.sleep(0.2)
    after = subprocess.run(["pgrep", "-f", "^sleep 600$"], capture_output=True, text=True).stdout.split()
    assert set(after) <= set(before), "the tool's subprocess outlived the time-out"


def test_isolation_runs_user_tools_in_a_child_and_trusted_ones_here():
    assert run_tool_call(call("pid"), TOOLS).content != str(os.getpid())
    assert run_tool_call(call("pid"), TOOLS, isolate=False).content == str(os.getpid())
    trusted_pid = trusted(lambda: os.getpid())
    assert run_tool_call(call("p"), {"p": trusted_pid}).content == str(os.getpid())
    assert run_tool_call(call("p"), {"p": trusted_pid}, isolate=True).content != str(os.getpid())


@pytest.mark.parametrize("the_call, message", [
    (call("nope"), "error: unknown tool 'nope'; tools: add"),
    (call("add", a=1), "error: wrong arguments for add: missing a required argument: 'b'"),
    (call("add", a=1, b=2, c=3), "error: wrong arguments for add: got an unexpected keyword argument 'c'"),
    (ToolCall("", {}, "<tool_call>{x}</tool_call>", error="the tool call is not valid JSON"),
     "error: the tool call is not valid JSON"),
])
def test_bad_calls_are_reported_to_the_model(the_call, message):
    result = run_tool_call(the_call, {"add": add})
    assert result.error and result.content == message


def test_a_huge_result_is_cut():
    result = run_tool_call(call("huge"), TOOLS, max_chars=100)
    assert result.content.startswith("x" * 100) and "999900 more characters" in result.content
    assert len(result.content) < 200


def test_run_tool_calls_runs_every_call_of_a_turn_up_to_the_limit():
    text = "".join(format_tool_call("add", {"a": k, "b": 1}) for k in range(2)) + "<tool_call>{oops</tool_call>"
    text += format_tool_call("add", {"a": 5, "b": 1})
    results = run_tool_calls(text, [add], max_calls=3)
    assert [r.content for r in results[:2]] == ["1", "2"]
    assert results[2].error and "not valid JSON" in results[2].content
    assert results[3] == ToolResult("add", "error: at most 3 tool calls per turn", error=True)


# ------------------------------------------------------------------------------ the prompt

TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% endif %}\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools><|im_end|>\n{% endif %}"
    "{%- for m in messages %}{% if not (tools and m['role'] == 'system') %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""a Qwen-like template that shows the tools (cut down)"""

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "weather in Paris?"}]


def test_smollm2_has_no_tool_support_so_the_tools_go_into_the_system_prompt(smol_tokenizer):
    assert not supports_tools(smol_tokenizer)
    messages, kwargs = tools_in_messages(smol_tokenizer, MESSAGES, [get_weather])
    assert kwargs == {}
    assert messages[0]["content"] == "Be brief.\n\n" + tools_system_prompt([get_weather])
    assert messages[1:] == MESSAGES[1:] and MESSAGES[0]["content"] == "Be brief."  # the input is not changed
    text = render_tools(smol_tokenizer, MESSAGES, [get_weather], prefill="<think>")
    assert '"name": "get_weather"' in text and "<tool_call>" in text
    assert text.endswith("<|im_start|>assistant\n<think>")
    no_system, _ = tools_in_messages(smol_tokenizer, MESSAGES[1:], [get_weather])
    assert no_system[0] == {"role": "system", "content": tools_system_prompt([get_weather])}


def test_tools_system_prompt_shows_schemas_and_the_call_format():
    text = tools_system_prompt([add])
    assert '{"name": "add", "description": "Add."' in text
    call_example = text[text.index("<tool_call>"):text.index("</tool_call>") + len("</tool_call>")]
    assert parse_tool_calls(call_example)[0].name == "add"


def test_a_template_with_tool_support_gets_the_schemas():
    from conftest import char_tokenizer

    tok = char_tokenizer()
    tok.chat_template = TOOL_TEMPLATE
    assert supports_tools(tok)
    messages, kwargs = tools_in_messages(tok, MESSAGES, [get_weather])
    assert messages == MESSAGES and kwargs == {"tools": [tool_schema(get_weather)]}
    text = render_tools(tok, MESSAGES, [get_weather])
    assert '"name": "get_weather"' in text and "You can call these tools" not in text
    assert text.startswith("<|im_start|>system\nBe brief.<tools>")  # (the template trims the newline)
    assert render_tools(tok, MESSAGES, []) == tok.apply_chat_template(MESSAGES, tokenize=False,
                                                                       add_generation_prompt=True)
