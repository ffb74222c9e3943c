"""``distrec plan``: the sharding plan of every model of a config, as a dry run without training."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torchrec.distributed.model_parallel import get_default_sharders
from torchrec.distributed.types import ParameterSharding

from distrec.config import Config, ModelConfig
from distrec.data.schema import Manifest
from distrec.models.architectures import model_from_config
from distrec.train.objective import Objective
from distrec.train.sharding import BYTES_PER_FLOAT, embedding_configs, make_planner


def _bytes_per_rank(ps: ParameterSharding, rows: int, dim: int, world: int) -> dict[int, int]:
    """Weight bytes each rank holds for one table (a data-parallel table is on every rank)."""
    if ps.sharding_spec is None:
        return dict.fromkeys(range(world), rows * dim * BYTES_PER_FLOAT)
    out: dict[int, int] = {}
    for shard in ps.sharding_spec.shards:
        rank = shard.placement.rank()
        size = int(torch.Size(shard.shard_sizes).numel()) * BYTES_PER_FLOAT
        out[rank] = out.get(rank, 0) + size
    return out


def plan_model(
    model_config: ModelConfig, config: Config, manifest: Manifest, world_size: int, device: str
) -> list[dict[str, Any]]:
    """Plan one model's tables on ``world_size`` workers of ``device`` without any process group."""
    m = model_config
    manifest = manifest.with_table_rows(dict(m.table_rows))
    model = model_from_config(m, manifest, torch.device("meta"))
    objective = Objective(model)
    train = config.train
    planner = make_planner(
        objective, world_size, device, train.sharding_types, train.batch_size, train.replicate_below_mib
    )
    plan = planner.plan(objective, get_default_sharders())
    sizes = {cfg.name: (cfg.num_embeddings, cfg.embedding_dim) for cfg in embedding_configs(objective)}
    rows = []
    for module_params in plan.plan.values():
        for table, ps in module_params.items():
            num_rows, dim = sizes[table]
            per_rank = _bytes_per_rank(ps, num_rows, dim, world_size)
            rows.append(
                {
                    "model": model_config.name,
                    "table": table,
                    "rows": num_rows,
                    "dim": dim,
                    "sharding": ps.sharding_type,
                    "kernel": ps.compute_kernel,
                    "ranks": sorted(per_rank),
                    "mib_per_rank": {r: round(b / 2**20, 2) for r, b in sorted(per_rank.items())},
                }
            )
    return rows


def plan_config(config: Config, manifest: Manifest, world_size: int, device: str) -> list[dict[str, Any]]:
    models = [*config.teachers, config.student, replace(config.student, name="base")]
    return [row for m in models for row in plan_model(m, config, manifest, world_size, device)]


def format_plan(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table, then each model's embedding weight memory per rank (optimizer state excluded)."""
    header = f"{'model':<10} {'table':<26} {'rows x dim':>16} {'sharding':<18} {'kernel':<8} {'MiB per rank'}"
    lines = [header, "-" * len(header)]
    totals: dict[str, dict[int, float]] = {}
    for r in rows:
        ranks = ", ".join(f"r{k}:{v:g}" for k, v in r["mib_per_rank"].items())
        shape = f"{r['rows']} x {r['dim']}"
        lines.append(f"{r['model']:<10} {r['table']:<26} {shape:>16} {r['sharding']:<18} {r['kernel']:<8} {ranks}")
        model_totals = totals.setdefault(r["model"], {})
        for k, v in r["mib_per_rank"].items():
            model_totals[k] = model_totals.get(k, 0.0) + v
    lines.append("-" * len(header))
    for model, per_rank in totals.items():
        memory = ", ".join(f"r{k}: {v:.1f}" for k, v in per_rank.items())
        lines.append(f"{model}: embedding weights per rank (MiB) {memory}")
    return "\n".join(lines)
