"""Our online steps (GRPO, online DPO) against TRL 1.16's ``GRPOTrainer`` and experimental
``OnlineDPOTrainer``, on the same single-turn task under identical conditions.

**The task.** Debater opening speeches: format ``debate``, ``simultaneous: true``, ``num_speeches:
1``, so both sides of a question give one opening speech from an empty transcript and each rollout
"prompt" is one side's opening-speech chat (~550 tokens: the story in the system message, the
question and both answers in the user message). The reward of a sampled speech is the judge's
P(own side) with that speech appended, the judge being the same embedded SmolLM2-135M-Instruct with
its LoRA adapters off (the frozen base weights: no second copy of the model on either side), judged
in both answer orders and averaged. A step is one online iteration: sample, judge, one optimizer
step. Every step plays 2 synthetic train questions (an epoch of ``DebateRolloutDataModule``, its
questions and side orders drawn from ``(seed, epoch)``), i.e. 4 prompts.

**Identical on both sides.** The embedded model, float32 (what ``dtype: auto`` picks on a CPU
without AVX512-BF16/AMX, like this one), LoRA r=8 alpha 16 no dropout on q_proj and v_proj, AdamW
at a constant 1e-5, clipping at 1.0, no gradient checkpointing; the same 4 prompts per step, in the
same order, as the same chat messages (our prompt code builds them in this process; TRL's worker
gets them as JSON, in a dataset it reads sequentially); sampling at temperature 1.0, top-p 1, no
top-k, with fixed-length speeches (``min_new_tokens = max_new_tokens``, default 32) so both sides
sample exactly the same number of tokens. GRPO: G=4 speeches per prompt (one group per prompt),
the group's rewards scaled by their std, the ``dapo`` token-level loss, clip epsilon 0.2, beta 0
(no reference forward: TRL's default, ours too), one iteration per batch, one optimizer step per
generation batch (ours ``reward: immediate``, 4 groups per step; TRL ``per_device_train_batch_size``
16, ``num_generations`` 4). Online DPO: 2 speeches per prompt (TRL's online DPO always samples 2;
ours ``num_candidates: 2``), the judge's better against its worse, sigmoid loss, beta 0.1, reference
= adapters off, no missing-EOS penalty, one optimizer step on the 4 pairs.

**The judge.** The same computation on both sides: the package's own ``Judge`` and prompt code
(``Transcript.judge_chat``, quote checking and marking with ``QuoteChecker``, P(A) = softmax over
the "A"/"B" logits of the chat's last position, both orders averaged, P(own side) = P(A) for side
A and 1 - P(A) for side B). TRL's worker imports them from this checkout (``PYTHONPATH``; their one
non-torch dependency, ``rapidfuzz``, is linked from the package venv into a temporary directory),
and its reward function scores the judge chats the way a TRL user would: one batched,
left-padded transformers forward of the policy with ``disable_adapter()``, last logit only
(``logits_to_keep=1``). Ours scores them with its ``hf`` backend (``judge_from_policy``), and,
as every online step of ours does for its ``rollout/judge_accuracy``, also judges each finished
round (4 more chats per step, in its judging time).

**How each side computes is its own.** TRL runs its trainers as a user would. Ours plays the step
with ``DebateRolloutDataModule`` (one batched generate call per turn, the story's KV prefilled once
for both sides) and trains on packed rows: each prompt once with all its speeches, and a round's
two debaters in one row, the story once (``pack(share_prefixes=True)``).

**What is measured.** Each of the four runs (ours and TRL, GRPO and online DPO) is its own
process: one warm-up step, then the timed steps (default 1). Seconds per step is the wall time
between consecutive optimizer-step ends, so it holds everything an online step does (generation,
judging, training, the trainer's own bookkeeping). Tokens/s counts, per step, each sampled
sequence's prompt tokens (the chat template's, by the package's tokenisation) plus its sampled
tokens: with the same prompts and fixed-length speeches the numerator is the same on both sides,
so the ratio is the ratio of step times. Peak RSS is each worker's ``ru_maxrss``. Each run also
reports where its time goes: generation (the policy's generate calls), judging (the reward /
judge calls), and the rest (training and overhead). The whole run takes ~10 min on an idle 2-core
CPU; TRL's GRPO worker peaks at ~19 GB RSS (16 sequences in one forward and backward), so it needs
~20 GB of free memory.

TRL is not a dependency of this package: it runs in the peer venv ``.venv-trl/`` that ``make
bench`` builds once (``scripts/install_trl.sh``: TRL 1.16 with the package venv's torch,
transformers and peft versions):

    make bench                                                    # every benchmark
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/online_vs_trl.py   # this one, once .venv-trl exists

It prints each run's line, then ``grpo ratio: X`` and ``online_dpo ratio: Y`` (ours over TRL,
tokens/s); the last line is ``ratio: min(X, Y)``. Figures and their history: ``docs/performance.md``.
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
LR, CLIP, DPO_BETA, EPSILON = 1e-5, 1.0, 0.1, 0.2
ROUNDS = 2  # questions per step; both sides speak, so 2 prompts each
GROUP = {"grpo": 4, "online_dpo": 2}  # speeches per prompt (TRL's online DPO always samples 2)
FORMAT = {"kind": "debate", "simultaneous": True, "num_speeches": 1, "word_limit": 40}
JUDGE_BOTH_ORDERS = True
SEED = 0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Phases:
    """Seconds spent in named phases, and a snapshot per optimizer step."""

    def __init__(self):
        self.start = time.perf_counter()  # the worker's start: the warm-up figure includes loading
        self.total = {"generate": 0.0, "judge": 0.0}
        self.tokens = 0
        self.ends: list[float] = []
        self.per_step: list[dict] = []

    def timed(self, phase: str, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total[phase] += time.perf_counter() - start
        return wrapper

    def step_end(self) -> None:
        self.ends.append(time.perf_counter())
        self.per_step.append({**self.total, "tokens": self.tokens})

    def result(self, warmup: int) -> dict:
        """Per timed step: seconds since the previous step's end, phase seconds, tokens."""
        steps = []
        for i in range(warmup, len(self.ends)):
            before = self.per_step[i - 1] if i else {"generate": 0.0, "judge": 0.0, "tokens": 0}
            now = self.per_step[i]
            steps.append({"seconds": self.ends[i] - self.ends[i - 1], "generate": now["generate"] - before["generate"],
                          "judge": now["judge"] - before["judge"], "tokens": now["tokens"] - before["tokens"]})
        return {"steps": steps, "startup_seconds": self.ends[warmup - 1] - self.start, "peak_rss_mb": peak_rss_mb()}


