"""The algorithm core: pure functions of tensors (no model, no I/O, no config object).

    advantages.py  rewards [N] -> group-relative advantages [N]          (GRPO, Dr. GRPO)
    logprobs.py    logits or hidden states -> log-probs of chosen tokens (the lean path)
    losses.py      log-probs, advantages, mask -> loss and metrics: surrogates (clip, cispo, sapo; GSPO's
                   sequence ratio) x reductions (grpo, dr_grpo, dapo, bnpo), k3 KL; loss_spec(loss_type)

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
from rlvr.algorithms.losses import (
    LOSS_TYPES,
    REDUCTIONS,
    SURROGATES,
    LossSpec,
    LossType,
    Reduction,
    SurrogateOptions,
    importance_ratio,
    kl_k3,
    loss_spec,
    policy_loss,
)

__all__ = [
    "LOSS_TYPES",
    "LossSpec",
    "LossType",
    "REDUCTIONS",
    "Reduction",
    "SURROGATES",
    "SurrogateOptions",
    "chunked_head_logprobs",
    "chunked_token_logprobs",
    "entropy_from_logits",
    "group_advantages",
    "importance_ratio",
    "kl_k3",
    "loss_spec",
    "policy_loss",
    "selective_log_softmax",
    "zero_signal_groups",
]
