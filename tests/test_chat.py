"""`rlvr chat`: the think and answer parts are shown apart; the loop ends on an empty line."""

from rlvr.chat import chat_loop, render


def test_render_tells_think_and_answer_apart():
    out = render("<think>\n7 - 2 = 5\n</think>\n<answer>5</answer>")
    assert "[dim]think: 7 - 2 = 5[/dim]" in out
    assert "[bold green]answer: 5[/bold green]" in out
    assert render("no tags [here]") == "no tags \\[here]"  # model text is escaped, never markup


def test_chat_loop_answers_then_quits(tmp_path, capsys):
    """Each question gets the model's own answer (the same tokens as sampling it directly from the
    same prompt with the same seeded generator), rendered; the empty line ends the loop (a third
    input would raise). Sampled at temperature 1: a random model's greedy answer is all spaces."""
    import torch

    from conftest import char_model
    from rlvr.prompts import DEFAULT_SYSTEM_PROMPT, render_prompt
    from rlvr.rollout import sampling_params
    from rlvr.sampling import FastSampler

    model, tok = char_model(seed=0)  # a random model over characters: its answers are visible text
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    questions = ["what is 3 - 1?", "and 7 - 5?"]
    lines = iter([*questions, ""])
    chat_loop(str(tmp_path / "m"), max_new_tokens=12, temperature=1.0, input_fn=lambda prompt: next(lines))
    out = capsys.readouterr().out
    assert "rlvr chat" in out
    params = sampling_params(tok, max_new_tokens=12, temperature=1.0)
    answers, generator = [], torch.Generator().manual_seed(0)  # as chat_loop: one for the session
    for q in questions:
        messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": q}]
        ids = tok(render_prompt(tok, messages), add_special_tokens=False)["input_ids"]
        c = FastSampler(model, tok).generate([ids], params, generator=generator)[0]
        answers.append(tok.decode(c.token_ids, skip_special_tokens=True).strip())
    assert all(len(a) >= 3 for a in answers), answers
    assert all(render(a).splitlines()[0] in out for a in answers), (answers, out)


# ------------------------------------------------------------------------------ tools

from rlvr.chat import _choose_tools, chat_turn, render_tool  # noqa: E402
from rlvr.tasks.calculator import calculator  # noqa: E402
from rlvr.tools import format_tool_call  # noqa: E402


def scripted(*replies):
    """A stand-in for the model: returns the replies in order and records what it was shown."""
    seen, it = [], iter(replies)

    def reply(messages):
        seen.append([dict(m) for m in messages])
        return next(it)

    return reply, seen


def test_chat_turn_runs_the_models_tool_call_and_lets_it_go_on():
    call = format_tool_call("calculator", {"expression": "347 * 829"})
    reply, seen = scripted(f"<think>\nneed a tool\n</think>\n{call}", "<think>\nok\n</think>\n<answer>287663</answer>")
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "What is 347 * 829?"}]
    shown = []
    added = chat_turn(messages, reply, [calculator], show=shown.append)
    assert [m["role"] for m in added] == ["assistant", "tool", "assistant"]
    assert added[1] == {"role": "tool", "name": "calculator", "content": "287663"}  # 347 * 829 by hand
    assert seen[1][-1] == added[1] and len(seen[1]) == 4  # the model's second turn saw the result
    assert messages[2:] == added and shown == added


def test_chat_turn_without_tools_or_calls_is_one_reply():
    reply, _ = scripted("<answer>4</answer>")
    assert [m["role"] for m in chat_turn([{"role": "user", "content": "2+2"}], reply, [])] == ["assistant"]
    call = format_tool_call("calculator", {"expression": "1 + 1"})
    reply, _ = scripted(call)  # tools off: a call is just text, nothing is run
    assert [m["role"] for m in chat_turn([{"role": "user", "content": "q"}], reply, [])] == ["assistant"]


def test_chat_turn_reports_tool_errors_and_stops_after_max_rounds():
    bad = format_tool_call("calculator", {"expression": "1 / 0"})
    reply, seen = scripted(bad, bad, bad, "never asked")
    added = chat_turn([{"role": "user", "content": "q"}], reply, [calculator], max_tool_rounds=2)
    assert [m["role"] for m in added] == ["assistant", "tool", "assistant", "tool", "assistant"]
    assert added[1]["content"] == "error: ValueError: division by zero"
    assert len(seen) == 3  # two rounds of tools, then the last reply is final


def test_tool_calls_and_results_are_shown_apart():
    text = "<think>\nuse it\n</think>\n" + format_tool_call("calculator", {"expression": "2 * 3"})
    out = render(text)
    assert "[dim]think: use it[/dim]" in out
    assert "[cyan]tool call: calculator({'expression': '2 * 3'})[/cyan]" in out
    assert "<tool_call>" not in out
    assert render_tool({"role": "tool", "name": "calculator", "content": "6"}) == "[magenta]tool calculator -> 6[/magenta]"
    assert render_tool({"role": "tool", "name": "calculator", "content": "error: x"}).startswith("[red]")


def test_tools_by_name():
    assert _choose_tools([], ["calculator"]) == [calculator]
    assert _choose_tools([calculator], ["calculator"]) == [calculator]
    import pytest

    with pytest.raises(ValueError, match="unknown tool 'search'.*known: calculator"):
        _choose_tools([], ["search"])


def test_chat_loop_with_the_calculator_task_describes_the_tool(tmp_path, capsys):
    """A random model will not call the tool; the loop still runs with the task's tools announced."""
    from conftest import char_model

    model, tok = char_model(seed=0)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    lines = iter(["what is 12 * 34?", ""])
    chat_loop(str(tmp_path / "m"), task="calculator", max_new_tokens=8, temperature=1.0,
              input_fn=lambda prompt: next(lines))
    assert "(tools: calculator)" in capsys.readouterr().out


def test_a_run_directorys_task_system_prompt_and_prefill_are_used(tmp_path):
    """A trained model is talked to as it was trained: RUN/config.yaml's task, options, system prompt, prefill."""
    from rlvr.chat import _task_setup

    (tmp_path / "config.yaml").write_text("task:\n  name: calculator\n  options: {tools: false, n: 20, n_test: 5}\n"
                                          "  system_prompt: Be exact.\n  prefill: <think>\n")
    assert _task_setup(None, str(tmp_path)) == ("Be exact.", [], "<think>")
    (tmp_path / "config.yaml").write_text("task:\n  name: calculator\n  options: {n: 20, n_test: 5}\n")
    system, tools, prefill = _task_setup(None, str(tmp_path))
    assert "calculator" in system and tools == [calculator] and prefill == ""
    assert _task_setup("calculator", "smollm2-135m")[1] == [calculator]
    assert _task_setup(None, "smollm2-135m") == (None, [], "")
