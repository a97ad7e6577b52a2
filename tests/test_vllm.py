"""VLLMSampler against transformers on the bundled 135M model: greedy tokens, log-probs, seeds, weight sync.

The engine tests need vLLM (`bash scripts/setup_vllm.sh --dev`, then
`.venv-vllm/bin/python -m pytest tests/test_vllm.py`); in the default environment they are skipped and
only the pure helpers (LoRA-merged state dict, seeds) run.
"""

from __future__ import annotations

import copy
import importlib.util
import os

import pytest
import torch

from rlvr.sampling import HFSampler, SamplingParams
from rlvr.sampling.vllm import per_prompt_seeds, sync_state_dict

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not HAS_VLLM, reason="vllm is not installed here: run `bash scripts/setup_vllm.sh --dev` and "
    "`.venv-vllm/bin/python -m pytest tests/test_vllm.py`")

# One thread, unbound: on a shared 2-core machine two OpenMP threads spin at every barrier while the
# other is descheduled (HF generate of 48 tokens: 150 s with 2 threads, 10 s with 1, load ~10).
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

QUESTIONS = ["What is 7 + 5?", "Name a colour.", "Write one word that rhymes with cat.", "Count to five."]
LOGP_BOUND = 5e-4
"""max |vLLM log-prob - trainer log-prob| per token, fp32. Measured over 512 sampled tokens per setting
(4 prompts x 4 samples x 32): T=1: mean 5.8e-6, max 3.8e-5; T=0.7, top-p 0.9, top-k 20: 4.9e-6, 5.3e-5;
T=1.3, top-p 0.95: 6.0e-6, 2.8e-5 (other kernels and batch shapes; nothing systematic)."""
MAX_LEN = 256


def _perturb(model, seed: int, scale: float = 0.02, match: str = "layers.2.") -> None:
    """Add seeded noise to every weight whose name contains `match` (a stand-in for an update)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if match in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def _trainer_logprobs(model, prompt: list[int], tokens: list[int], temperature: float) -> torch.Tensor:
    """The trainer's view: one HF forward, log_softmax(logits / T) of the completion tokens. [T]"""
    ids = torch.tensor([prompt + tokens])  # [1, P+T]
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1: -1].float()  # [T, V]
    return torch.log_softmax(logits / temperature, -1).gather(1, torch.tensor(tokens)[:, None])[:, 0]


def _hf_greedy(model, tokenizer, prompts, n_new: int = 24):
    params = SamplingParams(max_new_tokens=n_new, temperature=0.0, stop_token_ids=(tokenizer.eos_token_id,))
    return HFSampler(model, tokenizer).generate(prompts, params)


def _assert_greedy_equal(sampler, model, tokenizer, prompts) -> None:
    params = SamplingParams(max_new_tokens=24, temperature=0.0, stop_token_ids=(tokenizer.eos_token_id,))
    got = sampler.generate(prompts, params)
    want = _hf_greedy(model, tokenizer, prompts)
    assert [(c.token_ids, c.finish_reason) for c in got] == [(c.token_ids, c.finish_reason) for c in want]
    assert all(lp == 0.0 for c in got for lp in c.logprobs)


def _assert_logprobs_close(sampler, model, prompts, temperature: float = 0.7) -> float:
    params = SamplingParams(max_new_tokens=16, temperature=temperature, top_p=0.9, top_k=20)
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    out = sampler.generate(prompts, params, num_samples=2, generator=gens)
    worst = 0.0
    for c in out:
        ref = _trainer_logprobs(model, prompts[c.prompt_index], c.token_ids, temperature)
        worst = max(worst, (ref - torch.tensor(c.logprobs)).abs().max().item())
    assert worst < LOGP_BOUND, worst
    return worst


# -- pure helpers (run everywhere) ---------------------------------------------------------------

def test_sync_state_dict_merges_lora_like_peft(tiny_smol):
    from rlvr.models import attach_lora, merged_copy

    model, _ = tiny_smol
    peft_model = attach_lora(copy.deepcopy(model), r=4, alpha=8)
    _perturb(peft_model, 0, 0.1, match="lora_B")  # B starts at zero: make the adapter do something
    want = merged_copy(peft_model).state_dict()
    got = dict(sync_state_dict(peft_model))
    assert set(got) == set(want)  # HF names, no lora_A/lora_B, no base_layer
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, rtol=1e-6, atol=1e-6, msg=name)
    assert not torch.equal(got["model.layers.0.self_attn.q_proj.weight"],
                           model.state_dict()["model.layers.0.self_attn.q_proj.weight"])


