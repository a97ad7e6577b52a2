"""The lean log-prob path (backbone + chunked lm_head) against the naive full-logits path, on a real
tiny Llama with a LoRA adapter: same values, same LoRA gradients, temperature, padding, checkpointing."""

import pytest
import torch

from rlvr.algorithms.losses import policy_loss
from rlvr.models import attach_lora, tiny_random_model
from rlvr.policy import (
    completion_logprobs,
    decoder_and_head,
    decoder_tokens,
    naive_completion_logprobs,
    position_ids_from_mask,
)

K = 6  # completion columns


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_random_model(seed=0)[1]


def _lora_model(tokenizer, *, seed=0, target_modules="all-linear"):
    model, _ = tiny_random_model(seed=seed, tokenizer=tokenizer)
    model = attach_lora(model, r=4, alpha=8, target_modules=target_modules)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # LoRA B starts at 0: give it values so every LoRA weight gets a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _batch(seed=0):
    """4 rows of [left-padded prompt (8) | right-padded completion (K)]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 5000, (4, 8 + K), generator=g)  # [N, T]
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding of prompt 0
    mask[1, :5] = 0
    mask[2, -2:] = 0  # right padding of completion 2
    mask[3, -5:] = 0
    return ids, mask


def _loss_and_lora_grads(model, logprobs, mask):
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5])
    loss, _ = policy_loss(logprobs, logprobs.detach(), adv, mask[:, -K:])
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    return loss, torch.autograd.grad(loss, params)


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 0]]


def test_decoder_and_head_through_peft(tokenizer):
    model = _lora_model(tokenizer)
    decoder, head = decoder_and_head(model)
    assert type(decoder).__name__ == "LlamaModel" and head.weight.shape[0] == len(tokenizer)


def test_lean_matches_naive_values_and_lora_gradients(tokenizer):
    model = _lora_model(tokenizer)
    ids, mask = _batch()
    lean = completion_logprobs(model, ids, mask, K, chunk_size=5)
    naive = naive_completion_logprobs(model, ids, mask, K)
    assert lean.shape == (4, K)
    torch.testing.assert_close(lean, naive, atol=1e-5, rtol=0)
    loss_lean, grads_lean = _loss_and_lora_grads(model, lean, mask)
    loss_naive, grads_naive = _loss_and_lora_grads(model, naive, mask)
    torch.testing.assert_close(loss_lean, loss_naive, atol=1e-5, rtol=0)
    assert len(grads_lean) > 0 and all(g.abs().sum() > 0 for g in grads_lean)
    for a, b in zip(grads_lean, grads_naive):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_temperature_is_applied(tokenizer):
    model = _lora_model(tokenizer)
    ids, mask = _batch(1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        by_hand = torch.log_softmax(logits[:, -K - 1:-1] / 0.6, -1).gather(-1, ids[:, -K:, None])[..., 0]
        lean = completion_logprobs(model, ids, mask, K, temperature=0.6)
        plain = completion_logprobs(model, ids, mask, K)
    torch.testing.assert_close(lean, by_hand, atol=1e-5, rtol=0)
    assert (lean - plain).abs().max() > 1e-3


def test_left_padding_does_not_change_logprobs(tokenizer):
    # The same prompt + completion scored alone and behind 3 pad tokens: positions come from the mask.
    model = _lora_model(tokenizer)
    ids, mask = _batch(2)
    with torch.no_grad():
        padded = completion_logprobs(model, ids[:1], mask[:1], K)
        alone = completion_logprobs(model, ids[:1, 3:], mask[:1, 3:], K)
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def test_entropy_and_no_grad(tokenizer):
    model = _lora_model(tokenizer)
    ids, mask = _batch(3)
    with torch.no_grad():
        logp, entropy = completion_logprobs(model, ids, mask, K, with_entropy=True)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    p = torch.softmax(logits[:, -K - 1:-1], -1)
    torch.testing.assert_close(entropy, -(p * p.clamp_min(1e-30).log()).sum(-1), atol=1e-4, rtol=0)
    assert not logp.requires_grad and (entropy > 0).all()


def test_gradient_checkpointing_gives_the_same_gradients(tokenizer):
    model = _lora_model(tokenizer)
    ids, mask = _batch(4)
    _, expected = _loss_and_lora_grads(model, naive_completion_logprobs(model, ids, mask, K), mask)
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.train()
    _, grads = _loss_and_lora_grads(model, completion_logprobs(model, ids, mask, K), mask)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_lora_on_the_lm_head_is_used(tokenizer):
    # A LoRA-wrapped lm_head is not a plain Linear: the lean path must call it, not read .weight.
    model = _lora_model(tokenizer, target_modules=["q_proj", "lm_head"])
    ids, mask = _batch(5)
    lean = completion_logprobs(model, ids, mask, K, chunk_size=7)
    naive = naive_completion_logprobs(model, ids, mask, K)
    torch.testing.assert_close(lean, naive, atol=1e-5, rtol=0)
    _, grads_lean = _loss_and_lora_grads(model, lean, mask)
    _, grads_naive = _loss_and_lora_grads(model, naive, mask)
    for a, b in zip(grads_lean, grads_naive):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_logits_to_keep_must_leave_a_prompt_token(tokenizer):
    model = _lora_model(tokenizer)
    ids, mask = _batch()
    for bad in (0, ids.shape[1]):
        with pytest.raises(ValueError, match="logits_to_keep"):
            completion_logprobs(model, ids, mask, bad)


def _grouped_batch(seed=0):
    """6 rows, 2 prompts x 3 completions: prompt 0 left-padded by 3, completions right-padded."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(3, 5000, (2, 8), generator=g)  # [P, Tp]
    ids = torch.cat([prompts.repeat_interleave(3, 0), torch.randint(3, 5000, (6, K), generator=g)], 1)  # [N, T]
    mask = torch.ones_like(ids)
    mask[:3, :3] = 0  # rows of prompt 0: left padding
    mask[1, -2:] = 0  # right padding of two completions
    mask[4, -5:] = 0
    return ids, mask, torch.tensor([0, 0, 0, 3, 3, 3])  # prompt_rows: first row with the same prompt


