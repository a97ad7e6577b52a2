"""Multi-turn episodes: the trajectory's tokens, its loss mask, the limits, and a tiny model that
learns to call a tool (rlvr.episodes)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ROOT, SecretTask, char_model, char_tokenizer
from rlvr.buffer import collate
from rlvr.environments import SingleTurn, Step
from rlvr.episodes import Limits, environment_suffix, run_episodes
from rlvr.policy import naive_completion_logprobs
from rlvr.rollout import PromptFormat, sampling_params
from rlvr.sampling import FastSampler, HFSampler
from rlvr.sampling.base import Completion, SamplingParams
from rlvr.tasks.base import Example, Task


class ScriptedSampler:
    """Writes the given turns (token ids) in order: call k returns turns[k] for every prompt and sample.
    A stand-in for the model where the test needs to know every token."""

    def __init__(self, turns: list[list[int]]):
        self.turns, self.calls = turns, []

    def generate(self, prompts, params, *, num_samples=1, generator=None, progress=None):
        ids = self.turns[len(self.calls)]
        self.calls.append([list(p) for p in prompts])
        cut = ids[:params.max_new_tokens]
        reason = "length" if len(ids) > params.max_new_tokens else "stop"
        return [Completion(i, list(cut), [-0.5] * len(cut), reason) for i in range(len(prompts)) for _ in range(num_samples)]


class EchoTask(Task):
    name = "echo"
    system_prompt = ""

    def __init__(self, n: int = 4):
        self.n = n

    def train_examples(self):
        return [Example(question="q", answer="7") for _ in range(self.n)]

    def test_examples(self):
        return self.train_examples()

    def verify(self, answer, example):
        return float(answer is not None and answer.strip() == example.answer)


class AlwaysTool:
    """Answers every assistant turn with a tool message "7" until `turns` turns were written."""

    def __init__(self, turns: int):
        self.turns = turns

    def reset(self, example):
        return [{"role": "user", "content": example.question}]

    def step(self, example, messages):
        written = sum(m["role"] == "assistant" for m in messages)
        if written >= self.turns:
            return Step(done=True)
        return Step(messages=[{"role": "tool", "content": "7"}], done=False, tool_calls=1)


def _run(sampler, tok, env, examples, g, params, limits=Limits(), chat=False, prefill=""):
    first = [env.reset(ex) for ex in examples]
    from rlvr.prompts import render_prompt
    prompt_ids = [tok(render_prompt(tok, m, chat=chat, prefill=prefill), add_special_tokens=False)["input_ids"]
                  for m in first]
    gens = [torch.Generator().manual_seed(i) for i in range(len(examples))]
    return run_episodes(sampler, tok, env, examples, gens, g, params, chat=chat, prefill=prefill,
                        prompt_ids=prompt_ids, first_messages=first, limits=limits)


def test_loss_mask_covers_exactly_the_models_tokens_hand_built():
    """Char tokenizer (one token per character), plain template: turn 1 "ab?" + <eos> (4 tokens), the
    tool message "\\nResult: 7\\nAnswer: " (19 tokens), turn 2 "77" + <eos> (3 tokens)."""
    tok = char_tokenizer()
    eos = tok.eos_token_id
    turn1, turn2 = tok("ab?")["input_ids"] + [eos], tok("77")["input_ids"] + [eos]
    sampler = ScriptedSampler([turn1, turn2])
    params = SamplingParams(max_new_tokens=64, stop_token_ids=(eos,))
    [ep] = _run(sampler, tok, AlwaysTool(turns=2), [Example("q", "7")], 1, params)
    suffix = "\nResult: 7\nAnswer: "
    assert len(suffix) == 19
    assert ep.completion_ids == turn1 + tok(suffix)["input_ids"] + turn2
    assert ep.loss_mask == [1.0] * 4 + [0.0] * 19 + [1.0] * 3
    assert ep.logprobs == [-0.5] * 4 + [0.0] * 19 + [-0.5] * 3
    assert ep.turns == ["ab?", "77"] and ep.text == "77" and ep.limit is None and ep.tool_calls == 1
    # the second turn was sampled on exactly the conversation so far, the model's own ids included
    assert sampler.calls[1] == [ep.prompt_ids + turn1 + tok(suffix)["input_ids"]]
    assert [m["role"] for m in ep.conversation()] == ["assistant", "tool", "assistant"]
    mb = collate([_rollout(ep)], tok.pad_token_id)
    assert mb.completion_mask[0].tolist() == ep.loss_mask


def _rollout(ep):
    from rlvr.buffer import Rollout

    return Rollout(ep.prompt_ids, ep.completion_ids, ep.logprobs, 1.0, ep.truncated, loss_mask=ep.loss_mask)


def test_limits_end_episodes_and_mark_them():
    tok = char_tokenizer()
    eos = tok.eos_token_id
    turn = tok("ab")["input_ids"] + [eos]
    params = SamplingParams(max_new_tokens=200, stop_token_ids=(eos,))
    [ep] = _run(ScriptedSampler([turn] * 5), tok, AlwaysTool(turns=9), [Example("q", "7")], 1, params,
                Limits(max_turns=3))
    assert len(ep.turns) == 3 and ep.limit == "turns" and not ep.truncated
    # 3 + 19 + 3 = 25 tokens fit a budget of 30, the next tool message does not: cut, truncated
    [ep] = _run(ScriptedSampler([turn] * 5), tok, AlwaysTool(turns=9), [Example("q", "7")], 1, params,
                Limits(max_tokens=30))
    assert len(ep.turns) == 2 and ep.limit == "tokens" and ep.truncated and len(ep.completion_ids) == 25
    # a turn that runs out of tokens inside itself is cut there
    [ep] = _run(ScriptedSampler([turn, tok("abcdefgh")["input_ids"]]), tok, AlwaysTool(turns=9),
                [Example("q", "7")], 1, params, Limits(max_tokens=26))
    assert ep.finish_reason == "length" and len(ep.completion_ids) == 26 and ep.loss_mask[-4:] == [1.0] * 4


def test_environment_suffix_reproduces_the_chat_template(smol_tokenizer):
    """prompt + the model's turn (ending <|im_end|>) + suffix == the template's rendering of the whole
    conversation, for SmolLM2's template; a turn stopped by a string gets its <|im_end|> from the suffix."""
    tok = smol_tokenizer
    messages = [{"role": "user", "content": "What is 6*7?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    call = '<tool_call>{"name": "mul", "arguments": {"a": 6, "b": 7}}</tool_call>'
    tool = [{"role": "tool", "name": "mul", "content": "42"}]
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": call}] + tool, tokenize=False,
                                   add_generation_prompt=True)
    closed = environment_suffix(tok, tool, chat=True, closed_by="<|im_end|>")
    assert prompt + call + "<|im_end|>" + closed == full
    assert prompt + call + environment_suffix(tok, tool, chat=True) == full
    assert environment_suffix(tok, tool, chat=True, prefill="<think>").endswith("assistant\n<think>")


def test_a_written_trajectory_is_encoded_as_an_episode(smol_tokenizer):
    """A multi-turn demonstration (for the SFT warm-up): prompt + ids is the template's rendering of
    the whole conversation, and the mask is 1 exactly on the assistant turns and their <|im_end|>."""
    from rlvr.episodes import encode_trajectory

    tok = smol_tokenizer
    prompt = [{"role": "user", "content": "What is 6*7?"}]
    turns = [{"role": "assistant", "content": '<tool_call>{"name": "mul", "arguments": {"a": 6, "b": 7}}</tool_call>'},
             {"role": "tool", "name": "mul", "content": "42"},
             {"role": "assistant", "content": "<answer>42</answer>"}]
    ids, mask = encode_trajectory(tok, turns, chat=True)
    prompt_text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(prompt + turns, tokenize=False)
    assert prompt_text + tok.decode(ids) + "\n" == full
    kept = [t for t, m in zip(ids, mask) if m]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    expected = (tok(turns[0]["content"], add_special_tokens=False)["input_ids"] + [end]
                + tok(turns[2]["content"], add_special_tokens=False)["input_ids"] + [end])
    assert kept == expected
    assert "42" in tok.decode([t for t, m in zip(ids, mask) if not m])


@pytest.mark.parametrize("backend", ["fast", "hf"])
def test_trained_logprobs_are_the_sampled_ones_across_turns(backend):
    """A real tiny model, three turns: the policy's log-probs of the masked-in tokens of the whole
    trajectory (one forward) equal the sampler's, turn by turn: the tokens trained on are the tokens
    sampled, in the context they were sampled in."""
    model, tok = char_model(seed=1)
    sampler = (FastSampler if backend == "fast" else HFSampler)(model, tok)
    params = sampling_params(tok, max_new_tokens=160, temperature=1.0, stop_at_answer=False)
    params = SamplingParams(**{**params.__dict__, "stop_strings": ("?", "a", "b")})
    eps = _run(sampler, tok, AlwaysTool(turns=3), [Example("q", "7"), Example("r", "7")], 3, params)
    assert max(len(e.turns) for e in eps) == 3
    mb = collate([_rollout(e) for e in eps], tok.pad_token_id)
    with torch.no_grad():
        lp = naive_completion_logprobs(model, mb.input_ids, mb.attention_mask, mb.logits_to_keep)
    mask = mb.completion_mask.bool()
    torch.testing.assert_close(lp[mask], mb.old_logprobs[mask], atol=2e-4, rtol=1e-4)
    assert (mb.old_logprobs[~mask] == 0).all()


def test_single_turn_takes_one_generate_call_with_the_old_arguments():
    tok = char_tokenizer()
    sampler = ScriptedSampler([tok("7")["input_ids"]])
    params = SamplingParams(max_new_tokens=8, stop_token_ids=(tok.eos_token_id,))
    eps = _run(sampler, tok, SingleTurn(EchoTask()), [Example("q", "7")] * 2, 3, params)
    assert len(sampler.calls) == 1 and len(eps) == 6 and all(e.loss_mask == [1.0] for e in eps)


# ------------------------------------------------------------------ a tiny model learns to call a tool

def test_the_tool_task_learns_on_a_tiny_model(tmp_path):
    """The secret (3, 5, 7 or 9) is only in the tool's answer, and the reward (tests/toy_tool_rewards.py)
    pays 0.5 for calling the tool and 0.5 x the final turn's share of the secret digit. A random char
    model calls it ("?") in about half its episodes; GRPO on whole trajectories (the tool's tokens
    masked out) makes it call the tool every time within a few dozen steps, and the reward rises.
    Copying the digit is learned more slowly (0.1 of the final turn by step 40, measured): the
    assertions are on the tool use and the reward."""
    from rlvr.config import load_config
    from rlvr.trainer import train

    model, tok = char_model(seed=0)
    cfg = load_config(None, [
        f"run.output_dir={tmp_path / 'run'}", "model.use_peft=false", "task.system_prompt=",
        f"task.rewards={{{ROOT / 'tests' / 'toy_tool_rewards.py'}:secret_reward: 1.0}}",
        "sampling.max_completion_length=48", "sampling.stop_at_answer=false", "sampling.temperature=1.0",
        "grpo.prompts_per_step=4", "grpo.num_generations=8", "grpo.learning_rate=0.01",
        "grpo.per_device_train_batch_size=32", "grpo.max_steps=25", "eval.on_start=false", "eval.n=0",
        "run.save_steps=0", "run.quiet=true", "run.log_samples_every=5", "task.max_tool_calling_iterations=1",
        "run.doctor=off",
    ])
    train(cfg, model=model, tokenizer=tok, task=SecretTask())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward/secret_reward/mean"] for r in rows]
    calls = [r["episode/tool_calls_mean"] for r in rows]
    assert len(rows) == 25
    assert sum(calls[:3]) / 3 < 0.75, calls
    assert sum(calls[-3:]) / 3 > 0.9, calls
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.15, rewards
    # every logged sample is an episode, with its conversation for the report
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["conversation"][0]["role"] == "assistant" for s in samples)


def test_sft_warm_up_of_a_tool_task_trains_on_the_models_turns_only(smol_tokenizer):
    """The calculator task's demonstrations are multi-turn (call, result, answer): the SFT warm-up
    encodes them as episodes, the calculator's result masked out."""
    from rlvr.demos import procedural_demos
    from rlvr.sft import _encode
    from rlvr.tasks import get_task

    tok = smol_tokenizer
    task = get_task("calculator", n=4, n_test=2)
    demos = procedural_demos(task, task.train_examples()[:2])
    assert len(demos) == 2 and all(len(d.messages) == 3 for d in demos)
    items = _encode(tok, task, PromptFormat(), demos)
    for d, r in zip(demos, items):
        result = d.messages[1]["content"]
        kept = tok.decode([t for t, m in zip(r.completion_ids, r.loss_mask) if m])
        dropped = tok.decode([t for t, m in zip(r.completion_ids, r.loss_mask) if not m])
        assert result in dropped and "<tool_call>" in kept and d.messages[2]["content"] in kept
        assert result not in kept.replace(d.messages[2]["content"], "")
        # the prompt the warm-up sees is the prompt the episodes see: the tools are described in it
        assert "calculator" in tok.decode(r.prompt_ids)
