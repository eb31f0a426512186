"""PPO on a tiny model: fresh rollouts each epoch, value head and adapters learn, TRL metrics."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from debate_lightning.training.online.ppo import PPOModule, response_forward
from debate_lightning.training.policy import LoraSpec, OptimConfig, PolicyConfig, pack

from .test_online_dpo import logged, probe_rollouts, read_metrics, tiny_datamodule

TRL_METRICS = ("objective/kl", "objective/entropy", "objective/scores", "objective/non_score_reward",
               "objective/rlhf_reward", "policy/approxkl_avg", "policy/clipfrac_avg", "policy/entropy_avg",
               "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg", "val/ratio", "val/ratio_var",
               "val/num_eos_tokens")


def test_ppo_two_epochs(tiny_model, tmp_path):
    pl.seed_everything(0)
    module = PPOModule(PolicyConfig(tiny_model, LoraSpec(r=4, alpha=8)), OptimConfig(lr=1e-2, warmup_steps=8),
                       ppo_epochs=2, minibatch_size=2, kl_estimator="k3", correctness_weight=0.1)
    dm = tiny_datamodule(tiny_model, num_candidates=1, batch_size=4)
    seen = probe_rollouts(dm)
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=pl.loggers.CSVLogger(tmp_path, name="run"),
                         log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, dm)

    assert [s["epoch"] for s in seen] == [0, 1]
    assert seen[0]["probe"] != pytest.approx(seen[1]["probe"], abs=1e-6)
    after = dict(module.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert any(n.startswith("value_head") for n in changed)
    assert any("lora_" in n for n in changed)
    # 4 speeches per rollout = one batch; 2 PPO epochs x 2 minibatches = 4 optimizer steps per epoch
    assert trainer.global_step == 8

    rows = read_metrics(trainer.log_dir)
    for key in (*TRL_METRICS, "grad_norm", "rollout/judge_accuracy", "time/rollout_s", "time/train_s"):
        assert logged(rows, key), key
    assert all(v >= 0 for v in logged(rows, "objective/kl"))  # k3 never negative
    # the warmup advances per optimizer step under manual optimisation: 4 of 8 steps, then all 8
    assert logged(rows, "learning_rate") == pytest.approx([5e-3, 1e-2])
    assert all(0 <= v <= 1 for v in logged(rows, "objective/scores"))


def test_first_pass_is_on_policy(tiny_model):
    # the first minibatch of the first PPO epoch sees ratio 1: the old log-probs are the policy's own
    module = PPOModule(PolicyConfig(tiny_model, LoraSpec(r=4, alpha=8)))
    tok = module.tokenizer
    batch = pack([[1, 2, 3], [4, 5]], [[[6, 7, tok.eos_token_id]], [[8]]], tok.pad_token_id)
    logp, values, entropy = response_forward(module.policy, batch, module.value_head, temperature=0.7)
    again, _, _ = response_forward(module.policy, batch, module.value_head, temperature=0.7)
    assert torch.allclose(logp, again)
    assert logp.shape == values.shape == entropy.shape == (2, 3)
    assert (values == 0).all()  # zero-initialised head: V = 0 before training
    # log-probs of real tokens are finite and <= 0; entropy of a 49k-way softmax is positive
    real = batch.completion_mask[:, 0].bool()
    assert (logp[real] <= 0).all() and (entropy[real] > 0).all()
    # the logits are scaled by 1/T: T = 1 gives different log-probs
    plain, _, _ = response_forward(module.policy, batch, None, temperature=1.0)
    assert not torch.allclose(plain[real], logp[real])


def test_responses_read_off_their_own_row(tiny_model):
    """Each example's log-probs, values and entropies come from its own row: a minibatch taken in
    shuffled order, and prompts sharing a row (``share_prefixes``), give each example's own."""
    module = PPOModule(PolicyConfig(tiny_model, LoraSpec(r=4, alpha=8)))
    torch.nn.init.normal_(module.value_head.weight, std=0.1)
    module.policy.eval()
    pad = module.tokenizer.pad_token_id
    story = list(range(10, 40))
    prompts, responses = [story + [5, 6], list(range(60, 75)), story + [7]], [[[81, 82, 83]], [[84]], [[85, 86]]]
    alone = pack(prompts, responses, pad)
    with torch.no_grad():
        want = response_forward(module.policy, alone, module.value_head)
        shared = pack(prompts, responses, pad, share_prefixes=True)
        assert shared.input_ids.shape[0] == 2
        real = alone.completion_mask[:, 0].bool()
        for a, b in zip(response_forward(module.policy, shared, module.value_head), want):
            assert torch.allclose(a[real], b[real], atol=1e-4)
        order = [2, 0, 1]
        for a, b in zip(response_forward(module.policy, alone.rows(order), module.value_head), want):
            assert torch.allclose(a[real[order]], b[order][real[order]], atol=1e-4)


def test_bad_options():
    with pytest.raises(ValueError, match="kl_estimator"):
        PPOModule(kl_estimator="k4")
    with pytest.raises(ValueError, match="baseline"):
        PPOModule(baseline="median")
