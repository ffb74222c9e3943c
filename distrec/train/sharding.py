"""Sharding plans per device: which TorchRec sharding types each device may use, and the planner.

On CPU TorchRec shards only data-parallel, table-wise, column-wise and table-column-wise (row-wise
needs reduce_scatter, which gloo lacks); GPUs add row-wise and table-row-wise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchrec.distributed.model_parallel import DataParallelWrapper, DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingEnv, ShardingPlan
from torchrec.modules.embedding_configs import BaseEmbeddingConfig

from distrec.errors import ConfigError
from distrec.models.base import embedding_modules, table_configs

CPU_SHARDING_TYPES = ("data_parallel", "table_wise", "column_wise", "table_column_wise")
GPU_SHARDING_TYPES = (*CPU_SHARDING_TYPES, "row_wise", "table_row_wise")
BYTES_PER_FLOAT = 4  # the tables' weights are float32


def supported_sharding_types(device_type: str) -> tuple[str, ...]:
    if device_type == "cpu":
        return CPU_SHARDING_TYPES
    if device_type == "cuda":
        return GPU_SHARDING_TYPES
    raise ConfigError(f"train.device must be 'cpu' or 'cuda', got {device_type!r}")


def allowed_sharding_types(device_type: str, requested: Sequence[str]) -> list[str]:
    """The requested types, checked against the device; by default all but data_parallel.

    data_parallel is left out by default because it replicates tables on every worker: the
    planner would pick it for every small table, and large-table training is the point here.
    """
    supported = supported_sharding_types(device_type)
    if not requested:
        return [t for t in supported if t != "data_parallel"]
    unsupported = [t for t in requested if t not in supported]
    if unsupported:
        raise ConfigError(
            f"train.sharding_types {unsupported} are not available on {device_type}; it supports {list(supported)}"
        )
    return list(requested)


def embedding_configs(model: nn.Module) -> list[BaseEmbeddingConfig]:
    return [cfg for m in embedding_modules(model) for cfg in table_configs(m)]


def make_planner(
    model: nn.Module,
    world_size: int,
    device_type: str,
    sharding_types: Sequence[str],
    batch_size: int,
    replicate_below_mib: float = 0.0,
) -> EmbeddingShardingPlanner:
    """The planner of ``model``'s tables on ``world_size`` ranks. With several ranks, a table smaller than
    ``replicate_below_mib`` (``train.replicate_below_mib``; 0: none) is replicated (data_parallel): its
    lookups need no all-to-all, and its gradient joins the dense all-reduce. On 2 CPU ranks, the demo's
    teacher (tables of 16-128 KiB) trained at 0.75-0.82 of one rank table-wise and 1.05-1.21 replicated."""
    allowed = allowed_sharding_types(device_type, sharding_types)
    constraints = {}
    for cfg in embedding_configs(model):
        table_bytes = cfg.num_embeddings * cfg.embedding_dim * BYTES_PER_FLOAT
        small = world_size > 1 and table_bytes < replicate_below_mib * 2**20
        constraints[cfg.name] = ParameterConstraints(sharding_types=["data_parallel"] if small else allowed)
    topology = Topology(world_size=world_size, compute_device=device_type, local_world_size=world_size)
    return EmbeddingShardingPlanner(topology=topology, batch_size=batch_size, constraints=constraints)


def describe_plan(plan: ShardingPlan) -> list[dict[str, object]]:
    """One row per table: sharding type, kernel and the ranks holding its shards."""
    rows = []
    for module_path, params in plan.plan.items():
        for table, ps in params.items():
            ranks = sorted({r for r in (ps.ranks or [])})
            rows.append(
                {
                    "module": module_path,
                    "table": table,
                    "sharding": ps.sharding_type,
                    "kernel": ps.compute_kernel,
                    "ranks": ranks,
                }
            )
    return rows


class OneRank(DataParallelWrapper):
    """A one-rank run's dense layers, left unwrapped: DDP would have nothing to all-reduce, and its hooks,
    gradient buckets and per-step all-reduce cost 3-4% of a teacher's step on one CPU thread."""

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        dmp._dmp_wrapped_module.to(device)


def device_for(device_type: str, local_rank: int) -> torch.device:
    return torch.device(f"cuda:{local_rank}") if device_type == "cuda" else torch.device("cpu")
