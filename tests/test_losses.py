"""The GRPO loss on hand-worked examples: clipping, loss-type normalisations, k3 KL, GSPO."""

import math

import pytest
import torch

from rlvr.algorithms.losses import REDUCTIONS, LossType, kl_k3, loss_spec, policy_loss

LN = math.log


def _ratio_batch(ratios, advantages):
    """One token per sequence with the given ratios: logp = ln r, old = 0."""
    logprobs = torch.tensor([[LN(r)] for r in ratios], requires_grad=True)  # [N, 1]
    return logprobs, torch.zeros_like(logprobs), torch.tensor(advantages), torch.ones_like(logprobs)


def test_every_loss_type_has_a_reduction():
    assert {loss_spec(t).reduction.name for t in LossType} == set(REDUCTIONS)
    assert LossType("dr_grpo") is LossType.DR_GRPO and str(LossType.DAPO) == "dapo"


def test_ratio_one_is_the_plain_policy_gradient():
    # old = logp.detach() (one step per batch): r = exp(0) = 1 exactly, never clipped, and
    # d loss / d logp_it = -A_i / (N |o_i|) for grpo: the gradient of -(1/N) sum_i A_i mean_t logp_it.
    g = torch.Generator().manual_seed(0)
    logprobs = (-torch.rand(3, 4, generator=g) * 3).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float32)
    adv = torch.tensor([1.5, -0.5, 2.0])
    loss, metrics = policy_loss(logprobs, logprobs.detach(), adv, mask)
    (grad,) = torch.autograd.grad(loss, logprobs)

    plain = -(adv * (logprobs * mask).sum(1) / mask.sum(1)).mean()
    (plain_grad,) = torch.autograd.grad(plain, logprobs)
    torch.testing.assert_close(grad, plain_grad)
    # value: per-token loss -A_i * 1, mean per sequence = -A_i, mean = -(1.5 - 0.5 + 2) / 3 = -1
    assert loss.item() == pytest.approx(-1.0)
    assert metrics["ratio_mean"].item() == 1.0 and metrics["clip_frac"].item() == 0.0


def test_clipping_by_hand():
    # eps = 0.2, one token per sequence:
    #   r=1.5, A=+1: -min(1.5, 1.2)    = -1.2  (clipped high, no gradient)
    #   r=1.5, A=-1: -min(-1.5, -1.2)  = +1.5  (not clipped: pessimistic side)
    #   r=0.5, A=-1: -min(-0.5, -0.8)  = +0.8  (clipped low, no gradient)
    #   r=0.5, A=+1: -min(0.5, 0.8)    = -0.5  (not clipped)
    # grpo = mean = (-1.2 + 1.5 + 0.8 - 0.5) / 4 = 0.15
    logprobs, old, adv, mask = _ratio_batch([1.5, 1.5, 0.5, 0.5], [1.0, -1.0, -1.0, 1.0])
    loss, m = policy_loss(logprobs, old, adv, mask, epsilon=0.2)
    assert loss.item() == pytest.approx(0.15, abs=1e-6)
    (grad,) = torch.autograd.grad(loss, logprobs)
    # unclipped tokens: d(-r A)/d logp = -r A / N  ->  +1.5/4 = 0.375 and -0.5/4 = -0.125
    torch.testing.assert_close(grad, torch.tensor([[0.0], [0.375], [0.0], [-0.125]]))
    assert m["clip_frac"].item() == 0.5
    assert m["clip_frac_low"].item() == 0.25 and m["clip_frac_high"].item() == 0.25
    assert m["ratio_mean"].item() == pytest.approx(1.0)


def test_single_token_clip_high_is_minus_one_point_two():
    logprobs, old, adv, mask = _ratio_batch([1.5], [1.0])
    loss, _ = policy_loss(logprobs, old, adv, mask, epsilon=0.2)
    assert loss.item() == pytest.approx(-1.2)


def test_epsilon_high_clips_asymmetrically():
    # eps = 0.2, eps_high = 0.28 (DAPO clip-higher):
    #   r=1.5,  A=+1: -min(1.5, 1.28)   = -1.28
    #   r=1.25, A=+1: -min(1.25, 1.25)  = -1.25 (inside the wider upper bound; symmetric gives -1.2)
    #   r=0.7,  A=-1: -min(-0.7, -0.8)  = +0.8  (lower bound still 1 - 0.2)
    logprobs, old, adv, mask = _ratio_batch([1.5, 1.25, 0.7], [1.0, 1.0, -1.0])
    _, m = policy_loss(logprobs, old, adv, mask, epsilon=0.2, epsilon_high=0.28)
    per_seq = [policy_loss(logprobs[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1],
                           epsilon=0.2, epsilon_high=0.28)[0].item() for i in range(3)]
    assert per_seq == pytest.approx([-1.28, -1.25, 0.8])
    symmetric = policy_loss(logprobs[1:2], old[1:2], adv[1:2], mask[1:2], epsilon=0.2)[0].item()
    assert symmetric == pytest.approx(-1.2)
    # clipped: token 0 (high), token 2 (low) -> 2/3
    assert m["clip_frac"].item() == pytest.approx(2 / 3)


def test_two_sided_delta_caps_the_ratio():
    # r=3, A=-1, delta=2: -min(2 * -1, 1.2 * -1) = 2 (instead of 3 without delta)
    logprobs, old, adv, mask = _ratio_batch([3.0], [-1.0])
    assert policy_loss(logprobs, old, adv, mask)[0].item() == pytest.approx(3.0)
    assert policy_loss(logprobs, old, adv, mask, delta=2.0)[0].item() == pytest.approx(2.0)


