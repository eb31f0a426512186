"""DPO: prefix sharing, the reference, accumulation invariance, resume, NaN, DDP, all on a tiny Llama."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from debate_lightning.training.datamodules import PreferenceDataModule
from debate_lightning.training.dpo import DPOModule
from debate_lightning.training.policy import LoraSpec, OptimConfig, PolicyConfig, build_policy, completion_logps, pack

LORA = LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
ROOT = Path(__file__).resolve().parents[2]


def _randomise_lora(model: torch.nn.Module) -> None:
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_B" in n:  # B starts at zero; make the adapters matter
            p.data.normal_(0, 0.5)


def _trainer(tmp_path, **kw) -> L.Trainer:
    kw.setdefault("max_steps", 2)
    return L.Trainer(accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=L.pytorch.loggers.CSVLogger(
        tmp_path, name="", version="v"), enable_checkpointing=kw.pop("enable_checkpointing", False),
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1, **kw)


def _losses(tmp_path) -> dict[int, float]:
    rows = list(csv.DictReader(open(tmp_path / "v" / "metrics.csv")))
    return {int(r["step"]): float(r["loss"]) for r in rows if r.get("loss")}


def test_prefix_shared_logps_equal_unshared(tiny_model):
    model, tok = build_policy(tiny_model, LORA)
    _randomise_lora(model)
    model.eval()
    g = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(5, 1000, (n,), generator=g).tolist()  # noqa: E731
    prompts = [rand(n) for n in (17, 40, 5)]
    pairs = [[rand(a), rand(b)] for a, b in ((6, 11), (13, 2), (1, 9))]
    with torch.no_grad():
        shared = completion_logps(model, pack(prompts, pairs, tok.pad_token_id))
        for k in range(2):
            alone = completion_logps(model, pack(prompts, [[p[k]] for p in pairs], tok.pad_token_id))[:, 0]
            n = alone.shape[-1]
            assert torch.allclose(shared[:, k, :n], alone, atol=1e-4)
        # and against a plain full forward of prompt + rejected, the HF way
        ids = torch.tensor([prompts[1] + pairs[1][1]])
        full = model(input_ids=ids).logits.log_softmax(-1)[0, len(prompts[1]) - 1 : -1]
        want = full.gather(-1, torch.tensor(pairs[1][1])[:, None]).squeeze(-1)
        assert torch.allclose(shared[1, 1, :2], want, atol=1e-4)




def test_prompts_sharing_a_prefix_share_a_row_and_score_the_same(tiny_model):
    """Two debaters of one round share the story: one row holds it once, and every completion's
    log-probs (and gradients) are those of its own prompt packed alone."""
    model, tok = build_policy(tiny_model, LORA)
    _randomise_lora(model)
    g = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(5, 1000, (n,), generator=g).tolist()  # noqa: E731
    story, other = rand(30), rand(25)
    prompts = [story + rand(6), rand(20), story + rand(9), story[:29], other + rand(3), other + rand(4)]
    groups = [[rand(n), rand(m)] for n, m in ((5, 3), (4, 7), (2, 6), (3, 1), (6, 2), (1, 4))]
    shared = pack(prompts, groups, tok.pad_token_id, share_prefixes=True)
    alone = pack(prompts, groups, tok.pad_token_id)
    # the story's three prompts in one row, the unrelated one alone, the other two together
    assert shared.row_of.tolist() == [0, 1, 0, 0, 2, 2]
    assert shared.num_tokens == alone.num_tokens - 2 * 29 - 25
    model.eval()
    with torch.no_grad():
        want = completion_logps(model, alone)
        assert torch.allclose(completion_logps(model, shared), want, atol=1e-4)
        # a subset of examples keeps its rows (renumbered) and its values
        sub = shared.rows([5, 3])
        assert sub.row_of.tolist() == [0, 1] and sub.input_ids.shape[0] == 2
        assert torch.allclose(completion_logps(model, sub), want[[5, 3]], atol=1e-4)
        # unshared rows stay one per example, in the order asked (PPO's minibatches index rows so)
        perm = alone.rows([4, 0, 2])
        assert perm.row_of.tolist() == [0, 1, 2]
        assert torch.equal(perm.input_ids, alone.input_ids[[4, 0, 2]])
    grads = []
    for batch in (shared, alone):
        model.zero_grad()
        completion_logps(model, batch).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-4, rtol=1e-3)
    # a row never grows past twice the longest example (padding and attention stay bounded) ...
    capped = pack([story + rand(2) for _ in range(3)], [[rand(40)] for _ in range(3)], tok.pad_token_id,
                  share_prefixes=True)
    assert capped.row_of.tolist() == [0, 0, 1]
    # ... and prompts share a row only when at least half of each is the shared prefix
    apart = pack([story[:4] + rand(5), story[:4] + rand(5)], [[rand(2)]] * 2, tok.pad_token_id, share_prefixes=True)
    assert apart.row_of.tolist() == [0, 1]
def test_reference_is_policy_with_adapters_off(tiny_model, pairs_file):
    module = DPOModule(PolicyConfig(tiny_model, LORA))
    _randomise_lora(module.policy)
    base, tok = build_policy(tiny_model, None)
    dm = PreferenceDataModule(train=pairs_file, batch_size=3, tokenizer=tiny_model)
    dm.setup("fit")
    batch = dm.collate(dm.train_items[:3])
    with torch.no_grad():
        ref = module.reference(batch["packed"])
        want = completion_logps(base.eval(), batch["packed"]).sum(-1)
        policy = completion_logps(module.policy, batch["packed"]).sum(-1)
    assert torch.allclose(ref, want, atol=1e-5)
    assert not torch.allclose(policy, want, atol=1e-3)  # the adapters are on outside the reference
    cached = DPOModule(PolicyConfig(tiny_model, LORA), reference_cache=True)
    keys = batch["keys"]
    first = cached.reference(batch["packed"], keys)
    again = cached.reference(batch["packed"], keys)
    assert torch.equal(first, again) and cached.reference.hits == 3 and cached.reference.misses == 3


def test_gradient_accumulation_invariance(tiny_model, pairs_file):
    def grads(batch_size: int) -> tuple[float, list[torch.Tensor]]:
        torch.manual_seed(0)
        module = DPOModule(PolicyConfig(tiny_model, LORA))
        _randomise_lora(module.policy)
        dm = PreferenceDataModule(train=pairs_file, batch_size=batch_size, tokenizer=tiny_model, shuffle=False)
        dm.setup("fit")
        items, steps, total = dm.train_items[:4], 4 // batch_size, 0.0
        for i in range(steps):
            loss = module.training_step(dm.collate(items[i * batch_size : (i + 1) * batch_size]), i) / steps
            loss.backward()
            total += loss.item()
        return total, [p.grad.clone() for p in module.policy.parameters() if p.requires_grad]

    loss4, g4 = grads(4)
    loss1, g1 = grads(1)
    assert loss4 == pytest.approx(loss1, abs=1e-5)
    for a, b in zip(g4, g1):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_logged_metrics_once_per_optimizer_step(tiny_model, pairs_file, tmp_path):
    """batch 4 x accumulation 1 and batch 1 x accumulation 4 log the same step loss."""
    logged = []
    for bs, acc in ((4, 1), (1, 4)):
        L.seed_everything(0)
        out = tmp_path / f"b{bs}"
        module = DPOModule(PolicyConfig(tiny_model, LORA, save_adapter=False))
        _randomise_lora(module.policy)
        dm = PreferenceDataModule(train=pairs_file, batch_size=bs, shuffle=False)
        _trainer(out, max_steps=1, accumulate_grad_batches=acc).fit(module, dm)
        rows = list(csv.DictReader(open(out / "v" / "metrics.csv")))
        assert len([r for r in rows if r.get("loss")]) == 1
        logged.append({k: float(v) for k, v in rows[0].items() if v and k != "step"})
    for name in ("loss", "rewards/chosen", "rewards/margins", "logps/chosen", "logps/rejected", "grad_norm"):
        assert logged[0][name] == pytest.approx(logged[1][name], rel=1e-4, abs=1e-6), name
    assert set(logged[0]) >= {"rewards/rejected", "rewards/accuracies"}


def test_trainable_change_frozen_do_not_and_adapter_saved(tiny_model, pairs_file, tmp_path):
    L.seed_everything(0)
    module = DPOModule(PolicyConfig(tiny_model, LORA), OptimConfig(lr=1e-2))
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    dm = PreferenceDataModule(train=pairs_file, batch_size=4)
    _trainer(tmp_path, max_steps=3).fit(module, dm)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    for n, p in module.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == (n in trainable) or ("lora_A" in n), n  # lora_A may not move at step 1 (B = 0)
    assert any(not torch.equal(before[n], p) for n, p in module.named_parameters() if "lora_B" in n)
    losses = _losses(tmp_path)
    assert losses[2] < losses[0]  # the loss goes the right way
    adapter = tmp_path / "v" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()


def test_nan_loss_stops_naming_the_step(tiny_model, pairs_file, tmp_path, monkeypatch):
    module = DPOModule(PolicyConfig(tiny_model, LORA, save_adapter=False))
    real = module.forward_pairs

    def poisoned(batch):
        out = real(batch)
        if module.global_step == 1:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(module, "forward_pairs", poisoned)
    dm = PreferenceDataModule(train=pairs_file, batch_size=2)
    with pytest.raises(FloatingPointError, match="global step 1"):
        _trainer(tmp_path, max_steps=3).fit(module, dm)


class _Preempt(L.Callback):
    """Kill the run after a given optimizer step, as a Slurm preemption would."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.at:
            raise RuntimeError("preempted")


