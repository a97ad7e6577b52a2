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


def make_sampler(backend: str, model, tokenizer, **options) -> Sampler:
    """The sampler `backend` names, over `model` (the policy: it samples from its current weights)."""
    if backend not in SAMPLERS:
        raise ValueError(f"sampling.backend={backend!r}: expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[backend](model, tokenizer, **options)


__all__ = ["SAMPLERS", "Completion", "FastSampler", "HFSampler", "Sampler", "SamplingParams", "make_sampler",
           "sample_tokens"]