# Uneven lengths: sequence 0 has 3 tokens, A = +1; sequence 1 has 1 token, A = -2; ratio 1.
# Per-token losses: (-1, -1, -1) and (+2, pad, pad). The padding has a wild old log-prob that
# must not matter.
UNEVEN_MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
UNEVEN_ADV = torch.tensor([1.0, -2.0])


def _uneven_loss(loss_type, **kwargs):
    logprobs = torch.full((2, 3), -1.0, requires_grad=True)
    old = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 5.0, -30.0]])
    return policy_loss(logprobs, old, UNEVEN_ADV, UNEVEN_MASK, loss_type=loss_type, **kwargs)[0].item()


def test_loss_types_on_uneven_lengths():
    # grpo:    mean of sequence means = (-1 + 2) / 2                        = 0.5
    # bnpo:    sum / tokens of this minibatch = (-3 + 2) / 4               = -0.25
    # dr_grpo: sum / (N * max_completion_length) = -1 / (2 * 4)            = -0.125
    # dapo:    sum / num_items_in_batch (tokens of the accumulated batch)  = -1 / 10 = -0.1
    assert _uneven_loss("grpo") == pytest.approx(0.5)
    assert _uneven_loss("bnpo") == pytest.approx(-0.25)
    assert _uneven_loss("dr_grpo", max_completion_length=4) == pytest.approx(-0.125)
    assert _uneven_loss("dapo", num_items_in_batch=10) == pytest.approx(-0.1)


def test_gradient_accumulation_divides_all_but_dapo():
    # As TRL: grpo/bnpo/dr_grpo minibatch losses are averaged over accumulation steps; dapo's divisor
    # already counts the whole accumulated batch.
    assert _uneven_loss("grpo", gradient_accumulation_steps=2) == pytest.approx(0.25)
    assert _uneven_loss("dapo", num_items_in_batch=10, gradient_accumulation_steps=2) == pytest.approx(-0.1)


def test_missing_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="max_completion_length"):
        _uneven_loss("dr_grpo")
    with pytest.raises(ValueError, match="num_items_in_batch"):
        _uneven_loss("dapo")
    with pytest.raises(ValueError, match="ref_logprobs"):
        _uneven_loss("grpo", beta=0.1)
    with pytest.raises(ValueError):
        _uneven_loss("ppo")


def test_kl_k3_by_hand():
    # logp = ln 0.5, ref = ln 0.25: d = ref - logp = ln 0.5 -> 0.5 - ln 0.5 - 1 = 0.193147
    # logp = ln 0.5, ref = ln 1.0:  d = ln 2          -> 2 - ln 2 - 1   = 0.306853
    # logp = ref:                   d = 0             -> 1 - 0 - 1       = 0
    logp = torch.tensor([LN(0.5), LN(0.5), -3.0])
    ref = torch.tensor([LN(0.25), 0.0, -3.0])
    torch.testing.assert_close(kl_k3(logp, ref), torch.tensor([0.193147, 0.306853, 0.0]))


def test_kl_term_in_the_loss():
    # A = 0 so only beta * k3 remains: k3 = (0.193147, 0.306853), mean 0.25, beta 0.1 -> 0.025
    logp = torch.tensor([[LN(0.5), LN(0.5)]], requires_grad=True)
    ref = torch.tensor([[LN(0.25), 0.0]])
    loss, m = policy_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), ref_logprobs=ref, beta=0.1)
    assert loss.item() == pytest.approx(0.025, abs=1e-6)
    assert m["kl"].item() == pytest.approx(0.25, abs=1e-6)
    assert m["pg_loss"].item() == 0.0


def test_kl_is_logged_without_beta_when_a_reference_is_given():
    logp = torch.tensor([[LN(0.5), LN(0.5)]])
    ref = torch.tensor([[LN(0.25), 0.0]])
    loss, m = policy_loss(logp, logp, torch.zeros(1), torch.ones(1, 2), ref_logprobs=ref)
    assert loss.item() == 0.0 and m["kl"].item() == pytest.approx(0.25, abs=1e-6)


def test_gspo_sequence_ratio():
    # log-ratios (ln 2, 0) and a masked third token with a wild value:
    # s = exp(mean(ln 2, 0)) = sqrt(2) = 1.41421 for every token of the sequence.
    #   A = +1: -min(1.41421, 1.2) = -1.2 on both tokens -> grpo loss -1.2 (token level: (-1.2 - 1)/2 = -1.1)
    #   A = -1: -min(-1.41421, -1.2) = 1.41421; d loss / d logp_t = s * (1/2) = 0.70711 per valid token
    old = torch.tensor([[0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    logp = torch.tensor([[LN(2.0), 0.0, 9.0]], requires_grad=True)
    pos, m = policy_loss(logp, old, torch.tensor([1.0]), mask, importance_sampling_level="sequence")
    token, _ = policy_loss(logp, old, torch.tensor([1.0]), mask, importance_sampling_level="token")
    assert pos.item() == pytest.approx(-1.2) and token.item() == pytest.approx(-1.1)
    assert m["ratio_mean"].item() == pytest.approx(2**0.5) and m["clip_frac_high"].item() == 1.0

    neg, _ = policy_loss(logp, old, torch.tensor([-1.0]), mask, importance_sampling_level="sequence")
    assert neg.item() == pytest.approx(2**0.5)
    (grad,) = torch.autograd.grad(neg, logp)
    torch.testing.assert_close(grad, torch.tensor([[2**0.5 / 2, 2**0.5 / 2, 0.0]]))


def test_metrics_are_detached():
    logprobs, old, adv, mask = _ratio_batch([1.5, 0.5], [1.0, -1.0])
    _, m = policy_loss(logprobs, old, adv, mask)
    assert not any(v.requires_grad for v in m.values())
