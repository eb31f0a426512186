"""Packed oneDNN linears: the same numbers as F.linear, forward and backward, kept current."""

import copy

import pytest
import torch
import torch.nn.functional as F

from debate_lightning.accel import packed_linear
from debate_lightning.accel.packed_linear import PackedLinear, pack_frozen_linears, packed_matmul


def _pair(bias=True):
    torch.manual_seed(0)
    stock = torch.nn.Linear(64, 96, bias=bias).requires_grad_(False)
    packed = copy.deepcopy(stock)
    assert pack_frozen_linears(torch.nn.Sequential(packed)) == 1
    assert type(packed) is PackedLinear
    return stock, packed


@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_input_gradient_equal_f_linear(bias):
    stock, packed = _pair(bias)
    x = torch.randn(3, 5, 64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = packed(x), stock(x2)
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    assert packed.weight.grad is None  # frozen stays frozen
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), stock(x))


def test_repacks_when_the_weight_changes():
    stock, packed = _pair()
    x = torch.randn(4, 64)
    packed(x)  # packs
    with torch.no_grad():
        stock.weight.mul_(-2.0)
        packed.weight.mul_(-2.0)  # in place: the version counter moves
    torch.testing.assert_close(packed(x), stock(x))
    fresh = torch.nn.Linear(64, 96)
    packed.load_state_dict(fresh.state_dict())
    torch.testing.assert_close(packed(x), F.linear(x, fresh.weight, fresh.bias).detach())
    packed.weight = torch.nn.Parameter(torch.zeros(96, 64), requires_grad=False)  # replaced outright
    torch.testing.assert_close(packed(x), packed.bias.detach().expand(4, 96))


def test_trained_weights_use_f_linear_and_get_gradients():
    _, packed = _pair()
    packed.requires_grad_(True)
    x = torch.randn(2, 64)
    packed(x).sum().backward()
    assert packed.weight.grad is not None and packed.bias.grad is not None
    torch.testing.assert_close(packed.weight.grad, torch.ones(96, 1) * x.sum(0))


def test_copies_and_state_dicts_are_unchanged():
    stock, packed = _pair()
    x = torch.randn(2, 64)
    packed(x)
    clone = copy.deepcopy(packed)
    torch.testing.assert_close(clone(x), stock(x))
    assert packed.state_dict().keys() == stock.state_dict().keys()
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Embedding(3, 4))
    assert pack_frozen_linears(m) == 1  # only plain nn.Linear modules


def test_packed_matmul_and_switch_off(monkeypatch):
    w = torch.randn(32, 16)
    x = torch.randn(5, 16)
    torch.testing.assert_close(packed_matmul(w)(x), x @ w.T, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("DEBATE_LIGHTNING_PACKED_LINEAR", "0")
    packed_linear.available.cache_clear()
    try:
        assert not packed_linear.available()
        assert pack_frozen_linears(torch.nn.Sequential(torch.nn.Linear(4, 4))) == 0
    finally:
        monkeypatch.delenv("DEBATE_LIGHTNING_PACKED_LINEAR")
        packed_linear.available.cache_clear()


def test_lora_policy_packs_its_frozen_base(tiny_model_dir):
    from debate_lightning.training.policy import LoraSpec, build_policy

    from debate_lightning import accel

    policy, _ = build_policy(str(tiny_model_dir), lora=LoraSpec(r=2, alpha=4, target_modules=["q_proj", "v_proj"]))
    accel.prepare_training(policy)  # what PolicyModule.setup does on a CPU
    kinds = {name: type(m).__name__ for name, m in policy.named_modules() if isinstance(m, torch.nn.Linear)}
    assert kinds["base_model.model.model.layers.0.self_attn.q_proj.base_layer"] == "PackedLinear"
    assert kinds["base_model.model.model.layers.0.mlp.down_proj"] == "PackedLinear"
    # LoRA's own matrices are trained: they are packed too, but use F.linear while they need grads.
    lora_a = policy.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"]
    ids = torch.randint(0, 100, (1, 6))
    policy(input_ids=ids).logits.sum().backward()
    assert lora_a.weight.grad is not None
