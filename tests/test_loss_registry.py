"""The loss registries: CISPO and SAPO by hand, GSPO's sequence ratio with every surrogate, zero-advantage
rows, and micro-batch weights that make uneven gradient accumulation equal one batch."""

import math

import pytest
import torch

from rlvr.algorithms.losses import (
    LOSS_TYPES,
    REDUCTIONS,
    SURROGATES,
    LossType,
    loss_spec,
    policy_loss,
)

LN = math.log


def test_registry_covers_every_loss_type_as_trl_pairs_them():
    # TRL 1.x `_compute_loss`: grpo/bnpo/dr_grpo/dapo use the clip branch; cispo normalises like dapo
    # (num_items_in_batch), sapo like grpo (per-sequence mean).
    pairs = {str(t): (loss_spec(t).surrogate, loss_spec(t).reduction.name) for t in LossType}
    assert pairs == {"grpo": ("clip", "grpo"), "dr_grpo": ("clip", "dr_grpo"), "dapo": ("clip", "dapo"),
                     "bnpo": ("clip", "bnpo"), "cispo": ("cispo", "dapo"), "sapo": ("sapo", "grpo")}
    assert set(LOSS_TYPES) == set(LossType)
    assert all(REDUCTIONS[s.reduction.name] is s.reduction for s in LOSS_TYPES.values())
    # every registered piece is reachable from some loss_type
    assert {s.surrogate for s in LOSS_TYPES.values()} == set(SURROGATES)
    assert {s.reduction.name for s in LOSS_TYPES.values()} == set(REDUCTIONS)
    with pytest.raises(ValueError, match="'ppo' is not one of grpo, dr_grpo, dapo, bnpo, cispo, sapo"):
        loss_spec("ppo")


def test_micro_batch_weights_and_skip_rule():
    # 3 rows of a 5-row optimizer batch in 2 micro-batches
    weights = {name: r.micro_batch_weight(3, 5, 2) for name, r in REDUCTIONS.items()}
    assert weights == {"grpo": 0.6, "dr_grpo": 0.6, "dapo": 1.0, "bnpo": 0.5}
    assert [t for t in LossType if loss_spec(t).can_skip_zero_advantage(0.0)] == [
        LossType.GRPO, LossType.DR_GRPO, LossType.DAPO, LossType.CISPO, LossType.SAPO]
    assert not any(loss_spec(t).can_skip_zero_advantage(0.04) for t in LossType)  # KL acts on A = 0 rows


# ---- CISPO ----------------------------------------------------------------------------------------
# Sequence 0: A = +1, tokens logp = (ln 0.5, ln 0.25), old = (ln 0.25, ln 0.5) -> r = (2, 0.5).
# Sequence 1: A = -2, one token logp = ln 0.6, old = ln 0.2 -> r = 3, then padding.
CISPO_LOGP = [[LN(0.5), LN(0.25)], [LN(0.6), -7.0]]
CISPO_OLD = [[LN(0.25), LN(0.5)], [LN(0.2), 3.0]]
CISPO_MASK = [[1.0, 1.0], [1.0, 0.0]]


def _cispo_batch():
    logp = torch.tensor(CISPO_LOGP, requires_grad=True)
    return logp, torch.tensor(CISPO_OLD), torch.tensor([1.0, -2.0]), torch.tensor(CISPO_MASK)


def test_cispo_by_hand():
    # eps_max = epsilon_high = 1.5: w = sg(min(r, 1.5)) = (1.5, 0.5), (1.5)
    # l = -w A logp:  -1.5 * 1 * ln 0.5  =  1.039721
    #                 -0.5 * 1 * ln 0.25 =  0.693147
    #                 -1.5 * -2 * ln 0.6 = -1.532477      sum 0.200391
    # dapo normalisation, num_items_in_batch = 3: loss = 0.066797
    logp, old, adv, mask = _cispo_batch()
    loss, m = policy_loss(logp, old, adv, mask, loss_type="cispo", epsilon_high=1.5, num_items_in_batch=3)
    assert loss.item() == pytest.approx(0.0667970, abs=1e-6)
    # d l / d logp = -w A / 3 (w detached): -1.5/3 = -0.5, -0.5/3 = -0.166667, 3/3 = 1; padding 0.
    # The first token (r = 2 > 1.2, A > 0) would get no gradient from the clip surrogate.
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -1 / 6], [1.0, 0.0]]))
    # TRL's cispo_clip_ratio: r > eps_max with A > 0 -> only the first token: 1/3 (token 3 is capped
    # but has A < 0)
    assert m["clip_frac"].item() == pytest.approx(1 / 3) and m["clip_frac_high"].item() == pytest.approx(1 / 3)
    assert m["clip_frac_low"].item() == 0.0
    assert m["ratio_mean"].item() == pytest.approx((2 + 0.5 + 3) / 3)


