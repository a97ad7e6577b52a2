"""One GRPO update: the optimizer steps that learn from one step's experience.

Used by the training loop (`rlvr.trainer`) and by the doctor's memory probe (`rlvr.memory`), which
runs the update the run will take. What a loss type means (its surrogate, its reduction, how it
weighs accumulated micro-batches, whether flat groups may be skipped) lives in
`rlvr.algorithms.losses`; nothing here depends on which loss type is configured.

    for each of num_iterations passes over the buffer:
        for each of steps_per_generation optimizer batches (shuffled, whole groups together):
            for each micro-batch: log-probs -> policy_loss -> backward (weighted by its share)
            clip the gradient norm, optimizer step (skipped when the loss or gradient is not finite)

Departures from the paper (DeepSeekMath's GRPO), all options with TRL's names:
  - with num_iterations = 1 the old log-probs are the current ones, detached, so the ratio is
    exactly 1 (TRL does the same); with more passes the sampler's log-probs are reused as the
    old log-probs (same weights, same temperature), saving a forward pass;
  - the KL reference is the base model with the LoRA adapter disabled (no second copy in memory);
    with full fine-tuning, a frozen copy;
  - micro-batches need not divide the batch: each is weighted by its share of the optimizer batch;
  - rows whose advantage is 0 have no policy gradient: with `skip_zero_advantage`, no KL term and a
    reduction whose normaliser covers the whole optimizer batch, they are left out of the forward
    and backward passes but still counted by the normalisers, so the step is the same;
  - on N processes (rlvr.distributed) each learns from its share of the step's groups, with
    global loss weights, so the optimizer steps equal one process's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from rlvr.algorithms.importance import importance_weights, mismatch_metrics
from rlvr.algorithms.losses import loss_spec, policy_loss
from rlvr.buffer import Buffer, Minibatch, collate
from rlvr.config import ConfigError, GRPOConfig
from rlvr.distributed import Dist
from rlvr.policy import completion_logprobs, decoder_tokens

METRIC_NAMES = {"clip_frac": "policy/clip_frac", "kl": "loss/kl", "ratio_mean": "policy/ratio_mean"}
"""policy_loss's metric names -> logged names (others become policy/<name>)"""


def make_optimizer(model, cfg: GRPOConfig, total_steps: int):
    """AdamW over the trainable parameters; linear warm-up then constant, linear or cosine decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters (check model.use_peft and lora_target_modules)")
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * total_steps)

    def schedule(i: int) -> float:
        if i < warmup:
            return (i + 1) / (warmup + 1)
        progress = (i - warmup) / max(1, total_steps - warmup)
        if cfg.lr_scheduler_type == "linear":
            return max(0.0, 1.0 - progress)
        if cfg.lr_scheduler_type == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


@dataclass
class _Means:
    """Running means of the update's metrics (one value per micro-batch or optimizer step)."""

    sums: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)

    def add(self, key: str, value) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.counts[key] = self.counts.get(key, 0) + 1

    def result(self) -> dict:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


@dataclass
class _Update:
    """What every micro-batch of one update shares (so the helpers below take one argument)."""

    model: object
    cfg: GRPOConfig
    dist: Dist
    temperature: float
    max_completion_length: int
    pad_token_id: int
    ref_model: object = None
    reduction: object = None
    """the loss type's reduction (`loss_spec(cfg.loss_type).reduction`): micro-batch weights"""
    skip: bool = False
    """leave zero-advantage rows out of the forward and backward passes"""
    sampler_correction: bool = False
    """reweight the loss by the trainer/sampler probability ratio (TRL's vllm_importance_sampling_correction)"""
    means: _Means = field(default_factory=_Means)
    tokens: int = 0
    """real tokens of the rows run"""
    decoded: int = 0
    """tokens the decoder ran (a shared prompt once per group)"""

    @property
    def share(self) -> bool:
        """each prompt's forward once for its group; not under FSDP, where every process must run the
        same collectives and a shared-prompt forward runs the decoder once or twice by the rows"""
        return self.cfg.share_prompt and not self.dist.fsdp


