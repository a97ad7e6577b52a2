"""From a Hugging Face causal LM to per-token log-probs of completions: the lean way and the naive one.

Input layout (as the sampler and the buffer produce it): each row is [prompt | completion], prompts
left-padded, completions right-padded, so the completion occupies the last K = `logits_to_keep`
columns of `input_ids` (K = padded completion length). The log-prob of completion token t comes
from the logits at the position before it, so we need positions [-K-1, -1).

Lean path (`completion_logprobs`): run the backbone only (the decoder, i.e. `model.model` of a
LlamaForCausalLM, found through a peft PeftModel too), take the final hidden states at those K
positions, and hand them with the lm_head weight to `chunked_token_logprobs`, which never holds
more than one chunk of [chunk_size, V] logits. The naive path (`naive_completion_logprobs`) calls
the full model, gets [N, T, V] logits and takes a full log-softmax: the reference the lean path is
tested against, and the baseline of bench/bench_update.py.

Position ids are computed from the attention mask (cumsum - 1), as `generate` does, so a row is
scored at the positions it was sampled at. With rotary embeddings (Llama, SmolLM2, Qwen) a constant
shift changes nothing but rounding; with absolute position embeddings (GPT-2, OPT) the default
arange positions would score left-padded rows differently from how they were sampled (a silent
sampler/trainer log-prob mismatch of the kind of TRL #4159, #6789).

Gradient checkpointing of the layers is switched on by the trainer
(`model.activation_checkpointing_enable()`, transformers 5's name for the deprecated
`gradient_checkpointing_enable()`); both paths work with it and with LoRA (peft) models. Measured on
the 135M model, 32 x (64 + 64) tokens (bench/bench_update.py): the lean head saves ~0.7 GB of logits,
but the layers' activations (~6 GB) are the big item, so layer checkpointing is the main memory knob.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from rlvr.algorithms.logprobs import chunked_head_logprobs, chunked_token_logprobs
from rlvr.models import base_model


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, as `generate` computes them: [N, T] int64, 0 on padding."""
    positions = attention_mask.long().cumsum(-1) - 1  # [N, T]
    return positions.masked_fill(attention_mask == 0, 0)  # [N, T]


def decoder_and_head(model):
    """(backbone, output head) of a causal LM: e.g. (LlamaModel, lm_head) of a LlamaForCausalLM.

    Works on a peft PeftModel (the LoRA layers live inside both modules, so their deltas apply).
    """
    base = base_model(model)
    head = base.get_output_embeddings()
    decoder = base.get_decoder()
    if head is None or decoder is base:
        raise TypeError(f"{type(base).__name__} has no separate decoder and output head; use naive_completion_logprobs")
    return decoder, head


def completion_hidden_states(model, input_ids: Tensor, attention_mask: Tensor, logits_to_keep: int,
                             prompt_rows: Tensor | None = None) -> Tensor:
    """Final hidden states at the K positions that predict input_ids[:, -K:]: [N, K, H].

    prompt_rows [N] (optional): for each row, the index of a row with the same prompt columns
    (the first one, as `buffer.collate` computes it). Rows sharing a prompt then run its forward
    once (`shared_prompt_hidden_states`), when the model allows it.
    """
    _check_keep(input_ids, logits_to_keep)
    decoder, _ = decoder_and_head(model)
    if prompt_rows is not None and _can_share_prompts(model, prompt_rows):
        return shared_prompt_hidden_states(decoder, input_ids, attention_mask, logits_to_keep, prompt_rows)
    out = decoder(
        input_ids=input_ids,  # [N, T]
        attention_mask=attention_mask,  # [N, T]
        position_ids=position_ids_from_mask(attention_mask),  # [N, T]
        use_cache=False,
    )
    hidden = out.last_hidden_state  # [N, T, H]
    return hidden[:, -logits_to_keep - 1:-1]  # [N, K, H]


def decoder_tokens(model, attention_mask: Tensor, logits_to_keep: int, prompt_rows: Tensor | None = None) -> int:
    """Tokens the decoder runs for `completion_hidden_states` with these arguments: every real token,
    or with shared prompts each distinct prompt's tokens once plus every row's last K columns."""
    if prompt_rows is None or not _can_share_prompts(model, prompt_rows):
        return int(attention_mask.sum())
    prompts = attention_mask[prompt_rows.unique(), :-logits_to_keep]  # [P, T-K]
    return int(prompts.sum() + attention_mask[:, -logits_to_keep:].sum())


def _can_share_prompts(model, prompt_rows: Tensor) -> bool:
    """Worth it (some prompt appears twice) and possible: layer checkpointing turns the cache off."""
    base = base_model(model)
    name = "is_activation_checkpointing" if hasattr(type(base), "is_activation_checkpointing") else "is_gradient_checkpointing"
    checkpointing = getattr(base, name, False) and torch.is_grad_enabled()  # transformers 5 renamed it
    return not checkpointing and int(prompt_rows.unique().numel()) < prompt_rows.numel()


