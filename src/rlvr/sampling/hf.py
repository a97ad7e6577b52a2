"""HFSampler: the reference backend, transformers' `model.generate`.

Slower than `FastSampler` (it prefills every sample's copy of a prompt, sorts the whole vocabulary
for top-p, grows its cache by concatenation) but it is the implementation everyone trusts, so the
tests measure the fast sampler against it.

Log-probs come from the *raw* logits (`output_logits=True`) divided by the temperature: HF's
`output_scores` are the processed scores, already truncated by top-k/top-p, which is not the
distribution the PPO ratio needs (TRL #4159). Completions are cut after the first stop token or
stop string (checked the same way as FastSampler), whatever `generate` appended afterwards.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from rlvr.models import base_model
from rlvr.sampling.base import Completion, SamplingParams, StopStrings, cached_stop_strings, stop_index
from rlvr.sampling.fast import _eval_mode


class _Progress:
    """A `generate` streamer that reports newly generated tokens (the first `put` is the prompt)."""

    def __init__(self, callback: Callable[[int], None]):
        self.callback, self.started = callback, False

    def put(self, value: torch.Tensor) -> None:
        if self.started:
            self.callback(int(value.shape[0]))
        self.started = True

    def end(self) -> None:
        pass


class HFSampler:
    """`model.generate` behind the Sampler interface; prompts left-padded, max_batch_size rows per call."""

    def __init__(self, model, tokenizer, *, max_batch_size: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self._stops: dict = {}

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, *, num_samples: int = 1,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 progress: Callable[[int], None] | None = None) -> list[Completion]:
        """As `Sampler.generate`; with one generator per prompt (a list), each prompt is its own call."""
        prompts = [[int(t) for t in p] for p in prompts]
        per_prompt = isinstance(generator, (list, tuple))
        per_call = 1 if per_prompt else max(1, (self.max_batch_size or len(prompts) * num_samples) // num_samples)
        sampling = generator is not None and params.temperature > 0
        out: list[Completion] = []
        with torch.inference_mode(), _eval_mode(self.model), torch.random.fork_rng(devices=[]):
            for start in range(0, len(prompts), per_call):
                if sampling and (per_prompt or start == 0):
                    g = generator[start] if per_prompt else generator
                    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))  # global RNG restored after
                chunk = prompts[start: start + per_call]
                for c in self._generate(chunk, params, num_samples, progress):
                    c.prompt_index += start
                    out.append(c)
        return out

    def _generate(self, prompts: list[list[int]], params: SamplingParams, num_samples: int,
                  progress) -> list[Completion]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # [P, L]
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        sampling = params.temperature > 0
        base = base_model(self.model)
        saved = base.generation_config
        # generate() fills every option we leave None from the model's generation config (a Hub
        # model may carry repetition_penalty, top_k...): give it an empty one for this call.
        base.generation_config = type(saved)()
        try:
            result = self.model.generate(
                input_ids=ids, attention_mask=mask, generation_config=self._config(params, num_samples, pad),
                tokenizer=self.tokenizer if params.stop_strings else None,
                streamer=_Progress(progress) if progress is not None else None,
                # never decode in lockstep with other processes (transformers does for an FSDP model):
                # rlvr gathers the full weights first (Dist.full_weights) and ranks make different calls
                synced_gpus=False,
            )
        finally:
            base.generation_config = saved
        sequences = result.sequences[:, width:]  # [P*G, T]
        logits = torch.stack(result.logits, 1).float() if sampling else None  # [P*G, T, V] raw
        stops = self._stop_strings(params)
        completions = []
        for row in range(sequences.shape[0]):
            tokens = sequences[row].tolist()
            end = stop_index(tokens, params.stop_token_ids, stops)
            tokens = tokens[:end] if end is not None else tokens[: params.max_new_tokens]
            logprobs = [0.0] * len(tokens)
            if sampling and tokens:
                z = torch.log_softmax(logits[row, : len(tokens)] / params.temperature, -1)  # [T, V]
                logprobs = z.gather(1, torch.tensor(tokens, device=z.device)[:, None])[:, 0].tolist()
            completions.append(Completion(row // num_samples, tokens, logprobs,
                                          "stop" if end is not None else "length"))
        return completions

    def _config(self, params: SamplingParams, num_samples: int, pad: int):
        """Exactly our options: top_k 0 (not None, which means HF's default 50) is off; an empty
        eos_token_id list (not None, which means the model's EOS) stops on no token."""
        from transformers import GenerationConfig

        sampling = params.temperature > 0
        options = dict(
            max_new_tokens=params.max_new_tokens, num_return_sequences=num_samples, do_sample=sampling,
            pad_token_id=pad, eos_token_id=list(params.stop_token_ids),
            stop_strings=list(params.stop_strings) or None, return_dict_in_generate=True,
            output_logits=sampling,
        )
        if sampling:
            options.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        return GenerationConfig(**options)

    def sync_weights(self, model=None) -> None:
        """`generate` runs the model's own weights: nothing to refresh (a new policy object is adopted)."""
        if model is not None:
            self.model = model

    def release(self) -> None:
        """Nothing is kept between calls (transformers' cache lives for one `generate`)."""

    def _stop_strings(self, params: SamplingParams) -> StopStrings | None:
        return cached_stop_strings(self._stops, self.model, self.tokenizer, params)
