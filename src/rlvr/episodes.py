"""Episodes: the model and its environment take turns, and the whole trajectory becomes one rollout.

    messages = env.reset(example)                         (rlvr.environments)
    ids      = prompt tokens                              the first turn's prompt, rendered once
    loop:  turn    = sampler.generate(ids)                the model's tokens, kept as sampled
           step    = env.step(example, messages + turn)   tool results, a user turn, or done
           suffix  = the step's messages as the chat template renders them, up to the next
                     assistant header (`environment_suffix`)
           ids    += turn + suffix                        loss mask 1 on turn, 0 on suffix

The tokens the model sampled are the tokens trained on: its turns are never re-tokenized from
their text; only what the environment adds is rendered and encoded. Every turn is a new
`generate` call on the conversation so far (the prompt re-encoded and prefilled again: no KV
cache survives between turns), so every sampler runs episodes unchanged. Each episode's later
turns sample with their own generator, seeded from its prompt's, so an episode does not depend
on which others are live in the same call.

Limits (`Limits`, TRL's names where TRL has one): assistant turns per episode
(`max_tool_calling_iterations` + 1), tokens after the prompt in total (TRL's
`max_completion_length`: the model's and the environment's), seconds spent in tools. An episode
over a limit ends where it is, is marked (`Episode.limit`) and is scored by the same rewards on
what it has; a turn cut by the token budget is truncated (`Rollout.truncated`). At the turn limit
an environment with `pending(example, messages)` (a tool environment: the turn has calls) is only
asked whether it would go on, so no tool runs past the limit; one without is stepped and its
answer dropped.

A single-turn environment takes the same path at no cost: one `generate` call with the same
arguments as before, then `step` says done.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from rlvr.environments import Environment, fresh_environment
from rlvr.sampling.base import Completion, SamplingParams
from rlvr.tasks.base import Example

TURN_MARK = "\u2063rlvr-assistant-turn\u2063"
"""placeholder content of the dummy assistant turn `environment_suffix` renders (never a real text)"""

PLAIN_ROLES = {"tool": "Result", "user": "Question", "system": "Note"}
"""without a chat template, an environment message is rendered as "\\n{label}: {content}\\n" + "Answer: " """


@dataclass
class Limits:
    """What one episode may spend; None: no limit."""

    max_turns: int | None = None
    """assistant turns (TRL's max_tool_calling_iterations + 1)"""
    max_tokens: int | None = None
    """tokens after the prompt, the model's and the environment's (None: the sampling params' max_new_tokens)"""
    max_tool_seconds: float | None = None
    """seconds the environment's steps (its tools) may take in total"""


@dataclass
class Episode:
    """One conversation and its tokens: prompt_ids, then completion_ids (every later token)."""

    prompt_index: int
    example: Example
    env: Any
    messages: list[dict]
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    loss_mask: list[float] = field(default_factory=list)
    """1.0 on the tokens the model sampled, 0.0 on what the environment appended"""
    logprobs: list[float] = field(default_factory=list)
    """the sampler's log-probs of the model's tokens; 0.0 on the environment's"""
    turns: list[str] = field(default_factory=list)
    """the model's turns as text (prefill + decoded tokens)"""
    finish_reason: str = "stop"
    """of the model's last turn: "stop" or "length" (the token budget ran out inside it)"""
    limit: str | None = None
    """why the episode was cut: "turns", "tokens", "tool_seconds"; None: the environment ended it"""
    tool_calls: int = 0
    tool_errors: int = 0
    tool_seconds: float = 0.0
    done: bool = False
    prefill: str = ""
    n_prompt_messages: int = 0
    """how many of `messages` the prompt holds (reset's messages)"""
    generator: torch.Generator | None = None

    @property
    def text(self) -> str:
        """The final assistant turn, as sampled (without the prefill): what the judge reads."""
        return self.turns[-1][len(self.prefill):] if self.turns else ""

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length" or self.limit == "tokens"

    def conversation(self) -> list[dict]:
        """The messages after the prompt (assistant, tool, user, assistant...): TRL's multi-turn completion."""
        return self.messages[self.n_prompt_messages:]


def stop_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


def environment_suffix(tokenizer, messages: list[dict], *, chat: bool, prefill: str = "",
                       closed_by: str | None = None) -> str:
    """The text between the model's last turn and its next one: `messages` (tool results, a user
    turn) as the chat template renders them after an assistant turn, then the next assistant header
    and the prefill. The template renders a dummy conversation (user, assistant with a placeholder
    text, then `messages`); the suffix is everything after the placeholder, so it does not depend on
    what the model wrote (TRL's `_get_tool_suffix_ids` does the same with token ids).

    closed_by: the text of the stop token that ended the model's turn (e.g. "<|im_end|>"), which is
    already in its tokens and so dropped from the suffix's start; None: the turn ended without one
    (a stop string), and the suffix closes it.
    """
    if not chat:
        body = "".join(f"\n{PLAIN_ROLES.get(m['role'], m['role'].title())}: {m['content']}\n" for m in messages)
        return body + "Answer: " + prefill
    dummy = [{"role": "user", "content": "q"}, {"role": "assistant", "content": TURN_MARK}]
    full = tokenizer.apply_chat_template(dummy + list(messages), tokenize=False, add_generation_prompt=True)
    at = full.find(TURN_MARK)
    if at < 0:
        raise ValueError("the chat template dropped the assistant's text: it cannot render a multi-turn episode")
    suffix = full[at + len(TURN_MARK):]
    if closed_by and suffix.startswith(closed_by):
        suffix = suffix[len(closed_by):]
    return suffix + prefill


def run_episodes(sampler, tokenizer, env: Environment, examples: list[Example], generators: list[torch.Generator],
                 num_generations: int, params: SamplingParams, *, chat: bool, prefill: str,
                 prompt_ids: list[list[int]], first_messages: list[list[dict]], limits: Limits = Limits(),
                 progress: Callable[[int], None] | None = None) -> list[Episode]:
    """G episodes per example, turn by turn; returned prompt-major (an example's G episodes together).

    prompt_ids / first_messages: each example's rendered first prompt and its reset messages. The
    first turn is one `generate` call for every example with num_samples=G (exactly the
    single-turn call); later turns are one call over the live episodes, each with its own generator.
    """
    g = num_generations
    budget = limits.max_tokens if limits.max_tokens is not None else params.max_new_tokens
    params = _with_env_stops(params, env)
    episodes = [Episode(i, ex, fresh_environment(env, ex), list(first_messages[i]),
                        prompt_ids[i], prefill=prefill, n_prompt_messages=len(first_messages[i]))
                for i, ex in enumerate(examples) for k in range(g)]
    if not episodes:
        return []
    outs = sampler.generate(prompt_ids, replace(params, max_new_tokens=budget), num_samples=g,
                            generator=generators, progress=progress)
    for ep, out in zip(episodes, outs):
        _add_model_turn(ep, out, tokenizer, budget)
    live = _advance(episodes, tokenizer, params, chat, prefill, limits, budget)
    if live:  # every episode gets its own generator for the later turns, from its prompt's
        for i in range(len(examples)):
            for k, s in enumerate(torch.randint(0, 2**62, (g,), generator=generators[i]).tolist()):
                episodes[i * g + k].generator = torch.Generator().manual_seed(s)
    while live:
        room = max(budget - len(ep.completion_ids) for ep in live)
        outs = sampler.generate([ep.prompt_ids + ep.completion_ids for ep in live],
                                replace(params, max_new_tokens=room), num_samples=1,
                                generator=[ep.generator for ep in live], progress=progress)
        for ep, out in zip(live, outs):
            _add_model_turn(ep, out, tokenizer, budget)
        live = _advance(live, tokenizer, params, chat, prefill, limits, budget)
    return episodes


def _with_env_stops(params: SamplingParams, env) -> SamplingParams:
    """The environment's own stop strings (a tool environment: "</tool_call>") join the params'."""
    extra = tuple(s for s in getattr(env, "stop_strings", ()) if s not in params.stop_strings)
    return replace(params, stop_strings=params.stop_strings + extra) if extra else params


def _add_model_turn(ep: Episode, out: Completion, tokenizer, budget: int) -> None:
    """Append a sampled turn, cut to what is left of the episode's token budget."""
    room = budget - len(ep.completion_ids)
    ids, logprobs, reason = list(out.token_ids), list(out.logprobs), out.finish_reason
    if len(ids) > room:
        ids, logprobs, reason = ids[:room], logprobs[:room], "length"
    ep.completion_ids += ids
    ep.logprobs += logprobs
    ep.loss_mask += [1.0] * len(ids)
    ep.finish_reason = reason
    text = ep.prefill + tokenizer.decode(ids, skip_special_tokens=True)
    ep.turns.append(text)
    ep.messages.append({"role": "assistant", "content": text})


def _advance(live: list[Episode], tokenizer, params: SamplingParams, chat: bool, prefill: str, limits: Limits,
             budget: int) -> list[Episode]:
    """Let each live episode's environment answer its last turn; the episodes that go on (with the
    environment's tokens appended, mask 0)."""
    going = []
    stop_ids = set(params.stop_token_ids)
    for ep in live:
        if ep.finish_reason == "length":  # cut inside a turn: nothing to answer
            ep.done, ep.limit = True, "tokens"
            continue
        if _last_turn(ep, limits) and hasattr(ep.env, "pending"):  # no tool runs past the turn limit (TRL)
            ep.done = True
            ep.limit = "turns" if ep.env.pending(ep.example, ep.messages) else None
            continue
        step = ep.env.step(ep.example, ep.messages)
        ep.tool_calls += step.tool_calls
        ep.tool_errors += step.tool_errors
        ep.tool_seconds += step.seconds
        if step.done:
            ep.done = True
            continue
        ep.limit = _limit_hit(ep, limits)
        if ep.limit is None:
            last = ep.completion_ids[-1] if ep.completion_ids else None
            closed = stop_text(tokenizer, last) if last in stop_ids else None
            suffix = environment_suffix(tokenizer, step.messages, chat=chat, prefill=prefill, closed_by=closed)
            ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
            if len(ep.completion_ids) + len(ids) >= budget:  # no room for the environment and a next turn
                ep.limit = "tokens"
            else:
                ep.completion_ids += ids
                ep.loss_mask += [0.0] * len(ids)
                ep.logprobs += [0.0] * len(ids)
                ep.messages.extend(step.messages)
                going.append(ep)
                continue
        ep.done = True
    return going


def _last_turn(ep: Episode, limits: Limits) -> bool:
    return limits.max_turns is not None and len(ep.turns) >= limits.max_turns


def _limit_hit(ep: Episode, limits: Limits) -> str | None:
    if _last_turn(ep, limits):
        return "turns"
    if limits.max_tool_seconds is not None and ep.tool_seconds >= limits.max_tool_seconds:
        return "tool_seconds"
    return None


def episode_stats(episodes: list[Episode]) -> dict:
    """Turns, tool calls and errors per episode, and the fraction cut by each limit."""
    n = max(1, len(episodes))
    m = {"episode/turns_mean": sum(len(e.turns) for e in episodes) / n,
         "episode/tool_calls_mean": sum(e.tool_calls for e in episodes) / n,
         "episode/tool_errors": sum(e.tool_errors for e in episodes),
         "episode/limit_frac": sum(e.limit is not None for e in episodes) / n}
    for kind in ("turns", "tokens", "tool_seconds"):
        m[f"episode/limit_{kind}_frac"] = sum(e.limit == kind for e in episodes) / n
    return m



def encode_trajectory(tokenizer, messages: list[dict], *, chat: bool, prefill: str = "",
                      end_token_id: int | None = None) -> tuple[list[int], list[float]]:
    """(completion ids, loss mask) of a written trajectory (a multi-turn demonstration: assistant,
    tool, ..., assistant), tokenized as an episode would be: each assistant turn's text (after the
    prefill, which the prompt or the previous suffix already holds) and the end-of-turn token, mask 1;
    each run of environment messages as `environment_suffix` renders it, mask 0. The SFT warm-up of
    a tool task trains on exactly the tokens GRPO's episodes will see."""
    end = end_token_id if end_token_id is not None else _end_of_turn(tokenizer, chat)
    ids: list[int] = []
    mask: list[float] = []
    i = 0
    while i < len(messages):
        if messages[i]["role"] == "assistant":
            text = messages[i]["content"]
            text = text[len(prefill):] if prefill and text.startswith(prefill) else text
            turn = tokenizer(text, add_special_tokens=False)["input_ids"] + ([end] if end is not None else [])
            ids += turn
            mask += [1.0] * len(turn)
            i += 1
            continue
        j = i
        while j < len(messages) and messages[j]["role"] != "assistant":
            j += 1
        closed = stop_text(tokenizer, end) if end is not None else None
        suffix = tokenizer(environment_suffix(tokenizer, messages[i:j], chat=chat, prefill=prefill, closed_by=closed),
                           add_special_tokens=False)["input_ids"]
        ids += suffix
        mask += [0.0] * len(suffix)
        i = j
    return ids, mask


def _end_of_turn(tokenizer, chat: bool) -> int | None:
    """The token that ends an assistant turn: the chat template's <|im_end|> (or <|eot_id|>) if it
    has one, else EOS."""
    if chat:
        for token in ("<|im_end|>", "<|eot_id|>"):
            tid = tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id:
                return tid
    return tokenizer.eos_token_id
