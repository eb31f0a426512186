"""Native RMSNorm/MLP forwards of a frozen model against the stock modules."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from debate_lightning.accel import native
from debate_lightning.accel.fused_modules import fuse_frozen_modules


def _twins():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    stock = LlamaForCausalLM(config).eval()
    fused = LlamaForCausalLM(config).eval()
    fused.load_state_dict(stock.state_dict())
    return stock, fused


def test_fused_forward_equals_stock_and_training_is_untouched():
    stock, fused = _twins()
    count = fuse_frozen_modules(fused)
    if native.library() is None:  # no kernels here: nothing is switched, the model stays stock
        assert count == 0
        return
    assert count == 2 * 2 + 1 + 2  # two norms per layer, the final norm, one MLP per layer
    assert type(fused.model.layers[0].mlp).__name__ == "NativeLlamaMLP"
    assert fuse_frozen_modules(fused) == 0  # idempotent
    ids = torch.randint(0, 300, (3, 17))
    with torch.inference_mode():
        torch.testing.assert_close(fused(ids).logits, stock(ids).logits, rtol=1e-4, atol=1e-4)
    # with autograd on, the original forwards run and gradients flow as before
    for model in (stock, fused):
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
    for (name, a), b in zip(stock.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert fused.state_dict().keys() == stock.state_dict().keys()


def test_other_architectures_and_activations_are_left_alone():
    stock, fused = _twins()
    fused.config.hidden_act = "gelu"
    assert fuse_frozen_modules(fused) == 0
    fused.config.hidden_act, fused.config.model_type = "silu", "gemma"
    assert fuse_frozen_modules(fused) == 0
