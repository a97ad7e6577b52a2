"""The algorithm core: pure functions of tensors (no model, no I/O, no config object).

    advantages.py  rewards [N] -> group-relative advantages [N]          (GRPO, Dr. GRPO)
    logprobs.py    logits or hidden states -> log-probs of chosen tokens (the lean path)
    losses.py      log-probs, advantages, mask -> loss and metrics       (grpo, dr_grpo, dapo, bnpo, GSPO, k3 KL)

Nothing here imports transformers, peft or accelerate (a test enforces it); `rlvr.policy` is the
bridge from a Hugging Face model to these functions.
"""

from rlvr.algorithms.advantages import group_advantages, zero_signal_groups
from rlvr.algorithms.logprobs import (
    chunked_head_logprobs,
    chunked_token_logprobs,
    entropy_from_logits,
    selective_log_softmax,
)
from rlvr.algorithms.losses import REDUCTIONS, LossType, kl_k3, policy_loss

__all__ = [
    "LossType",
    "REDUCTIONS",
    "chunked_head_logprobs",
    "chunked_token_logprobs",
    "entropy_from_logits",
    "group_advantages",
    "kl_k3",
    "policy_loss",
    "selective_log_softmax",
    "zero_signal_groups",
]