# a decaying schedule asks the trainer for the run's length up front; a constant one does not
@pytest.mark.parametrize("scheduler", ["linear", "constant"])
def test_resume_reproduces_uninterrupted_run(scheduler, tiny_model, tmp_path, make_pairs):
    pairs = make_pairs(tmp_path / "p.jsonl", n=8)

    def run(out, ckpt_path=None, preempt=None):
        L.seed_everything(0)
        module = DPOModule(PolicyConfig(tiny_model, LoraSpec(r=4, alpha=8, dropout=0.1), save_adapter=False),
                           OptimConfig(lr=1e-2, warmup_steps=2, scheduler=scheduler))
        dm = PreferenceDataModule(train=pairs, batch_size=2)  # 4 batches per epoch, shuffled per epoch
        ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=out / "ckpt", save_last=True, every_n_train_steps=1)
        callbacks = [ckpt] + ([_Preempt(preempt)] if preempt else [])
        trainer = _trainer(out, max_steps=6, enable_checkpointing=True, callbacks=callbacks)
        try:
            trainer.fit(module, dm, ckpt_path=ckpt_path)
        except RuntimeError as e:
            assert "preempted" in str(e)
        return _losses(out)

    full = run(tmp_path / "full")
    first = run(tmp_path / "part", preempt=3)  # killed in the middle of epoch 0
    last = tmp_path / "part" / "ckpt" / "last.ckpt"
    assert last.is_file() and last.stat().st_size < 2_000_000  # trainable weights only
    saved_at = torch.load(last, weights_only=False)["global_step"]
    assert 0 < saved_at < 4  # mid-epoch (4 batches per epoch)
    rest = run(tmp_path / "part", ckpt_path=str(last))
    assert sorted(full) == list(range(6)) and min(rest) == saved_at and max(rest) == 5
    resumed = {**first, **rest}
    for step in range(6):
        assert resumed[step] == pytest.approx(full[step], abs=1e-6), (step, resumed, full)