# -- workers (each runs in its own process) -----------------------------------------------------
def worker_ours(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT))
    import lightning as L
    import torch

    from debate_lightning.data.config import DataConfig
    from debate_lightning.debate.formats import Format
    from debate_lightning.models.base import SamplingParams
    from debate_lightning.training.online.datamodule import DebateRolloutDataModule
    from debate_lightning.training.policy import LoraSpec, OptimConfig, PolicyConfig

    torch.manual_seed(SEED)
    phases = Phases()
    policy = PolicyConfig(args.model_dir, LoraSpec(**LORA), save_adapter=False)
    optim = OptimConfig(lr=LR)
    if args.algo == "grpo":
        from debate_lightning.training.online.grpo import GRPOModule

        module = GRPOModule(policy, optim, reference="adapter", reward="immediate", advantage="grpo",
                            loss_type="dapo", beta=0.0, epsilon=EPSILON, num_iterations=1, max_grad_norm=CLIP)
        clip = None  # GRPOModule clips its own gradients (max_grad_norm)
    else:
        from debate_lightning.training.online.online_dpo import OnlineDPOModule

        module = OnlineDPOModule(policy, optim, reference="adapter", beta=DPO_BETA, loss_type="sigmoid",
                                 missing_eos_penalty=0.0)
        clip = CLIP

    class TimedRollouts(DebateRolloutDataModule):
        """Counts the time in the policy's generate calls and the judge's, and the tokens sampled."""

        def policy_generator(self, module):
            gen = super().policy_generator(module)
            gen.generate_ids = phases.timed("generate", gen.generate_ids)
            return gen

        def judge(self, module):
            judge = super().judge(module)
            judge.p_a_orders = phases.timed("judge", judge.p_a_orders)
            return judge

        def next_examples(self):
            examples = super().next_examples()
            phases.tokens += sum(len(s.prompt_ids) * len(s.candidates) + sum(len(c.response_ids) for c in s.candidates)
                                 for s in self.last_rollout.samples)
            return examples

    dm = TimedRollouts(
        questions=DataConfig(source="synthetic", split="train", limit=None, seed=SEED, both_orders=False),
        format=Format(**FORMAT), rounds_per_epoch=ROUNDS, num_candidates=GROUP[args.algo],
        sampling=SamplingParams(max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens,
                                temperature=1.0),
        judge_from_policy=True, judge_both_orders=JUDGE_BOTH_ORDERS, batch_size=2 * ROUNDS, seed=SEED,
        save_rollouts=False)

    class Timer(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            phases.step_end()

    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_epochs=args.warmup + args.steps,
                        gradient_clip_val=clip, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Timer()],
                        default_root_dir=args.workdir)
    trainer.fit(module, dm)
    if len(phases.ends) != args.warmup + args.steps:
        raise RuntimeError(f"ours ({args.algo}): {len(phases.ends)} optimizer steps in {args.warmup + args.steps} "
                           "epochs; each epoch should give exactly one batch")
    return phases.result(args.warmup)


