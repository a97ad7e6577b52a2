"""Group-relative advantages: how much better one completion is than its siblings.

GRPO (DeepSeekMath, https://arxiv.org/abs/2402.03300, sec. 4.1.2) drops PPO's value network: the
baseline of a completion is the mean reward of the G completions sampled for the same prompt, and
the advantage is the reward minus that baseline, divided by the group's standard deviation. Every
token of a completion gets the completion's advantage (outcome supervision).

Shapes: N = number of completions = B * G (B prompts, G = `num_generations` completions each); rewards
are prompt-major, so group g is rewards[g*G:(g+1)*G] (the order every sampler here returns).

Where this departs from the paper, following TRL (`GRPOConfig.scale_rewards`):
  - the std is the *unbiased* one (torch.std's default, Bessel's correction, divide by G-1), as TRL
    computes it; the paper does not say. With G = 2 and rewards (0, 1) that is 0.707, not 0.5;
  - eps = 1e-4 is added to the std (not inside a sqrt), so a group whose rewards are all equal gets
    advantage 0/(0 + 1e-4) = 0 instead of NaN;
  - scale_rewards="batch" divides by the std of the whole batch (the baseline stays per group), and
    "none" does not divide at all: Dr. GRPO (https://arxiv.org/abs/2503.20783, sec. 3.1) shows the
    per-group std biases updates towards too-easy and too-hard prompts.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

def _check_rewards(rewards: Tensor, num_generations: int) -> None:
    """Refuse rewards that cannot form groups or are not finite, naming the problem."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if num_generations < 1 or rewards.numel() % num_generations != 0:
        raise ValueError(
            f"{rewards.numel()} rewards cannot be split into groups of num_generations={num_generations}: "
            "the number of completions must be a multiple of the group size"
        )
    bad = (~torch.isfinite(rewards)).nonzero().flatten()
    if bad.numel():
        raise ValueError(f"rewards are not finite (NaN or inf) at indices {bad.tolist()[:10]}")


def _group_std(rewards: Tensor, grouped: Tensor) -> Tensor:
    """Unbiased std of each group, broadcast back over its members: [B, 1] (0 when G == 1)."""
    if grouped.shape[1] < 2:
        return torch.zeros_like(grouped[:, :1])
    return grouped.std(dim=1, keepdim=True)  # [B, 1], unbiased (divides by G-1)


def _batch_std(rewards: Tensor, grouped: Tensor) -> Tensor:
    """Unbiased std of the whole batch of rewards: a scalar (0 for a single reward)."""
    if rewards.numel() < 2:
        return torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    return rewards.std()  # [], unbiased


def _no_scale(rewards: Tensor, grouped: Tensor) -> Tensor | None:
    """Dr. GRPO: advantages are the mean-centred rewards, not divided by anything."""
    return None


SCALES: dict[str, Callable[[Tensor, Tensor], Tensor | None]] = {
    "group": _group_std,
    "batch": _batch_std,
    "none": _no_scale,
}


def _scale_name(scale_rewards: str | bool) -> str:
    """TRL's old boolean form: True means "group", False means "none"."""
    if isinstance(scale_rewards, bool):
        return "group" if scale_rewards else "none"
    if scale_rewards not in SCALES:
        raise ValueError(f"scale_rewards={scale_rewards!r}: expected one of {sorted(SCALES)}")
    return str(scale_rewards)


def group_advantages(
    rewards: Tensor, num_generations: int, *, scale_rewards: str | bool = "group", eps: float = 1e-4
) -> Tensor:
    """Group-relative advantages A_i = (r_i - mean(r_group)) / (std + eps).

    GRPO, DeepSeekMath eq. (outcome supervision), https://arxiv.org/abs/2402.03300:
        A_i = (r_i - mean(r_1..r_G)) / std(r_1..r_G)
    scale_rewards (TRL's option and values):
        "group": divide by the unbiased std of the completion's own group (GRPO);
        "batch": divide by the unbiased std of all N rewards (baseline still per group);
        "none":  do not divide (Dr. GRPO, https://arxiv.org/abs/2503.20783).

    rewards: [N] prompt-major (group g = rewards[g*G:(g+1)*G]). Returns [N], same dtype.
    A group whose rewards are all equal has advantage 0 everywhere: it carries no learning signal
    (see `zero_signal_groups`).
    """
    _check_rewards(rewards, num_generations)
    grouped = rewards.view(-1, num_generations)  # [B, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [B, G]
    std = SCALES[_scale_name(scale_rewards)](rewards, grouped)  # [B, 1], [] or None
    if std is not None:
        centred = centred / (std + eps)  # [B, G]
    return centred.reshape(-1)  # [N]


def zero_signal_groups(rewards: Tensor, num_generations: int) -> Tensor:
    """Which groups have all rewards equal (within float tolerance): BoolTensor [N / G].

    Such a group has zero advantage for every completion, so (with beta = 0) it contributes nothing
    to the gradient: the "loss is 0 / no learning" symptom (TRL #3857, Unsloth #2291). TRL logs the
    same quantity as `frac_reward_zero_std`; DAPO's dynamic sampling (https://arxiv.org/abs/2503.14476)
    filters these groups out.
    """
    _check_rewards(rewards, num_generations)
    grouped = rewards.view(-1, num_generations)  # [B, G]
    return torch.isclose(grouped, grouped[:, :1]).all(dim=1)  # [B]
