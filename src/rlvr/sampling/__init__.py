"""Generation backends: token ids in, completions with per-token log-probs out.

`fast` (ours, the default on a CPU), `hf` (transformers' `generate`, the reference) and, where the
package is installed, `vllm`; `base.py` has the contract (`Sampler`: generate, sync_weights,
release). A backend is one entry of `SAMPLERS`: a name and a function that builds it, imported only
when chosen (vLLM is a large optional dependency).
"""

from __future__ import annotations

from typing import Callable

from rlvr.sampling.base import Completion, Sampler, SamplingParams
from rlvr.sampling.fast import FastSampler, sample_tokens
from rlvr.sampling.hf import HFSampler


def _vllm(model, tokenizer, **options) -> Sampler:
    from rlvr.sampling.vllm import VLLMSampler

    return VLLMSampler(model, tokenizer, **options)


SAMPLERS: dict[str, Callable[..., Sampler]] = {"fast": FastSampler, "hf": HFSampler, "vllm": _vllm}
"""backend name (`sampling.backend`) -> constructor(model, tokenizer, **options)"""


def resolve_backend(backend: str, model) -> str:
    """`auto`: vllm where it pays (the model on a CUDA GPU, vllm installed), else fast; other names as
    they are. On a CPU vLLM is no faster than rlvr's sampler and takes 1.6x the memory
    (bench/results/sampler_vllm.json)."""
    if backend != "auto":
        return backend
    import importlib.util

    on_cuda = next(model.parameters()).device.type == "cuda"
    return "vllm" if on_cuda and importlib.util.find_spec("vllm") is not None else "fast"


def make_sampler(backend: str, model, tokenizer, **vllm_options) -> Sampler:
    """The sampler `backend` names (`auto` resolved by `resolve_backend`), over `model` (the policy:
    it samples from its current weights); `vllm_options` go to a vLLM sampler only."""
    backend = resolve_backend(backend, model)
    if backend not in SAMPLERS:
        raise ValueError(f"sampling.backend={backend!r}: expected one of auto, {', '.join(SAMPLERS)}")
    return SAMPLERS[backend](model, tokenizer, **(vllm_options if backend == "vllm" else {}))


__all__ = ["SAMPLERS", "Completion", "FastSampler", "HFSampler", "Sampler", "SamplingParams", "make_sampler", "resolve_backend",
           "sample_tokens"]
