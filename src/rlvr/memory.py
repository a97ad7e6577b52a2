"""Memory of one GRPO update: measured (peak RSS rise) and estimated (a formula), and sizes that fit.

So that an out-of-memory shows at step 0, not step 50 (TRL #3678, verl #2245): `check_memory`
estimates one update at the config's sizes, measures it where it fits, calibrates the formula on this
machine and suggests the largest micro-batch / log-prob chunk that fits the memory available.

Memory is measured as the rise of the resident set's high-water mark (VmHWM in /proc/self/status,
reset by writing "5" to /proc/self/clear_refs, after `malloc_trim` returns freed heap pages), with
the allocator `rlvr` runs under (rlvr.allocator): mimalloc, or glibc with its mmap threshold fixed at
1 MB (without it one 135M LoRA update at batch 8 x 192 tokens peaked at 3.5-3.8 GB instead of 2.2 GB).
mimalloc keeps what the process freed before the probe (it never returns memory to the kernel) and
the update reuses it, so there the rise is what the process needs beyond what it already holds:
right for "does it fit", a little low as a calibration of the formula.
`estimate_update_memory` is the same quantity as a formula, for suggestions and for machines where
the peak cannot be measured. On CUDA the probes read torch's allocator peak instead.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlvr import allocator
from rlvr.config import Config
from rlvr.models import base_model

GB = 1024 ** 3


@dataclass
class MemoryEstimate:
    """Bytes of one update by part (see `estimate_update_memory`)."""

    parts: dict

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))


@dataclass
class MemoryReport:
    batch_size: int
    seq_len: int
    chunk_size: int
    estimated_bytes: float
    available_bytes: float
    measured_bytes: float | None = None
    """None when not measured (no /proc, measurement off, or the estimate did not fit)"""
    suggested_batch_size: int = 1
    suggested_chunk_size: int = 1024
    needs_gradient_checkpointing: bool = False
    parts: dict = field(default_factory=dict)
    seconds: float = 0.0
    allocator: str = ""
    """the malloc measured under (rlvr.allocator.active)"""
    engine_bytes: float = 0.0
    """a sampler engine's own memory beside the policy (vLLM: its weight copy, KV cache and runtime;
    `VLLMSampler.engine_memory`); 0 for samplers that use the policy's weights"""

    @property
    def peak_bytes(self) -> float:
        return self.measured_bytes if self.measured_bytes is not None else self.estimated_bytes

    @property
    def total_bytes(self) -> float:
        """The update's peak plus the sampler engine's memory: what must fit in `available_bytes`."""
        return self.peak_bytes + self.engine_bytes


# ------------------------------------------------------------------------------ memory probes

def _status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> int | None:
    """Return freed heap to the OS and reset VmHWM to the current RSS; the RSS, or None if unsupported."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_bytes("VmRSS")


def peak_rise(start_rss: int | None) -> int | None:
    """VmHWM now minus the RSS at `reset_peak_rss` time."""
    hwm = _status_bytes("VmHWM")
    return None if start_rss is None or hwm is None else max(0, hwm - start_rss)


def start_peak(device: torch.device) -> int | None:
    """Begin a peak measurement on `device`: CUDA's allocator peak, else host RSS (None: unsupported)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return reset_peak_rss() if device.type == "cpu" else None


def peak_since(device: torch.device, start: int | None) -> int | None:
    """Bytes above `start` at the peak since `start_peak`."""
    if start is None:
        return None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - start)
    return peak_rise(start)


def available_memory(device: torch.device | None = None) -> float:
    """Bytes this process can still use: free GPU memory on CUDA; else MemAvailable, capped by a
    cgroup (v2 or v1) limit."""
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    avail = math.inf
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit.isdigit() and int(limit) < 1 << 60:
                avail = min(avail, int(limit) - int(Path(usage_file).read_text().strip()))
        except OSError:
            continue
    return float(avail)


# ------------------------------------------------------------------------------ a sampler engine