def test_cispo_default_cap_keeps_on_policy_gradient():
    # epsilon_high=None caps at 5 (ScaleRL), so on-policy (r = 1) CISPO is the plain policy gradient
    # -A grad(logp) / tokens, the same as dapo's; TRL's fallback to epsilon = 0.2 would scale it by 0.2.
    g = torch.Generator().manual_seed(3)
    logp = (-torch.rand(3, 4, generator=g) * 3).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float32)
    adv = torch.tensor([1.0, -0.5, 2.0])
    cispo, m = policy_loss(logp, logp.detach(), adv, mask, loss_type="cispo", num_items_in_batch=7)
    dapo, _ = policy_loss(logp, logp.detach(), adv, mask, loss_type="dapo", num_items_in_batch=7)
    torch.testing.assert_close(torch.autograd.grad(cispo, logp)[0], torch.autograd.grad(dapo, logp)[0])
    assert m["clip_frac"].item() == 0.0
    # a ratio above 5 with A > 0 is capped at 5: gradient -5 * A / tokens = -5
    one = torch.tensor([[LN(8.0)]], requires_grad=True)
    loss, m = policy_loss(one, torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), loss_type="cispo",
                          num_items_in_batch=1)
    assert torch.autograd.grad(loss, one)[0].item() == pytest.approx(-5.0)
    assert m["clip_frac"].item() == 1.0


def test_delta_is_for_the_clip_surrogate_only():
    logp, old, adv, mask = _cispo_batch()
    with pytest.raises(ValueError, match="delta"):
        policy_loss(logp, old, adv, mask, loss_type="cispo", delta=2.0, num_items_in_batch=3)


# ---- SAPO -----------------------------------------------------------------------------------------


def test_sapo_by_hand():
    # One token per sequence, f(r) = (4 / tau) sigmoid(tau (r - 1)), l = -f(r) A, TRL's temperatures:
    #   r = 2,   A = +1, tau = 1.0:  4 sig(1)       = 2.924234  -> l = -2.924234
    #   r = 0.5, A = -1, tau = 1.05: 4/1.05 sig(-0.525) = 1.415938 -> l = +1.415938
    #   r = 1,   A = +2, tau = 1.0:  4 sig(0)       = 2         -> l = -4
    # grpo normalisation (mean of sequence means): (-2.924234 + 1.415938 - 4) / 3 = -1.836099
    logp = torch.tensor([[LN(2.0)], [LN(0.5)], [0.0]], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 2.0])
    loss, m = policy_loss(logp, torch.zeros(3, 1), adv, torch.ones(3, 1), loss_type="sapo")
    assert loss.item() == pytest.approx(-1.836099, abs=1e-6)
    # d l / d logp = -4 sig (1 - sig) r A / N:
    #   4 sig(1) (1 - sig(1)) = 0.786448        -> -0.786448 * 2 * 1 / 3     = -0.524298
    #   4 sig(-0.525) (1 - sig(-0.525)) = 0.934140 -> -0.934140 * 0.5 * -1 / 3 = +0.155690
    #   on-policy gate 1                         -> -1 * 1 * 2 / 3             = -0.666667 (plain PG)
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, torch.tensor([[-0.524298], [0.155690], [-2 / 3]]), atol=1e-6, rtol=0)
    # nothing is hard-clipped; gate mean (0.786448 + 0.934140 + 1) / 3 = 0.906863
    assert m["clip_frac"].item() == 0.0 and m["clip_frac_high"].item() == 0.0
    assert m["sapo_gate_mean"].item() == pytest.approx(0.906863, abs=1e-6)


def test_sapo_temperatures_are_options():
    # r = 2, A = +1 with tau_pos = 2: f = 4/2 sig(2) = 2 * 0.880797 = 1.761594 -> l = -1.761594
    logp = torch.tensor([[LN(2.0)]])
    loss, _ = policy_loss(logp, torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), loss_type="sapo",
                          sapo_temperature_pos=2.0)
    assert loss.item() == pytest.approx(-1.761594, abs=1e-6)
    with pytest.raises(ValueError, match="sapo_temperature"):
        policy_loss(logp, torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), loss_type="sapo",
                    sapo_temperature_neg=0.0)


