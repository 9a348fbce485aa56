"""Data-parallel wrapping for the trainer under torchrun: DDP, or FSDP2 (``fully_shard``).

``wrap(model, mode, device)`` returns the module a step calls. DDP replicates the student and
all-reduces its gradients. FSDP2 shards parameters, gradients and AdamW state over the ranks:

- units: a GraphModule from ``binattn.binarize`` reads every parameter with ``get_attr`` at
  the top of its ``forward`` and never calls its sub-modules (only the attention sites, which
  own no parameters), so a per-block unit would never see its pre-forward hook: the whole
  model is one unit (parameters gathered for forward and backward, gradients reduce-scattered,
  optimizer state sharded). An eager module gets one unit per repeated block (the elements of
  a ``ModuleList``/``Sequential`` of one non-torch.nn class, e.g. a ViT's ``blocks``), then
  the root.
- before sharding, rank 0's parameters and buffers (HAD's static scales included) are
  broadcast, so every rank starts from one model, as DDP does.
- checkpoints: :func:`full_state` gathers the full model / optimizer state on rank 0 (CPU) in
  the format a one-process run saves (``optimizer.state_dict()``'s numbered parameters);
  :func:`load_full_state` loads that format into the sharded model on every rank, so a
  checkpoint moves between 1 process, DDP and FSDP at any number of ranks.
- :func:`clip_grad_norm` clips by the norm of the whole (sharded) gradient without a host read.

What it does not: launch processes (torchrun), pick devices (``trainer``) or shard the frozen
teacher (it stays a replicated copy on every rank).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError
from .config import PARALLEL_MODES


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (in place)."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def _repeated_blocks(container: nn.Module) -> list[nn.Module]:
    """The elements of a ModuleList / Sequential that are repeated blocks: two or more, one
    class, not a torch.nn layer, owning parameters (an MLP's Linear layers are not blocks)."""
    if not isinstance(container, (nn.ModuleList, nn.Sequential)):
        return []
    owning = [m for m in container if any(True for _ in m.parameters())]
    kinds = {type(m) for m in owning}
    if len(owning) < 2 or len(kinds) != 1 or next(iter(kinds)).__module__.startswith("torch."):
        return []
    return owning


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The sub-modules FSDP2 shards one by one before the root, innermost first (see the
    module docstring): none for a GraphModule, the repeated blocks of an eager model."""
    if isinstance(model, torch.fx.GraphModule):
        return []
    return [b for m in reversed(list(model.modules())) for b in _repeated_blocks(m)]


def wrap(model: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """The student as a step calls it on ``dist.get_world_size()`` ranks."""
    if mode == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if mode != "fsdp":
        raise UserError(f"parallel must be one of {PARALLEL_MODES}, got {mode!r}")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    broadcast_module(model)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` that also takes DTensor (sharded) gradients: the total norm is
    reduced over the ranks as a tensor (a collective, no host read)."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    total = nn.utils.get_total_norm(grads)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def _fqns(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    names = {id(p): name for name, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def _numbered(osd: dict, fqns: list[list[str]]) -> dict:
    """DCP's name-keyed optimizer state as ``optimizer.state_dict()`` numbers it."""
    index = {name: i for i, name in enumerate(n for group in fqns for n in group)}
    groups = [dict(g, params=[index[n] for n in g["params"]]) for g in osd["param_groups"]]
    return {"state": {index[n]: s for n, s in osd["state"].items()}, "param_groups": groups}


def _named(osd: dict, fqns: list[list[str]]) -> dict:
    """``optimizer.state_dict()``'s numbered state keyed by parameter names, for DCP."""
    names = [n for group in fqns for n in group]
    if len(osd["param_groups"]) != len(fqns):
        raise UserError("checkpoint's optimizer does not match this model's parameter groups")
    groups = [dict(g, params=[names[i] for i in g["params"]]) for g in osd["param_groups"]]
    return {"state": {names[int(i)]: s for i, s in osd["state"].items()}, "param_groups": groups}


def full_state(model: nn.Module, optimizer: Optional[torch.optim.Optimizer]
               ) -> tuple[dict[str, Any], Optional[dict]]:
    """(model, optimizer) full state dicts on rank 0's CPU (empty on the other ranks; no
    optimizer state without ``optimizer``); every rank must call it (it gathers)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=options)
    if optimizer is None:
        return msd, None
    osd = get_optimizer_state_dict(model, optimizer, options=options)
    if dist.get_rank() != 0:
        return {}, None
    return msd, _numbered(osd, _fqns(model, optimizer))


def load_full_state(model: nn.Module, optimizer: Optional[torch.optim.Optimizer],
                    model_state: dict, optimizer_state: Optional[dict]) -> None:
    """Load a full checkpoint (as :func:`full_state` or a one-process run wrote it) into the
    sharded ``model`` and its ``optimizer``, on every rank."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         set_model_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True)
    try:
        set_model_state_dict(model, model_state, options=options)
    except RuntimeError as err:
        raise UserError(f"checkpoint does not match this model: {str(err)[:300]} "
                        f"(binarize with the same config)") from None
    if optimizer is not None and optimizer_state is not None:
        named = _named(optimizer_state, _fqns(model, optimizer))
        set_optimizer_state_dict(model, optimizer, named, options=options)


def full_tensors(module: nn.Module, names: set[str]) -> dict[str, torch.Tensor]:
    """The named parameters of ``module`` as full (unsharded) CPU tensors, on every rank."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in module.named_parameters():
        if name in names:
            value = p.full_tensor() if isinstance(p, DTensor) else p
            out[name] = value.detach().cpu().clone()
    return out