def kv_bytes_per_token(config, elem_bytes: int) -> int:
    """Bytes of KV cache per token of a decoder: keys and values of every layer's kv heads."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * elem_bytes


def kv_cache_budget(*, available: float, reserved: float, wanted: int, minimum: int,
                    fraction: float = 0.8) -> int:
    """Bytes of KV cache to give a CPU vLLM engine: what it `wanted` (room for all its sequences), cut
    to `fraction` of the `available` memory less what the run needs beside it (`reserved`: the
    update's peak, the engine's weight copy and runtime), and never below `minimum` (one longest
    sequence, without which the engine cannot start; whether that fits is the doctor's verdict)."""
    room = fraction * available - reserved
    return int(max(minimum, min(wanted, room)))


# ------------------------------------------------------------------------------ memory model

ACT_PER_HIDDEN = 6
"""values saved per token per layer, in units of the hidden size: the norm inputs and outputs,
q, the attention output, the o_proj input, the residual (counted from autograd's saved tensors of
a Llama decoder layer under LoRA; SDPA's flash kernel saves no T x T matrix)"""
ACT_PER_INTERMEDIATE = 4
"""in units of the MLP size: gate and up outputs, silu(gate), silu(gate) * up"""
ACT_PER_INTERMEDIATE_FUSED = 2
"""the same with rlvr.fused's fused gated MLP (LoRA): gate and up outputs only, the rest recomputed"""
ACT_PER_KV = 2
"""in units of the key/value width (kv heads x head dim): k and v"""
LORA_ADAPTERS = 7
"""LoRA on all linear layers: each saves its A-projection (rank values per token)"""
BACKWARD_PER_HIDDEN, BACKWARD_PER_INTERMEDIATE = 8, 4
"""gradient buffers alive while one layer is back-propagated (same units)"""
LOGIT_COPIES = 3
"""[rows, V] fp32 buffers of one lm_head chunk counted at the peak: the forward holds 3 (logits,
softmax, the entropy product), the recomputed backward 4 when measured alone, but in a whole
update that moment overlaps with fewer live activations; 3 fits the measured peaks best"""
HEAD_WORKSPACE = 1
"""plus this many V x H matrices, independent of the batch: measured peaks exceed the sum of the
other parts by about one output-embedding-sized block (allocator and kernel workspace)"""


def estimate_update_memory(*, params: int, trainable_params: int, batch_size: int, seq_len: int,
                           completion_len: int, vocab_size: int, hidden_size: int, intermediate_size: int,
                           num_layers: int, kv_size: int | None = None, lora_rank: int = 0,
                           chunk_size: int = 1024, gradient_checkpointing: bool = False,
                           reference_copy: bool = False, bytes_per_value: int = 4,
                           fused_mlp: bool = False) -> MemoryEstimate:
    """Peak extra bytes of one GRPO update (forward + backward + AdamW step) on top of the loaded model.

    With N = batch_size rows of T = seq_len tokens, K = completion_len, L layers, H hidden, I MLP
    size, V vocabulary, b bytes per value:
        activations  = N T L (6 H + 4 I + 2 kv + 7 r) b      (no checkpointing)
                     = N T (L H + 6 H + 4 I + 2 kv + 7 r) b  (gradient checkpointing: layer inputs
                                                             + one layer recomputed)
        backward     = N T (8 H + 4 I) b                     (gradients of one layer's activations)
        logits       = 3 min(chunk, N K) V b + V H b         (one chunk of the lean lm_head,
                                                             and a workspace the size of the head)
        optimizer    = 3 P_trainable b                       (gradient + AdamW m and v)
        reference    = P b                                   (full fine-tuning with beta > 0 only)
    fused_mlp (rlvr.fused's GatedMLPFunction): 2 I instead of 4 I in the activations.
    The activation constants were counted from autograd's saved tensors (10,120 values per token
    per layer on SmolLM2-135M with LoRA; the formula gives 10,096); the logits ones were fitted.
    Checked against 17 measured peaks (135M and a 4-layer 256-wide Llama with the 49k vocabulary;
    LoRA and full fine-tuning; with and without checkpointing; 1-16 rows): all within 18%.
    """
    kv = hidden_size if kv_size is None else kv_size
    tokens = batch_size * seq_len
    per_intermediate = ACT_PER_INTERMEDIATE_FUSED if fused_mlp else ACT_PER_INTERMEDIATE
    layer = ACT_PER_HIDDEN * hidden_size + per_intermediate * intermediate_size + ACT_PER_KV * kv
    layer += LORA_ADAPTERS * lora_rank
    saved_layers = num_layers * layer if not gradient_checkpointing else num_layers * hidden_size + layer
    parts = {
        "activations": tokens * saved_layers * bytes_per_value,
        "backward": tokens * (BACKWARD_PER_HIDDEN * hidden_size + BACKWARD_PER_INTERMEDIATE * intermediate_size)
        * bytes_per_value,
        "logits": (LOGIT_COPIES * min(chunk_size, batch_size * completion_len) + HEAD_WORKSPACE * hidden_size)
        * vocab_size * bytes_per_value,
        "optimizer": 3 * trainable_params * bytes_per_value,
        "reference": params * bytes_per_value if reference_copy else 0,
    }
    return MemoryEstimate(parts)


def model_dims(model) -> dict:
    """The sizes `estimate_update_memory` needs, read from a (peft-wrapped) HF causal LM."""
    base = base_model(model)
    c = base.config
    hidden = c.hidden_size
    heads = getattr(c, "num_attention_heads", 1)
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    peft_config = getattr(model, "peft_config", None)
    rank = next(iter(peft_config.values())).r if peft_config else 0
    value_bytes = next(model.parameters()).element_size()
    return {"params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "vocab_size": c.vocab_size, "hidden_size": hidden,
            "intermediate_size": getattr(c, "intermediate_size", None) or 4 * hidden,
            "num_layers": c.num_hidden_layers,
            "kv_size": getattr(c, "num_key_value_heads", heads) * head_dim,
            "lora_rank": rank, "bytes_per_value": max(4, value_bytes), "fused_mlp": _has_fused_mlps(model)}


def _has_fused_mlps(model) -> bool:
    from rlvr.fused import has_fused_mlps  # imports peft: only when a model is measured

    return has_fused_mlps(model)


def micro_batch_size(cfg: Config) -> int:
    """Rows of one forward/backward: per_device_train_batch_size, capped by the optimizer batch."""
    g = cfg.grpo
    return min(g.per_device_train_batch_size,
               math.ceil(g.prompts_per_step * g.num_generations / max(1, g.steps_per_generation)))


def measure_update_memory(policy, cfg: Config, *, prompt_ids: list[int], batch_size: int, completion_len: int,
                          pad_token_id: int, seed: int = 0) -> int | None:
    """Peak RSS rise (bytes) of one real `update_policy` call on `batch_size` full-length rows.

    Rows are the given prompt + `completion_len` random tokens, in groups of num_generations rows
    with one prompt each (groups differ in the prompt's first token), so prompt sharing
    (grpo.share_prompt) works as in the run: the probe is the step the run will take, at full
    length, and never needs more memory than training does (with sharing measured as off, it set
    the process's peak: 5.25 GB where the training steps of the same run peaked at 3.87 GB). The
    estimate has no sharing: with it on, the measurement is the lower of the two. The optimizer is
    a fresh AdamW at learning rate 0 whose state (m, v) is allocated first, as it is from the
    second step of a run on; the weights do not change. The rise counts that state, the gradients
    and the activations. With full fine-tuning and beta > 0 the frozen reference copy is left out
    here (the estimate counts it).
    """
    from rlvr.buffer import Buffer, Rollout
    from rlvr.update import make_optimizer, update_policy

    g = torch.Generator().manual_seed(seed)
    vocab = model_dims(policy)["vocab_size"]
    size = max(1, cfg.grpo.num_generations)
    prompts = [[(prompt_ids[0] + k) % vocab, *prompt_ids[1:]] for k in range(-(-batch_size // size))]
    rollouts = [Rollout(prompt_ids=prompts[i // size], completion_ids=torch.randint(vocab, (completion_len,), generator=g).tolist(),
                        old_logprobs=[0.0] * completion_len, advantage=1.0 if i % 2 else -1.0, truncated=False,
                        group=i // size) for i in range(batch_size)]
    beta = cfg.grpo.beta if cfg.model.use_peft else 0.0
    grpo = dataclasses.replace(cfg.grpo, learning_rate=0.0, weight_decay=0.0, num_iterations=1,
                               steps_per_generation=1, per_device_train_batch_size=batch_size, beta=beta)
    optimizer, scheduler = make_optimizer(policy, grpo, 1)
    was_training = policy.training
    device = next(policy.parameters()).device
    start = start_peak(device)
    if start is None:
        return None
    _allocate_adam_state(optimizer)  # in training AdamW's m and v are there already: count them
    update_policy(policy, optimizer, scheduler, Buffer(rollouts), grpo, temperature=max(cfg.sampling.temperature, 1e-6),
                  max_completion_length=completion_len, pad_token_id=pad_token_id, generator=g)
    rise = peak_since(device, start)
    del optimizer, scheduler
    gc.collect()
    policy.train(was_training)
    return rise


def _allocate_adam_state(optimizer) -> None:
    """One step on zero gradients at learning rate 0: AdamW creates its m and v, no weight changes."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def suggest_sizes(estimate, *, max_batch: int, chunk_size: int, budget: float) -> tuple[int, int, bool]:
    """(batch, chunk, needs gradient checkpointing): the largest batch <= max_batch (powers of two and
    max_batch), with the largest chunk <= chunk_size, whose `estimate(batch, chunk)` fits `budget`."""
    batches = sorted({max_batch} | {2 ** k for k in range(12) if 2 ** k <= max_batch}, reverse=True)
    chunks = sorted({chunk_size} | {c for c in (1024, 512, 256, 128) if c <= chunk_size}, reverse=True)
    for n in batches:
        for c in chunks:
            if estimate(n, c) <= budget:
                return n, c, False
    return 1, chunks[-1], True


def check_memory(policy, cfg: Config, *, prompt_ids: list[int], pad_token_id: int, measure: bool = True,
                 budget_fraction: float = 0.8, engine_bytes: float = 0.0,
                 available: float | None = None) -> MemoryReport:
    """Estimate (and, when it fits, measure) one update at the config's sizes; suggest sizes that fit
    beside a sampler engine's `engine_bytes`. `available`: the free memory measured before the engine
    started (default: now)."""
    t0 = time.perf_counter()
    dims = model_dims(policy)
    n, c_len, chunk = micro_batch_size(cfg), cfg.sampling.max_completion_length, cfg.grpo.logprob_chunk_size
    seq = len(prompt_ids) + c_len
    common = dict(dims, seq_len=seq, completion_len=c_len, gradient_checkpointing=cfg.model.gradient_checkpointing,
                  reference_copy=cfg.grpo.beta > 0 and not cfg.model.use_peft)

    def estimate(batch: int, chunk_rows: int) -> float:
        return estimate_update_memory(**common, batch_size=batch, chunk_size=chunk_rows).total

    est = estimate_update_memory(**common, batch_size=n, chunk_size=chunk)
    if available is None:
        available = available_memory(next(policy.parameters()).device)
    measured = None
    if measure and est.total + engine_bytes < 0.9 * available:
        measured = measure_update_memory(policy, cfg, prompt_ids=prompt_ids, batch_size=n, completion_len=c_len,
                                         pad_token_id=pad_token_id, seed=cfg.run.seed)
    scale = measured / est.total if measured else 1.0  # calibrate the formula on this machine
    max_batch = max(n, math.ceil(cfg.grpo.prompts_per_step * cfg.grpo.num_generations / cfg.grpo.steps_per_generation))
    batch, chunk_s, needs_gc = suggest_sizes(lambda b, c: scale * estimate(b, c), max_batch=max_batch,
                                             chunk_size=chunk, budget=budget_fraction * available - engine_bytes)
    return MemoryReport(n, seq, chunk, est.total, available, measured, batch, chunk_s, needs_gc, est.parts,
                        time.perf_counter() - t0, allocator.active(), engine_bytes)


def update_estimate(policy, cfg: Config, prompt_len: int) -> float:
    """Bytes of one update at the config's sizes for prompts of `prompt_len` tokens (the formula only)."""
    c_len = cfg.sampling.max_completion_length
    return estimate_update_memory(**model_dims(policy), batch_size=micro_batch_size(cfg), seq_len=prompt_len + c_len,
                                  completion_len=c_len, chunk_size=cfg.grpo.logprob_chunk_size,
                                  gradient_checkpointing=cfg.model.gradient_checkpointing,
                                  reference_copy=cfg.grpo.beta > 0 and not cfg.model.use_peft).total
