"""The GRPO policy loss as two registries: a surrogate (the per-token loss) and a reduction (how the
per-token losses become one number, and how gradient-accumulation micro-batches are weighed).

    per-token loss  l_it = surrogate(r_it, logp_it, A_i)  +  beta * KL_it          [N, T]
    loss            = reduction(l, mask)                                            []

Ratio (shared by every surrogate, computed once):
    r_it = pi(o_it) / pi_old(o_it) = exp(logp_it - old_logp_it)                     "token"
    s_i  = exp(mean_t (logp_it - old_logp_it)), one ratio per sequence              "sequence" (GSPO,
           https://arxiv.org/abs/2507.18071): any surrogate can use it

Surrogates (`SURROGATES`, option names as TRL's GRPOConfig):
    clip   -min(r' A, clip(r, 1 - epsilon, 1 + epsilon_high) A),  r' = min(r, delta) if delta else r
           PPO https://arxiv.org/abs/1707.06347, GRPO https://arxiv.org/abs/2402.03300 eq. 3, DAPO
           clip-higher https://arxiv.org/abs/2503.14476, delta: INTELLECT-2 https://arxiv.org/abs/2505.07291
    cispo  -sg(min(r, epsilon_high)) A logp: the importance weight is clipped and detached, so no token's
           gradient is ever zeroed (MiniMax-M1, https://arxiv.org/abs/2506.13585; epsilon_high is
           ScaleRL's eps_max, https://arxiv.org/abs/2510.13786, which recommends 5)
    sapo   -(4 / tau) sigmoid(tau (r - 1)) A, tau = sapo_temperature_pos if A > 0 else
           sapo_temperature_neg: a soft gate instead of the hard clip; d/dlogp = -4 sig (1 - sig) r A,
           the plain policy gradient at r = 1, fading smoothly off-policy (SAPO,
           https://arxiv.org/abs/2511.20347)

Reductions (`REDUCTIONS`, TRL's `loss_type` normalisations), each with its micro-batch weight:
    grpo     (1/N) sum_i (1/|o_i|) sum_t l_it                    weight rows / total_rows
    dr_grpo  sum_it l_it / (N * max_completion_length)           weight rows / total_rows
    dapo     sum_it l_it / num_items_in_batch                    weight 1 (the divisor is already global)
    bnpo     sum_it l_it / sum_it m_it (this micro-batch)        weight 1 / num_micro (TRL: local)

`LOSS_TYPES` maps TRL's `loss_type` to a (surrogate, reduction) pair as TRL 1.x does: grpo, dr_grpo,
dapo, bnpo use clip; cispo uses the dapo normalisation; sapo the grpo one. Adding a loss type: one
surrogate (or reduction) function, one `LossType` member, one `LOSS_TYPES` line (plus the function's
`SURROGATES`/`REDUCTIONS` line if it is new), one test.

Where this departs from the papers / TRL:
  - the KL is Schulman's k3 estimator per token (as in GRPO and TRL), added to the loss, not the reward;
  - defaults: beta = 0 (no reference model; DAPO and Dr. GRPO drop it); `policy_loss`'s loss_type
    defaults to "grpo" (the paper; TRL's default is "dapo");
  - cispo with epsilon_high=None caps the weight at 5 (ScaleRL's recommendation, which TRL's docs give);
    TRL would fall back to epsilon (0.2), capping even on-policy tokens at 0.2;
  - MiniMax-M1's CISPO also has a lower bound 1 - eps_low; like TRL (and the paper's runs, which
    disable it), only the upper cap is applied;
  - gradient accumulation is explicit: the caller weighs each micro-batch's loss by
    `Reduction.micro_batch_weight`, which for equal micro-batches is TRL's division by the
    accumulation steps (dapo/cispo: none).

Letters: N sequences in the (micro-)batch, T padded completion length.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
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
    """TRL's `loss_type`: a (surrogate, reduction) pair, see `LOSS_TYPES`."""

    GRPO = "grpo"
    """clip surrogate, mean over each sequence's tokens then over sequences (DeepSeekMath). Long
    completions' tokens weigh less: the length bias Dr. GRPO points out."""
    DR_GRPO = "dr_grpo"
    """clip surrogate, sum over tokens / (N * max_completion_length): a constant divisor, no length
    bias (Dr. GRPO, https://arxiv.org/abs/2503.20783)."""
    DAPO = "dapo"
    """clip surrogate, sum over tokens / num_items_in_batch, the completion tokens of the whole
    accumulated batch: every token weighs the same (DAPO, https://arxiv.org/abs/2503.14476)."""
    BNPO = "bnpo"
    """clip surrogate, sum over tokens / the completion tokens of this (local) micro-batch (TRL)."""
    CISPO = "cispo"
    """clipped, detached importance weight times the REINFORCE term, dapo normalisation (MiniMax-M1,
    https://arxiv.org/abs/2506.13585)."""
    SAPO = "sapo"
    """soft sigmoid gate instead of the hard clip, grpo normalisation (SAPO,
    https://arxiv.org/abs/2511.20347)."""


