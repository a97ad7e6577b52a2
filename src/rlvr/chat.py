"""`rlvr chat`: talk to a base or trained model in the terminal, think and answer parts told apart."""

from __future__ import annotations

import torch


def render(text: str) -> str:
    """Rich markup: the think part dim, the answer part bold green, anything else plain."""
    from rich.markup import escape

    from rlvr.prompts import split_think_answer

    think, answer = split_think_answer(text)
    if think is None and answer is None:
        return escape(text)
    parts = []
    if think is not None:
        parts.append(f"[dim]think: {escape(think.strip())}[/dim]")
    if answer is not None:
        parts.append(f"[bold green]answer: {escape(answer.strip())}[/bold green]")
    return "\n".join(parts)


def chat_loop(model_spec: str, *, task: str | None = None, max_new_tokens: int = 256, temperature: float = 0.0,
              input_fn=input) -> None:
    from rich.console import Console

    from rlvr.models import load_model
    from rlvr.prompts import DEFAULT_SYSTEM_PROMPT, render_prompt
    from rlvr.rollout import sampling_params
    from rlvr.sampling.fast import FastSampler

    console = Console()
    model, tokenizer = load_model(model_spec)
    system = DEFAULT_SYSTEM_PROMPT
    if task:
        from rlvr.tasks import get_task

        system = get_task(task).system_prompt or DEFAULT_SYSTEM_PROMPT
    sampler = FastSampler(model, tokenizer)
    params = sampling_params(tokenizer, max_new_tokens=max_new_tokens, temperature=temperature)
    generator = torch.Generator().manual_seed(0)
    console.print(f"[bold]rlvr chat[/bold] with {model_spec} (empty line or Ctrl-D to quit)")
    while True:
        try:
            question = input_fn("you> ").strip()
        except EOFError:
            break
        if not question:
            break
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
        out = sampler.generate([ids], params, num_samples=1, generator=generator)[0]
        console.print(render(tokenizer.decode(out.token_ids, skip_special_tokens=True)))