def test_per_prompt_seeds_follow_each_prompts_generator():
    a = per_prompt_seeds(2, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    b = per_prompt_seeds(1, [torch.Generator().manual_seed(2)])
    assert a[1] == b[0] and a[0] != a[1]  # prompt 1's seed does not depend on prompt 0
    assert per_prompt_seeds(3, torch.Generator().manual_seed(0)) == per_prompt_seeds(3, torch.Generator().manual_seed(0))
    assert per_prompt_seeds(2, None) == [None, None]
    with pytest.raises(ValueError, match="2 generators for 3 prompts"):
        per_prompt_seeds(3, [torch.Generator(), torch.Generator()])


# -- the engine (vllm-cpu) -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def smol():
    from rlvr.models import load_model

    torch.set_num_threads(1)  # before vLLM starts: its CPU worker replaces torch.set_num_threads

    model, tokenizer = load_model("smollm2-135m", dtype="float32")
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
               for q in QUESTIONS]
    prompts = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts]
    return model, tokenizer, prompts


@pytest.fixture(scope="module")
def full(smol):
    """One engine for the full fine-tuning tests, on a copy of the model (they change its weights)."""
    from rlvr.sampling.vllm import VLLMSampler

    model, tokenizer, prompts = smol
    model = copy.deepcopy(model)
    sampler = VLLMSampler(model, tokenizer, vllm_max_model_length=MAX_LEN, vllm_max_num_seqs=64, seed=0)
    yield model, tokenizer, prompts, sampler
    sampler.close()


@needs_vllm
@pytest.mark.slow
def test_greedy_tokens_equal_hf_generate(full):
    model, tokenizer, prompts, sampler = full
    _assert_greedy_equal(sampler, model, tokenizer, prompts)


@needs_vllm
@pytest.mark.slow
def test_sampled_logprobs_are_the_trainers_at_temperature_before_truncation(full):
    # T = 0.7 with top-p 0.9 and top-k 20: rlvr's convention is log softmax(z / 0.7) over the whole
    # vocabulary; vLLM's raw log-probs (log softmax z) or processed ones (renormalised over the
    # top-p/top-k set) would be off by far more than the bound.
    model, _, prompts, sampler = full
    _assert_logprobs_close(sampler, model, prompts)


@needs_vllm
@pytest.mark.slow
def test_per_prompt_generators_reproduce_and_do_not_depend_on_other_prompts(full):
    # 8 prompts of ~90 tokens x 8 samples = ~5,800 prefill tokens: more than one scheduler step of
    # 4,096 tokens, which crashed per-request seeds when vLLM chunked a prompt (issue 18).
    _, tokenizer, prompts, sampler = full
    long_prompts = [p + tokenizer.encode(" Think step by step and explain your reasoning." * 8) for p in prompts]
    long_prompts = long_prompts + long_prompts
    params = SamplingParams(max_new_tokens=4, temperature=1.0, top_p=0.95)

    def gens():
        return [torch.Generator().manual_seed(100 + i) for i in range(len(long_prompts))]

    first = sampler.generate(long_prompts, params, num_samples=8, generator=gens())
    again = sampler.generate(long_prompts, params, num_samples=8, generator=gens())
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    alone = sampler.generate(long_prompts[3:4], params, num_samples=8, generator=gens()[3:4])
    assert [c.token_ids for c in alone] == [c.token_ids for c in first[24:32]]
    assert len({tuple(c.token_ids) for c in first[:8]}) > 1  # the 8 samples of a prompt differ


