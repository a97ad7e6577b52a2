"""The generation-backend interface: token ids in, completions with their log-probs out.

A sampler knows models and tokens, nothing of tasks or rewards. Backends: `fast` (ours: static
KV cache, finished rows dropped, fused top-k/top-p) and `hf` (transformers' `generate`, the
reference). Both return the log-prob of each sampled token under the *same* distribution the token
was drawn from (logits / temperature, before top-k/top-p truncation), so the trainer can use them
as the old log-probs of the PPO ratio (TRL #4159: temperature not applied to log-probs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    """the most tokens generated per completion"""
    temperature: float = 1.0
    """0 means greedy"""
    top_p: float = 1.0
    """nucleus sampling: keep the smallest set of tokens whose probability sums to top_p"""
    top_k: int = 0
    """keep only the k most likely tokens (0: off)"""
    stop_token_ids: tuple[int, ...] = ()
    """a completion ends after any of these tokens (the EOS token(s))"""
    stop_strings: tuple[str, ...] = ()
    """a completion ends once its decoded text ends with any of these (e.g. "</answer>")"""


@dataclass
class Completion:
    prompt_index: int
    """index into the list of prompts given to `generate`"""
    token_ids: list[int]
    """the generated tokens, including the stop token when one was produced"""
    logprobs: list[float]
    """log-prob of each generated token under logits/temperature (0.0 when greedy)"""
    finish_reason: str
    """"stop" (EOS or stop string) or "length" (hit max_new_tokens: truncated)"""


def free_memory(sampler) -> None:
    """Drop what a sampler keeps between calls, if it keeps anything: the fast sampler's weight copies
    and KV cache (`FastSampler.forget_weights`). Before an update (whose activations set a run's
    peak) and after the weights were changed behind autograd's back (FSDP resharding)."""
    forget = getattr(sampler, "forget_weights", None)
    if forget is not None:
        forget()


class Sampler(Protocol):
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        num_samples: int = 1,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Completion]:
        """Sample `num_samples` completions for each prompt.

        `generator`: one for the call, or one per prompt (then a prompt's completions do not depend
        on the other prompts of the call: data-parallel processes can split a step's prompts).

        Returns len(prompts) * num_samples completions ordered prompt-major: all samples of prompt 0,
        then of prompt 1, ... (so a GRPO group is a contiguous slice). `progress(n)` is called with
        the number of newly generated tokens, for progress bars.
        """
        ...