def update_policy(model, optimizer, scheduler, buffer: Buffer, cfg: GRPOConfig, *, temperature: float,
                  max_completion_length: int, pad_token_id: int, generator: torch.Generator,
                  ref_model=None, dist: Dist | None = None, skip_zero_advantage: bool | None = None,
                  sampler_correction: bool = False) -> dict:
    """num_iterations passes over the buffer; each pass is steps_per_generation optimizer steps.

    With several processes (`dist`), the buffer holds this process's groups; optimizer batches,
    loss weights and the skip decision are global, so the step equals one process's.
    skip_zero_advantage: None follows cfg.skip_zero_advantage (see the module docstring).
    sampler_correction: the sampler's log-probs come from other kernels (vLLM): with num_iterations = 1
    weight each token's loss by the truncated ratio trainer/sampler (cfg.vllm_importance_sampling_*).
    With more passes the sampler's log-probs are the ratio's old log-probs, which corrects already.
    Returns the update's metrics, averaged over micro-batches (and processes).
    """
    dist = dist or Dist()
    skip = cfg.skip_zero_advantage if skip_zero_advantage is None else skip_zero_advantage
    reduction = loss_spec(cfg.loss_type).reduction
    u = _Update(model, cfg, dist, temperature, max_completion_length, pad_token_id, ref_model, reduction,
                skip=skip and cfg.beta == 0 and reduction.global_normaliser,
                sampler_correction=sampler_correction and cfg.num_iterations == 1)
    model.train()
    bad = 0
    t0 = time.perf_counter()
    for _ in range(cfg.num_iterations):
        for parts in dist.optimizer_batches(buffer.rollouts, cfg.steps_per_generation, cfg.per_device_train_batch_size,
                                            generator, by_group=cfg.share_prompt):
            bad += not _optimizer_step(u, parts, optimizer, scheduler)
    seconds = time.perf_counter() - t0
    metrics = u.means.result()
    metrics.update({"optim/lr": scheduler.get_last_lr()[0], "optim/bad_updates": bad, "time/update_s": seconds,
                    "throughput/update_tok_s": u.tokens / max(seconds, 1e-9), "update/decoder_tokens": u.decoded})
    return dist.mean_metrics(metrics)


