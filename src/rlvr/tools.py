"""Tools: plain Python functions a model may call, as in TRL's `GRPOTrainer(tools=[...])`.

    schema = tool_schema(fn)                       JSON schema from type hints + Google docstring
    text = render_tools(tokenizer, messages, tools)   the prompt: the chat template's own tool
                                                   support, else a plain-text system-prompt fallback
    calls = parse_tool_calls(completion)           <tool_call>{"name": ..., "arguments": {...}}</tool_call>
    result = run_tool_call(call, tools)            in a forked child with a time-out (user code)
    messages.append(tool_message(result))          {"role": "tool", "name": ..., "content": ...}

The call format is the Hermes / Qwen2.5 / Qwen3 / SmolLM3 one: a JSON object between
`<tool_call>` and `</tool_call>` in the assistant's text. A model whose chat template renders
tools (`supports_tools`) is shown them by its template; others (SmolLM2's template ignores
`tools=`) get `tools_system_prompt(tools)` appended to the system message, which teaches the
same format.

Errors go to the model, never up the stack: a malformed call is a `ToolCall` with `error` set
(its name "" when unknown), and running it gives a `ToolResult(error=True)` whose content starts
"error: " and says what was wrong; a tool that raises gives "error: ValueError: ..."; one that
hangs is killed at the time-out (`timed_out=True`), with any subprocesses it started
(`rlvr.sandbox`). Departure from TRL: TRL runs tools in the trainer's process with no time-out
(a hanging tool hangs the run); here a tool runs in-process only when marked `@trusted` (the
built-in calculator) or asked (`isolate=False`).

This module is text only (no torch, no transformers): `tool_schema` re-implements
`transformers.utils.get_json_schema` for the types tools use (tests/test_tools.py checks they
agree), and the tokenizer is duck-typed.
"""

from __future__ import annotations

import inspect
import json
import re
import time
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from rlvr import prompts as prompt_lib
from rlvr.sandbox import run_forked

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
MAX_RESULT_CHARS = 2000
"""a tool's output is cut to this many characters (with a note) before the model sees it"""


@dataclass(frozen=True)
class ToolCall:
    """One call written by the model."""

    name: str
    """the tool's name ("" when the call could not be read)"""
    arguments: dict
    """keyword arguments for the tool"""
    text: str
    """the raw span in the completion, tags included"""
    error: str = ""
    """why the call is malformed ("": it is well formed); running it reports this to the model"""


@dataclass(frozen=True)
class ToolResult:
    """What running a call gave; `content` is what the model reads."""

    name: str
    content: str
    error: bool = False
    timed_out: bool = False
    seconds: float = 0.0


# ------------------------------------------------------------------ schemas

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null",
               list: "array", tuple: "array", dict: "object"}


def tool_schema(fn: Callable) -> dict:
    """The JSON schema of `fn` in the chat-template format, as `transformers.utils.get_json_schema`:

        {"type": "function", "function": {"name", "description", "parameters": {"type": "object",
         "properties": {arg: {"type", "description"}}, "required": [...]}}}

    Every argument needs a type hint and a line in the docstring's `Args:` block; otherwise a
    ValueError names the function and the argument.
    """
    name = getattr(fn, "__name__", "operation")
    doc = inspect.getdoc(fn)
    if not doc:
        raise ValueError(f"tool {name!r} has no docstring: a tool needs one (a description and an Args: block)")
    description, arg_docs, returns = _parse_docstring(doc)
    hints = get_type_hints(fn)
    properties, required = {}, []
    for param in inspect.signature(fn).parameters.values():
        if param.name in ("self", "cls") and param.annotation is inspect.Parameter.empty:
            continue
        if param.name not in hints:
            raise ValueError(f"tool {name!r}: argument {param.name!r} has no type hint")
        if param.name not in arg_docs:
            raise ValueError(f"tool {name!r}: argument {param.name!r} is not described in the docstring's Args: block")
        properties[param.name] = {**_type_schema(hints[param.name], name), "description": arg_docs[param.name]}
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    out = {"name": name, "description": description, "parameters": parameters}
    if "return" in hints:  # most templates ignore it; kept as transformers has it
        try:
            out["return"] = _type_schema(hints["return"], name)
            if returns is not None:
                out["return"]["description"] = returns
        except ValueError:
            pass
    return {"type": "function", "function": out}


