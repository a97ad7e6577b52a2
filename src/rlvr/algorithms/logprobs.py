"""Per-token log-probs (and entropies) of chosen tokens, without a full-vocabulary log-softmax.

The policy-gradient loss needs log pi(o_t | q, o_<t) only for the token that was sampled, one number
per position. The textbook route, `log_softmax(logits).gather(...)`, materialises a [N, T, V] float
tensor twice (logits, log-softmax) and keeps them alive for the backward pass: with V = 49,152 and
32 x 64 completion tokens that is 400 MB each, more than the 135M model itself.

Two tricks here, the "lean log-probs":
  1. `selective_log_softmax`: log p(y) = z_y - logsumexp(z), with z = logits / T. Only the gathered
     logit and one logsumexp per row are kept, never the log-softmax.
  2. `chunked_token_logprobs`: start from the last hidden states instead of the logits; project to
     the vocabulary a chunk of rows at a time, each chunk under `torch.utils.checkpoint`, so the
     backward recomputes that chunk's logits instead of storing [N, T, V]. Peak extra memory is
     one chunk's logits (chunk_size x V floats) whatever the batch. (Liger-Kernel's fused linear
     cross-entropy is the same idea done in one kernel.)
  3. `FrozenHeadLogProbs`: when the head is frozen (LoRA), the gradient with respect to the hidden
     states is computed chunk by chunk in the forward pass, so the backward recomputes nothing.

Temperature: the sampler draws from softmax(logits / T), so the log-probs of the PPO ratio must be
taken under logits / T too (TRL #4159 was a mismatch from forgetting this).

Letters: N sequences, T positions, H hidden size, V vocabulary size, R = N*T flattened rows, C rows
in one chunk.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Head = Callable[[Tensor], Tensor]
"""hidden states [C, H] -> logits [C, V] (an lm_head, possibly wrapped: LoRA, soft-capping)"""


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    """Logits in fp32, divided by the temperature (no copy when fp32 and T == 1)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = logits.float()
    return z if temperature == 1.0 else z / temperature


def selective_log_softmax(logits: Tensor, index: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / T)[index], without materialising the log-softmax.

    log p(y) = z_y - logsumexp_v z_v,  z = logits / T.
    logits: [..., V]; index: [...] (int64 token ids). Returns [...] in fp32.
    """
    z = _scaled(logits, temperature)  # [..., V]
    picked = z.gather(-1, index.unsqueeze(-1)).squeeze(-1)  # [...]
    return picked - torch.logsumexp(z, dim=-1)  # [...]


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of softmax(logits / T) per row: H = logsumexp(z) - sum_v p_v z_v.

    logits: [..., V]. Returns [...] in fp32. Used for logging (the policy's uncertainty; collapsing
    entropy is an early sign of mode collapse), so callers run it without grad.
    """
    z = _scaled(logits, temperature)  # [..., V]
    p = torch.softmax(z, dim=-1)  # [..., V]
    return torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)  # [...]


def _chunk(head: Head, hidden: Tensor, targets: Tensor, temperature: float, with_entropy: bool):
    """One chunk: project, then selective log-softmax (and entropy, no grad). [C, H] -> ([C], [C])."""
    logits = head(hidden)  # [C, V]
    logp = selective_log_softmax(logits, targets, temperature)  # [C]
    if not with_entropy:
        return logp, logp.new_empty(0)
    with torch.no_grad():
        entropy = entropy_from_logits(logits.detach(), temperature)  # [C]
    return logp, entropy


def chunked_head_logprobs(
    hidden: Tensor,
    head: Head,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 512,
    with_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Log-probs of `targets` under softmax(head(hidden) / T), `chunk_size` rows at a time.

    hidden: [N, T, H] (the final hidden states at the positions that predict the targets);
    head: [C, H] -> [C, V]; targets: [N, T] int64. Returns logp [N, T] fp32, and the entropy
    [N, T] (fp32, no grad) when `with_entropy`.
    When grad is enabled each chunk runs under `torch.utils.checkpoint` (non-reentrant), so only
    the chunk's inputs are saved and its logits are recomputed in the backward pass (one extra
    [C, H] x [H, V] matmul per chunk: the price of never storing [R, V]). The entropy costs one
    softmax pass per chunk, repeated by the recompute when grad is on.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n, t = targets.shape
    rows = hidden.reshape(n * t, hidden.shape[-1])  # [R, H]
    flat_targets = targets.reshape(n * t)  # [R]
    use_checkpoint = torch.is_grad_enabled()
    logps, entropies = [], []
    for start in range(0, n * t, chunk_size):
        h, y = rows[start:start + chunk_size], flat_targets[start:start + chunk_size]  # [C, H], [C]
        if use_checkpoint:
            logp, entropy = checkpoint(_chunk, head, h, y, temperature, with_entropy, use_reentrant=False)
        else:
            logp, entropy = _chunk(head, h, y, temperature, with_entropy)
        logps.append(logp)
        entropies.append(entropy)
    logp = torch.cat(logps).view(n, t)  # [N, T]
    if not with_entropy:
        return logp
    return logp, torch.cat(entropies).view(n, t)  # [N, T], [N, T]