# ---------------------------------------------------------------------------------------------------
# Reductions: masked per-token losses [N, T] -> scalar, and the weight of a micro-batch
# ---------------------------------------------------------------------------------------------------


def _masked_sum(per_token: Tensor, mask: Tensor) -> Tensor:
    return (per_token * mask).sum()  # []


def reduce_grpo(per_token: Tensor, mask: Tensor, *, max_completion_length=None, num_items_in_batch=None) -> Tensor:
    """(1/N) sum_i (1/|o_i|) sum_t l_it  -- DeepSeekMath eq. 3, https://arxiv.org/abs/2402.03300."""
    per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # [N]
    return per_seq.mean()  # []


def reduce_bnpo(per_token: Tensor, mask: Tensor, *, max_completion_length=None, num_items_in_batch=None) -> Tensor:
    """sum_it l_it / sum_it m_it over this micro-batch (TRL "bnpo")."""
    return _masked_sum(per_token, mask) / mask.sum().clamp(min=1.0)


def reduce_dr_grpo(per_token: Tensor, mask: Tensor, *, max_completion_length=None, num_items_in_batch=None) -> Tensor:
    """sum_it l_it / (N * L_max) -- Dr. GRPO, https://arxiv.org/abs/2503.20783 (sec. 3.1)."""
    if not max_completion_length:
        raise ValueError("loss_type 'dr_grpo' needs max_completion_length (the generation budget)")
    return _masked_sum(per_token, mask) / (per_token.shape[0] * max_completion_length)


def reduce_dapo(per_token: Tensor, mask: Tensor, *, max_completion_length=None, num_items_in_batch=None) -> Tensor:
    """sum_it l_it / num_items_in_batch -- DAPO token-level loss, https://arxiv.org/abs/2503.14476.

    num_items_in_batch: completion tokens (mask ones) of the whole accumulated batch, i.e. all the
    micro-batches whose gradients are summed before one optimizer step (TRL passes the same count).
    """
    if not num_items_in_batch:
        raise ValueError("this loss_type (dapo's normalisation) needs num_items_in_batch "
                         "(completion tokens of the accumulated batch)")
    return _masked_sum(per_token, mask) / num_items_in_batch


def weight_by_rows(rows: int, total_rows: int, num_micro: int) -> float:
    """A per-sequence mean (or a divisor proportional to N): the micro-batch's share of the sequences."""
    return rows / total_rows


def weight_equally(rows: int, total_rows: int, num_micro: int) -> float:
    """A normaliser local to the micro-batch: the plain mean of micro-batch losses (TRL's division by
    the accumulation steps)."""
    return 1.0 / num_micro


def weight_one(rows: int, total_rows: int, num_micro: int) -> float:
    """A normaliser that already counts the whole accumulated batch: sum the micro-batch losses."""
    return 1.0


@dataclass(frozen=True)
class Reduction:
    """How per-token losses become the optimizer step's loss.

    reduce(per_token [N, T], mask [N, T], *, max_completion_length, num_items_in_batch) -> [].
    micro_batch_weight(rows, total_rows, num_micro): the factor for one micro-batch's loss, so that
    sum over micro-batches of loss_k * weight_k is the loss of the optimizer batch (for bnpo, by
    definition, the mean of the micro-batch losses).
    global_normaliser: the micro-batch's normaliser depends only on optimizer-batch totals
    (total_rows, num_items_in_batch, max_completion_length), never on which rows share its
    micro-batch. Only then can zero-gradient rows be left out of the passes (still counted in the
    totals) without changing the step.
    """

    name: str
    reduce: Callable[..., Tensor]
    micro_batch_weight: Callable[[int, int, int], float]
    global_normaliser: bool


