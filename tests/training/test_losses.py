"""Losses against numbers computed by hand (not against the code's own formulas)."""

from __future__ import annotations

import math

import pytest
import torch

from debate_lightning.training.losses import (
    completion_nll,
    dpo_loss,
    gae,
    kl_penalty,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)

T = torch.tensor


def ls(x: float) -> float:  # log sigmoid
    return -math.log1p(math.exp(-x))


# policy chosen/rejected, reference chosen/rejected: h = (-10 - -12) - (-20 - -19) = 2 - (-1) = 3
ARGS = (T([-10.0]), T([-20.0]), T([-12.0]), T([-19.0]))


def test_sigmoid_matches_hand_values():
    losses, rc, rr = dpo_loss(*ARGS, beta=0.1)
    assert losses.item() == pytest.approx(-ls(0.3), rel=1e-6)  # = 0.554355...
    assert losses.item() == pytest.approx(0.5543552, abs=1e-6)
    assert rc.item() == pytest.approx(0.2) and rr.item() == pytest.approx(-0.1)


def test_sigmoid_label_smoothing():
    losses, _, _ = dpo_loss(*ARGS, beta=0.1, label_smoothing=0.2)
    assert losses.item() == pytest.approx(-0.8 * ls(0.3) - 0.2 * ls(-0.3), rel=1e-6)
    assert losses.item() == pytest.approx(0.8 * 0.5543552 + 0.2 * 0.8543552, abs=1e-6)


def test_ipo_normalises_by_length():
    # chosen ratio 2 over 4 tokens = 0.5, rejected ratio -1 over 2 tokens = -0.5: h = 1; 1/(2β) = 5
    losses, rc, rr = dpo_loss(*ARGS, beta=0.1, loss_type="ipo", chosen_lengths=T([4]), rejected_lengths=T([2]))
    assert losses.item() == pytest.approx((1 - 5) ** 2)
    assert rc.item() == pytest.approx(0.05) and rr.item() == pytest.approx(-0.05)


def test_bon_soft_label_and_sft_term():
    p = T([0.7])
    losses, _, _ = dpo_loss(*ARGS, beta=1.0, loss_type="bon", preference=p, chosen_lengths=T([4]),
                            rejected_lengths=T([2]), sft_weight=0.5)
    # h = 1 (as above), β = 1; NLL of chosen = 10 / 4 = 2.5
    expected = -0.7 * ls(1.0) - 0.3 * ls(-1.0) + 0.5 * 2.5
    assert losses.item() == pytest.approx(expected, rel=1e-6)
    assert losses.item() == pytest.approx(0.7 * 0.3132617 + 0.3 * 1.3132617 + 1.25, abs=1e-6)


def test_bon_ipo():
    losses, _, _ = dpo_loss(*ARGS, beta=0.5, loss_type="bon_ipo", preference=T([0.6]), chosen_lengths=T([4]),
                            rejected_lengths=T([2]))
    assert losses.item() == pytest.approx((1 - 0.6 / 1.0) ** 2)


def test_bad_loss_type_and_missing_lengths():
    with pytest.raises(ValueError, match="unknown DPO loss_type"):
        dpo_loss(*ARGS, loss_type="kto")
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(*ARGS, loss_type="ipo")


def test_completion_nll_masks_prompt():
    logps = T([[-9.0, -1.0, -2.0, 0.0], [-9.0, -3.0, 0.0, 0.0]])
    mask = T([[0, 1, 1, 0], [0, 1, 0, 0]])
    assert completion_nll(logps, mask).item() == pytest.approx((1 + 2 + 3) / 3)
    assert completion_nll(logps, mask, "sequence").item() == pytest.approx((1.5 + 3) / 2)


def test_gae_by_hand():
    # one response of 2 tokens then padding; γ = 0.9, λ = 0.5
    r, v, m = T([[1.0, 2.0, 5.0]]), T([[0.5, 1.0, 7.0]]), T([[1, 1, 0]])
    adv, ret = gae(r, v, m, gamma=0.9, lam=0.5)
    d1 = 2.0 - 1.0  # last token: no bootstrap past the end
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    assert adv[0].tolist() == pytest.approx([d0 + 0.45 * d1, d1, 0.0])
    assert ret[0].tolist() == pytest.approx([d0 + 0.45 * d1 + 0.5, d1 + 1.0, 0.0])


def test_whiten():
    x, m = T([1.0, 2.0, 3.0, 100.0]), T([1, 1, 1, 0])
    w = whiten(x, m)
    assert w.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)  # mean 2, unbiased var 1
    assert whiten(x, m, shift_mean=False).tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)


def test_kl_penalty():
    lp, ref = T([-1.0]), T([-2.0])  # d = 1
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(0.5)
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(math.exp(-1) - 1 + 1)


def test_ppo_policy_loss_clips():
    # ratios e^0.5 = 1.6487 (clipped to 1.2) with A = 1, and 1 with A = -2
    logp, old, adv, m = T([[0.5, 0.0]]), T([[0.0, 0.0]]), T([[1.0, -2.0]]), T([[1, 1]])
    loss, stats = ppo_policy_loss(logp, old, adv, m, clip=0.2)
    assert loss.item() == pytest.approx((-1.2 + 2.0) / 2)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["approx_kl"].item() == pytest.approx((math.exp(0.5) - 1 - 0.5) / 2)


def test_ppo_value_loss_clips():
    v, old, ret, m = T([[2.0]]), T([[0.0]]), T([[3.0]]), T([[1]])
    loss, stats = ppo_value_loss(v, old, ret, m, clip=0.5)
    assert loss.item() == pytest.approx(0.5 * max((2 - 3) ** 2, (0.5 - 3) ** 2))
    assert stats["vf_clipfrac"].item() == 1.0
