"""Tests of the samplers: the fused sampling function, FastSampler against HF generate, log-probs
against a fresh forward pass, reproducibility, distributions, stops, LoRA and the fallback path."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.models import tiny_random_model
from rlvr.sampling import Completion, FastSampler, HFSampler, SamplingParams, sample_tokens


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def lively(model, seed: int = 0):
    """Re-draw a tiny random model's weights so its next-token distributions are peaked and varied.

    The default init (std 0.02) gives near-uniform logits, where greedy decoding repeats one token
    and every test passes trivially. Embedding std 1 and linear std 3/sqrt(fan_in) give logits with
    std ~8 and greedy sequences that change token every step.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 1.0 if "embed" in name else 3.0 / p.shape[1] ** 0.5, generator=g)
    return model


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_random_model(seed=0)
    return lively(model), tok


def prompts_of(tok, texts):
    return [tok.encode(t) for t in texts]


TEXTS = ["Hello there, how are you", "What is 12 minus 5? The answer is", "x",
         "A longer prompt with quite a few more tokens than the others, to make padding matter"]


def hf_greedy(model, prompt, n):
    """Reference: HF generate on one unpadded prompt, no EOS."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=[],
                             pad_token_id=0)  # [] : no EOS (None would mean the model's)
    return out[0, len(prompt):].tolist()


def forward_logprobs(model, prompt, completion: Completion, temperature):
    """log_softmax(logits / T) of the completion's tokens from one fresh forward pass."""
    ids = torch.tensor([prompt + completion.token_ids])
    with torch.inference_mode():
        logits = model(ids).logits[0, len(prompt) - 1: -1].float()  # [T, V]
    z = torch.log_softmax(logits / temperature, -1)
    return z.gather(1, torch.tensor(completion.token_ids)[:, None])[:, 0]


# ------------------------------------------------------------------------------------------------
# sample_tokens: hand-computed cases
# ------------------------------------------------------------------------------------------------

# probabilities 1/2, 1/4, 1/8, 1/8 (logits are their logs); cumulative 0.5, 0.75, 0.875, 1.0
QUARTER = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]]))


def draw(u, **kw):
    tokens, logprobs = sample_tokens(QUARTER.expand(len(u), 4), torch.tensor(u), **kw)
    return tokens.tolist(), logprobs


def test_sample_greedy_is_argmax_with_zero_logprob():
    tokens, logprobs = sample_tokens(torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]]), None, temperature=0)
    assert tokens.tolist() == [1, 0]
    assert logprobs.tolist() == [0.0, 0.0]


def test_sample_inverse_cdf_full_distribution():
    # u * 1.0 falls in [0, .5) -> 0, [.5, .75) -> 1, [.75, .875) -> 2, [.875, 1) -> 3
    tokens, logprobs = draw([0.1, 0.6, 0.8, 0.9], temperature=1.0)
    assert tokens == [0, 1, 2, 3]
    assert torch.allclose(logprobs, torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125])))


def test_sample_top_p_keeps_mass_before_below_p_and_logprob_is_untruncated():
    # top_p = 0.7: mass before each token 0, .5, .75, .875 -> keep tokens 0 and 1 (total .75)
    # u = 0.6 -> target .45 -> token 0; u = 0.8 -> .6 -> token 1; u = 0.99 -> .7425 -> token 1
    tokens, logprobs = draw([0.6, 0.8, 0.99], temperature=1.0, top_p=0.7)
    assert tokens == [0, 1, 1]
    assert logprobs[1].item() == pytest.approx(math.log(0.25))  # log p before truncation, not log(1/3)


def test_sample_top_k_then_top_p_renormalised():
    # top_k = 2: [2/3, 1/3]; u = 0.7 -> target .7 > 2/3 -> token 1
    assert draw([0.7], temperature=1.0, top_k=2)[0] == [1]
    # top_k = 3 renormalises to [.571, .286, .143]; top_p = 0.6: mass before 0, .571, .857 -> keep 0, 1
    # u = 0.99 -> target .99 * .857 = .849 > .571 -> token 1 (never 2)
    assert draw([0.99], temperature=1.0, top_k=3, top_p=0.6)[0] == [1]
    assert draw([0.99], temperature=1.0, top_k=1)[0] == [0]