REDUCTIONS: dict[str, Reduction] = {
    "grpo": Reduction("grpo", reduce_grpo, weight_by_rows, global_normaliser=True),
    "dr_grpo": Reduction("dr_grpo", reduce_dr_grpo, weight_by_rows, global_normaliser=True),
    "dapo": Reduction("dapo", reduce_dapo, weight_one, global_normaliser=True),
    "bnpo": Reduction("bnpo", reduce_bnpo, weight_equally, global_normaliser=False),
}


# ---------------------------------------------------------------------------------------------------
# Surrogates: ratio, log-probs, advantages -> per-token loss [N, T] and clip indicators
# ---------------------------------------------------------------------------------------------------


CISPO_EPSILON_MAX = 5.0
"""cispo's cap on the importance weight when epsilon_high is None (ScaleRL, arXiv 2510.13786)."""


@dataclass(frozen=True)
class SurrogateOptions:
    """The surrogates' options, TRL's names and defaults (GRPOConfig)."""

    epsilon: float = 0.2
    """clip: lower clip 1 - epsilon (and upper when epsilon_high is None)."""
    epsilon_high: float | None = None
    """clip: upper clip 1 + epsilon_high (DAPO recommends 0.28); cispo: the cap eps_max itself."""
    delta: float | None = None
    """clip only: two-sided clip, the unclipped ratio is capped at delta (> 1 + epsilon_high)."""
    sapo_temperature_pos: float = 1.0
    """sapo: gate temperature for tokens with A > 0."""
    sapo_temperature_neg: float = 1.05
    """sapo: gate temperature for tokens with A <= 0."""


Stats = dict[str, Tensor]
"""Detached indicators [N, T] | [N, 1] that `policy_loss` averages over valid tokens for metrics."""
SurrogateFn = Callable[[Tensor, Tensor, Tensor, SurrogateOptions], tuple[Tensor, Stats]]


def clip_surrogate(ratio: Tensor, logprobs: Tensor, adv: Tensor, o: SurrogateOptions) -> tuple[Tensor, Stats]:
    """-min(r' A, clip(r, 1 - eps, 1 + eps_high) A), r' = min(r, delta) -- PPO/GRPO, DAPO, INTELLECT-2.

    ratio [N, T] | [N, 1] (with grad), logprobs [N, T] (only its shape is used), adv [N, 1].
    Stats as TRL: clipped low (r < 1 - eps, A < 0) and high (r > 1 + eps_high, A > 0), the tokens
    whose gradient the clip zeroes.
    """
    eps_high = o.epsilon if o.epsilon_high is None else o.epsilon_high
    clipped = torch.clamp(ratio, 1.0 - o.epsilon, 1.0 + eps_high)  # [N, T] | [N, 1]
    unclipped = ratio if o.delta is None else torch.clamp(ratio, max=o.delta)
    per_token = -torch.min(unclipped * adv, clipped * adv).expand_as(logprobs)  # [N, T]
    with torch.no_grad():
        low = (ratio < 1.0 - o.epsilon) & (adv < 0)  # [N, T] | [N, 1]
        high = (ratio > 1.0 + eps_high) & (adv > 0)  # [N, T] | [N, 1]
    return per_token, {"clip_frac": low | high, "clip_frac_low": low, "clip_frac_high": high}


def cispo_surrogate(ratio: Tensor, logprobs: Tensor, adv: Tensor, o: SurrogateOptions) -> tuple[Tensor, Stats]:
    """-sg(min(r, eps_max)) A logp -- CISPO, MiniMax-M1 https://arxiv.org/abs/2506.13585 (eq. 4).

    The clipped weight is detached: every token keeps a gradient -w A grad(logp), only its size is
    capped. eps_max = epsilon_high (ScaleRL, https://arxiv.org/abs/2510.13786: 5), CISPO_EPSILON_MAX
    when None. The loss value is -w A logp (as TRL), not comparable with clip's value.
    Stats as TRL's cispo_clip_ratio: r > eps_max with A > 0.
    """
    eps_max = CISPO_EPSILON_MAX if o.epsilon_high is None else o.epsilon_high
    weight = torch.clamp(ratio, max=eps_max).detach()  # [N, T] | [N, 1]
    per_token = -weight * adv * logprobs  # [N, T]
    with torch.no_grad():
        high = (ratio > eps_max) & (adv > 0)  # [N, T] | [N, 1]
    return per_token, {"clip_frac": high, "clip_frac_low": torch.zeros_like(high), "clip_frac_high": high}