def _type_schema(hint: Any, fn_name: str) -> dict:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return {}
    if origin is None:
        if hint not in _JSON_TYPES:
            raise ValueError(f"tool {fn_name!r}: cannot write the type {hint!r} as JSON (use str, int, float, "
                             "bool, list, dict, Literal or unions of them)")
        return {"type": _JSON_TYPES[hint]}
    if origin is Union or origin is types.UnionType:
        subs = [_type_schema(a, fn_name) for a in args if a is not type(None)]
        if len(subs) == 1:
            out = subs[0]
        elif all(s.keys() == {"type"} and isinstance(s["type"], str) for s in subs):
            names = sorted({s["type"] for s in subs})
            out = {"type": names[0] if len(names) == 1 else names}
        else:
            out = {"anyOf": subs}
        return {**out, "nullable": True} if type(None) in args else out
    if origin is Literal:
        kinds = list(dict.fromkeys(_JSON_TYPES[type(a)] for a in args))
        return {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": list(args)}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0], fn_name)} if args else {"type": "array"}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(args[1], fn_name)} if len(args) == 2 else \
            {"type": "object"}
    raise ValueError(f"tool {fn_name!r}: cannot write the type {hint!r} as JSON")


_SECTION = re.compile(r"\n\s*(Args|Returns|Raises|Examples?):\s*\n", re.IGNORECASE)
_ARG_LINE = re.compile(r"^(\s*)(\w+)(?:\s*\([^()\n]*\))?:\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str], str | None]:
    """(description, {argument: description}, returns) of a Google-style docstring."""
    doc = "\n" + doc.strip() + "\n"
    sections = _SECTION.split(doc)  # [description, name, body, name, body, ...]
    description = sections[0].strip()
    arg_docs: dict[str, str] = {}
    returns = None
    for title, body in zip(sections[1::2], sections[2::2], strict=True):
        if title.lower() == "returns":
            returns = body.strip()
        if title.lower() != "args":
            continue
        indent, current = None, None
        for line in body.splitlines():
            if not line.strip():
                continue
            match = _ARG_LINE.match(line)
            if match and (indent is None or len(match.group(1)) <= indent):
                indent, current = len(match.group(1)), match.group(2)
                arg_docs[current] = match.group(3).strip()
            elif current is not None:  # a continuation line
                arg_docs[current] = f"{arg_docs[current]} {line.strip()}".strip()
    return description, arg_docs, returns


# ------------------------------------------------------------------ the prompt


def tools_system_prompt(tools: Iterable[Callable | dict]) -> str:
    """The plain-text fallback: the tools' schemas and the call format, for the system message."""
    schemas = [t if isinstance(t, dict) else tool_schema(t) for t in tools]
    functions = [s.get("function", s) for s in schemas]
    lines = [json.dumps({k: v for k, v in f.items() if k != "return"}) for f in functions]  # (the model never writes it)
    first = functions[0] if functions else {"name": "tool", "parameters": {}}
    params = first.get("parameters", {})
    example_args = {arg: "..." for arg in params.get("required", params.get("properties", {}))}
    example = json.dumps({"name": first["name"], "arguments": example_args})
    return ("You can call these tools:\n<tools>\n" + "\n".join(lines) + "\n</tools>\n"
            f"To call one, write {TOOL_CALL_OPEN}\n{example}\n{TOOL_CALL_CLOSE} and stop; "
            "its result comes back in a tool message.")


def supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template shows the model the tools passed as `tools=[...]`.

    Checked by rendering: a sentinel tool's name must appear in the prompt, and a tool message's
    content too (some templates drop either; TRL's `supports_tool_calling` does the same).
    SmolLM2-Instruct's template ignores `tools=`: False.
    """
    if not getattr(tokenizer, "chat_template", None):
        return False
    sentinel = {"type": "function", "function": {"name": "tool_name_a8f3e2b1", "description": "d",
                                                 "parameters": {"type": "object", "properties": {}}}}
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "<tool_call>\n{}\n</tool_call>"},
                {"role": "tool", "name": "tool_name_a8f3e2b1", "content": "tool_content_c4f9a8e2"}]
    try:
        text = tokenizer.apply_chat_template(messages, tools=[sentinel], tokenize=False)
    except Exception:  # a template that refuses tool messages or tools: no support
        return False
    return "tool_name_a8f3e2b1" in text and "tool_content_c4f9a8e2" in text


def tools_in_messages(tokenizer: Any, messages: list[dict], tools: Iterable[Callable | dict]
                      ) -> tuple[list[dict], dict]:
    """(messages, chat-template keyword arguments) that show `tools` to the model.

    With template support: the messages unchanged and {"tools": [schemas]}. Without: the tools'
    description appended to the system message (one is added if there is none) and {}.
    """
    schemas = [t if isinstance(t, dict) else tool_schema(t) for t in tools]
    if not schemas:
        return list(messages), {}
    if supports_tools(tokenizer):
        return list(messages), {"tools": schemas}
    text = tools_system_prompt(schemas)
    if messages and messages[0]["role"] == "system":
        system = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}".strip()}
        return [system, *messages[1:]], {}
    return [{"role": "system", "content": text}, *messages], {}


def render_tools(tokenizer: Any, messages: list[dict], tools: Iterable[Callable | dict], *,
                 prefill: str = "") -> str:
    """The prompt text of a conversation with tools, ready for the model's next turn, + prefill."""
    messages, kwargs = tools_in_messages(tokenizer, messages, tools)
    if kwargs:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs) + prefill
    return prompt_lib.render_prompt(tokenizer, messages, prefill=prefill)


# ------------------------------------------------------------------ parsing calls

_CALL = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|\Z)", re.DOTALL)


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every `<tool_call>...</tool_call>` span in `text`, in order, read as JSON.

    A well-formed call is {"name": str, "arguments": {...}} ("parameters" is accepted for
    "arguments", and arguments given as a JSON string are decoded, as OpenAI writes them).
    A span that is not is returned too, with `error` saying why and `name` "" when unknown:
    invalid JSON, not an object, no name, arguments not an object, or no closing tag (an
    unclosed span runs to the end of the text). Text outside the spans is ignored.
    """
    return [_read_call(m.group(0), m.group(1)) for m in _CALL.finditer(text)]


def _read_call(span: str, body: str) -> ToolCall:
    def bad(why: str, name: str = "") -> ToolCall:
        return ToolCall(name=name, arguments={}, text=span, error=why)

    if not span.endswith(TOOL_CALL_CLOSE):
        return bad(f"the tool call has no closing {TOOL_CALL_CLOSE}")
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return bad(f"the tool call is not valid JSON ({e.msg} at character {e.pos})")
    if not isinstance(obj, dict):
        return bad('the tool call must be a JSON object {"name": ..., "arguments": {...}}')
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return bad('the tool call has no "name"')
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return bad('"arguments" is a string that is not a JSON object', name)
    if not isinstance(arguments, dict):
        return bad('"arguments" must be a JSON object', name)
    return ToolCall(name=name, arguments=arguments, text=span)


def format_tool_call(name: str, arguments: dict) -> str:
    """The text of a call as a model should write it (the demonstrations use this)."""
    return f"{TOOL_CALL_OPEN}\n{json.dumps({'name': name, 'arguments': arguments})}\n{TOOL_CALL_CLOSE}"


# ------------------------------------------------------------------ running calls


def trusted(fn: Callable) -> Callable:
    """Mark a tool as safe to run in-process (no fork, no time-out): built-in, bounded, pure."""
    fn.__rlvr_trusted__ = True  # type: ignore[attr-defined]
    return fn


def tool_map(tools: Iterable[Callable] | Mapping[str, Callable]) -> dict[str, Callable]:
    """{name: function}; a list of functions is keyed by their `__name__`."""
    if isinstance(tools, Mapping):
        return dict(tools)
    return {fn.__name__: fn for fn in tools}


def run_tool_call(call: ToolCall, tools: Mapping[str, Callable], *, timeout: float = 5.0,
                  isolate: bool | None = None, max_chars: int = MAX_RESULT_CHARS) -> ToolResult:
    """Run one call; never raises for anything the model or the tool did.

    isolate=None runs the tool in a forked child (killed with its process group after `timeout`
    seconds) unless it is marked `@trusted`; True always forks, False always runs here (no
    time-out). The result is `str(return value)` cut to `max_chars`; a malformed call, an unknown
    tool, arguments the function does not take, an exception or a time-out give
    `error=True` and a content starting "error: " for the model.
    """
    start = time.monotonic()

    def result(content: str, error: bool = False, timed_out: bool = False) -> ToolResult:
        return ToolResult(call.name, _cut(content, max_chars), error, timed_out, time.monotonic() - start)

    if call.error:
        return result(f"error: {call.error}", error=True)
    fn = tools.get(call.name)
    if fn is None:
        return result(f"error: unknown tool {call.name!r}; tools: {', '.join(tools) or 'none'}", error=True)
    try:
        inspect.signature(fn).bind(**call.arguments)
    except TypeError as e:
        return result(f"error: wrong arguments for {call.name}: {e}", error=True)
    except ValueError:  # no signature (a builtin): let the call itself complain
        pass
    if isolate is None:
        isolate = not getattr(fn, "__rlvr_trusted__", False)
    status, payload = (run_forked(lambda _: _call(fn, call.arguments), 1, timeout)[0] if isolate
                       else _call(fn, call.arguments))
    if status == "ok":
        return result(payload)
    if status == "timeout":
        return result(f"error: the tool {call.name} did not finish within {timeout:g} s", error=True, timed_out=True)
    return result(f"error: {payload}", error=True)


def _call(fn: Callable, arguments: dict) -> tuple[str, str]:
    try:
        return "ok", str(fn(**arguments))
    except Exception as e:  # the tool's own failure, for the model to read
        return "error", f"{type(e).__name__}: {e}"


def _cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"\n[... cut: {len(text) - max_chars} more characters]"


def run_tool_calls(text: str, tools: Iterable[Callable] | Mapping[str, Callable], *, timeout: float = 5.0,
                   isolate: bool | None = None, max_calls: int = 8) -> list[ToolResult]:
    """Parse and run every call in an assistant turn (the first `max_calls`; the rest get an error)."""
    tools = tool_map(tools)
    results = []
    for k, call in enumerate(parse_tool_calls(text)):
        if k >= max_calls:
            results.append(ToolResult(call.name, f"error: at most {max_calls} tool calls per turn", error=True))
        else:
            results.append(run_tool_call(call, tools, timeout=timeout, isolate=isolate))
    return results


def tool_message(result: ToolResult) -> dict:
    """The chat message that carries a result back to the model."""
    return {"role": "tool", "name": result.name, "content": result.content}
