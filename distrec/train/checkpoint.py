"""Sharded checkpoints with ``torch.distributed.checkpoint``: model, optimizer states, position.

Every rank writes its own shards (``__<rank>_0.distcp``) into a local directory and reports it to
Ray Train under one shared checkpoint name, so Ray merges the ranks' files into one checkpoint in
run storage. Only tensors are saved: DCP unpickles non-tensor values on load, and nothing
unpickled may come from storage. Optimizer hyper-parameters come from the config instead.

Resuming needs the same world size and sharding plan; the unsharded export (``export.py``) is
the topology-independent copy used for scoring and warm starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from distrec.errors import CheckpointError
from distrec.train.objective import Loss


def _tensors(tree: Any, path: str = "") -> dict[str, Any]:
    """Flatten an optimizer state tree to ``{dotted.key: tensor}``; anything else is an error."""
    if isinstance(tree, torch.Tensor | ShardedTensor):
        return {path: tree}
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_tensors(value, f"{path}.{key}" if path else str(key)))
        return out
    raise CheckpointError(f"optimizer state {path!r} is a {type(tree).__name__}, not a tensor")


def _state(model: nn.Module, optimizer: Any, progress: torch.Tensor, rank: int) -> dict[str, Any]:
    state = {
        "model": model.state_dict(),
        "optim": _tensors(optimizer.state_dict()["state"]),
        f"progress_rank{rank}": progress,  # per-rank: DCP saves same-named plain tensors once
    }
    # the CRL critic's own Adam, outside the main optimiser; a replica kept identical on every rank
    critics = [opt for m in model.modules() if isinstance(m, Loss) and (opt := m.critic_optimizer()) is not None]
    if critics:
        state["critic_optim"] = _tensors(critics[0].state_dict()["state"])
    return state


def save(model: nn.Module, optimizer: Any, progress: torch.Tensor, directory: Path, group: dist.ProcessGroup) -> None:
    """Every rank calls this; ``progress`` is this rank's position (``distrec.train.loop.Progress``)."""
    state = _state(model, optimizer, progress, dist.get_rank())
    dcp.save(state, checkpoint_id=str(directory), process_group=group)


def load(
    model: nn.Module, optimizer: Any, directory: Path, group: dist.ProcessGroup, progress: torch.Tensor
) -> torch.Tensor:
    """Restore model and optimizer state in place from ``directory``; returns this rank's progress,
    read into a tensor shaped like ``progress``."""
    if not (directory / ".metadata").is_file():
        raise CheckpointError(f"{directory}: not a complete distributed checkpoint (no .metadata)")
    optimizer.init_state()  # materialise optimizer state so DCP can load into it
    rank = dist.get_rank()
    state = _state(model, optimizer, progress.clone(), rank)
    dcp.load(state, checkpoint_id=str(directory), process_group=group)
    model.load_state_dict(state["model"])
    return state[f"progress_rank{rank}"]
