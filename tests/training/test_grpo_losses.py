"""Group-relative advantages and the GRPO-family clipped loss (issue 18's formulas), against hand values."""

from __future__ import annotations

import math

import pytest
import torch

from debate_lightning.training.losses import group_advantages, grpo_loss

REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.2, 0.9])
GROUPS = torch.tensor([7, 7, 7, 3, 3, 9])  # a group of three, a tied pair, a singleton


def test_grpo_advantages_are_standardised_within_each_group():
    a = group_advantages(REWARDS, GROUPS, "grpo")
    std = math.sqrt(((1 - 0.5) ** 2 + (0 - 0.5) ** 2 + 0) / 2)  # Bessel: n - 1 = 2
    assert a[:3].tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.0], abs=1e-6)
    assert a[3:].tolist() == [0.0, 0.0, 0.0]  # zero-variance pair and the singleton: no signal


def test_dr_grpo_does_not_divide_and_rloo_leaves_one_out():
    assert group_advantages(REWARDS, GROUPS, "dr_grpo").tolist() == pytest.approx([0.5, -0.5, 0.0, 0, 0, 0])
    rloo = group_advantages(REWARDS, GROUPS, "rloo")
    # r_i minus the mean of the other two: 1 - 0.25, 0 - 0.75, 0.5 - 0.5
    assert rloo[:3].tolist() == pytest.approx([0.75, -0.75, 0.0])
    assert rloo[3:].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="unknown advantage 'ppo'"):
        group_advantages(REWARDS, GROUPS, "ppo")


def test_role_conditioned_groups_keep_the_two_sides_apart():
    # self-play: side 0 always wins (1), side 1 always loses (0); pooled, the roles cancel to +-1,
    # grouped by (state, side) there is nothing to learn within a role
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    pooled = group_advantages(rewards, torch.tensor([0, 0, 0, 0]), "dr_grpo")
    by_role = group_advantages(rewards, torch.tensor([0, 0, 1, 1]), "dr_grpo")
    assert pooled.tolist() == [0.5, 0.5, -0.5, -0.5] and by_role.tolist() == [0.0, 0.0, 0.0, 0.0]


def _batch():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -0.9]])
    old = torch.tensor([[-1.5, -2.0, -0.2], [-0.3, -0.2, -0.1]])  # the padding token (1, 2) would count if unmasked
    ref = torch.tensor([[-1.2, -1.9, -0.5], [-0.4, -0.7, -2.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -2.0])
    return logp, old, ref, mask, adv


def _per_token(logp, old, ref, adv, eps, beta):
    out = []
    for b in range(2):
        row = []
        for t in range(3):
            r = math.exp(logp[b, t] - old[b, t])
            a = float(adv[b])
            loss = -min(r * a, min(max(r, 1 - eps), 1 + eps) * a)
            d = float(logp[b, t] - ref[b, t])
            row.append(loss + beta * (math.exp(-d) - 1 + d))
        out.append(row)
    return out


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_clipped_loss_equals_the_formula_on_a_hand_built_batch(loss_type):
    logp, old, ref, mask, adv = _batch()
    tok = _per_token(logp, old, ref, adv, eps=0.2, beta=0.04)
    if loss_type == "grpo":  # mean over each sequence's tokens, then over sequences
        want = (sum(tok[0]) / 3 + sum(tok[1][:2]) / 2) / 2
    elif loss_type == "dr_grpo":  # all tokens / (B * max completion length)
        want = (sum(tok[0]) + sum(tok[1][:2])) / (2 * 8)
    else:  # all tokens / their number
        want = (sum(tok[0]) + sum(tok[1][:2])) / 5
    loss, stats = grpo_loss(logp, old, adv, mask, ref_logp=ref, beta=0.04, loss_type=loss_type,
                            max_completion_length=8)
    assert float(loss) == pytest.approx(want, rel=1e-6)
    # token (0,0): ratio e^0.5 > 1.2 with A > 0 is clipped high; (1,1): ratio e^-0.5 < 0.8 with A < 0 clipped low
    assert float(stats["clip_ratio/high_mean"]) == pytest.approx(1 / 5)
    assert float(stats["clip_ratio/low_mean"]) == pytest.approx(1 / 5)
    assert float(stats["clip_ratio/region_mean"]) == pytest.approx(2 / 5)
    assert float(stats["kl"]) > 0


def test_no_kl_without_beta_and_bad_options():
    logp, old, ref, mask, adv = _batch()
    loss, stats = grpo_loss(logp, old, adv, mask)
    assert "kl" not in stats and torch.isfinite(loss)
    with pytest.raises(ValueError, match="needs ref_logp"):
        grpo_loss(logp, old, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="unknown loss_type 'bnpo'"):
        grpo_loss(logp, old, adv, mask, loss_type="bnpo")


def test_on_policy_gradient_pushes_up_positive_advantage_tokens():
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    loss, _ = grpo_loss(logp, logp.detach(), torch.tensor([2.0]), torch.ones(1, 2))
    loss.backward()
    assert (logp.grad < 0).all()  # descending the loss raises the log-probs of a positive-advantage speech