class FrozenHeadLogProbs(torch.autograd.Function):
    """Log-probs of the targets under a frozen linear head, their gradient computed in the forward.

    A log-prob is one number per row, so its gradient with respect to the row's hidden state is
    the upstream scalar g times a direction known in the forward pass:

        d logp(y) / d h = W^T (e_y - p) / T,     p = softmax((h W^T + b) / T)        [H]

    With W frozen (LoRA: the lm_head and a tied embedding get no adapter by default) nothing else
    needs the logits, so each chunk computes that direction right after its log-prob and drops the
    logits; the backward is dh = g * direction. Two [C, H] x [H, V] products per chunk instead of
    the checkpointed path's three (the forward's, the recompute's, the backward's), one softmax
    pass instead of three, and [R, H] floats kept instead of the chunk inputs. Liger-Kernel's fused
    linear cross-entropy computes its gradient in the forward for the same reason. Measured on the
    135M model's head, 1024 rows, with the entropy (bench/bench_head.py): 0.95 s against 1.98 s.

    hidden: [R, H]; weight: [V, H]; bias: [V] or None; targets: [R]. Returns (logp [R], entropy [R]
    or an empty tensor; the entropy has no gradient).
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, temperature: float,
                chunk_size: int, with_entropy: bool):
        rows = hidden.shape[0]
        logp = hidden.new_empty(rows, dtype=torch.float32)  # [R]
        entropy = hidden.new_empty(rows if with_entropy else 0, dtype=torch.float32)  # [R] or [0]
        direction = torch.empty_like(hidden)  # [R, H]
        for start in range(0, rows, chunk_size):
            end = min(start + chunk_size, rows)
            z = _scaled(F.linear(hidden[start:end], weight, bias), temperature)  # [C, V] fp32
            y = targets[start:end, None]  # [C, 1]
            lse = torch.logsumexp(z, dim=-1, keepdim=True)  # [C, 1]
            logp[start:end] = (z.gather(-1, y) - lse).squeeze(-1)
            log_p = z.sub_(lse)  # [C, V], in place
            p = log_p.exp()  # [C, V] softmax
            if with_entropy:
                entropy[start:end] = -torch.linalg.vecdot(p, log_p)  # H = -sum_v p log p
            del z, log_p
            p.scatter_add_(-1, y, torch.full_like(y, -1, dtype=p.dtype)).neg_()  # e_y - p
            direction[start:end] = (p.to(weight.dtype) @ weight).div_(temperature)  # [C, H]
        ctx.save_for_backward(direction)
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp: Tensor, grad_entropy: Tensor):
        (direction,) = ctx.saved_tensors
        return direction * grad_logp[:, None].to(direction.dtype), None, None, None, None, None, None


def chunked_token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 512,
    bias: Tensor | None = None,
    with_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Log-probs of `targets` under softmax((hidden @ weight.T + bias) / T), chunk by chunk.

    The lean replacement for `log_softmax(lm_head(hidden)).gather(targets)`: never more than one
    chunk of logits ([chunk_size, V]) alive, in the forward or the backward pass. With a frozen
    head and a gradient to compute, `FrozenHeadLogProbs` (the gradient taken in the forward);
    otherwise each chunk is checkpointed (`chunked_head_logprobs`).
    hidden: [N, T, H]; weight: [V, H] (the lm_head / tied embedding); targets: [N, T] int64;
    bias: [V] or None. Returns logp [N, T] (and entropy [N, T], no grad, when `with_entropy`).
    """
    frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
    if frozen and torch.is_grad_enabled() and hidden.requires_grad:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        n, t = targets.shape
        logp, entropy = FrozenHeadLogProbs.apply(hidden.reshape(n * t, hidden.shape[-1]), weight, bias,
                                                 targets.reshape(n * t), temperature, chunk_size, with_entropy)
        return (logp.view(n, t), entropy.view(n, t)) if with_entropy else logp.view(n, t)

    def linear_head(h: Tensor) -> Tensor:
        return F.linear(h, weight, bias)  # [C, V]

    return chunked_head_logprobs(
        hidden, linear_head, targets, temperature=temperature, chunk_size=chunk_size,
        with_entropy=with_entropy,
    )