@needs_vllm
@pytest.mark.slow
def test_full_weight_sync_samples_from_the_new_weights(full):
    model, tokenizer, prompts, sampler = full
    params = SamplingParams(max_new_tokens=24, temperature=0.0, stop_token_ids=(tokenizer.eos_token_id,))
    before = [c.token_ids for c in sampler.generate(prompts, params)]
    _perturb(model, seed=1)  # layer 2's weights (q/k/v, o, gate/up, down, norms) change
    sampler.release()
    sampler.sync_weights(model)
    assert [c.token_ids for c in _hf_greedy(model, tokenizer, prompts)] != before  # the change shows
    _assert_greedy_equal(sampler, model, tokenizer, prompts)
    _assert_logprobs_close(sampler, model, prompts)


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize("lora_sync", ["merge", "adapter"])
def test_lora_weight_sync_samples_from_the_new_adapter(smol, lora_sync):
    from rlvr.models import attach_lora
    from rlvr.sampling.vllm import VLLMSampler

    base, tokenizer, prompts = smol
    model = attach_lora(copy.deepcopy(base), r=8, alpha=16).eval()
    _perturb(model, 2, 0.02, match="lora_B")
    sampler = VLLMSampler(model, tokenizer, vllm_max_model_length=MAX_LEN, vllm_max_num_seqs=16,
                          vllm_lora_sync=lora_sync, seed=0)
    try:
        _assert_greedy_equal(sampler, model, tokenizer, prompts)
        before = [c.token_ids for c in _hf_greedy(model, tokenizer, prompts)]
        _perturb(model, 3, 0.05, match="lora_B")
        sampler.release()
        sampler.sync_weights(model)
        assert [c.token_ids for c in _hf_greedy(model, tokenizer, prompts)] != before
        _assert_greedy_equal(sampler, model, tokenizer, prompts)
        _assert_logprobs_close(sampler, model, prompts)
    finally:
        sampler.close()