def shared_prompt_hidden_states(decoder, input_ids: Tensor, attention_mask: Tensor, logits_to_keep: int,
                                prompt_rows: Tensor) -> Tensor:
    """`completion_hidden_states` with each distinct prompt run once: [N, K, H].

    GRPO scores G completions of the same prompt, so a plain forward computes every prompt G times.
    Here the P distinct prompts run once, their keys/values are indexed out to the N rows (a view
    per layer; in the backward pass the N rows' gradients are summed into the P prompts), and the
    completions run on top of that cache. Same numbers as one forward over [prompt | completion]
    (causal attention: a prompt position never sees the completion), for (P*Tp + N*K) / (N*(Tp+K))
    of the work: with G = 8, ~60 prompt and ~60 completion tokens, about half.
    """
    reps, inverse = torch.unique(prompt_rows, return_inverse=True)  # [P] row per prompt, [N] in [0, P)
    tp = input_ids.shape[1] - logits_to_keep
    prompt_mask = attention_mask[reps, :tp]  # [P, Tp]
    prompt = decoder(
        input_ids=input_ids[reps, :tp],  # [P, Tp]
        attention_mask=prompt_mask,
        position_ids=position_ids_from_mask(prompt_mask),  # [P, Tp]
        use_cache=True,
    )
    cache = getattr(prompt, "cache", None) or prompt.past_key_values  # transformers >= 5.2x names it cache
    cache.batch_select_indices(inverse)  # every layer's keys/values: [P, ...] -> [N, ...]
    name = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    out = decoder(
        input_ids=input_ids[:, tp:],  # [N, K]
        attention_mask=attention_mask,  # [N, Tp + K]: the prompt part masks each row's padding
        position_ids=position_ids_from_mask(attention_mask)[:, tp:],  # [N, K]
        use_cache=True,
        **{name: cache},
    )
    last_prompt = prompt.last_hidden_state[inverse, -1:]  # [N, 1, H]: predicts the first completion token
    return torch.cat([last_prompt, out.last_hidden_state[:, :-1]], dim=1)  # [N, K, H]


def _check_keep(input_ids: Tensor, logits_to_keep: int) -> None:
    if not 0 < logits_to_keep < input_ids.shape[1]:
        raise ValueError(f"logits_to_keep={logits_to_keep} must be in [1, {input_ids.shape[1] - 1}] "
                         "(the completion columns, after at least one prompt token)")


def _head_fn(model, head):
    """The logits function: the plain lm_head matmul when possible, else the module itself
    (e.g. a LoRA-wrapped lm_head), with the model's final-logit soft-capping when it has one."""
    cap = getattr(getattr(base_model(model), "config", None), "final_logit_softcapping", None)
    if type(head) is torch.nn.Linear and not cap:
        return None
    if not cap:
        return head

    def capped(h: Tensor) -> Tensor:
        return torch.tanh(head(h) / cap) * cap  # [C, V]

    return capped


def completion_logprobs(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    logits_to_keep: int,
    *,
    temperature: float = 1.0,
    chunk_size: int = 512,
    with_entropy: bool = False,
    prompt_rows: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Log-probs of the completion tokens input_ids[:, -K:] under softmax(logits / temperature), lean.

    input_ids, attention_mask: [N, T] (left-padded prompt + right-padded completion); K =
    logits_to_keep. Returns logp [N, K] fp32 (and the entropy [N, K], no grad, when with_entropy).
    Padding positions get a log-prob too; the loss masks them out.
    Peak extra memory: chunk_size x V floats for the logits, instead of N x T x V.
    prompt_rows [N]: rows with equal prompts run the prompt once (`completion_hidden_states`).
    """
    hidden = completion_hidden_states(model, input_ids, attention_mask, logits_to_keep, prompt_rows)  # [N, K, H]
    targets = input_ids[:, -logits_to_keep:]  # [N, K]
    _, head = decoder_and_head(model)
    head_fn = _head_fn(model, head)
    kwargs = dict(temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy)
    if head_fn is None:
        return chunked_token_logprobs(hidden, head.weight, targets, bias=head.bias, **kwargs)
    return chunked_head_logprobs(hidden, head_fn, targets, **kwargs)


def naive_completion_logprobs(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    logits_to_keep: int,
    *,
    temperature: float = 1.0,
) -> Tensor:
    """The textbook reference: full-sequence logits [N, T, V], full log-softmax, gather. [N, K].

    Same positions and temperature as `completion_logprobs`; memory grows as N x T x V.
    """
    _check_keep(input_ids, logits_to_keep)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).logits  # [N, T, V]
    logits = logits[:, -logits_to_keep - 1:-1].float() / temperature  # [N, K, V]
    logp_all = torch.log_softmax(logits, dim=-1)  # [N, K, V]
    targets = input_ids[:, -logits_to_keep:]  # [N, K]
    return logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [N, K]


__all__ = [
    "completion_hidden_states",
    "completion_logprobs",
    "decoder_and_head",
    "naive_completion_logprobs",
    "position_ids_from_mask",
    "shared_prompt_hidden_states",
]
