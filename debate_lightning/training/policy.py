"""The trainable policy: construction (LoRA, checkpointing) and prefix-shared log-probs.

Public API (the SFT, DPO, online-DPO and PPO modules all build on it):

``LoraSpec(r, alpha, dropout, target_modules)``
    LoRA settings; ``None`` in their place means a full fine-tune.
``build_policy(model, lora, dtype, gradient_checkpointing, adapter, load_in_4bit) -> (model, tokenizer)``
    Loads ``embedded``, a directory, a hub id or a GGUF file, wraps it in PEFT LoRA when asked
    and turns on gradient checkpointing. The model comes back in train mode, ``use_cache`` off.
``adapters_disabled(model)``
    Context manager: inside it a PEFT model is its base model, i.e. the reference policy.
    A model without adapters is returned unchanged (use a frozen copy as reference instead).
``pack(prompts, completions, pad_id, share_prefixes=False) -> PackedBatch``
    Packs each prompt ONCE followed by its K completions in one row. Completion k sees the
    prompt and itself only (a 4D attention mask hides the other completions) and its position
    ids continue from the prompt's end, so each completion is scored exactly as if it had been
    concatenated to the prompt alone, but the prompt is computed once for all K. With
    ``share_prefixes``, examples whose prompts share a prefix (both debaters of a round: the
    story) share a row, the prefix once and each prompt's rest after it.
``completion_logps(model, batch) -> [B, K, Lc]``
    Per-token log-probs of the completion tokens (0 at padding; ``batch.completion_mask`` tells
    which are real). The vocabulary projection runs only at positions that predict completion
    tokens: prompt positions never pay for the (large) LM head.
``save_adapter(model, directory)``
    Writes PEFT adapters (``adapter_model.safetensors`` + config) or, for a full fine-tune, the
    weights as safetensors.
``PolicyConfig``, ``OptimConfig``
    The two argument groups every training module takes (``policy:`` and ``optim:`` in a
    config): which model to train and how, and AdamW with its schedule.
``PolicyModule``
    The LightningModule base of SFT/DPO (and online DPO/PPO): builds the policy, AdamW + warmup
    schedule, ``track()`` metrics reduced once per optimizer step across micro-batches and ranks
    (TRL names), checkpoints of trainable weights + RNG state, NaN guard, adapter export, and a
    DDP replica check. Subclasses write ``training_step``.

Tokenisation helpers ``prompt_ids(tokenizer, chat)`` and ``completion_ids(tokenizer, text)``
render a chat with the model's template (ending with the assistant prompt) and a completion
followed by the end-of-turn token. They are the models floor's ``chat_ids``/``text_ids``, so a
rollout's prompt and a preference file's prompt tokenise the same way.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch

from lightning.pytorch.strategies import ModelParallelStrategy

from debate_lightning import accel
from debate_lightning.models.chat import chat_ids, text_ids
from debate_lightning.models.kv import common_prefix
from debate_lightning.models.loading import load_model_and_tokenizer
from debate_lightning.training.sharding import (full_state, full_tensor, grad_norm, is_sharded, shard_model,
                                                shard_trainable_rest)


@dataclass
class LoraSpec:
    """LoRA adapter settings (Hu et al. 2021).

    Attributes:
        r: adapter rank.
        alpha: scaling numerator; the update is scaled by alpha / r.
        dropout: dropout on the adapter input.
        target_modules: names of the linear layers that get adapters (``q_proj``, ``v_proj``, …,
            or ``all-linear``).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


SCHEDULERS = ("constant", "linear", "cosine")


@dataclass
class PolicyConfig:
    """The policy to train: ``policy:`` in every training config.

    Attributes:
        model: ``embedded``, a model directory, a hub id or a GGUF file.
        lora: LoRA settings; null for a full fine-tune (then the reference must be ``copy``).
        adapter: start from this PEFT adapter directory (e.g. an SFT or DPO run's ``adapter``).
        dtype: weight dtype (``float32`` on CPU; use trainer.precision ``bf16-mixed`` on GPUs).
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        load_in_4bit: quantise the base to 4-bit NF4 (bitsandbytes, CUDA only).
        save_adapter: write the adapters (or full weights) as safetensors beside the run's
            config.yaml at the end of fit.
    """

    model: str = "embedded"
    lora: LoraSpec | None = field(default_factory=LoraSpec)
    adapter: str | None = None
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    load_in_4bit: bool = False
    save_adapter: bool = True