def worker_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    # the package's own judge and prompt code (see the docstring); only its torch-free parts
    from debate_lightning.data.question import Question
    from debate_lightning.debate.agents import Judge
    from debate_lightning.debate.formats import Format
    from debate_lightning.debate.quotes import QuoteChecker
    from debate_lightning.debate.transcript import Speech, Transcript
    from debate_lightning.models.chat import chat_ids, text_ids

    torch.manual_seed(SEED)
    plan = json.loads(Path(args.data).read_text())
    items = [(Question.from_dict(p["question"]), p["side"]) for p in plan]
    fmt = Format(**FORMAT)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    phases = Phases()
    holder: dict = {}

    class PlainScorer:
        """A judge's A/B log-probs as a TRL user computes them: one left-padded batch, last logit."""

        name = "judge"

        def choice_logprobs(self, chats, choices):
            targets = [text_ids(tokenizer, c)[0] for c in choices]
            rows = [chat_ids(tokenizer, c) for c in chats]
            width = max(map(len, rows))
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            peft_model = holder["trainer"].model
            with torch.inference_mode(), peft_model.disable_adapter():
                logits = peft_model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
            logp = logits[:, -1].float().log_softmax(-1)
            return [[float(row[t]) for t in targets] for row in logp]

    judge = Judge(PlainScorer(), both_orders=JUDGE_BOTH_ORDERS, name="judge")

    def judge_reward(prompts, completions, completion_ids, key, **kwargs):
        transcripts, sides = [], []
        for completion, k in zip(completions, key):
            question, side = items[k]
            text = completion[0]["content"]
            speech = Speech(side=side, step=0, text=text, quotes=QuoteChecker(question.story).check_speech(text))
            transcripts.append(Transcript(question, fmt).with_speech(speech))
            sides.append(side)
        p_a = judge.p_a(transcripts)
        phases.tokens += sum(len(chat_ids(tokenizer, p)) + len(c) for p, c in zip(prompts, completion_ids))
        return [p if side == 0 else 1.0 - p for p, side in zip(p_a, sides)]

    judge_reward = phases.timed("judge", judge_reward)
    judge_reward.__name__ = "judge_reward"
    dataset = Dataset.from_list([{"prompt": p["chat"], "key": i} for i, p in enumerate(plan)])

    class Timer(TrainerCallback):
        def on_step_end(self, *a, **k):
            phases.step_end()

    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                             target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    prompts_per_step = 2 * ROUNDS
    common = dict(
        output_dir=args.workdir, gradient_accumulation_steps=1, max_steps=args.warmup + args.steps, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=CLIP, gradient_checkpointing=False, bf16=False,
        fp16=False, use_cpu=True, logging_steps=1, report_to="none", save_strategy="no", dataloader_num_workers=0,
        seed=SEED, temperature=1.0, top_p=1.0, top_k=0,
        generation_kwargs={"min_new_tokens": args.max_new_tokens},
    )
    if args.algo == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        config = GRPOConfig(**common, per_device_train_batch_size=prompts_per_step * GROUP["grpo"],
                            num_generations=GROUP["grpo"], max_completion_length=args.max_new_tokens,
                            shuffle_dataset=False, beta=0.0, loss_type="dapo", scale_rewards="group",
                            epsilon=EPSILON, num_iterations=1, disable_dropout=True, log_completions=False)
        trainer = GRPOTrainer(model=model, reward_funcs=judge_reward, args=config, train_dataset=dataset,
                              processing_class=tokenizer, peft_config=peft_config, callbacks=[Timer()])
    else:
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

        config = OnlineDPOConfig(**common, per_device_train_batch_size=prompts_per_step,
                                 max_new_tokens=args.max_new_tokens, max_length=4096, beta=DPO_BETA,
                                 loss_type="sigmoid", missing_eos_penalty=None, disable_dropout=True,
                                 train_sampling_strategy="sequential")
        trainer = OnlineDPOTrainer(model=model, reward_funcs=judge_reward, args=config, train_dataset=dataset,
                                   processing_class=tokenizer, peft_config=peft_config, callbacks=[Timer()])
    holder["trainer"] = trainer
    trainer.model.generate = phases.timed("generate", trainer.model.generate)
    trainer.train()
    return phases.result(args.warmup)


