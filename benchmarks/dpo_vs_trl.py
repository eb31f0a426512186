"""Our DPO step against TRL's ``DPOTrainer``, under identical conditions.

Both sides train the embedded SmolLM2-135M-Instruct with LoRA r=8 (alpha 16, no dropout) on
q_proj and v_proj, on the same 16 preference pairs (built-in synthetic debate prompts of ~500
tokens, completions of ~80-120 tokens), batch size 4, no gradient accumulation, float32, no
gradient checkpointing, AdamW at a constant 5e-5, gradient clipping at 1.0, and the reference
policy = the same model with adapters disabled (TRL's default with PEFT; ours too). Each side runs
in its own process: one warm-up step, then the timed steps (default 4 = the 16 pairs once).

Tokens/s counts the tokens TRL trains on per pair, (prompt + chosen) + (prompt + rejected) with
our tokenisation, times the pairs processed in the timed steps, over the timed wall time; the
same numerator on both sides, so the ratio is the ratio of step times. Peak RSS is the worker
process's ``ru_maxrss``.

TRL is not a dependency of this package: it runs in a peer venv, ``.venv-trl/``, which ``make
bench`` builds once (``scripts/install_trl.sh``: torch 2.13.0 first and pinned, then
``trl==1.16.*``, ``datasets`` and the package venv's own ``transformers`` and ``peft`` versions)
and reuses:

    make bench                                                # builds .venv-trl once, runs every benchmark
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dpo_vs_trl.py   # this one alone, once .venv-trl exists

The last line printed is ``ratio: X`` (ours over TRL, tokens/s). ``--trl-python`` defaults to
``.venv-trl/bin/python`` where that exists, else to this interpreter (which works if TRL is
installed in it). Figures and their history: ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRL_PYTHON = ROOT / ".venv-trl" / "bin" / "python"  # the peer venv `make bench` builds
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
LR, BETA, CLIP = 5e-5, 0.1, 1.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# -- workers (each runs in its own process) -----------------------------------------------------
def worker_ours(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT))
    import lightning as L
    import torch

    from debate_lightning.training.datamodules import PreferenceDataModule
    from debate_lightning.training.dpo import DPOModule
    from debate_lightning.training.policy import LoraSpec, OptimConfig, PolicyConfig

    torch.manual_seed(0)
    times: list[float] = []

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            times.append(time.perf_counter() - self.t0)

    module = DPOModule(PolicyConfig(args.model_dir, LoraSpec(**LORA), save_adapter=False), OptimConfig(lr=LR),
                       beta=BETA, reference_cache=args.reference_cache)
    dm = PreferenceDataModule(train=args.data, batch_size=args.batch_size, max_prompt_length=2048,
                              max_completion_length=1024)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=args.warmup + args.steps,
                        gradient_clip_val=CLIP, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Timer()], default_root_dir=args.workdir)
    trainer.fit(module, dm)
    assert not args.reference_cache or module.reference.misses == len(dm.train_items)  # cache filled in warm-up
    return {"step_seconds": times[args.warmup:], "warmup_seconds": sum(times[: args.warmup]),
            "peak_rss_mb": peak_rss_mb()}


def worker_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    rows = [json.loads(line) for line in open(args.data, encoding="utf-8") if line.strip()]
    dataset = Dataset.from_list([{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                  "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    config = DPOConfig(
        output_dir=args.workdir, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        max_steps=args.warmup + args.steps, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, beta=BETA,
        loss_type=["sigmoid"], max_grad_norm=CLIP, gradient_checkpointing=False, bf16=False, fp16=False,
        use_cpu=True, max_length=4096, logging_steps=1, report_to="none", save_strategy="no",
        dataloader_num_workers=0, seed=0, precompute_ref_log_probs=args.reference_cache,
    )
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                             target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[Timer()])
    trainer.train()
    return {"step_seconds": times[args.warmup:], "warmup_seconds": sum(times[: args.warmup]),
            "peak_rss_mb": peak_rss_mb()}


# -- driver ---------------------------------------------------------------------------------------
def _run_worker(python: str, name: str, args: argparse.Namespace, data: Path, model_dir: Path, work: Path) -> dict:
    out = work / f"{name}.json"
    # With cached reference log-probs, TRL precomputes them before training (untimed); ours fills its
    # cache during the first epoch, so that epoch is the warm-up and the timed steps come after.
    warmup = -(-args.pairs // args.batch_size) if args.reference_cache and name == "ours" else 1
    cmd = [python, str(Path(__file__).resolve()), "--worker", name, "--data", str(data), "--model-dir",
           str(model_dir), "--steps", str(args.steps), "--warmup", str(warmup), "--batch-size", str(args.batch_size), "--out", str(out),
           "--workdir", str(work / name)]
    if args.reference_cache:
        cmd.append("--reference-cache")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        how = f"killed by signal {-proc.returncode} (SIGKILL is usually the OOM killer)" if proc.returncode < 0 \
            else f"exit status {proc.returncode}"
        sys.exit(f"{name} worker failed, {how} ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trl-python", default=str(TRL_PYTHON) if TRL_PYTHON.exists() else sys.executable,
                        help="a python with trl installed (default: .venv-trl/bin/python, built by `make bench`)")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="timed steps after one warm-up step")
    parser.add_argument("--reference-cache", action="store_true",
                        help="both sides use precomputed reference log-probs (TRL: precompute_ref_log_probs; ours: "
                             "reference_cache, filled in a first untimed epoch); times the policy step alone")
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker_ours(args) if args.worker == "ours" else worker_trl(args)
        Path(args.out).write_text(json.dumps(result))
        return

    sys.path.insert(0, str(ROOT))
    from transformers import AutoTokenizer

    from debate_lightning.data.preferences import write_preferences
    from debate_lightning.models.embedded import prepare
    from debate_lightning.training.datamodules import synthetic_pairs
    from debate_lightning.training.policy import completion_ids, prompt_ids

    model_dir = prepare()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = synthetic_pairs(args.pairs)
    per_pair = [(len(prompt_ids(tokenizer, p.prompt)), len(completion_ids(tokenizer, p.chosen)),
                 len(completion_ids(tokenizer, p.rejected))) for p in pairs]
    tokens_per_pair = sum(2 * P + C + R for P, C, R in per_pair) / len(per_pair)
    print(f"{len(pairs)} pairs: prompt ~{sum(p for p, _, _ in per_pair) / len(pairs):.0f} tokens, chosen "
          f"~{sum(c for _, c, _ in per_pair) / len(pairs):.0f}, rejected ~{sum(r for _, _, r in per_pair) / len(pairs):.0f}"
          f"; batch {args.batch_size}, {args.steps} timed steps after warm-up; fp32, LoRA r=8 q,v, no checkpointing; "
          f"reference: {'precomputed log-probs' if args.reference_cache else 'adapters disabled, every step'}")
    with tempfile.TemporaryDirectory(prefix="dpo_vs_trl-") as tmp:
        work = Path(tmp)
        data = work / "pairs.jsonl"
        write_preferences(data, pairs)
        results = {}
        for name, python in (("ours", sys.executable), ("trl", args.trl_python)):
            r = _run_worker(python, name, args, data, model_dir, work)
            seconds = sum(r["step_seconds"])
            r["tokens_per_s"] = tokens_per_pair * args.batch_size * len(r["step_seconds"]) / seconds
            results[name] = r
            print(f"{name:>4}: {r['tokens_per_s']:8.1f} tokens/s   {seconds / len(r['step_seconds']):7.2f} s/step   "
                  f"peak RSS {r['peak_rss_mb']:7.0f} MB   (warm-up step {r['warmup_seconds']:.1f} s)", flush=True)
    print(f"ratio: {results['ours']['tokens_per_s'] / results['trl']['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