@dataclass
class OptimConfig:
    """AdamW over the trainable parameters and its learning-rate schedule: ``optim:`` in a config.

    Attributes:
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warmup over this many optimizer steps.
        scheduler: after warmup, ``constant``, or ``linear``/``cosine`` decay to 0 at the run's
            last step (these need a run of known length: not for online objectives).
    """

    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    scheduler: Literal["constant", "linear", "cosine"] = "constant"

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:  # jsonargparse checks the Literal; Python callers do not
            raise ValueError(f"optim.scheduler: unknown scheduler {self.scheduler!r}; choose one of {SCHEDULERS}")


def build_policy(
    model: str = "embedded",
    lora: LoraSpec | None = None,
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    adapter: str | None = None,
    load_in_4bit: bool = False,
    trust_remote_code: bool = False,
) -> tuple[torch.nn.Module, Any]:
    """Load a causal LM for training; see the module docstring."""
    base, tokenizer = load_model_and_tokenizer(model, dtype=dtype, device="cuda" if load_in_4bit else "cpu",
                                               trust_remote_code=trust_remote_code, load_in_4bit=load_in_4bit)
    if load_in_4bit:  # QLoRA: norms in fp32, input grads on for adapters over frozen 4-bit weights
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    base.config.use_cache = False
    if gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy: torch.nn.Module = base
    if adapter is not None:
        from peft import PeftModel

        if not Path(adapter).is_dir():
            raise FileNotFoundError(f"PEFT adapter directory {adapter} does not exist")
        policy = PeftModel.from_pretrained(base, adapter, is_trainable=True)
    elif lora is not None:
        from peft import LoraConfig, get_peft_model

        targets: Any = lora.target_modules
        if targets == ["all-linear"]:
            targets = "all-linear"
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                            task_type="CAUSAL_LM")
        policy = get_peft_model(base, config)
    # No CPU acceleration here: the policy's device is not known yet (PolicyModule.setup knows it).
    policy.train()
    return policy, tokenizer


def has_adapters(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The base model (the reference policy) for the duration; a plain model is yielded as is."""
    if has_adapters(model):
        with model.disable_adapter():  # type: ignore[operator]
            yield model
    else:
        yield model


def save_adapter(model: torch.nn.Module, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """PEFT adapters (or full weights) as safetensors in ``directory``; returns the directory.
    ``state_dict``: whole tensors to write instead of the model's own (a sharded model's, gathered)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    extra = {} if state_dict is None else {"state_dict": state_dict}
    model.save_pretrained(directory, safe_serialization=True, **extra)  # type: ignore[operator]
    return directory


# -- tokenisation -------------------------------------------------------------------------------
def prompt_ids(tokenizer: Any, chat: Sequence[dict[str, str]]) -> list[int]:
    """The chat rendered with the model's template, ending with the assistant prompt."""
    return chat_ids(tokenizer, list(chat))


def completion_ids(tokenizer: Any, text: str, eos: bool = True) -> list[int]:
    """The completion's tokens, followed by the end-of-turn (EOS) token when ``eos``."""
    return text_ids(tokenizer, text, eos=eos)


# -- packing ------------------------------------------------------------------------------------
@dataclass
class PackedBatch:
    """B examples of ``prompt + completion_1 + … + completion_K``, packed in R ≤ B right-padded rows.

    A row holds a prompt once with all its completions; with ``share_prefixes`` it holds several
    examples whose prompts share a prefix (the two debaters of one round share the story), the
    prefix once. ``row_of[b]`` is example b's row. ``attention_mask`` is [R, 1, L, L] bool (True =
    may attend) when a row holds more than one sequence, else [R, L]. ``predict_at[b, k, j]`` is
    the position (in row ``row_of[b]``) whose logits predict ``targets[b, k, j]``, the j-th token of
    completion k; ``completion_mask`` is 1 on real completion tokens.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    predict_at: torch.Tensor
    targets: torch.Tensor
    completion_mask: torch.Tensor
    row_lengths: torch.Tensor
    row_of: torch.Tensor

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(**{k: v.to(device) for k, v in self.__dict__.items()})

    def rows(self, index: torch.Tensor | Sequence[int]) -> PackedBatch:
        """The examples ``index`` (in that order) as a batch of their own, with the rows they use in
        the order they first use them (unshared rows: row i is example ``index[i]``)."""
        device = self.input_ids.device
        index = torch.as_tensor(index, dtype=torch.long, device=device)
        rows = self.row_of.index_select(0, index).tolist()
        renumber = {r: j for j, r in enumerate(dict.fromkeys(rows))}  # old row -> new, in first use
        physical = ("input_ids", "attention_mask", "position_ids", "row_lengths")
        used = torch.tensor(list(renumber), dtype=torch.long, device=device)
        parts = {k: v.index_select(0, used if k in physical else index) for k, v in self.__dict__.items()}
        parts["row_of"] = torch.tensor([renumber[r] for r in rows], dtype=torch.long, device=device)
        return PackedBatch(**parts)

    @property
    def completion_lengths(self) -> torch.Tensor:
        """[B, K] number of tokens in each completion."""
        return self.completion_mask.sum(-1)

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens in the packed rows."""
        return int(self.row_lengths.sum())