# -- driver ---------------------------------------------------------------------------------------
def build_plan(steps: int, model_dir: Path) -> tuple[list[dict], list[int]]:
    """The prompts of ``steps`` steps as our DataModule plays them (epoch e = step e), and their
    token counts by the package's chat template."""
    sys.path.insert(0, str(ROOT))
    from transformers import AutoTokenizer

    from debate_lightning.data.config import DataConfig
    from debate_lightning.debate.agents import prompts_for
    from debate_lightning.debate.formats import Format
    from debate_lightning.debate.transcript import Transcript
    from debate_lightning.models.chat import chat_ids
    from debate_lightning.training.online.datamodule import DebateRolloutDataModule

    dm = DebateRolloutDataModule(questions=DataConfig(source="synthetic", split="train", limit=None, seed=SEED,
                                                      both_orders=False),
                                 format=Format(**FORMAT), rounds_per_epoch=ROUNDS, seed=SEED)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    plan, lengths = [], []
    for epoch in range(steps):
        questions, fmts, _ = dm.epoch_plan(epoch)
        for question, fmt in zip(questions, fmts):
            for side in (0, 1):  # simultaneous: both sides open from an empty transcript
                chat = Transcript(question, fmt).debater_chat(side, prompts_for(fmt))
                plan.append({"question": question.to_dict(), "side": side, "chat": chat})
                lengths.append(len(chat_ids(tokenizer, chat)))
    return plan, lengths