def sapo_surrogate(ratio: Tensor, logprobs: Tensor, adv: Tensor, o: SurrogateOptions) -> tuple[Tensor, Stats]:
    """-(4 / tau) sigmoid(tau (r - 1)) A, tau by the sign of A -- SAPO, https://arxiv.org/abs/2511.20347.

    d l / d logp = -4 sig (1 - sig) r A: the plain policy gradient at r = 1, softly attenuated as r
    leaves 1 (no hard cut-off). Stats: nothing is hard-clipped (clip fractions 0); sapo_gate_mean is
    the mean gradient gate 4 sig (1 - sig) in (0, 1] (1 = on-policy, no attenuation).
    """
    if o.sapo_temperature_pos <= 0 or o.sapo_temperature_neg <= 0:
        raise ValueError(f"sapo_temperature_pos/neg must be > 0, got {o.sapo_temperature_pos}, "
                         f"{o.sapo_temperature_neg}")
    tau = torch.where(adv > 0, o.sapo_temperature_pos, o.sapo_temperature_neg).to(ratio.dtype)  # [N, 1]
    sig = torch.sigmoid(tau * (ratio - 1.0))  # [N, T] | [N, 1]
    per_token = (-sig * 4.0 / tau * adv).expand_as(logprobs)  # [N, T]
    with torch.no_grad():
        none = torch.zeros_like(ratio, dtype=torch.bool)  # [N, T] | [N, 1]
        gate = 4.0 * sig * (1.0 - sig)  # [N, T] | [N, 1]
    return per_token, {"clip_frac": none, "clip_frac_low": none, "clip_frac_high": none, "sapo_gate_mean": gate}


SURROGATES: dict[str, SurrogateFn] = {
    "clip": clip_surrogate,
    "cispo": cispo_surrogate,
    "sapo": sapo_surrogate,
}


# ---------------------------------------------------------------------------------------------------
# Loss types: TRL's loss_type -> (surrogate, reduction)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossSpec:
    """What a `loss_type` means: the surrogate (a `SURROGATES` key) and the reduction."""

    loss_type: LossType
    surrogate: str
    reduction: Reduction

    def can_skip_zero_advantage(self, beta: float) -> bool:
        """Whether rows with advantage 0 may be left out of the forward/backward passes.

        Every surrogate's loss is proportional to A, so such rows have zero gradient unless the KL
        term (beta != 0) acts on them; leaving them out keeps the step only if the normaliser is
        global (they stay counted in total_rows / num_items_in_batch).
        """
        return beta == 0.0 and self.reduction.global_normaliser


LOSS_TYPES: dict[LossType, LossSpec] = {
    LossType.GRPO: LossSpec(LossType.GRPO, "clip", REDUCTIONS["grpo"]),
    LossType.DR_GRPO: LossSpec(LossType.DR_GRPO, "clip", REDUCTIONS["dr_grpo"]),
    LossType.DAPO: LossSpec(LossType.DAPO, "clip", REDUCTIONS["dapo"]),
    LossType.BNPO: LossSpec(LossType.BNPO, "clip", REDUCTIONS["bnpo"]),
    LossType.CISPO: LossSpec(LossType.CISPO, "cispo", REDUCTIONS["dapo"]),
    LossType.SAPO: LossSpec(LossType.SAPO, "sapo", REDUCTIONS["grpo"]),
}


def loss_spec(loss_type: LossType | str) -> LossSpec:
    """The `LossSpec` of a loss_type name; a clear error on an unknown name."""
    try:
        return LOSS_TYPES[LossType(loss_type)]
    except ValueError:
        raise ValueError(f"loss_type {loss_type!r} is not one of {', '.join(LossType)}") from None


