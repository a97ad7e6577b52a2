"""The GRPO policy loss: PPO's clipped surrogate with group advantages, a k3 KL term, and the
loss normalisations of GRPO, Dr. GRPO, DAPO and BNPO.

Per token (PPO, https://arxiv.org/abs/1707.06347; GRPO, https://arxiv.org/abs/2402.03300 eq. 3):
    r_t  = pi(o_t) / pi_old(o_t) = exp(logp_t - old_logp_t)
    l_t  = -min(r_t * A, clip(r_t, 1 - eps, 1 + eps_high) * A)  +  beta * KL_t
The per-token losses are then reduced to one number; the variants differ only in that reduction
(`LossType`). Option names and semantics follow TRL's GRPOTrainer (`loss_type`, `epsilon`,
`epsilon_high`, `beta`, `delta`, `importance_sampling_level`, `max_completion_length`,
`num_items_in_batch`), including its metric definitions (clip ratio low/high/region).

Where this departs from the paper:
  - the KL is Schulman's k3 estimator per token (as in the paper and TRL), added to the loss, not
    to the reward;
  - defaults: beta = 0 (no reference model; DAPO and Dr. GRPO drop it), loss_type "grpo" as in the
    paper, but see `LossType` for the length bias it carries;
  - with importance_sampling_level="sequence" the ratio is GSPO's per-sequence geometric mean
    (https://arxiv.org/abs/2507.18071), shared by all tokens of a sequence.

Letters: N sequences in the (mini)batch, T padded completion length.
"""

from __future__ import annotations

import enum
from typing import Callable

import torch
from torch import Tensor

try:
    from enum import StrEnum
except ImportError:  # Python 3.10

    class StrEnum(str, enum.Enum):  # type: ignore[no-redef]
        def __str__(self) -> str:
            return str(self.value)


class LossType(StrEnum):
    """How the masked per-token losses [N, T] are reduced to one scalar (TRL's `loss_type`)."""

    GRPO = "grpo"
    """mean over each sequence's tokens, then over sequences (DeepSeekMath). Long completions'
    tokens weigh less: the length bias Dr. GRPO points out."""
    DR_GRPO = "dr_grpo"
    """sum over tokens / (N * max_completion_length): a constant divisor, no length bias (Dr. GRPO,
    https://arxiv.org/abs/2503.20783)."""
    DAPO = "dapo"
    """sum over tokens / num_items_in_batch, the completion tokens of the whole accumulated batch:
    every token weighs the same across gradient-accumulation steps (DAPO token-level loss,
    https://arxiv.org/abs/2503.14476)."""
    BNPO = "bnpo"
    """sum over tokens / the completion tokens of this (local) minibatch (TRL's BNPO)."""


def _masked_sum(per_token: Tensor, mask: Tensor) -> Tensor:
    return (per_token * mask).sum()  # []


def reduce_grpo(per_token: Tensor, mask: Tensor, *, max_completion_length=None, num_items_in_batch=None) -> Tensor:
    """(1/N) sum_i (1/|o_i|) sum_t l_it  -- DeepSeekMath eq. 3, https://arxiv.org/abs/2402.03300."""
    per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # [N]
    return per_seq.mean()  # []


def reduce_bnpo(per_token: Tensor, mask: Tensor, *, max_completion_length=None, num_items_in_batch=None) -> Tensor:
    """sum_it l_it / sum_it m_it over this minibatch (TRL "bnpo")."""
    return _masked_sum(per_token, mask) / mask.sum().clamp(min=1.0)


def reduce_dr_grpo(per_token: Tensor, mask: Tensor, *, max_completion_length=None, num_items_in_batch=None) -> Tensor:
    """sum_it l_it / (N * L_max) -- Dr. GRPO, https://arxiv.org/abs/2503.20783 (sec. 3.1)."""
    if not max_completion_length:
        raise ValueError("loss_type 'dr_grpo' needs max_completion_length (the generation budget)")
    return _masked_sum(per_token, mask) / (per_token.shape[0] * max_completion_length)


def reduce_dapo(per_token: Tensor, mask: Tensor, *, max_completion_length=None, num_items_in_batch=None) -> Tensor:
    """sum_it l_it / num_items_in_batch -- DAPO token-level loss, https://arxiv.org/abs/2503.14476.

    num_items_in_batch: completion tokens (mask ones) of the whole accumulated batch, i.e. all the
    minibatches whose gradients are summed before one optimizer step (TRL passes the same count).
    """
    if not num_items_in_batch:
        raise ValueError("loss_type 'dapo' needs num_items_in_batch (completion tokens of the accumulated batch)")
    return _masked_sum(per_token, mask) / num_items_in_batch


REDUCTIONS: dict[LossType, Callable[..., Tensor]] = {
    LossType.GRPO: reduce_grpo,
    LossType.DR_GRPO: reduce_dr_grpo,
    LossType.DAPO: reduce_dapo,
    LossType.BNPO: reduce_bnpo,
}