def _share_rows(prompts: Sequence[Sequence[int]], sizes: Sequence[int]) -> list[tuple[int, list[int]]]:
    """Group examples into rows of (shared prefix length, members), greedily in order.

    An example joins the row it shares the longest prefix with, if that prefix is at least half of
    its prompt and the row stays within twice the longest example (padding and attention stay
    bounded); otherwise it opens a row of its own, its whole prompt the row's prefix.
    """
    limit = 2 * max(sizes)
    rows: list[tuple[int, list[int]]] = []
    for i, p in enumerate(prompts):
        best, best_shared = None, 0
        for r, (shared, members) in enumerate(rows):
            common = common_prefix(prompts[members[0]], p, limit=shared)
            if 2 * common < len(p) or common <= best_shared:
                continue
            length = common + sum(sizes[m] - common for m in [*members, i])
            if length <= limit:
                best, best_shared = r, common
        if best is None:
            rows.append((len(p), [i]))
        else:
            rows[best] = (best_shared, [*rows[best][1], i])
    return rows


def pack(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]], pad_id: int,
         share_prefixes: bool = False) -> PackedBatch:
    """Pack each prompt once with its completions (and, with ``share_prefixes``, prompts that share
    a prefix in one row, the prefix once); see :class:`PackedBatch`."""
    if len(prompts) != len(completions):
        raise ValueError(f"pack: {len(prompts)} prompts but {len(completions)} completion groups")
    K = len(completions[0])
    if any(len(c) != K for c in completions):
        raise ValueError("pack: every prompt needs the same number of completions")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("pack: a prompt is empty; the first completion token needs a prompt token before it")
    B = len(prompts)
    sizes = [len(p) + sum(len(c) for c in cs) for p, cs in zip(prompts, completions)]
    layout = _share_rows(prompts, sizes) if share_prefixes else [(len(p), [b]) for b, p in enumerate(prompts)]
    R = len(layout)
    L = max(shared + sum(sizes[m] - shared for m in members) for shared, members in layout)
    Lc = max(1, max(len(c) for cs in completions for c in cs))
    input_ids = torch.full((R, L), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, L), dtype=torch.long)
    # segments: 0 the shared prefix, then per member its prompt's rest and each completion; a token
    # sees its own segment (causally), the prefix, and its parent segment (a completion's prompt)
    segment = torch.full((R, L), -1, dtype=torch.long)
    parent = torch.full((R, L), -2, dtype=torch.long)
    row_of = torch.zeros(B, dtype=torch.long)
    predict_at = torch.zeros((B, K, Lc), dtype=torch.long)
    targets = torch.zeros((B, K, Lc), dtype=torch.long)
    completion_mask = torch.zeros((B, K, Lc), dtype=torch.long)
    for r, (shared, members) in enumerate(layout):
        input_ids[r, :shared] = torch.tensor(prompts[members[0]][:shared])
        position_ids[r, :shared] = torch.arange(shared)
        segment[r, :shared] = 0
        start = shared
        for j, b in enumerate(members):
            row_of[b] = r
            p, P = prompts[b], len(prompts[b])
            own = 1 + j * (K + 1)  # this member's prompt segment; its completions follow
            input_ids[r, start : start + P - shared] = torch.tensor(p[shared:], dtype=torch.long)
            position_ids[r, start : start + P - shared] = torch.arange(shared, P)
            segment[r, start : start + P - shared] = own
            parent[r, start : start + P - shared] = 0
            start += P - shared
            last = start - 1 if P > shared else shared - 1  # where the prompt's last token sits
            for k, c in enumerate(completions[b]):
                n = len(c)
                if n == 0:
                    continue
                input_ids[r, start : start + n] = torch.tensor(c)
                position_ids[r, start : start + n] = torch.arange(P, P + n)
                segment[r, start : start + n] = own + 1 + k
                parent[r, start : start + n] = own
                # token j of the completion is predicted by the logits at the previous token of the
                # same sequence: the prompt's last token for j = 0, the completion's own j-1 after.
                predict_at[b, k, 0] = last
                predict_at[b, k, 1:n] = torch.arange(start, start + n - 1)
                targets[b, k, :n] = torch.tensor(c)
                completion_mask[b, k, :n] = 1
                start += n
    if K == 1 and R == B:
        attention_mask = (segment >= 0).long()
    else:
        causal = torch.ones((L, L), dtype=torch.bool).tril()
        same = segment[:, :, None] == segment[:, None, :]
        prefix_kv = (segment == 0)[:, None, :]
        from_parent = parent[:, :, None] == segment[:, None, :]
        # padding queries see earlier padding and the prefix (never an empty row, which gives NaN)
        attention_mask = (causal & (same | prefix_kv | from_parent))[:, None]
    row_lengths = (segment >= 0).sum(-1)
    return PackedBatch(input_ids, attention_mask, position_ids, predict_at, targets, completion_mask, row_lengths,
                       row_of)