# ---------------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------------


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 estimator of KL(pi || pi_ref) per token: exp(ref - logp) - (ref - logp) - 1 >= 0.

    Unbiased, low variance, always non-negative; http://joschu.net/blog/kl-approx.html.
    Shapes: [N, T] each, returns [N, T].
    """
    delta = ref_logprobs - logprobs  # [N, T]
    return torch.exp(delta) - delta - 1.0  # [N, T]


def importance_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """r per token [N, T] ("token") or GSPO's per-sequence s_i [N, 1] ("sequence").

    GSPO (https://arxiv.org/abs/2507.18071): s_i = (pi(o_i) / pi_old(o_i)) ** (1/|o_i|)
    = exp(mean_t log r_it), shared by all tokens of the sequence.
    """
    log_ratio = logprobs - old_logprobs  # [N, T]
    if level == "token":
        return torch.exp(log_ratio)  # [N, T]
    if level == "sequence":
        mean = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # [N]
        return torch.exp(mean).unsqueeze(-1)  # [N, 1]
    raise ValueError(f"importance_sampling_level={level!r}: expected 'token' or 'sequence'")


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid tokens for [N, T]; plain mean over sequences for [N, 1] (as TRL logs)."""
    x = x.to(mask.dtype)
    if x.shape[-1] == 1 and mask.shape[-1] != 1:
        return x.mean()
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    loss_type: LossType | str = LossType.GRPO,
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    max_completion_length: int | None = None,
    num_items_in_batch: int | None = None,
    importance_sampling_level: str = "token",
    gradient_accumulation_steps: int = 1,
    sampler_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The policy loss of one (micro-)batch, and its metrics.

        r     = importance_ratio(logp, old_logp)          per token, or GSPO's per sequence
        l_it  = SURROGATES[spec.surrogate](r, logp, A) + beta * k3_it
        loss  = spec.reduction.reduce(l, mask)            spec = loss_spec(loss_type)

    logprobs [N, T] (with grad), old_logprobs [N, T] (the sampler's, or logprobs.detach() when each
    batch is used for one step only: then r == 1 exactly), advantages [N], mask [N, T] (1 on tokens
    to learn from), ref_logprobs [N, T] (needed iff beta != 0). Options: see `SurrogateOptions`
    (delta only with the clip surrogate). max_completion_length: dr_grpo's constant;
    num_items_in_batch: dapo/cispo's token count of the accumulated batch.
    sampler_weights [N, T] or [N, 1]: importance weights p/q of the sampled tokens against the sampler
    that drew them (TRL's vllm_importance_sampling_correction: the policy-gradient loss per token is
    multiplied by them, the KL term is not; no gradient flows through them).
    gradient_accumulation_steps: TRL-style equal micro-batches, the loss is multiplied by
    micro_batch_weight(1, steps, steps) (1/steps, dapo/cispo 1); a caller with uneven micro-batches
    leaves it at 1 and multiplies by `loss_spec(loss_type).reduction.micro_batch_weight` itself.

    Metrics (detached scalars): clip_frac, clip_frac_low, clip_frac_high (fractions of valid tokens,
    or of sequences at sequence level; see each surrogate), kl (masked mean of k3, 0 without a
    reference), ratio_mean (masked mean of r), pg_loss (the loss without the KL term, before the
    accumulation weight), plus any surrogate-specific one (sapo: sapo_gate_mean).
    """
    spec = loss_spec(loss_type)
    if delta is not None and spec.surrogate != "clip":
        raise ValueError(f"delta (two-sided clip) applies to the clip surrogate only, not loss_type '{spec.loss_type}'")
    options = SurrogateOptions(epsilon, epsilon_high, delta, sapo_temperature_pos, sapo_temperature_neg)
    mask = mask.to(logprobs.dtype)  # [N, T]
    adv = advantages.to(logprobs.dtype).unsqueeze(-1)  # [N, 1]
    ratio = importance_ratio(logprobs, old_logprobs, mask, importance_sampling_level)  # [N, T] | [N, 1]
    pg_per_token, stats = SURROGATES[spec.surrogate](ratio, logprobs, adv, options)  # [N, T]
    if sampler_weights is not None:  # truncated importance sampling against the sampler (rlvr.algorithms.importance)
        pg_per_token = pg_per_token * sampler_weights.detach()  # [N, T] x ([N, T] | [N, 1])
    per_token = pg_per_token
    if beta != 0.0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs (the reference model's log-probs)")
        per_token = pg_per_token + beta * kl_k3(logprobs, ref_logprobs)  # [N, T]
    sizes = dict(max_completion_length=max_completion_length, num_items_in_batch=num_items_in_batch)
    loss = spec.reduction.reduce(per_token, mask, **sizes)  # []
    if gradient_accumulation_steps != 1:
        steps = gradient_accumulation_steps
        loss = loss * spec.reduction.micro_batch_weight(1, steps, steps)
    with torch.no_grad():
        metrics = {key: _masked_mean(value, mask) for key, value in stats.items()}
        metrics["kl"] = (torch.zeros((), device=logprobs.device) if ref_logprobs is None
                         else _masked_mean(kl_k3(logprobs, ref_logprobs), mask))
        metrics["ratio_mean"] = _masked_mean(ratio, mask)
        metrics["pg_loss"] = spec.reduction.reduce(pg_per_token, mask, **sizes)
    return loss, metrics