@needs_vllm
def test_grpo_with_vllm_learns_the_toy_digit_task(tmp_path):
    """The learning test of test_trainer.py with `sampling.backend: vllm`: the engine samples, the
    trainer updates, the weights are pushed to the engine after every step (sync_weights), and the
    importance-sampling correction weighs the loss. A random model rarely says '7'; after 25 steps
    it says little else. (A tiny Llama with head_dim 64: vLLM's CPU attention has no kernel for 16.)"""
    import json

    from conftest import ROOT, DigitTask, char_tokenizer
    from rlvr.config import load_config
    from rlvr.models import tiny_random_model
    from rlvr.trainer import train

    torch.manual_seed(0)
    model, tok = tiny_random_model(0, hidden_size=256, num_layers=2, tokenizer=char_tokenizer())
    cfg = load_config(None, [
        f"run.output_dir={tmp_path / 'run'}", "model.use_peft=false", "task.system_prompt=",
        f"task.rewards={{{ROOT / 'tests' / 'toy_rewards.py'}:digit_reward: 1.0}}",
        "sampling.max_completion_length=8", "sampling.stop_at_answer=false", "sampling.temperature=1.0",
        "sampling.backend=vllm", "sampling.vllm_max_model_length=64",
        "grpo.prompts_per_step=4", "grpo.num_generations=8", "grpo.learning_rate=0.01",
        "grpo.per_device_train_batch_size=32", "grpo.max_steps=25", "eval.on_start=false", "eval.n=0",
        "run.save_steps=0", "run.quiet=true", "run.log_samples_every=0", "run.doctor=off",
    ])
    train(cfg, model=model, tokenizer=tok, task=DigitTask("7"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward/digit_reward/mean"] for r in rows]
    assert len(rewards) == 25
    assert rewards[0] < 0.1 and sum(rewards[-3:]) / 3 > 0.6, rewards
    # the sampler's log-probs are the trainer's (fp32 both): the correction weights stay near 1. A step
    # whose groups are all flat runs no forward (skip_zero_advantage), so it has no such metric
    measured = [r for r in rows if "sampling/logp_diff/max" in r]
    assert len(measured) >= 3
    assert all(r["sampling/logp_diff/max"] < 1e-3 for r in measured), [r["sampling/logp_diff/max"] for r in measured]
    assert all(0.99 < r["sampling/is_ratio/mean"] < 1.01 for r in measured)


# -- memory: the KV cache sized from the free memory, the engine in the doctor's estimate ----------

def _tiny_vllm_model():
    from conftest import char_tokenizer
    from rlvr.models import tiny_random_model

    torch.manual_seed(0)
    # 2 layers x 2 kv heads x head_dim 64, fp32: a token's keys and values take 2*2*2*64*4 = 2048 bytes
    return tiny_random_model(0, hidden_size=256, num_layers=2, tokenizer=char_tokenizer())


def test_kv_cache_is_planned_from_the_memory_the_doctor_measured_free():
    from rlvr.sampling.vllm import ENGINE_RUNTIME_BYTES, VLLMSampler

    model, tok = _tiny_vllm_model()
    weights = sum(p.numel() for p in model.parameters()) * 4
    plan = lambda available, **kw: VLLMSampler(model, tok, vllm_max_model_length=64, seed=0, **kw).plan_memory(
        available=available, reserved_update=2**30, seq_len=40)
    # room to spare: what 64 sequences of 40 tokens need, plus 25% (3,200 tokens x 2,048 bytes)
    assert plan(16 * 2**30) == 3200 * 2048
    # tight: 80% of the free memory less the update, the engine's weight copy and its runtime
    reserved = 2**30 + weights + ENGINE_RUNTIME_BYTES
    available = (reserved + 1_000_000) / 0.8
    assert abs(plan(available) - 1_000_000) <= 1
    # too little for even that: one sequence of max_model_len (64 tokens), so the engine can start;
    # the doctor's memory finding then says the run does not fit
    assert plan(2**30) == 64 * 2048
    # a size the user set is kept
    assert plan(2**30, vllm_kv_cache_memory_bytes=12345) == 12345
    parts = VLLMSampler(model, tok, vllm_max_model_length=64, vllm_kv_cache_memory_bytes=12345).engine_memory()
    assert parts == {"weights": weights, "kv_cache": 12345, "runtime": ENGINE_RUNTIME_BYTES}


def test_memory_finding_counts_the_engine():
    from rlvr.doctor import memory_finding
    from rlvr.config import Config
    from rlvr.memory import MemoryReport

    report = lambda engine: MemoryReport(8, 100, 1024, estimated_bytes=2e9, available_bytes=5e9, engine_bytes=engine)
    assert memory_finding(report(0.0), Config()).severity == "ok"
    assert memory_finding(report(2.5e9), Config()).severity == "warn"  # 4.5 of 5 GB
    fatal = memory_finding(report(3.5e9), Config())
    assert fatal.severity == "fatal" and "sampler engine's 3.26 GB" in fatal.message
    assert "vllm_kv_cache_memory_bytes" in fatal.fix


@needs_vllm
def test_doctor_sizes_the_engines_kv_cache_and_counts_it(tmp_path):
    """`rlvr doctor` with the vLLM backend: the engine starts with the KV cache the doctor planned from
    the free memory and the run's sequence length, and the memory report counts the engine."""
    from conftest import ROOT, DigitTask
    from rlvr.config import load_config, sampler_options
    from rlvr.doctor import diagnose
    from rlvr.models import prepare_policy
    from rlvr.sampling import make_sampler

    model, tok = _tiny_vllm_model()
    cfg = load_config(None, [
        "model.use_peft=false", "task.system_prompt=", "sampling.max_completion_length=8",
        f"task.rewards={{{ROOT / 'tests' / 'toy_rewards.py'}:digit_reward: 1.0}}",
        "sampling.stop_at_answer=false", "sampling.backend=vllm", "sampling.vllm_max_model_length=64",
        "grpo.prompts_per_step=4", "grpo.num_generations=8", "grpo.per_device_train_batch_size=32"])
    policy = prepare_policy(model, cfg.model)
    sampler = make_sampler("vllm", policy, tok, **sampler_options(cfg))
    try:
        d = diagnose(cfg, model=policy, tokenizer=tok, task=DigitTask("7"), policy_ready=True, sampler=sampler,
                     num_prompts=4)
        planned = sampler.kv_cache_memory_bytes
        assert planned is not None and planned % 2048 == 0 and 64 * 2048 <= planned < 64 * 64 * 2048
        assert sampler.llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes == planned
        assert d.memory.engine_bytes == sum(sampler.engine_memory().values())
        assert d.memory.total_bytes == d.memory.peak_bytes + d.memory.engine_bytes
    finally:
        sampler.close()
