"""Group-relative advantages against numbers worked out by hand."""

import pytest
import torch

from rlvr.algorithms.advantages import group_advantages, zero_signal_groups

# Two groups of G = 4, prompt-major.
REWARDS = torch.tensor([0.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0])


def test_group_scaling_uses_unbiased_group_std():
    # group 0: mean 0.75, deviations (-0.75, 0.25, 0.25, 0.25)
    # unbiased var = (0.5625 + 3 * 0.0625) / (4 - 1) = 0.25 -> std 0.5 (torch.std default, as TRL)
    # A = -0.75 / (0.5 + 1e-4) = -1.49970..., 0.25 / 0.5001 = 0.49990...
    # group 1: all 2.0 -> deviations 0 -> A = 0 / (0 + 1e-4) = 0
    adv = group_advantages(REWARDS, 4)
    expected = torch.tensor([-0.75 / 0.5001, 0.25 / 0.5001, 0.25 / 0.5001, 0.25 / 0.5001, 0, 0, 0, 0])
    torch.testing.assert_close(adv, expected)


def test_batch_scaling_uses_std_of_all_rewards_but_group_mean():
    # batch mean 11/8 = 1.375; squared deviations: 1.890625 + 3 * 0.140625 + 4 * 0.390625 = 3.875
    # unbiased var = 3.875 / 7 = 0.553571 -> std 0.744024
    # A = -0.75 / 0.744124 = -1.00790, 0.25 / 0.744124 = 0.33597; group 1 still 0 (group mean)
    adv = group_advantages(REWARDS, 4, scale_rewards="batch")
    std = (3.875 / 7) ** 0.5 + 1e-4
    expected = torch.tensor([-0.75 / std, 0.25 / std, 0.25 / std, 0.25 / std, 0, 0, 0, 0])
    torch.testing.assert_close(adv, expected)
    assert adv[0].item() == pytest.approx(-1.00790, abs=1e-5)


def test_none_scaling_is_mean_centred_only():
    # Dr. GRPO: A = r - mean_group = (-0.75, 0.25, 0.25, 0.25, 0, 0, 0, 0)
    adv = group_advantages(REWARDS, 4, scale_rewards="none")
    torch.testing.assert_close(adv, torch.tensor([-0.75, 0.25, 0.25, 0.25, 0, 0, 0, 0]))


def test_trl_boolean_form():
    torch.testing.assert_close(group_advantages(REWARDS, 4, scale_rewards=True), group_advantages(REWARDS, 4))
    torch.testing.assert_close(
        group_advantages(REWARDS, 4, scale_rewards=False), group_advantages(REWARDS, 4, scale_rewards="none")
    )


def test_group_of_two():
    # G = 2, rewards (0, 1): mean 0.5, unbiased std = sqrt((0.25 + 0.25) / 1) = 0.70711
    # A = -+0.5 / 0.70721 = -+0.70700
    adv = group_advantages(torch.tensor([0.0, 1.0]), 2)
    torch.testing.assert_close(adv, torch.tensor([-0.5, 0.5]) / (2**-0.5 + 1e-4))


def test_num_generations_one_gives_zero_advantages():
    # A single completion per prompt is its own baseline: A = 0 (std taken as 0, no NaN)
    adv = group_advantages(torch.tensor([1.0, 3.0]), 1)
    torch.testing.assert_close(adv, torch.zeros(2))


def test_advantages_of_a_group_sum_to_zero():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(6 * 8, generator=g)
    adv = group_advantages(rewards, 8).view(6, 8)
    torch.testing.assert_close(adv.sum(1), torch.zeros(6), atol=1e-5, rtol=0)


def test_zero_signal_groups():
    # group 0 mixed, group 1 all 2.0, group 2 all 0.3 up to float noise
    rewards = torch.cat([REWARDS, torch.tensor([0.3, 0.1 + 0.2, 0.3, 0.3])])
    assert zero_signal_groups(rewards, 4).tolist() == [False, True, True]


def test_indivisible_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of the group size"):
        group_advantages(torch.zeros(7), 4)


def test_non_finite_rewards_are_refused():
    with pytest.raises(ValueError, match=r"not finite .* \[2\]"):
        group_advantages(torch.tensor([0.0, 1.0, float("nan"), 1.0]), 2)


def test_unknown_scale_is_an_error():
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(REWARDS, 4, scale_rewards="groups")
