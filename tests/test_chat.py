"""`rlvr chat`: the think and answer parts are shown apart; the loop ends on an empty line."""

from rlvr.chat import chat_loop, render


def test_render_tells_think_and_answer_apart():
    out = render("<think>\n7 - 2 = 5\n</think>\n<answer>5</answer>")
    assert "[dim]think: 7 - 2 = 5[/dim]" in out
    assert "[bold green]answer: 5[/bold green]" in out
    assert render("no tags [here]") == "no tags \\[here]"  # model text is escaped, never markup


def test_chat_loop_answers_then_quits(tmp_path, tiny_smol, capsys):
    model, tok = tiny_smol
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    lines = iter(["What is 3 - 1?", ""])
    chat_loop(str(tmp_path / "m"), max_new_tokens=5, input_fn=lambda prompt: next(lines))
    assert "rlvr chat" in capsys.readouterr().out