def test_sample_temperature_scales_logprobs():
    # T = 2: softmax(log p / 2) = sqrt(p) / sum sqrt(p) = [.707, .5, .354, .354] / 1.914
    _, logprobs = draw([0.1], temperature=2.0)
    assert logprobs.item() == pytest.approx(math.log(0.7071 / 1.9142), abs=1e-3)


@pytest.mark.parametrize("top_k,top_p,vocab", [(0, 0.9, 1000), (0, 0.5, 1000), (20, 0.8, 1000), (300, 1.0, 1000),
                                               (0, 0.999, 1000), (0, 0.95, 3000), (0, 1.0, 3000)])
def test_sample_matches_hf_warpers(top_k, top_p, vocab):
    """Same uniforms -> same tokens as inverse-CDF over HF's TopK/TopP-processed distribution,
    including rows whose first candidates hold < top_p of the mass (the later stages, the full sort)."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.05, 0.5, 2.0, 8.0]).repeat_interleave(50)[:, None]  # flat to peaked rows
    logits = torch.randn(200, vocab, generator=g) * scale  # [200, V]
    u = torch.rand(200, generator=g, dtype=torch.float64)
    scores = TemperatureLogitsWarper(0.7)(None, logits.clone())
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    probs = torch.softmax(scores, -1)
    # reference inverse CDF in index order is a different order from ours (sorted), so compare the
    # kept sets and the distribution of our tokens instead: every token must be kept by HF ...
    tokens, logprobs = sample_tokens(logits, u, temperature=0.7, top_k=top_k, top_p=top_p)
    assert torch.all(probs.gather(1, tokens[:, None]) > 0)
    if top_k == 0 and top_p == 1.0:  # no truncation: inverse CDF in vocabulary order, not sorted
        cdf = torch.cumsum(probs.double(), -1)
        ref = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
        assert (ref == tokens).float().mean() > 0.99
        return
    # ... and the token we pick is the one the sorted inverse CDF over HF's probabilities picks
    sorted_p, order = torch.sort(probs, -1, descending=True)
    cdf = torch.cumsum(sorted_p.double(), -1)
    ref = order.gather(1, torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp(max=vocab - 1))
    assert (ref[:, 0] == tokens).float().mean() > 0.99  # ties / rounding at the edges aside
    expected = torch.log_softmax(logits / 0.7, -1).gather(1, tokens[:, None])[:, 0]
    assert torch.allclose(logprobs, expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# FastSampler on a tiny model
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lean", [True, False])
def test_fast_greedy_identical_to_hf_generate(tiny, lean):
    model, tok = tiny
    prompts = prompts_of(tok, TEXTS)
    sampler = FastSampler(model, tok, lean=lean)
    out = sampler.generate(prompts, SamplingParams(max_new_tokens=16, temperature=0))
    assert sampler.path == ("lean" if lean else "hf")
    for prompt, c in zip(prompts, out):
        assert c.token_ids == hf_greedy(model, prompt, 16)
        assert c.logprobs == [0.0] * 16 and c.finish_reason == "length"
    batched = HFSampler(model, tok).generate(prompts, SamplingParams(max_new_tokens=16, temperature=0))
    assert [c.token_ids for c in batched] == [c.token_ids for c in out]


def test_fast_shared_system_prompt_runs_once_same_tokens(tiny):
    """Prompts sharing a long prefix (a system prompt) prefill it once; greedy still equals HF."""
    model, tok = tiny
    system = "You are a careful assistant. Always think step by step, then answer briefly and exactly. "
    prompts = prompts_of(tok, [system + t for t in TEXTS])
    assert len(__import__("os").path.commonprefix(prompts)) >= 16
    out = FastSampler(model, tok).generate(prompts, SamplingParams(max_new_tokens=10, temperature=0))
    assert [c.token_ids for c in out] == [hf_greedy(model, p, 10) for p in prompts]


def test_fast_small_batch_refills_rows_same_tokens(tiny):
    """max_batch_size 3 < 8 sequences: rows are retired and refilled; the tokens do not change."""
    model, tok = tiny
    prompts = prompts_of(tok, TEXTS)
    params = SamplingParams(max_new_tokens=10, temperature=0, stop_token_ids=(tok.eos_token_id,))
    full = FastSampler(model, tok).generate(prompts, params, num_samples=2)
    small = FastSampler(model, tok, max_batch_size=3).generate(prompts, params, num_samples=2)
    assert [c.token_ids for c in small] == [c.token_ids for c in full]
    assert [c.prompt_index for c in full] == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("lean", [True, False])
def test_fast_logprobs_match_a_fresh_forward(tiny, lean):
    model, tok = tiny
    prompts = prompts_of(tok, TEXTS)
    params = SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.9, top_k=40)
    out = FastSampler(model, tok, lean=lean, max_batch_size=5).generate(
        prompts, params, num_samples=3, generator=torch.Generator().manual_seed(1))
    assert len(out) == 12
    for c in out:
        expected = forward_logprobs(model, prompts[c.prompt_index], c, 0.8)
        assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-4)


def test_hf_sampler_logprobs_match_a_fresh_forward(tiny):
    model, tok = tiny
    prompts = prompts_of(tok, TEXTS[:2])
    params = SamplingParams(max_new_tokens=8, temperature=1.3, top_p=0.5)
    out = HFSampler(model, tok).generate(prompts, params, num_samples=2, generator=torch.Generator().manual_seed(0))
    for c in out:
        expected = forward_logprobs(model, prompts[c.prompt_index], c, 1.3)
        assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-4)


def test_hf_sampler_ignores_the_model_generation_config(tiny):
    """generate() fills unset options from model.generation_config: a repetition penalty or an EOS
    there must not leak into HFSampler (no stop_token_ids = no stop)."""
    model, tok = tiny
    prompts = prompts_of(tok, TEXTS[:2])
    free = [hf_greedy(model, p, 8) for p in prompts]
    saved = model.generation_config
    model.generation_config = type(saved)(eos_token_id=free[0][2], repetition_penalty=3.0, top_k=5)
    try:
        out = HFSampler(model, tok).generate(prompts, SamplingParams(max_new_tokens=8, temperature=0))
    finally:
        model.generation_config = saved
    assert [c.token_ids for c in out] == free
    assert [c.finish_reason for c in out] == ["length", "length"]


def test_fast_reproducible_with_a_generator(tiny):
    model, tok = tiny
    prompts = prompts_of(tok, TEXTS[:2])
    params = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.95)
    sampler = FastSampler(model, tok)

    def run(seed, **kw):
        return [c.token_ids for c in sampler.generate(prompts, params, num_samples=4,
                                                      generator=torch.Generator().manual_seed(seed), **kw)]

    first = run(0)
    assert run(0) == first
    assert run(1) != first
    assert len({tuple(t) for t in first}) > 1  # the samples of a group differ
    # the randomness of a sequence does not depend on how the batch is arranged
    small = FastSampler(model, tok, max_batch_size=3)
    assert [c.token_ids for c in small.generate(prompts, params, num_samples=4,
                                                generator=torch.Generator().manual_seed(0))] == first


def test_fast_first_token_distribution_and_top_k(tiny):
    """2000 first tokens of one prompt: frequencies within 4.5 sigma of softmax(logits / T) over the
    top 5 (renormalised), and never a token outside the top 5."""
    model, tok = tiny
    prompt = tok.encode("What is 12 minus 5?")
    with torch.inference_mode():
        logits = model(torch.tensor([prompt])).logits[0, -1]
    top = torch.topk(logits / 1.5, 5)
    p = torch.softmax(top.values, -1)
    n = 2000
    out = FastSampler(model, tok, max_batch_size=n).generate(
        [prompt], SamplingParams(max_new_tokens=1, temperature=1.5, top_k=5), num_samples=n,
        generator=torch.Generator().manual_seed(0))
    first = torch.tensor([c.token_ids[0] for c in out])
    assert set(first.tolist()) <= set(top.indices.tolist())
    freq = (first[:, None] == top.indices[None]).float().mean(0)  # [5]
    sigma = (p * (1 - p) / n).sqrt()
    assert torch.all((freq - p).abs() < 4.5 * sigma + 1e-3), (freq, p)


def test_fast_full_distribution_without_truncation(tiny):
    """top_k 0 / top_p 1: first-token frequencies of the 3 likeliest tokens match softmax(logits)."""
    model, tok = tiny
    prompt = tok.encode("Hello there")
    with torch.inference_mode():
        p_all = torch.softmax(model(torch.tensor([prompt])).logits[0, -1], -1)
    top = torch.topk(p_all, 3)
    n = 2000
    out = FastSampler(model, tok, max_batch_size=n).generate(
        [prompt], SamplingParams(max_new_tokens=1, temperature=1.0), num_samples=n,
        generator=torch.Generator().manual_seed(3))
    first = torch.tensor([c.token_ids[0] for c in out])
    freq = (first[:, None] == top.indices[None]).float().mean(0)
    sigma = (top.values * (1 - top.values) / n).sqrt()
    assert torch.all((freq - top.values).abs() < 4.5 * sigma + 1e-3), (freq, top.values)


def test_fast_stops_on_token_and_string_like_hf(tiny):
    model, tok = tiny
    prompts = prompts_of(tok, TEXTS)
    free = [hf_greedy(model, p, 12) for p in prompts]
    stop_id = free[0][4]  # prompt 0 stops at its 5th token; others where (if) it appears
    text = tok.decode(free[1])
    stop_string = text[len(tok.decode(free[1][:6])) - 2:][:3]  # 3 characters ending inside token 7
    params = SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=(stop_id,),
                            stop_strings=(stop_string,))
    fast_out = FastSampler(model, tok).generate(prompts, params)
    hf_out = HFSampler(model, tok).generate(prompts, params)
    assert [c.token_ids for c in fast_out] == [c.token_ids for c in hf_out]
    assert [c.finish_reason for c in fast_out] == [c.finish_reason for c in hf_out]
    assert fast_out[0].token_ids == free[0][:5] and fast_out[0].finish_reason == "stop"
    assert stop_string in tok.decode(fast_out[1].token_ids)
    assert stop_string not in tok.decode(fast_out[1].token_ids[:-1])
    assert fast_out[1].finish_reason == "stop"


def test_fast_progress_counts_every_token(tiny):
    model, tok = tiny
    seen = []
    out = FastSampler(model, tok).generate(prompts_of(tok, TEXTS[:2]), SamplingParams(max_new_tokens=5),
                                           num_samples=3, generator=torch.Generator().manual_seed(0),
                                           progress=seen.append)
    assert sum(seen) == sum(len(c.token_ids) for c in out) == 30
    seen.clear()
    out = HFSampler(model, tok).generate(prompts_of(tok, TEXTS[:2]), SamplingParams(max_new_tokens=5),
                                         num_samples=3, progress=seen.append)
    assert sum(seen) == 30


def test_fast_edge_cases(tiny):
    model, tok = tiny
    sampler = FastSampler(model, tok)
    assert sampler.generate([], SamplingParams()) == []
    out = sampler.generate([[1, 2]], SamplingParams(max_new_tokens=0), num_samples=2)
    assert [(c.prompt_index, c.token_ids, c.finish_reason) for c in out] == [(0, [], "length")] * 2
    with pytest.raises(ValueError):
        sampler.generate([[]], SamplingParams())


# ------------------------------------------------------------------------------------------------
# other architectures, LoRA
# ------------------------------------------------------------------------------------------------

def _tiny_config_model(kind: str, tok):
    import transformers

    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    if kind == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    elif kind == "qwen3":
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(head_dim=16, **common))
    else:  # not supported by the lean path: the HF forward is used
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**common))
    torch.manual_seed(0)
    model = lively(model.float().eval())
    if kind == "qwen2":  # non-zero q/k/v biases, so the bias path is exercised
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "mistral"])
def test_fast_other_architectures_greedy(tiny, kind):
    _, tok = tiny
    model = _tiny_config_model(kind, tok)
    prompts = prompts_of(tok, TEXTS)
    sampler = FastSampler(model, tok)
    out = sampler.generate(prompts, SamplingParams(max_new_tokens=10, temperature=0))
    assert sampler.path == ("hf" if kind == "mistral" else "lean")
    assert (sampler.unsupported is None) == (kind != "mistral")
    for prompt, c in zip(prompts, out):
        assert c.token_ids == hf_greedy(model, prompt, 10)


def test_fast_lora_model_uses_current_adapter_weights(tiny):
    from rlvr.models import attach_lora

    base, tok = tiny_random_model(seed=1)
    model = attach_lora(lively(base, seed=1), r=4, alpha=8)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=g)
    model.train()  # a training model: the sampler switches dropout off and restores the flag
    prompts = prompts_of(tok, TEXTS[:3])
    sampler = FastSampler(model, tok)
    params = SamplingParams(max_new_tokens=8, temperature=0)
    out = sampler.generate(prompts, params)
    assert sampler.path == "lean" and model.training
    model.eval()
    assert [c.token_ids for c in out] == [hf_greedy(model, p, 8) for p in prompts]
    with torch.no_grad():  # an optimizer step changes the adapter in place: the sampler must see it
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(-1.0)
    out2 = sampler.generate(prompts, params)
    assert [c.token_ids for c in out2] == [hf_greedy(model, p, 8) for p in prompts]
    assert [c.token_ids for c in out2] != [c.token_ids for c in out]
    sampled = sampler.generate(prompts, SamplingParams(max_new_tokens=6, temperature=0.9), num_samples=2,
                               generator=torch.Generator().manual_seed(0))
    for c in sampled:
        expected = forward_logprobs(model, prompts[c.prompt_index], c, 0.9)
        assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# the real bundled model
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real():
    from rlvr.models import load_model

    model, tok = load_model("smollm2-135m")
    return model, tok


def chat(tok, question):
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  tokenize=True)
    return ids if isinstance(ids, list) else ids["input_ids"]


@pytest.mark.slow
def test_real_model_greedy_identical_to_hf(real):
    model, tok = real
    prompts = [chat(tok, q) for q in ("What is 1234 minus 567?", "Name a color.",
                                      "Write one sentence about the sea.")]
    params = SamplingParams(max_new_tokens=32, temperature=0, stop_token_ids=(tok.eos_token_id,))
    fast_out = FastSampler(model, tok).generate(prompts, params)
    for prompt, c in zip(prompts, fast_out):
        with torch.inference_mode():
            ref = model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        assert c.token_ids == ref[0, len(prompt):].tolist()


@pytest.mark.slow
def test_real_model_sampled_logprobs_match_forward(real):
    model, tok = real
    prompts = [chat(tok, "What is 81 minus 17?"), chat(tok, "Say hello.")]
    params = SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.95,
                            stop_token_ids=(tok.eos_token_id,), stop_strings=("</answer>",))
    out = FastSampler(model, tok).generate(prompts, params, num_samples=3,
                                           generator=torch.Generator().manual_seed(0))
    for c in out:
        expected = forward_logprobs(model, prompts[c.prompt_index], c, 1.0)
        assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-4)
