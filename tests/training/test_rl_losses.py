"""GAE, whitening, KL estimators and the PPO losses against numbers computed by hand.

Complements ``test_losses.py`` with the cases PPO on debates hits: a batch of responses of
different lengths (right padding), the λ = 0 and λ = 1 limits, clipping on the low side for
negative advantages, and the on-policy first step (ratio 1) where PPO is plain policy gradient.
"""

from __future__ import annotations

import math

import pytest
import torch

from debate_lightning.training.losses import gae, kl_penalty, ppo_policy_loss, ppo_value_loss, whiten


def T(x):
    return torch.tensor(x, dtype=torch.float64)


def test_gae_two_rows_of_different_length():
    # γ = 1, λ = 1: A_t = Σ_{k≥t} r_k − V_t (reward-to-go minus value), nothing after the mask ends.
    r = T([[0.0, 0.0, 1.0], [0.5, 9.0, 9.0]])
    v = T([[0.2, 0.4, 0.6], [0.1, 9.0, 9.0]])
    m = T([[1, 1, 1], [1, 0, 0]])
    adv, ret = gae(r, v, m, gamma=1.0, lam=1.0)
    assert adv[0].tolist() == pytest.approx([1.0 - 0.2, 1.0 - 0.4, 1.0 - 0.6])
    assert adv[1].tolist() == pytest.approx([0.5 - 0.1, 0.0, 0.0])
    assert ret[0].tolist() == pytest.approx([1.0, 1.0, 1.0])  # returns = A + V = reward-to-go
    assert ret[1].tolist() == pytest.approx([0.5, 0.0, 0.0])


def test_gae_lambda_zero_is_td_residual():
    r, v, m = T([[0.0, 2.0, 1.0]]), T([[1.0, 3.0, 0.5]]), T([[1, 1, 1]])
    adv, _ = gae(r, v, m, gamma=0.5, lam=0.0)
    # δ_t = r_t + γ V_{t+1} − V_t
    assert adv[0].tolist() == pytest.approx([0.0 + 0.5 * 3.0 - 1.0, 2.0 + 0.5 * 0.5 - 3.0, 1.0 - 0.5])


def test_gae_terminal_score_with_kl_rewards():
    # The PPO reward layout: −β·KL on every token plus the judge's score on the last one.
    kl, beta, score = T([[0.1, 0.2]]), 0.5, 0.8
    r = -beta * kl
    r[0, 1] += score
    adv, ret = gae(r, torch.zeros_like(r), T([[1, 1]]), gamma=1.0, lam=0.95)
    a1 = -0.1 + 0.8
    a0 = -0.05 + 0.95 * a1
    assert adv[0].tolist() == pytest.approx([a0, a1])
    assert ret[0].tolist() == pytest.approx([a0, a1])


def test_whiten_over_a_padded_batch():
    x = T([[1.0, 3.0, 7.0], [5.0, -4.0, 0.0]])
    m = T([[1, 1, 0], [1, 0, 0]])
    # real entries 1, 3, 5: mean 3, unbiased variance ((−2)² + 0 + 2²)/2 = 4, std 2
    assert whiten(x, m).tolist() == [pytest.approx([-1.0, 0.0, 0.0]), pytest.approx([1.0, 0.0, 0.0])]


def test_k3_is_nonnegative_and_zero_on_policy():
    d = torch.linspace(-3, 3, 13, dtype=torch.float64)
    k3 = kl_penalty(d, torch.zeros_like(d), "k3")
    assert (k3 >= 0).all()
    assert kl_penalty(T([0.3]), T([0.3]), "k3").item() == 0.0
    assert k3[0].item() == pytest.approx(math.exp(3) - 1 - 3)
    with pytest.raises(ValueError, match="k1"):
        kl_penalty(d, d, "k9")


def test_ppo_policy_loss_clips_low_side_for_negative_advantage():
    # ratio e^−0.5 = 0.6065 < 1 − ε: with A = −1 the clipped term −A·0.8 = 0.8 beats −A·0.6065
    logp, old, adv, m = T([[-0.5]]), T([[0.0]]), T([[-1.0]]), T([[1]])
    loss, stats = ppo_policy_loss(logp, old, adv, m, clip=0.2)
    assert loss.item() == pytest.approx(0.8)
    assert stats["clipfrac"].item() == 1.0
    # the same ratio with A = +1 is not clipped (pessimistic bound): −0.6065
    loss, stats = ppo_policy_loss(logp, old, -adv, m, clip=0.2)
    assert loss.item() == pytest.approx(-math.exp(-0.5))
    assert stats["clipfrac"].item() == 0.0


def test_ppo_on_policy_step_is_policy_gradient():
    # ratio 1: loss = −mean(A) and ∂loss/∂logp_t = −A_t / N (REINFORCE with advantages)
    logp = T([[-1.0, -2.0, -3.0]]).requires_grad_()
    adv, m = T([[2.0, -1.0, 5.0]]), T([[1, 1, 0]])
    loss, stats = ppo_policy_loss(logp, logp.detach(), adv, m)
    loss.backward()
    assert loss.item() == pytest.approx(-(2.0 - 1.0) / 2)
    assert logp.grad[0].tolist() == pytest.approx([-1.0, 0.5, 0.0])
    assert stats["approx_kl"].item() == 0.0 and stats["clipfrac"].item() == 0.0


def test_ppo_value_loss_unclipped_inside_range():
    v, old, ret, m = T([[1.1, 0.0]]), T([[1.0, 0.0]]), T([[2.0, 0.0]]), T([[1, 0]])
    loss, stats = ppo_value_loss(v, old, ret, m, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * 0.9**2)
    assert stats["vf_clipfrac"].item() == 0.0
