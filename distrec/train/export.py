"""Unsharded model exports: what scoring, evaluation and warm starts on another topology load.

An export is a directory with ``model.json`` (architecture, sizes and the dataset manifest) and
``weights.pt`` (a plain state dict of tensors, loaded with ``weights_only=True``).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from distrec.config import ModelConfig
from distrec.data.schema import Manifest
from distrec.errors import CheckpointError
from distrec.io import atomic_file, atomic_write_json
from distrec.models.architectures import Recommender, model_from_config

SPEC = "model.json"
WEIGHTS = "weights.pt"


def gather_state_dict(module: nn.Module, prefix: str) -> dict[str, torch.Tensor] | None:
    """Collect a sharded module's full state on rank 0 (every rank must call this); None elsewhere.

    Only keys under ``prefix`` are kept, with the prefix removed (e.g. ``model.`` to drop the
    objective wrapper and keep the model).
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    out: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        if not key.startswith(prefix):
            continue
        if isinstance(value, ShardedTensor):
            full = torch.empty(value.size(), dtype=value.dtype) if rank == 0 else None
            value.gather(dst=0, out=full)
            tensor = full
        else:
            tensor = value.detach().cpu()
        if rank == 0:
            assert tensor is not None  # rank 0 gathers into ``full``
            out[key[len(prefix) :]] = tensor.clone()
    return out if rank == 0 else None


def export_spec(spec: ModelConfig) -> dict[str, Any]:
    """What ``model.json`` records of a model: enough to rebuild it with ``model_from_config``."""
    return {
        "name": spec.name,
        "arch": spec.arch,
        "dim": spec.dim,
        "hidden": list(spec.hidden),
        "mediator_dropout": spec.mediator_dropout,
    }


def write_export(directory: Path, spec: dict[str, Any], manifest: Manifest, state: dict[str, torch.Tensor]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_file(directory / WEIGHTS) as f:  # streamed: no second in-memory copy of large tables
        torch.save(state, f)
    atomic_write_json(directory / SPEC, {**spec, "manifest": manifest.to_json()})


def read_export(directory: str | Path, mmap: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An export's spec and its unsharded weights (tensors only: ``weights_only=True``).

    With ``mmap`` the tensors are mapped, not read: a cheap check of a whole export before Ray starts.
    """
    directory = Path(directory)
    spec_path, weights_path = directory / SPEC, directory / WEIGHTS
    for path in (spec_path, weights_path):
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; is {directory} a distrec model export?")
    try:
        spec = json.loads(spec_path.read_text())
        state = torch.load(weights_path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{weights_path}: holds pickled objects, not only tensors; refused (loaded with weights_only=True)"
        ) from exc
    except (ValueError, RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{directory}: unreadable model export: {str(exc).splitlines()[0]}") from exc
    if not isinstance(spec, dict) or not {"name", "arch", "dim", "hidden", "manifest"} <= set(spec):
        raise CheckpointError(f"{spec_path}: not a distrec model spec (needs name, arch, dim, hidden, manifest)")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{weights_path}: not a state dict of tensors")
    return spec, state


def load_export(directory: str | Path) -> tuple[Recommender, dict[str, Any], Manifest]:
    """Rebuild an exported model on CPU, unsharded, in eval mode."""
    spec, state = read_export(directory)
    manifest = Manifest(**spec["manifest"])
    config = ModelConfig(
        name=spec["name"],
        arch=spec["arch"],
        dim=spec["dim"],
        hidden=list(spec["hidden"]),
        mediator_dropout=float(spec.get("mediator_dropout", 0.0)),
    )
    model = model_from_config(config, manifest, torch.device("cpu"))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{directory}: cannot be loaded into {spec['arch']!r}: {exc}") from exc
    model.eval()
    return model, spec, manifest


def load_unsharded(module: nn.Module, state: dict[str, torch.Tensor], prefix: str) -> None:
    """Copy an unsharded export into a (possibly sharded) module in place: a warm start.

    Each rank copies only the slices its local shards cover, so an export taken on any world size
    or sharding plan loads into any other. ``prefix`` is the module path of the model inside
    ``module`` (``model.`` under the training objective), as in ``gather_state_dict``.
    """
    targets = {k[len(prefix) :]: v for k, v in module.state_dict().items() if k.startswith(prefix)}
    missing, unexpected = sorted(set(targets) - set(state)), sorted(set(state) - set(targets))
    if missing or unexpected:
        raise CheckpointError(
            f"warm start: export does not match the model: missing {missing}, unexpected {unexpected}"
        )
    with torch.no_grad():
        for key, target in targets.items():
            source = state[key]
            if tuple(source.shape) != tuple(target.size()):
                raise CheckpointError(
                    f"warm start: {key} has shape {tuple(source.shape)}, the model {tuple(target.size())}"
                )
            if isinstance(target, ShardedTensor):
                for shard in target.local_shards():
                    meta = shard.metadata
                    index = tuple(slice(o, o + s) for o, s in zip(meta.shard_offsets, meta.shard_sizes, strict=True))
                    shard.tensor.copy_(source[index])
            else:
                target.copy_(source)
