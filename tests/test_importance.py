"""Importance-sampling correction for the sampler/trainer mismatch, against numbers worked out by hand."""

import math

import pytest
import torch

from rlvr.algorithms.importance import importance_weights, mismatch_metrics

# Two completions, T = 3; completion 1 has one padding position (its last).
# trainer - sampler log-prob differences (log p/q):
#   row 0: ln 2, ln 0.5, ln 4      row 1: ln 1.5, ln 0.1, (padding: ln 100, must be ignored)
L2, LH, L4, L15, L01 = math.log(2), math.log(0.5), math.log(4), math.log(1.5), math.log(0.1)
SAMPLER = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -0.7]])
TRAINER = SAMPLER + torch.tensor([[L2, LH, L4], [L15, L01, math.log(100)]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_token_truncate_clips_each_token_ratio_at_the_cap():
    # ratios 2, 0.5, 4 -> 2, 0.5, 3 (cap 3); row 1: 1.5, 0.1, padding exp(0) = 1 -> 1
    w = importance_weights(TRAINER, SAMPLER, MASK, mode="token_truncate", clip_max=3.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.5, 3.0], [1.5, 0.1, 1.0]]))


def test_token_truncate_with_a_lower_bound():
    # clip_min 0.2: 0.1 -> 0.2; the rest as above
    w = importance_weights(TRAINER, SAMPLER, MASK, mode="token_truncate", clip_max=3.0, clip_min=0.2)
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.5, 3.0], [1.5, 0.2, 1.0]]))


def test_token_mask_zeroes_ratios_outside_the_bounds():
    # 4 > 3 -> 0; with clip_min 0.2: 0.1 -> 0; the others kept as they are
    w = importance_weights(TRAINER, SAMPLER, MASK, mode="token_mask", clip_max=3.0, clip_min=0.2)
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.5, 0.0], [1.5, 0.0, 1.0]]))


def test_sequence_modes_use_the_product_over_real_tokens():
    # row 0: 2 * 0.5 * 4 = 4; row 1: 1.5 * 0.1 = 0.15 (the padding's factor 100 is masked out)
    trunc = importance_weights(TRAINER, SAMPLER, MASK, mode="sequence_truncate", clip_max=3.0)
    torch.testing.assert_close(trunc, torch.tensor([[3.0], [0.15]]))
    # TRL's default mode and cap: sequence_mask, 3.0 -> 4 > 3 masked to 0, 0.15 kept
    masked = importance_weights(TRAINER, SAMPLER, MASK)
    torch.testing.assert_close(masked, torch.tensor([[0.0], [0.15]]))
    assert masked.shape == (2, 1)


def test_weights_carry_no_gradient():
    trainer = TRAINER.clone().requires_grad_(True)
    assert not importance_weights(trainer, SAMPLER, MASK, mode="token_truncate").requires_grad


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="vllm_importance_sampling_mode"):
        importance_weights(TRAINER, SAMPLER, MASK, mode="tokens")
    with pytest.raises(ValueError, match="clip_min"):
        importance_weights(TRAINER, SAMPLER, MASK, mode="token_truncate", clip_max=None)
    with pytest.raises(ValueError, match="clip_min"):
        importance_weights(TRAINER, SAMPLER, MASK, clip_min=3.0, clip_max=2.0)
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        importance_weights(TRAINER, SAMPLER[:, :2], MASK)


def test_mismatch_metrics_by_hand():
    # real log-ratios: ln2, ln.5, ln4, ln1.5, ln.1; |.| = .6931, .6931, 1.3863, .4055, 2.3026
    # mean |d| = 5.4806 / 5 = 1.09612; max 2.302585
    # k3 = r - 1 - ln r: 2-1-.6931=.30685, .5-1+.6931=.19315, 4-1-1.3863=1.61371,
    #                    1.5-1-.4055=.09453, .1-1+2.3026=1.40259 -> mean 3.61083 / 5 = .722166
    m = mismatch_metrics(TRAINER, SAMPLER, MASK)
    assert m["sampling/logp_diff/mean"] == pytest.approx(1.096118, abs=1e-5)
    assert m["sampling/logp_diff/max"] == pytest.approx(2.302585, abs=1e-5)
    assert m["sampling/kl"] == pytest.approx(0.722166, abs=1e-5)


def test_mismatch_metrics_weight_range_over_real_tokens_or_completions():
    tok = importance_weights(TRAINER, SAMPLER, MASK, mode="token_truncate", clip_max=3.0)
    m = mismatch_metrics(TRAINER, SAMPLER, MASK, tok)
    # real-token weights 2, .5, 3, 1.5, .1 (the padding's 1.0 not counted): min .1, mean 7.1/5, max 3
    assert (m["sampling/is_ratio/min"], m["sampling/is_ratio/max"]) == pytest.approx((0.1, 3.0))
    assert m["sampling/is_ratio/mean"] == pytest.approx(1.42)
    seq = mismatch_metrics(TRAINER, SAMPLER, MASK, importance_weights(TRAINER, SAMPLER, MASK))
    # per completion: 0, .15
    assert (seq["sampling/is_ratio/min"], seq["sampling/is_ratio/mean"], seq["sampling/is_ratio/max"]) == \
        pytest.approx((0.0, 0.075, 0.15))


def test_identical_log_probs_mean_no_mismatch_and_unit_weights():
    m = mismatch_metrics(SAMPLER, SAMPLER, MASK, importance_weights(SAMPLER, SAMPLER, MASK))
    assert m["sampling/logp_diff/max"] == 0.0 and m["sampling/kl"] == 0.0
    assert m["sampling/is_ratio/min"] == m["sampling/is_ratio/max"] == 1.0


def test_empty_mask_gives_zeros():
    m = mismatch_metrics(TRAINER, SAMPLER, torch.zeros_like(MASK))
    assert m == {"sampling/logp_diff/mean": 0.0, "sampling/logp_diff/max": 0.0, "sampling/kl": 0.0}


def test_importance_imports_no_model_library():
    # DESIGN.md rule 7: the algorithm core is pure tensors.
    import subprocess
    import sys

    code = ("import sys, rlvr.algorithms.importance; "
            "bad = [m for m in ('transformers', 'peft', 'accelerate', 'vllm') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
