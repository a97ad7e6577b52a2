"""The generation-backend interface: token ids in, completions with their log-probs out.

A sampler knows models and tokens, nothing of tasks or rewards. Backends (the registry in
`rlvr.sampling`): `fast` (ours: static KV cache, finished rows dropped, fused top-k/top-p) and `hf`
(transformers' `generate`, the reference). Its lifecycle in a training step is
`generate` -> `release` (before the update) -> update -> `sync_weights` (after it). Both return the log-prob of each sampled token under the *same* distribution the token
was drawn from (logits / temperature, before top-k/top-p truncation), so the trainer can use them
as the old log-probs of the PPO ratio (TRL #4159: temperature not applied to log-probs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from rlvr.models import base_model


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


# ----------------------------------------------------------------------------------------------
# stop strings
# ----------------------------------------------------------------------------------------------

class StopStrings:
    """Decides cheaply whether a completion has just produced one of `stop_strings`.

    Like HF's StopStringCriteria, a stop string counts when it overlaps the newest token. The
    newest token must then contain the string's last character: a per-vocabulary mask of such
    tokens (computed once) skips the decode for almost every row; the rest decode only their tail.
    """

    def __init__(self, tokenizer, stop_strings: Sequence[str], vocab_size: int):
        self.strings = tuple(s for s in stop_strings if s)
        self.tokenizer = tokenizer
        self.tail = max((len(s) for s in self.strings), default=0) + 4
        mask = torch.ones(vocab_size, dtype=torch.bool)
        if self.strings:
            if tokenizer is None:
                raise ValueError("stop_strings need a tokenizer")
            last_chars = {s[-1] for s in self.strings} | {"\ufffd"}  # partial UTF-8 bytes decode to U+FFFD
            n = min(vocab_size, len(tokenizer))
            texts = tokenizer.batch_decode([[i] for i in range(n)])
            mask[:n] = torch.tensor([any(c in t for c in last_chars) for t in texts])
        self.candidate = mask  # [V] True: this token may complete a stop string

    def hit(self, token_ids: Sequence[int]) -> bool:
        """Whether the generated tokens (all of them, newest last) end a stop string."""
        text = self.tokenizer.decode(token_ids[-self.tail:])
        return any(s in text for s in self.strings)


def cached_stop_strings(cache: dict, model, tokenizer, params: SamplingParams) -> StopStrings | None:
    """The `StopStrings` matcher of params.stop_strings, built once per set of strings (in `cache`)."""
    if not params.stop_strings:
        return None
    key = tuple(params.stop_strings)
    if key not in cache:
        vocab = base_model(model).get_output_embeddings().weight.shape[0]
        cache[key] = StopStrings(tokenizer, key, vocab)
    return cache[key]


def stop_index(token_ids: Sequence[int], stop_ids: Sequence[int], stops: StopStrings | None) -> int | None:
    """Length of the completion up to and including its first stop (token id or string), else None."""
    stop_ids = set(stop_ids)
    for i, tok in enumerate(token_ids):
        if tok in stop_ids:
            return i + 1
        if stops is not None and stops.strings and stops.candidate[tok] and stops.hit(token_ids[: i + 1]):
            return i + 1
    return None


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

    def sync_weights(self, model) -> None:
        """The policy's weights changed (an optimizer step): sample from the new ones from now on.

        Called by the trainer after every update. A sampler that reads the model's own tensors
        (HF) has nothing to do; one that keeps copies (fast: fused weights; vLLM: its engine)
        refreshes or drops them here.
        """
        ...

    def release(self) -> None:
        """Free what the sampler holds between calls (weight copies, KV cache, an engine's memory).

        Called before every update, whose activations set a run's peak memory; the next
        `generate` rebuilds what it needs.
        """
        ...