def _decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    return base.get_decoder(), base.get_output_embeddings()


def completion_logps(model: torch.nn.Module, batch: PackedBatch, temperature: float = 1.0) -> torch.Tensor:
    """[B, K, Lc] log-probs of each completion token under ``model`` (0 at padding), with the
    logits divided by ``temperature`` (an online objective's sampling temperature, as TRL does)."""
    mask = batch.attention_mask
    if mask.dim() == 4 and getattr(model.config, "_attn_implementation", "sdpa") != "sdpa":
        # eager attention adds the mask to the scores: 0 where allowed, -inf-ish elsewhere
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    B, K, Lc = batch.targets.shape
    real = batch.completion_mask.bool()
    rows = batch.row_of[:, None, None].expand(B, K, Lc)[real]
    if is_sharded(model):
        # FSDP: enter through the root, whose unit gathers the embeddings and head; the LM head
        # runs at the positions some row predicts a completion token from (``logits_to_keep``)
        keep = torch.unique(batch.predict_at[real])
        out = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                    use_cache=False, logits_to_keep=keep)
        logits = out.logits[rows, torch.searchsorted(keep, batch.predict_at[real])].float()
    else:
        decoder, head = _decoder_and_head(model)
        hidden = decoder(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                         use_cache=False).last_hidden_state
        h = hidden[rows, batch.predict_at[real]]  # [N, H]: only positions that predict completion tokens
        logits = head(h).float()
    if temperature != 1.0:
        logits = logits / temperature
    token_logps = logits.gather(-1, batch.targets[real][:, None]).squeeze(-1) - logits.logsumexp(-1)
    out = torch.zeros((B, K, Lc), dtype=token_logps.dtype, device=logits.device)
    out[real] = token_logps
    return out