ACCUMULATION_AVERAGED = {LossType.GRPO, LossType.DR_GRPO, LossType.BNPO}
"""loss types whose per-minibatch loss is divided by the gradient-accumulation steps (as TRL does);
DAPO's divisor already counts the tokens of every accumulated minibatch."""


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 estimator of KL(pi || pi_ref) per token: exp(ref - logp) - (ref - logp) - 1 >= 0.

    Unbiased, low variance, always non-negative; http://joschu.net/blog/kl-approx.html.
    Shapes: [N, T] each, returns [N, T].
    """
    delta = ref_logprobs - logprobs  # [N, T]
    return torch.exp(delta) - delta - 1.0  # [N, T]


def _log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, level: str) -> Tensor:
    """log r per token [N, T] ("token") or per sequence [N, 1] ("sequence", GSPO)."""
    log_ratio = logprobs - old_logprobs  # [N, T]
    if level == "token":
        return log_ratio
    if level == "sequence":
        # GSPO: s_i = (pi(o_i) / pi_old(o_i)) ** (1/|o_i|) = exp(mean_t log r_it)
        return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # [N, 1]
    raise ValueError(f"importance_sampling_level={level!r}: expected 'token' or 'sequence'")


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid tokens for [N, T]; plain mean over sequences for [N, 1] (as TRL logs)."""
    if x.shape[-1] == 1 and mask.shape[-1] != 1:
        return x.mean()
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    loss_type: LossType | str = LossType.GRPO,
    max_completion_length: int | None = None,
    num_items_in_batch: int | None = None,
    importance_sampling_level: str = "token",
    gradient_accumulation_steps: int = 1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO loss of one minibatch, and its metrics.

        r     = exp(logp - old_logp)                         per token, or GSPO's per sequence
        l_it  = -min(r * A_i, clip(r, 1 - epsilon, 1 + epsilon_high) * A_i) + beta * k3_it
        loss  = REDUCTIONS[loss_type](l, mask)  [/ gradient_accumulation_steps, except dapo]

    logprobs [N, T] (with grad), old_logprobs [N, T] (the sampler's, or logprobs.detach() when each
    batch is used for one step only: then r == 1 exactly and this is the plain policy gradient),
    advantages [N], mask [N, T] (1 on completion tokens), ref_logprobs [N, T] (needed iff beta > 0).
    epsilon_high: DAPO's clip-higher (None: = epsilon). delta: TRL's two-sided clip, r <= delta
    (https://arxiv.org/abs/2505.07291). importance_sampling_level: "token" or "sequence" (GSPO,
    https://arxiv.org/abs/2507.18071). gradient_accumulation_steps: TRL divides grpo/dr_grpo/bnpo
    minibatch losses by it so summed gradients average; dapo needs no division.

    Metrics (detached scalars): clip_frac (tokens where clipping zeroes the gradient: r < 1-eps with
    A < 0, or r > 1+eps_high with A > 0), clip_frac_low, clip_frac_high, kl (masked mean of k3, 0
    without a reference), ratio_mean (masked mean of r), pg_loss (the loss without the KL term).
    """
    loss_type = LossType(loss_type)
    eps_high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logprobs.dtype)  # [N, T]
    adv = advantages.to(logprobs.dtype).unsqueeze(-1)  # [N, 1]
    ratio = torch.exp(_log_ratio(logprobs, old_logprobs, mask, importance_sampling_level))  # [N, T] | [N, 1]
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + eps_high)  # [N, T] | [N, 1]
    unclipped = ratio if delta is None else torch.clamp(ratio, max=delta)
    pg_per_token = -torch.min(unclipped * adv, clipped * adv).expand_as(logprobs)  # [N, T]
    per_token = pg_per_token
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs (the reference model's log-probs)")
        per_token = pg_per_token + beta * kl_k3(logprobs, ref_logprobs)  # [N, T]
    sizes = dict(max_completion_length=max_completion_length, num_items_in_batch=num_items_in_batch)
    loss = REDUCTIONS[loss_type](per_token, mask, **sizes)  # []
    if loss_type in ACCUMULATION_AVERAGED:
        loss = loss / gradient_accumulation_steps
    with torch.no_grad():
        low = (ratio < 1.0 - epsilon) & (adv < 0)  # [N, T] | [N, 1]
        high = (ratio > 1.0 + eps_high) & (adv > 0)  # [N, T] | [N, 1]
        kl = torch.zeros((), device=logprobs.device) if ref_logprobs is None else (
            _masked_mean(kl_k3(logprobs, ref_logprobs), mask))
        metrics = {
            "clip_frac": _masked_mean((low | high).to(mask.dtype), mask),
            "clip_frac_low": _masked_mean(low.to(mask.dtype), mask),
            "clip_frac_high": _masked_mean(high.to(mask.dtype), mask),
            "kl": kl,
            "ratio_mean": _masked_mean(ratio, mask),
            "pg_loss": REDUCTIONS[loss_type](pg_per_token, mask, **sizes),
        }
    return loss, metrics