# ---- GSPO's sequence ratio with every surrogate ---------------------------------------------------
# One sequence, two valid tokens and a padded one (wild values there must not matter).
# log-ratios (ln 4, 0): token ratios (4, 1); GSPO s = exp((ln 4 + 0) / 2) = 2 for both tokens.
# old = (ln 0.125, ln 0.5) so logp = (ln 0.5, ln 0.5).
GSPO_OLD = [[LN(0.125), LN(0.5), 0.0]]
GSPO_LOGP = [[LN(0.5), LN(0.5), 9.0]]
GSPO_MASK = [[1.0, 1.0, 0.0]]


def _gspo(loss_type, level, **kw):
    logp = torch.tensor(GSPO_LOGP, requires_grad=True)
    loss, m = policy_loss(logp, torch.tensor(GSPO_OLD), torch.ones(1), torch.tensor(GSPO_MASK),
                          loss_type=loss_type, importance_sampling_level=level, num_items_in_batch=2, **kw)
    return loss.item(), torch.autograd.grad(loss, logp)[0], m


def test_gspo_sequence_ratio_with_every_surrogate():
    # clip (eps 0.2), A = +1: s = 2 > 1.2 -> l = -1.2 on both tokens, no gradient; token level:
    #   (-1.2 - 1) / 2 = -1.1 and the second token (r = 1) keeps gradient -1/2.
    loss, grad, m = _gspo("grpo", "sequence")
    assert loss == pytest.approx(-1.2) and torch.equal(grad, torch.zeros(1, 3))
    assert m["ratio_mean"].item() == pytest.approx(2.0) and m["clip_frac"].item() == 1.0
    assert _gspo("grpo", "token")[0] == pytest.approx(-1.1)

    # sapo, A = +1, tau = 1: l = -4 sig(2 - 1) = -2.924234 on both tokens, grpo mean -2.924234
    #   (token level: -(4 sig(3) + 4 sig(0)) / 2 = -2.905148).
    #   d l / d logp_t = -4 sig (1 - sig) * s * (1/2) = -0.786448 * 2 / 2 = -0.786448 per valid token
    loss, grad, m = _gspo("sapo", "sequence")
    assert loss == pytest.approx(-2.924234, abs=1e-6)
    torch.testing.assert_close(grad, torch.tensor([[-0.786448, -0.786448, 0.0]]), atol=1e-6, rtol=0)
    assert _gspo("sapo", "token")[0] == pytest.approx(-2.905148, abs=1e-6)

    # cispo (cap 5), A = +1: w = sg(s) = 2 for both tokens, l_t = -2 ln 0.5 = 1.386294, dapo over 2
    #   tokens: 1.386294; gradient -w / 2 = -1 per token. Token level: w = (4, 1) -> (-2, -0.5).
    loss, grad, m = _gspo("cispo", "sequence")
    assert loss == pytest.approx(2 * LN(2.0), abs=1e-6)
    torch.testing.assert_close(grad, torch.tensor([[-1.0, -1.0, 0.0]]))
    torch.testing.assert_close(_gspo("cispo", "token")[1], torch.tensor([[-2.0, -0.5, 0.0]]))


def test_unknown_importance_sampling_level():
    with pytest.raises(ValueError, match="importance_sampling_level"):
        _gspo("sapo", "sentence")


# ---- zero advantages and gradient accumulation, for every loss type -------------------------------
# 5 rows, completion lengths 4, 1, 3, 2, 4 (T = 4); off-policy ratios so clipping and gates act;
# rows 1 and 3 have A = 0 (a flat group).
LENGTHS = [4, 1, 3, 2, 4]
ADV = torch.tensor([1.2, 0.0, -0.7, 0.0, 0.4])
MAX_LEN = 4


def _batch():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(5, MAX_LEN, generator=g) * 2  # [5, 4]
    old = logp + (torch.rand(5, MAX_LEN, generator=g) - 0.5)  # [5, 4], ratios in [0.6, 1.65]
    mask = (torch.arange(MAX_LEN)[None, :] < torch.tensor(LENGTHS)[:, None]).float()  # [5, 4]
    return logp, old, mask