# -- the LightningModule base -------------------------------------------------------------------
class PolicyModule(L.LightningModule):
    """What every policy-training module shares; subclasses write ``training_step``.

    - builds the policy (``self.policy``, ``self.tokenizer``) from ``PolicyConfig``;
    - on a CPU device, hands it to the accel door (packed oneDNN weights for its frozen
      linears); other devices get the plain model;
    - AdamW over every trainable parameter, with warmup then a constant/linear/cosine schedule;
    - metrics: call ``self.track(name, sum, count)`` per micro-batch; the sums are reduced
      across micro-batches and ranks and logged ONCE per optimizer step (with ``grad_norm``,
      the pre-clipping norm, and ``learning_rate``), so accumulation and DDP do not skew them;
    - checkpoints hold only trainable parameters (LoRA: a few MB); frozen weights come from
      ``model`` on load, so ``strict_loading`` is off;
    - at the end of fit, rank 0 writes the adapters (or full weights) as safetensors to
      ``<log_dir>/adapter``, beside the ``config.yaml`` that LightningCLI saves there;
    - ``check_finite(loss, batch_idx)`` stops the run with an error naming the step.

    Subclasses call ``self._save_hparams()`` at the end of their ``__init__``.
    """

    def __init__(self, policy: PolicyConfig, optim: OptimConfig):
        super().__init__()
        self.policy_config, self.optim = policy, optim
        self.policy, self.tokenizer = build_policy(policy.model, policy.lora, policy.dtype,
                                                   policy.gradient_checkpointing, policy.adapter, policy.load_in_4bit)
        self.strict_loading = False
        self._sums: dict[str, list[torch.Tensor]] = {}

    def _save_hparams(self) -> None:
        # Dataclasses in a checkpoint would need pickle to load: store plain JSON-able values.
        self.save_hyperparameters(ignore=["policy", "optim"])
        self.hparams["policy"] = asdict(self.policy_config)
        self.hparams["optim"] = asdict(self.optim)

    def setup(self, stage: str) -> None:
        # Lightning has chosen the device by now but not moved the model yet, so ask the strategy.
        # Only a CPU policy is prepared: a CUDA user's linears stay plain nn.Linear; nor is a
        # policy FSDP will shard (the engine's packed weights are no shards).
        if self.trainer.strategy.root_device.type == "cpu" and not isinstance(self.trainer.strategy, ModelParallelStrategy):
            accel.prepare_training(self.policy)
            # a ``reference: copy`` (DPO, online DPO, PPO) is a second full model, frozen: prepare it too
            frozen_copy = getattr(getattr(self, "reference", None), "copy", None)
            if frozen_copy is not None:
                accel.prepare_training(frozen_copy)

    def configure_model(self) -> None:
        """Under FSDP (``strategies/fsdp.yaml``): shard the policy's decoder blocks and the rest
        (and a frozen reference copy the same way). Other strategies leave the model whole."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or is_sharded(self.policy):
            return
        shard_model(self.policy, mesh["data_parallel"])
        frozen_copy = getattr(getattr(self, "reference", None), "copy", None)
        if frozen_copy is not None:
            shard_model(frozen_copy, mesh["data_parallel"])
        shard_trainable_rest(self, mesh["data_parallel"])  # e.g. PPO's value head: one unit each

    # -- metrics ---------------------------------------------------------------------------------
    def track(self, name: str, total: torch.Tensor | float, count: torch.Tensor | float) -> None:
        """Add ``total`` over ``count`` items (examples or tokens) to metric ``name`` for this step."""
        total = torch.as_tensor(total, dtype=torch.float64, device=self.device).detach()
        count = torch.as_tensor(count, dtype=torch.float64, device=self.device)
        if name in self._sums:
            self._sums[name][0] += total
            self._sums[name][1] += count
        else:
            self._sums[name] = [total.clone(), count.clone()]

    def track_means(self, values: dict[str, torch.Tensor]) -> None:
        """Track per-example values (``[B]`` each) so each logs as its mean over the step's examples."""
        for name, v in values.items():
            self.track(name, v.detach().sum(), v.shape[0])

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        names = sorted(self._sums)
        metrics = {"grad_norm": grad_norm(self.parameters(), self.device), "learning_rate": torch.tensor(optimizer.param_groups[0]["lr"])}
        if names:
            stacked = torch.stack([torch.stack(self._sums[n]) for n in names])  # [M, 2]
            stacked = self.trainer.strategy.reduce(stacked, reduce_op="sum")
            for n, (total, count) in zip(names, stacked):
                metrics[n] = (total / count.clamp(min=1)).float()
        self._sums = {}
        self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False, sync_dist=False, batch_size=1)

    def check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"training loss is {loss.item()} at global step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}); stopping. Lower the learning rate, or check that batch's data.")

    # -- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        # every trainable parameter of the module: the policy's, and e.g. PPO's value head
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        warmup, kind = self.optim.warmup_steps, self.optim.scheduler
        # Only a decay needs the run's length; asking for it makes the fit loop open the training
        # stream early, which online objectives must avoid (their stream plays the epoch's rollout).
        total = 1
        if kind != "constant" and self._trainer is not None:
            total = max(1, int(self.trainer.estimated_stepping_batches))

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            if kind == "linear":
                return 1.0 - progress
            if kind == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * progress))
            return 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints and export ------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["rng"] = _rng_state()  # Lightning does not keep RNG state; exact resume needs it

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng" in checkpoint:
            _set_rng_state(checkpoint["rng"])

    def on_train_end(self) -> None:
        root = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if self.trainer.world_size > 1:
            self._check_replicas(root)
        if self.policy_config.save_adapter:
            state = None  # a sharded policy is gathered whole first, on every rank
            if is_sharded(self.policy):
                state = full_state(self.policy, trainable_only=has_adapters(self.policy))
            if self.trainer.is_global_zero:
                save_adapter(self.policy, root / "adapter", state)

    def _check_replicas(self, root: Path) -> None:
        """Replicas must hold bitwise-identical weights; compare per-tensor sums across ranks. Under
        FSDP each rank holds shards, so the sums are of the whole tensors (gathered)."""
        trainable = [p.detach() for p in self.parameters() if p.requires_grad]  # the policy's, a value head's
        mine = torch.stack([full_tensor(p).double().sum() for p in trainable])
        every = self.all_gather(mine).reshape(self.trainer.world_size, -1)
        if self.trainer.is_global_zero:
            root.mkdir(parents=True, exist_ok=True)
            (root / "replica_fingerprints.json").write_text(json.dumps(every.tolist()))
        if not bool((every == every[0]).all()):
            raise RuntimeError(f"DDP replicas diverged: trainable weights differ between ranks (see {root})")


def _rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss]}


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))
