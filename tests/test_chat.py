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
