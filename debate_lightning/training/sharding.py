"""Fully sharded data parallel (FSDP2) for policies: what changes when parameters are shards.

``FSDPStrategy`` is Lightning's ``ModelParallelStrategy`` with every process in one data-parallel
group (no tensor parallelism), so ``--config strategies/fsdp.yaml`` needs no sizes and runs the
same on 2 CPU processes (gloo) and on N GPUs (NCCL). The strategy calls the LightningModule's
``configure_model``, where ``PolicyModule`` calls ``shard_model``: ``fully_shard`` on every
decoder block (the classes the model names in ``_no_split_modules``, e.g. ``LlamaDecoderLayer``),
then on the whole model, whose own unit holds the rest (embeddings, final norm, a tied LM head).
LoRA adapters live inside the blocks and are sharded with them; FSDP2 keeps frozen and trainable
parameters in one unit.

With sharded parameters (``DTensor``), three things the rest of ``training/`` does change:

- a forward must enter through the root module, so its unit gathers the parameters it holds
  (``completion_logps`` does so under FSDP);
- the gradient norm sums the squares of every rank's shards (``grad_norm``);
- exports and replica checks read whole tensors (``full_tensor``, ``full_state``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor


class FSDPStrategy(ModelParallelStrategy):
    """FSDP2 over every process (data parallel = world size, tensor parallel = 1).

    Args:
        save_distributed_checkpoint: each rank writes its shard (a checkpoint directory); false:
            rank 0 gathers one file (needs the whole model in its CPU memory).
        process_group_backend: ``nccl`` / ``gloo``; default: by device.
    """

    def __init__(self, save_distributed_checkpoint: bool = True, process_group_backend: str | None = None):
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """A sharded checkpoint holds what ``PolicyModule`` saves: the trainable weights only (the
        frozen base is the model's own). Lightning's loader asks the checkpoint for every weight
        of the model; this one loads those it holds, then the optimizer states and the metadata."""
        from torch.distributed.checkpoint import FileSystemReader, load
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(self.broadcast(checkpoint_path))
        if not path.is_dir():  # one gathered file (save_distributed_checkpoint: false)
            return super().load_checkpoint(path, weights_only=weights_only)
        saved = set(FileSystemReader(path).read_metadata().state_dict_metadata)
        model_state = {k: v for k, v in get_model_state_dict(self.model).items() if f"state_dict.{k}" in saved}
        if not model_state:
            raise ValueError(f"checkpoint {path} holds no weight of this model (another model or task?)")
        load({"state_dict": model_state}, checkpoint_id=path)
        set_model_state_dict(self.model, model_state, options=StateDictOptions(strict=False))
        for i, optimizer in enumerate(self.optimizers):
            state = {f"optimizer_{i}": get_optimizer_state_dict(self.model, optimizer)}
            load(state, checkpoint_id=path)
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=state[f"optimizer_{i}"],
                                     options=StateDictOptions(cpu_offload=True))
        return torch.load(path / "meta.pt", weights_only=weights_only)  # the loops, callbacks and RNG states


def block_classes(model: torch.nn.Module) -> set[str]:
    """The decoder block class names of a (PEFT-wrapped) transformers model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    names = set(getattr(base, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(f"{type(base).__name__} names no decoder block class (_no_split_modules), so FSDP cannot "
                         "tell which modules to shard one by one")
    return names


def shard_model(model: torch.nn.Module, mesh: Any) -> int:
    """``fully_shard`` each decoder block, then the model itself; returns the number of blocks."""
    from torch.distributed.fsdp import fully_shard

    names = block_classes(model)
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"no module of class {sorted(names)} in {type(model).__name__}: nothing to shard")
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return len(blocks)


def shard_trainable_rest(module: torch.nn.Module, mesh: Any) -> None:
    """``fully_shard`` each child of ``module`` that has trainable weights and is not sharded yet
    (a value head beside the policy): FSDP then averages its gradients too, as DDP would."""
    from torch.distributed.fsdp import fully_shard

    for child in module.children():
        if not is_sharded(child) and any(p.requires_grad for p in child.parameters()):
            fully_shard(child, mesh=mesh)


def is_sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every rank must call it), a plain tensor as is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def grad_norm(params: Iterable[torch.nn.Parameter], device: torch.device) -> torch.Tensor:
    """The global L2 norm of the gradients: sharded ones summed over the ranks' shards, plain ones
    (replicated, as under DDP, where they are already averaged) taken as they are."""
    sharded = torch.zeros((), dtype=torch.float32, device=device)
    plain = torch.zeros((), dtype=torch.float32, device=device)
    group = None
    for p in params:
        g = p.grad
        if g is None:
            continue
        if isinstance(g, DTensor):
            sharded = sharded + g.to_local().detach().float().pow(2).sum()
            group = g.device_mesh.get_group()
        else:
            plain = plain + g.detach().float().pow(2).sum()
    if group is not None:
        dist.all_reduce(sharded, group=group)
    return (sharded + plain).sqrt()


def full_state(model: torch.nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """Whole tensors on CPU by name (every rank must call it): the trainable parameters, or with
    ``trainable_only=False`` the whole state dict (rank 0 gets it, others an empty dict)."""
    if trainable_only:
        return {name: full_tensor(p.detach()).cpu() for name, p in model.named_parameters() if p.requires_grad}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # a tied weight (an LM head sharing the embeddings) is one parameter under two names; gathered,
    # its copies no longer share storage, so keep the first name only, as save_pretrained would
    first = {name for name, _ in model.named_parameters()}
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - first
    return {k: v for k, v in state.items() if k not in tied}