@pytest.mark.multiprocess
def test_ddp_two_cpu_ranks_end_identical(tiny_model, tmp_path, make_pairs):
    pairs = make_pairs(tmp_path / "p.jsonl", n=8)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "debate_lightning", "fit", "--config", str(ROOT / "configs" / "dpo.yaml"),
           f"--model.init_args.policy.model={tiny_model}", "--model.init_args.policy.lora.r=4",
           "--model.init_args.optim.lr=1e-2",
           f"--data.init_args.train={pairs}", "--data.init_args.batch_size=2",
           "--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.max_steps=2",
           f"--trainer.default_root_dir={tmp_path}",
           "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fingerprints = list(tmp_path.rglob("replica_fingerprints.json"))
    assert len(fingerprints) == 1
    ranks = json.loads(fingerprints[0].read_text())
    assert len(ranks) == 2 and ranks[0] == ranks[1]
    assert (fingerprints[0].parent / "config.yaml").is_file()
    assert (fingerprints[0].parent / "adapter" / "adapter_model.safetensors").is_file()


def test_full_finetune_keeps_a_frozen_reference_copy(tiny_model, pairs_file, tmp_path):
    L.seed_everything(0)
    module = DPOModule(PolicyConfig(tiny_model, None, save_adapter=False), OptimConfig(lr=1e-3), reference="copy")
    ref_before = {n: p.detach().clone() for n, p in module.reference.named_parameters()}
    policy_before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    _trainer(tmp_path, max_steps=1).fit(module, PreferenceDataModule(train=pairs_file, batch_size=2))
    assert all(torch.equal(ref_before[n], p) for n, p in module.reference.named_parameters())
    assert any(not torch.equal(policy_before[n], p) for n, p in module.policy.named_parameters())
    with pytest.raises(ValueError, match="needs a PEFT policy"):
        DPOModule(PolicyConfig(tiny_model, None), reference="adapter")


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model, pairs_file):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # same LoRA A init
        module = DPOModule(PolicyConfig(tiny_model, LORA, gradient_checkpointing=checkpointing))
        _randomise_lora(module.policy)
        dm = PreferenceDataModule(train=pairs_file, batch_size=4, tokenizer=tiny_model, shuffle=False)
        dm.setup("fit")
        module.training_step(dm.collate(dm.train_items[:4]), 0).backward()
        grads.append([p.grad for p in module.policy.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


# -- several preference files ---------------------------------------------------------------------
def test_several_preference_files_and_a_bad_line_names_its_file(tiny_model, tmp_path, make_pairs):
    from debate_lightning.cli import DebateCLI
    from debate_lightning.data.question import DataError

    a, b = make_pairs(tmp_path / "a.jsonl", n=3, seed=1), make_pairs(tmp_path / "b.jsonl", n=5, seed=2)
    one = PreferenceDataModule(train=a, tokenizer=tiny_model)
    both = PreferenceDataModule(train=[a, b], tokenizer=tiny_model)
    one.setup("fit"), both.setup("fit")
    assert len(both.train_items) == 8 and both.train_items[:3] == one.train_items  # read in order, concatenated
    # the CLI takes a YAML list on the command line
    cli = DebateCLI(args=["--config", str(ROOT / "configs" / "dpo.yaml"), f"--model.init_args.policy.model={tiny_model}",
                          f"--data.init_args.train=[{a}, {b}]", f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert cli.datamodule.train_paths == [a, b]
    lines = Path(b).read_text().splitlines()
    Path(b).write_text("\n".join([lines[0], '{"prompt": [{"role": "user", "content": "x"}], "chosen": "y"}', *lines[2:]]))
    with pytest.raises(DataError, match=r"b\.jsonl line 2, field "):
        PreferenceDataModule(train=[a, b], tokenizer=tiny_model).setup("fit")
    with pytest.raises(ValueError, match="data.train"):
        PreferenceDataModule(train=[])


# -- an SFT adapter as the reference ----------------------------------------------------------------
@pytest.fixture
def sft_adapter(tiny_model, tmp_path) -> str:
    """A non-trivial LoRA adapter, as an SFT run would leave it in <run>/adapter."""
    from debate_lightning.training.policy import save_adapter

    model, _ = build_policy(tiny_model, LORA)
    _randomise_lora(model)
    return str(save_adapter(model, tmp_path / "sft" / "adapter"))


def _logps(model, packed) -> torch.Tensor:
    with torch.no_grad():
        return completion_logps(model.eval(), packed).sum(-1)


def test_initial_reference_is_the_sft_adapter_and_base_is_the_base(tiny_model, sft_adapter, pairs_file, tmp_path):
    dm = PreferenceDataModule(train=pairs_file, batch_size=4, tokenizer=tiny_model, shuffle=False)
    dm.setup("fit")
    batch = dm.collate(dm.train_items[:4])
    sft = _logps(build_policy(tiny_model, None, adapter=sft_adapter)[0], batch["packed"])
    base = _logps(build_policy(tiny_model, None)[0], batch["packed"])
    assert not torch.allclose(sft, base, atol=1e-2)  # the adapter matters

    L.seed_everything(0)
    initial = DPOModule(PolicyConfig(tiny_model, LORA, adapter=sft_adapter), OptimConfig(lr=1e-2), reference="initial")
    assert initial.reference.semantics == "initial"
    assert torch.allclose(initial.reference(batch["packed"]), sft, atol=1e-5)
    out = initial.forward_pairs(batch)  # step 0: policy == reference
    assert out["loss"].mean().item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)
    assert out["rewards/chosen"].abs().max() < 1e-5 and out["rewards/margins"].abs().max() < 1e-5
    trainable = {n for n, p in initial.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)  # the frozen second adapter is not trained
    assert all(m.training for m in initial.policy.modules())  # loading it left the policy in train mode

    for kind in ("base", "adapter"):  # `adapter` is the old name of `base`
        ref = DPOModule(PolicyConfig(tiny_model, LORA, adapter=sft_adapter), reference=kind).reference
        assert ref.semantics == "base" and torch.allclose(ref(batch["packed"]), base, atol=1e-5)

    # training moves the policy, never the initial reference; only the trained adapter is exported
    frozen = {n: p.detach().clone() for n, p in initial.named_parameters() if ".reference." in n}
    _trainer(tmp_path, max_steps=2).fit(initial, PreferenceDataModule(train=pairs_file, batch_size=4, shuffle=False))
    assert frozen and all(torch.equal(frozen[n], p) for n, p in initial.named_parameters() if ".reference." in n)
    assert torch.allclose(initial.reference(batch["packed"]), sft, atol=1e-5)
    assert not torch.allclose(_logps(initial.policy, batch["packed"]), sft, atol=1e-4)
    assert {n for n, p in initial.named_parameters() if p.requires_grad} == trainable
    rows = list(csv.DictReader(open(tmp_path / "v" / "metrics.csv")))
    assert float(rows[0]["loss"]) == pytest.approx(0.693147, abs=1e-5) and abs(float(rows[0]["rewards/margins"])) < 1e-5
    adapter = tmp_path / "v" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "reference").exists()
    with pytest.raises(ValueError, match="unknown reference 'sft'.*'adapter' is the old name of 'base'"):
        DPOModule(PolicyConfig(tiny_model, LORA), reference="sft")  # type: ignore[arg-type]
