"""Generation backends: token ids in, completions with per-token log-probs out.

`FastSampler` (ours, the default) and `HFSampler` (transformers' `generate`, the reference) both
implement `Sampler.generate`; see `base.py` for the contract.
"""

from rlvr.sampling.base import Completion, Sampler, SamplingParams, free_memory
from rlvr.sampling.fast import FastSampler, sample_tokens
from rlvr.sampling.hf import HFSampler

__all__ = ["Completion", "FastSampler", "HFSampler", "Sampler", "SamplingParams", "free_memory", "sample_tokens"]
