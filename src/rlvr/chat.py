"""`rlvr chat`: talk to a base or trained model in the terminal, think and answer parts told apart.

With tools (the task's `tools`, e.g. `--task calculator`, or `--tools calculator`), the model's
calls are run and their results given back to it, as in training: the tools are described in the
system message (`rlvr.tools.tools_system_prompt`), a turn stops after `</tool_call>`, each call
is run (`rlvr.tools.run_tool_call`: user code in a forked child with a time-out) and its result
appended as a tool message, and the model goes on, for at most `max_tool_rounds` rounds per
question. Tool calls and results are shown apart from the model's text.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from rlvr.tools import parse_tool_calls, run_tool_call, tool_map, tool_message, tools_system_prompt


def builtin_tools() -> dict[str, Callable]:
    """Tools `--tools NAME` can name."""
    from rlvr.tasks.calculator import calculator

    return {"calculator": calculator}


def render(text: str) -> str:
    """Rich markup: the think part dim, tool calls cyan, the answer part bold green, anything else plain."""
    from rich.markup import escape

    from rlvr.prompts import split_think_answer

    calls = parse_tool_calls(text)
    for call in calls:
        text = text.replace(call.text, "")
    think, answer = split_think_answer(text)
    if think is None and answer is None:
        parts = [escape(text.strip())] if text.strip() or not calls else []
    else:
        parts = [f"[dim]think: {escape(think.strip())}[/dim]"] if think is not None else []
    for call in calls:
        shown = f"{call.name}({call.arguments})" if not call.error else f"{call.text!r} ({call.error})"
        parts.append(f"[cyan]tool call: {escape(shown)}[/cyan]")
    if answer is not None:
        parts.append(f"[bold green]answer: {escape(answer.strip())}[/bold green]")
    return "\n".join(parts)


def render_tool(message: dict) -> str:
    """A tool message: magenta, red when the tool failed."""
    from rich.markup import escape

    style = "red" if message["content"].startswith("error: ") else "magenta"
    return f"[{style}]tool {escape(message.get('name') or '?')} -> {escape(message['content'])}[/{style}]"


def chat_turn(messages: list[dict], reply: Callable[[list[dict]], str], tools, *, max_tool_rounds: int = 4,
              timeout: float = 5.0, show: Callable[[dict], None] = lambda m: None) -> list[dict]:
    """One question's turns: the model replies; while its reply calls tools (and rounds are left),
    the calls are run, their results appended as tool messages and the model replies again.

    `reply(messages) -> str` is the model (any function of the conversation so far); `show` sees
    each new message as it comes. Returns the messages added (assistant and tool), in order;
    `messages` itself is extended too.
    """
    table = tool_map(tools)
    added: list[dict] = []

    def add(message: dict) -> None:
        messages.append(message)
        added.append(message)
        show(message)

    for round_ in range(max_tool_rounds + 1):
        text = reply(messages)
        add({"role": "assistant", "content": text})
        calls = parse_tool_calls(text) if table else []
        if not calls or round_ == max_tool_rounds:
            break
        for call in calls:
            add(tool_message(run_tool_call(call, table, timeout=timeout)))
    return added


def chat_loop(model_spec: str, *, task: str | None = None, tools: list[str] | None = None,
              max_new_tokens: int = 256, temperature: float = 0.0, max_tool_rounds: int = 4,
              input_fn=input) -> None:
    from rich.console import Console

    from rlvr.models import load_model
    from rlvr.prompts import DEFAULT_SYSTEM_PROMPT, render_prompt
    from rlvr.rollout import sampling_params
    from rlvr.sampling.fast import FastSampler

    console = Console()
    model, tokenizer = load_model(model_spec)
    system, task_tools, prefill = _task_setup(task, model_spec)
    system = system or DEFAULT_SYSTEM_PROMPT
    chosen = _choose_tools(task_tools, tools)
    if chosen:
        system = f"{system}\n\n{tools_system_prompt(chosen)}"
    sampler = FastSampler(model, tokenizer)
    params = sampling_params(tokenizer, max_new_tokens=max_new_tokens, temperature=temperature)
    if chosen:
        params.stop_strings = (*params.stop_strings, "</tool_call>")
    generator = torch.Generator().manual_seed(0)

    def reply(messages: list[dict]) -> str:
        ids = tokenizer(render_prompt(tokenizer, messages, prefill=prefill), add_special_tokens=False)["input_ids"]
        out = sampler.generate([ids], params, num_samples=1, generator=generator)[0]
        return prefill + tokenizer.decode(out.token_ids, skip_special_tokens=True)

    def show(message: dict) -> None:
        console.print(render(message["content"]) if message["role"] == "assistant" else render_tool(message))

    names = f" (tools: {', '.join(fn.__name__ for fn in chosen)})" if chosen else ""
    console.print(f"[bold]rlvr chat[/bold] with {model_spec}{names} (empty line or Ctrl-D to quit)")
    while True:
        try:
            question = input_fn("you> ").strip()
        except EOFError:
            break
        if not question:
            break
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        chat_turn(messages, reply, chosen, max_tool_rounds=max_tool_rounds, show=show)


def _task_setup(task: str | None, model_spec: str) -> tuple[str | None, list, str]:
    """(system prompt, tools, prefill) of `task`, else of the run directory's task (RUN/config.yaml:
    its options, system prompt and assistant prefill, as the model was trained), else (None, [], "")."""
    from rlvr.tasks import get_task

    cfg: dict = {}
    if task is None and (Path(model_spec) / "config.yaml").is_file():
        import yaml

        cfg = (yaml.safe_load((Path(model_spec) / "config.yaml").read_text()) or {}).get("task") or {}
        task = cfg.get("name")
    if task is None:
        return None, [], ""
    t = get_task(task, **(cfg.get("options") or {}))
    system = cfg["system_prompt"] if cfg.get("system_prompt") is not None else t.system_prompt
    return system, list(getattr(t, "tools", None) or []), cfg.get("prefill") or ""


def _choose_tools(task_tools: list, names: list[str] | None) -> list:
    """The task's tools plus those named (`--tools calculator`); an unknown name is an error naming the known ones."""
    chosen = list(task_tools)
    known = builtin_tools()
    for name in names or []:
        if name not in known:
            raise ValueError(f"unknown tool {name!r} for --tools; known: {', '.join(known)}")
        if known[name] not in chosen:
            chosen.append(known[name])
    return chosen
