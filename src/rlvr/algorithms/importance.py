"""Sampler/trainer mismatch: importance-sampling weights that correct for it, and metrics that show it.

A fast sampler (vLLM, or rlvr's own `FastSampler`) computes its log-probs with other kernels, batch
shapes and sometimes precision than the trainer's forward, so the tokens were drawn from a policy
q (the sampler's) slightly different from the policy p the trainer scores (its "old" log-probs).
Truncated importance sampling (Yao et al., "Your Efficient RL Framework Secretly Brings You
Off-Policy RL Training", https://fengyao.notion.site/off-policy-rl, 2025) reweights each token's
loss by rho = p/q, bounded so that a few tokens cannot blow up the gradient:

    token level:     rho_t = exp(logp_t - logq_t)                          [N, T]
    sequence level:  rho   = exp(sum_t m_t (logp_t - logq_t))              [N, 1] (one weight per completion)
    truncate:        rho <- clamp(rho, C_min, C_max)
    mask:            rho <- 0 where rho < C_min or rho > C_max

This is TRL's `vllm_importance_sampling_correction` (GRPOTrainer._generate_and_score_completions,
huggingface/trl grpo_trainer.py), with its option names and defaults: mode "sequence_mask",
C_max = 3.0 (`vllm_importance_sampling_clip_max`; the older `vllm_importance_sampling_cap` is the same
number), C_min = None (no lower bound). The loss multiplies its per-token loss by rho (TRL:
`per_token_loss = per_token_loss * importance_sampling_ratio`); no gradient flows through rho.

Shapes: N completions, T completion positions (right-padded); mask [N, T] is 1 on real tokens.
"""

from __future__ import annotations

import enum
import math

import torch
from torch import Tensor


class ISMode(str, enum.Enum):
    """`vllm_importance_sampling_mode`: granularity (token or sequence) x constraint (truncate or mask)."""

    TOKEN_TRUNCATE = "token_truncate"
    TOKEN_MASK = "token_mask"
    SEQUENCE_TRUNCATE = "sequence_truncate"
    SEQUENCE_MASK = "sequence_mask"


DEFAULT_MODE = ISMode.SEQUENCE_MASK
"""TRL's default `vllm_importance_sampling_mode`"""
DEFAULT_CLIP_MAX = 3.0
"""TRL's default `vllm_importance_sampling_clip_max` (formerly `vllm_importance_sampling_cap`)"""


def _mode(mode: ISMode | str) -> ISMode:
    try:
        return ISMode(mode)
    except ValueError:
        choices = ", ".join(m.value for m in ISMode)
        raise ValueError(f"vllm_importance_sampling_mode must be one of {choices}; got {mode!r}") from None


def _check_shapes(trainer_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor) -> None:
    if not (trainer_logprobs.shape == sampler_logprobs.shape == mask.shape) or trainer_logprobs.dim() != 2:
        raise ValueError(
            "trainer_logprobs, sampler_logprobs and mask must all be [N, T]; got "
            f"{tuple(trainer_logprobs.shape)}, {tuple(sampler_logprobs.shape)}, {tuple(mask.shape)}"
        )


def importance_weights(
    trainer_logprobs: Tensor,
    sampler_logprobs: Tensor,
    mask: Tensor,
    *,
    mode: ISMode | str = DEFAULT_MODE,
    clip_max: float | None = DEFAULT_CLIP_MAX,
    clip_min: float | None = None,
) -> Tensor:
    """Importance weights rho = p/q of the sampled tokens, truncated or masked (module docstring).

    trainer_logprobs [N, T]: log p (the trainer's old log-probs, no grad); sampler_logprobs [N, T]:
    log q (what the sampler returned); mask [N, T]: 1 on completion tokens. Returns [N, T] for the
    token modes, [N, 1] for the sequence modes (broadcasts over the tokens of each completion), as TRL.
    """
    _check_shapes(trainer_logprobs, sampler_logprobs, mask)
    mode = _mode(mode)
    if clip_min is not None and clip_max is not None and clip_min >= clip_max:
        raise ValueError(f"vllm_importance_sampling_clip_min ({clip_min}) must be below clip_max ({clip_max})")
    truncate = mode in (ISMode.TOKEN_TRUNCATE, ISMode.SEQUENCE_TRUNCATE)
    if truncate and clip_min is None and clip_max is None:
        raise ValueError("a *_truncate vllm_importance_sampling_mode needs clip_min or clip_max")
    diff = (trainer_logprobs.detach() - sampler_logprobs.detach()) * mask  # [N, T]
    if mode in (ISMode.SEQUENCE_TRUNCATE, ISMode.SEQUENCE_MASK):
        diff = diff.sum(-1, keepdim=True)  # [N, 1]
    rho = torch.exp(diff)  # [N, T] or [N, 1]
    if truncate:
        return torch.clamp(rho, min=clip_min, max=clip_max)
    low = clip_min if clip_min is not None else -math.inf
    high = clip_max if clip_max is not None else math.inf
    return rho.masked_fill((rho < low) | (rho > high), 0.0)


def mismatch_metrics(
    trainer_logprobs: Tensor,
    sampler_logprobs: Tensor,
    mask: Tensor,
    weights: Tensor | None = None,
) -> dict[str, float]:
    """How far the sampler's log-probs are from the trainer's, over the real tokens.

    - sampling/logp_diff/mean, /max: mean and max |log p - log q| (TRL's sampling_logp_difference);
    - sampling/kl: KL(q || p) estimated from the sampled tokens (drawn from q) with Schulman's k3,
      r - 1 - log r with r = p/q (http://joschu.net/blog/kl-approx.html): non-negative, unbiased;
    - sampling/is_ratio/min, /mean, /max: the weights' range, when `weights` (from
      `importance_weights`) is given: over real tokens ([N, T]) or over completions ([N, 1]).
    An empty mask gives zeros, as TRL does.
    """
    _check_shapes(trainer_logprobs, sampler_logprobs, mask)
    real = mask.bool()  # [N, T]
    log_r = (trainer_logprobs.detach() - sampler_logprobs.detach()).float()[real]  # [M] log p/q
    if log_r.numel() == 0:
        out = {"sampling/logp_diff/mean": 0.0, "sampling/logp_diff/max": 0.0, "sampling/kl": 0.0}
    else:
        out = {
            "sampling/logp_diff/mean": log_r.abs().mean().item(),
            "sampling/logp_diff/max": log_r.abs().max().item(),
            "sampling/kl": (torch.exp(log_r) - 1 - log_r).mean().item(),
        }
    if weights is not None:
        flat = weights.flatten() if weights.shape[-1] == 1 and mask.shape[-1] != 1 else weights[real]  # [M]
        empty = flat.numel() == 0
        out["sampling/is_ratio/min"] = 0.0 if empty else flat.min().item()
        out["sampling/is_ratio/mean"] = 0.0 if empty else flat.float().mean().item()
        out["sampling/is_ratio/max"] = 0.0 if empty else flat.max().item()
    return out