def _optimizer_step(u: _Update, parts: list[list], optimizer, scheduler) -> bool:
    """Accumulate the gradients of one optimizer batch (this process's micro-batches `parts`) and
    step; False when the loss or gradient was not finite (the step is skipped, on every process)."""
    cfg, dist = u.cfg, u.dist
    # the normalisers count every row of the batch, on every process, skipped rows too
    n_tok = sum(float(m.sum()) for p in parts for m in _loss_masks(p, cfg.mask_truncated_completions))
    n_seq, n_tok, n_micro = dist.all_sum(sum(len(p) for p in parts), n_tok, len(parts))
    n_tok = max(1, int(n_tok))
    if u.skip:  # zero-gradient rows out
        kept = [r for p in parts for r in p if r.advantage != 0.0]
        u.means.add("update/skipped_frac", 1.0 - len(kept) / max(1, sum(len(p) for p in parts)))
        size = cfg.per_device_train_batch_size
        parts = [kept[m:m + size] for m in range(0, len(kept), size)]
    # none of this batch's rows here: join DDP's gradient all-reduce with a zero-loss pass. Under
    # FSDP every pass is collective: top up to the busiest process's number of passes
    zero_ref = cfg.beta > 0 and u.ref_model is None and dist.fsdp  # the reference forward is collective too
    for _ in range(dist.missing_passes(max(1, len(parts))) + (not parts)):
        _zero_pass(u.model, dist, u.pad_token_id, reference=zero_ref)
    for i, micro in enumerate(parts):
        with dist.sync(last=i == len(parts) - 1):  # processes average gradients after the last
            loss = _micro_batch_loss(u, micro, n_tok)
            # x world: the weights sum to 1 over all processes, and DDP averages their gradients
            dist.backward(loss * u.reduction.micro_batch_weight(len(micro), n_seq, n_micro) * dist.world)
    trainable = [p for p in u.model.parameters() if p.requires_grad]
    grad_norm = dist.clip_grad_norm_(trainable, cfg.max_grad_norm)
    bad = not torch.isfinite(grad_norm) or not math.isfinite(u.means.sums.get("loss/policy", 0.0))
    if dist.all_sum(float(bad))[0]:  # the same decision on every process
        optimizer.zero_grad(set_to_none=True)
        return False
    u.means.add("optim/grad_norm", grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return True


def _micro_batch_loss(u: _Update, micro: list, n_tok: int) -> torch.Tensor:
    """The loss of one micro-batch (its own reduction, before the micro-batch weight); logs metrics."""
    cfg = u.cfg
    device = next(u.model.parameters()).device
    mb = collate(micro, u.pad_token_id).to(device)
    mask = mb.completion_mask * mb.truncated.logical_not().to(mb.completion_mask.dtype)[:, None] \
        if cfg.mask_truncated_completions else mb.completion_mask  # [n, C]
    rows = mb.prompt_rows if u.share else None
    logp, entropy = u.dist.completion_logprobs(
        u.model, mb.input_ids, mb.attention_mask, mb.logits_to_keep, temperature=u.temperature,
        chunk_size=cfg.logprob_chunk_size, with_entropy=True, prompt_rows=rows)  # [n, C], [n, C]
    old = logp.detach() if cfg.num_iterations == 1 else mb.old_logprobs  # [n, C]
    ref = _reference_logprobs(u, mb, rows) if cfg.beta > 0 else None  # [n, C]
    weights = _sampler_mismatch(u, logp, mb.old_logprobs, mask)  # None, or [n, C] | [n, 1]
    loss, metrics = policy_loss(
        logp, old, mb.advantages, mask, ref_logprobs=ref, beta=cfg.beta, epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high, delta=cfg.delta, loss_type=cfg.loss_type,
        sapo_temperature_pos=cfg.sapo_temperature_pos, sapo_temperature_neg=cfg.sapo_temperature_neg,
        max_completion_length=u.max_completion_length, num_items_in_batch=n_tok,
        importance_sampling_level=cfg.importance_sampling_level, sampler_weights=weights)
    u.tokens += int(mb.attention_mask.sum())
    u.decoded += decoder_tokens(u.model, mb.attention_mask, mb.logits_to_keep, rows)
    u.means.add("loss/policy", loss.detach())
    for key, value in metrics.items():
        u.means.add(METRIC_NAMES.get(key, f"policy/{key}"), value)
    u.means.add("policy/entropy", (entropy * mb.completion_mask).sum() / mb.completion_mask.sum().clamp(min=1))
    return loss


def _sampler_mismatch(u: _Update, logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor):
    """Log how far the sampler's log-probs [n, C] are from the trainer's (every backend: rlvr's own
    sampler uses its own kernels too), and return the importance weights when the correction is on."""
    if u.temperature <= 1e-6:  # greedy sampling records no log-probs
        return None
    weights = None
    if u.sampler_correction:
        cfg = u.cfg
        weights = importance_weights(logp.detach(), sampler_logp, mask, mode=cfg.vllm_importance_sampling_mode,
                                     clip_max=cfg.vllm_importance_sampling_clip_max)
    for key, value in mismatch_metrics(logp.detach(), sampler_logp, mask, weights).items():
        u.means.add(key, value)
    return weights


def _loss_masks(rollouts: list, mask_truncated: bool) -> list[torch.Tensor]:
    """Each rollout's per-token loss mask [C_i]; all zeros for a truncated completion when DAPO's
    mask_truncated_completions is on."""
    return [torch.zeros(len(r.loss_mask)) if (mask_truncated and r.truncated) else torch.tensor(r.loss_mask)
            for r in rollouts]


def _zero_pass(model, dist: Dist, pad_token_id: int, reference: bool = False) -> None:
    """Forward and backward a 2-token placeholder with loss 0 (zero gradients): a process without
    rows in an optimizer batch still takes part in DDP's gradient all-reduce. reference: also the
    reference forward of a micro-batch (FSDP with LoRA and beta > 0: it gathers weights too)."""
    device = next(model.parameters()).device
    ids = torch.full((1, 2), pad_token_id, dtype=torch.long, device=device)  # [1, 2]
    logp = dist.completion_logprobs(model, ids, torch.ones_like(ids), 1)  # [1, 1]
    if reference:
        with torch.no_grad(), model.disable_adapter():
            dist.completion_logprobs(model, ids, torch.ones_like(ids), 1)
    dist.backward(logp.sum() * 0.0)


def _reference_logprobs(u: _Update, mb: Minibatch, prompt_rows) -> torch.Tensor:
    """Log-probs under the reference [n, C]: the adapter disabled (LoRA) or a frozen copy (full
    fine-tuning). Under FSDP the adapter-disabled forward runs through the sharded model, like the
    policy's; the frozen copy of full fine-tuning is not sharded (every process holds it whole)."""
    kwargs = dict(temperature=u.temperature, chunk_size=u.cfg.logprob_chunk_size, prompt_rows=prompt_rows)
    args = (mb.input_ids, mb.attention_mask, mb.logits_to_keep)
    with torch.no_grad():
        if u.ref_model is None:
            forward = u.dist.completion_logprobs if u.dist.fsdp else completion_logprobs
            with u.model.disable_adapter():
                return forward(u.model, *args, **kwargs)
        return completion_logprobs(u.ref_model, *args, **kwargs)