def _grad(loss_type, rows_list, *, level="token", num_items, beta=0.0, weights=None):
    """Gradient wrt the [5, T] log-probs of sum_k weight_k * loss(micro-batch k)."""
    logp, old, mask = _batch()
    logp.requires_grad_(True)
    ref = logp.detach() - 0.3
    spec = loss_spec(loss_type)
    total = 0.0
    for k, rows in enumerate(rows_list):
        idx = torch.tensor(rows)
        loss, _ = policy_loss(logp[idx], old[idx], ADV[idx], mask[idx], loss_type=loss_type, beta=beta,
                              ref_logprobs=ref[idx], max_completion_length=MAX_LEN, num_items_in_batch=num_items,
                              importance_sampling_level=level)
        w = spec.reduction.micro_batch_weight(len(rows), 5, len(rows_list)) if weights is None else weights[k]
        total = total + loss * w
    return torch.autograd.grad(total, logp)[0]


TOKENS = sum(LENGTHS)  # 14: dapo/cispo's num_items_in_batch for the whole optimizer batch


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", list(LossType))
def test_zero_advantage_rows_have_zero_gradient(loss_type, level):
    # every surrogate is proportional to A: rows 1 and 3 get exactly no gradient, whatever the ratio
    grad = _grad(loss_type, [[0, 1, 2, 3, 4]], level=level, num_items=TOKENS)
    assert torch.count_nonzero(grad[[1, 3]]) == 0 and torch.count_nonzero(grad[[0, 2, 4]]) > 0
    # ... unless the KL term acts on them
    with_kl = _grad(loss_type, [[0, 1, 2, 3, 4]], level=level, num_items=TOKENS, beta=0.1)
    assert torch.count_nonzero(with_kl[[1, 3]]) > 0


@pytest.mark.parametrize("loss_type", [t for t in LossType if loss_spec(t).reduction.global_normaliser])
def test_uneven_micro_batches_equal_one_batch(loss_type):
    # 5 rows split 3 + 2 (8 + 6 tokens), each micro-batch's loss times micro_batch_weight(rows, 5, 2):
    # grpo: (3/5) mean3 + (2/5) mean2 = mean5; dr_grpo: (3/5) S3/(3L) + (2/5) S2/(2L) = S5/(5L);
    # dapo/cispo: S3/14 + S2/14 = S5/14.
    whole = _grad(loss_type, [[0, 1, 2, 3, 4]], num_items=TOKENS)
    torch.testing.assert_close(_grad(loss_type, [[0, 1, 2], [3, 4]], num_items=TOKENS), whole)
    torch.testing.assert_close(_grad(loss_type, [[4], [0, 2, 1, 3]], num_items=TOKENS), whole)
    # the trainer's skip: zero-advantage rows left out of the passes (still counted in 5 rows and 14
    # tokens) give the same step
    torch.testing.assert_close(_grad(loss_type, [[0, 2], [4]], num_items=TOKENS), whole)


def test_bnpo_micro_batches_average_their_local_losses():
    # bnpo normalises by each micro-batch's own tokens (TRL): the optimizer batch's loss is the mean of
    # the micro-batch losses, weight 1/num_micro; with uneven tokens (8 = 4+1+3 vs 6 = 2+4) that is
    # not bnpo of the whole batch (sum / 14), which is why the trainer must not drop rows for it.
    one = _grad("bnpo", [[0, 1, 2, 3, 4]], num_items=TOKENS)
    split = _grad("bnpo", [[0, 1, 2], [3, 4]], num_items=TOKENS)
    manual = _grad("bnpo", [[0, 1, 2], [3, 4]], num_items=TOKENS, weights=[0.5, 0.5])
    torch.testing.assert_close(split, manual)
    assert not torch.allclose(split, one)
    assert not loss_spec("bnpo").can_skip_zero_advantage(0.0)
    assert not torch.allclose(_grad("bnpo", [[0, 2], [4]], num_items=TOKENS), split)  # dropping rows changes it
    # equal token counts per micro-batch (rows 0+1 = 5 tokens, rows 2+3 = 5) do give the whole bnpo
    whole4 = _grad("bnpo", [[0, 1, 2, 3]], num_items=TOKENS, weights=[1.0])
    torch.testing.assert_close(_grad("bnpo", [[0, 1], [2, 3]], num_items=TOKENS, weights=[0.5, 0.5]), whole4)