def _run_worker(python: str, name: str, algo: str, args: argparse.Namespace, data: Path, model_dir: Path,
                work: Path) -> dict:
    out = work / f"{name}-{algo}.json"
    cmd = [python, str(Path(__file__).resolve()), "--worker", name, "--algo", algo, "--data", str(data),
           "--model-dir", str(model_dir), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--max-new-tokens", str(args.max_new_tokens), "--out", str(out), "--workdir", str(work / f"{name}-{algo}")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    if name == "trl":  # the package's judge and prompt code from this checkout, rapidfuzz linked beside it
        import rapidfuzz

        lib = work / "pylib"
        lib.mkdir(exist_ok=True)
        if not (lib / "rapidfuzz").exists():
            (lib / "rapidfuzz").symlink_to(Path(rapidfuzz.__file__).parent)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(lib)])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        how = f"killed by signal {-proc.returncode} (SIGKILL is usually the OOM killer)" if proc.returncode < 0 \
            else f"exit status {proc.returncode}"
        sys.exit(f"{name} {algo} worker failed, {how} ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trl-python", default=str(TRL_PYTHON) if TRL_PYTHON.exists() else sys.executable,
                        help="a python with trl installed (default: .venv-trl/bin/python, built by `make bench`)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps first (at least 1: ours plays its first rollout before training starts)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per speech (fixed length)")
    parser.add_argument("--algos", nargs="+", choices=["grpo", "online_dpo"], default=["grpo", "online_dpo"])
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--algo", choices=["grpo", "online_dpo"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if args.worker:
        result = worker_ours(args) if args.worker == "ours" else worker_trl(args)
        Path(args.out).write_text(json.dumps(result))
        return

    sys.path.insert(0, str(ROOT))
    from debate_lightning.models.embedded import prepare

    model_dir = prepare()
    plan, lengths = build_plan(args.warmup + args.steps, model_dir)
    per_step = 2 * ROUNDS
    print(f"single-turn opening speeches: {per_step} prompts per step (~{sum(lengths) / len(lengths):.0f} tokens), "
          f"{args.max_new_tokens} tokens per speech (fixed), GRPO G={GROUP['grpo']}, online DPO 2 per prompt; "
          f"judge = the base weights, both orders; fp32, LoRA r=8 q,v; {args.warmup} warm-up + {args.steps} timed steps",
          flush=True)
    ratios = {}
    with tempfile.TemporaryDirectory(prefix="online_vs_trl-") as tmp:
        work = Path(tmp)
        data = work / "plan.json"
        data.write_text(json.dumps(plan))
        for algo in args.algos:
            # the tokens both sides process in the timed steps: prompt + speech per sampled sequence
            timed = lengths[args.warmup * per_step:]
            expected = sum(GROUP[algo] * (n + args.max_new_tokens) for n in timed)
            rates = {}
            for name, python in (("ours", sys.executable), ("trl", args.trl_python)):
                r = _run_worker(python, name, algo, args, data, model_dir, work)
                steps = r["steps"]
                seconds = sum(s["seconds"] for s in steps)
                tokens = sum(s["tokens"] for s in steps)
                if tokens != expected:
                    print(f"  note: {name} {algo} processed {tokens} tokens, expected {expected}", flush=True)
                rates[name] = tokens / seconds
                n = len(steps)
                gen, judge = sum(s["generate"] for s in steps) / n, sum(s["judge"] for s in steps) / n
                print(f"{algo:>10} {name:>4}: {rates[name]:8.1f} tokens/s   {seconds / n:7.2f} s/step   peak RSS "
                      f"{r['peak_rss_mb']:7.0f} MB   (per step: generate {gen:.1f} s, judge {judge:.1f} s, "
                      f"train+rest {seconds / n - gen - judge:.1f} s; start-up + warm-up {r['startup_seconds']:.1f} s)", flush=True)
            ratios[algo] = rates["ours"] / rates["trl"]
    for algo, ratio in ratios.items():
        print(f"{algo} ratio: {ratio:.2f}")
    print(f"ratio: {min(ratios.values()):.2f}")


if __name__ == "__main__":
    main()