@pytest.mark.parametrize("lora", [True, False])
def test_shared_prompt_forward_matches_one_forward_values_and_gradients(tokenizer, lora):
    # Running each prompt once and its completions on the cached keys/values is the same function:
    # values and gradients (LoRA, or every weight in full fine-tuning) equal the plain forward's.
    model = _lora_model(tokenizer) if lora else tiny_random_model(seed=0, tokenizer=tokenizer)[0]
    model.train()
    ids, mask, rows = _grouped_batch()
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5, 0.5, 0.3])
    params = [p for p in model.parameters() if p.requires_grad]
    results = []
    for prompt_rows in (None, rows):
        logp, entropy = completion_logprobs(model, ids, mask, K, chunk_size=5, with_entropy=True,
                                            prompt_rows=prompt_rows)
        loss, _ = policy_loss(logp, logp.detach(), adv, mask[:, -K:].float())
        results.append((logp, entropy, torch.autograd.grad(loss, params)))
    (plain, ent_plain, g_plain), (shared, ent_shared, g_shared) = results
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent_shared, ent_plain, atol=3e-5, rtol=0)  # ~10.8 nats summed over 49k terms: fp32 rounding reaches 1.05e-5 on some CPUs
    assert all(g.abs().sum() > 0 for g in g_plain)
    for a, b in zip(g_shared, g_plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_shared_prompt_forward_runs_each_prompt_once(tokenizer):
    model = _lora_model(tokenizer)
    ids, mask, rows = _grouped_batch(1)
    decoder, _ = decoder_and_head(model)
    seen = []
    hook = decoder.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["input_ids"].shape),
                                             with_kwargs=True)
    try:
        with torch.no_grad():
            completion_logprobs(model, ids, mask, K, prompt_rows=rows)
    finally:
        hook.remove()
    assert seen == [(2, 8), (6, K)]  # 2 prompts once, then 6 completions on their cache


def test_decoder_tokens_counts_each_shared_prompt_once(tokenizer):
    # _grouped_batch by hand: prompts of 5 and 8 real tokens; completions 6 + 4 + 6 + 6 + 1 + 6 = 29
    model = _lora_model(tokenizer)
    ids, mask, rows = _grouped_batch(0)
    assert decoder_tokens(model, mask, K) == 3 * 5 + 3 * 8 + 29 == int(mask.sum())
    assert decoder_tokens(model, mask, K, prompt_rows=rows) == 5 + 8 + 29
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.train()
    assert decoder_tokens(model, mask, K, prompt_rows=rows) == 68  # no sharing under checkpointing


def test_shared_prompt_forward_falls_back_under_checkpointing(tokenizer):
    # Layer checkpointing turns the cache off: the shared path must not be taken (it would lose the
    # prompt), and the result stays the plain forward's.
    model = _lora_model(tokenizer)
    ids, mask, rows = _grouped_batch(2)
    expected = completion_logprobs(model, ids, mask, K).detach()
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.train()
    got = completion_logprobs(model, ids, mask, K, prompt_rows=rows)
    torch.testing.assert_close(got.detach(), expected, atol=1e-5, rtol=0)
