"""The one training loop every model uses, run by each Ray Train worker.

TorchRec-canonical (torchrec examples/golden_training): tables on the meta device -> fused
optimizer applied in backward -> planner.collective_plan with per-device constraints ->
DistributedModelParallel -> CombinedOptimizer -> TrainPipelineSparseDist.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from distrec.config import CRLConfig, DistillConfig, ModelConfig, TrainConfig
from distrec.data.batch import Batch, BatchBuilder
from distrec.data.schema import Manifest


@dataclass
class WorkerTask:
    """Everything a worker needs; travels to the workers as the trainer's ``train_loop_config``."""

    model: ModelConfig
    train: TrainConfig
    dataset: str  # dataset root (manifest)
    shards: list[Any]  # one Ray DataIterator per rank, from Dataset.streaming_split(equal=False)
    seed: int = 0
    soft_label_columns: list[str] = field(default_factory=list)
    distill: DistillConfig | None = None
    crl: CRLConfig | None = None


def _sparse_optimizer(name: str) -> type[torch.optim.Optimizer]:
    from torchrec.optim import RowWiseAdagrad

    optimizers: dict[str, type[torch.optim.Optimizer]] = {
        "rowwise_adagrad": RowWiseAdagrad,
        "adagrad": torch.optim.Adagrad,
        "adam": torch.optim.Adam,
        "sgd": torch.optim.SGD,
    }
    if name not in optimizers:
        raise ValueError(f"train.sparse_optimizer must be one of {sorted(optimizers)}, got {name!r}")
    return optimizers[name]


def _template_batch(manifest: Manifest, root: str, builder: BatchBuilder) -> Batch:
    """A one-row batch from the first training file: the shape of this worker's padding batches."""
    table = pq.ParquetFile(manifest.files(root, "train")[0]).read_row_group(0, columns=builder.columns).slice(0, 1)
    for name in builder.soft_label_columns:
        table = table.append_column(name, pa.array([0.0], type=pa.float32()))
    return builder(table)


def _count_rows(batches: Iterator[Batch], totals: torch.Tensor) -> Iterator[Batch]:
    for batch in batches:
        totals[2] += batch.size
        yield batch


def train_worker(task: WorkerTask) -> None:
    """Body of ``train_loop_per_worker``: train one model on this rank's shard and export it."""
    import ray.train
    from torchrec.distributed.model_parallel import DistributedModelParallel, get_default_sharders
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
    from torchrec.distributed.types import ShardingEnv
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from distrec.models.architectures import build_model
    from distrec.models.base import embedding_modules
    from distrec.train.export import gather_state_dict, write_export
    from distrec.train.feed import arrow_batches, lockstep, to_batches
    from distrec.train.objective import Objective
    from distrec.train.sharding import describe_plan, device_for, make_planner

    torch.set_num_threads(1)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = device_for(task.train.device, context.get_local_rank())
    torch.manual_seed(task.seed)

    manifest = Manifest.read(task.dataset)
    spec = task.model
    model = build_model(spec.arch, spec.name, manifest, spec.dim, list(spec.hidden), torch.device("meta"))
    objective = Objective(model, task.distill, task.crl, list(manifest.confounders.values()))
    tables = [p for m in embedding_modules(model) for p in m.parameters()]
    apply_optimizer_in_backward(_sparse_optimizer(task.train.sparse_optimizer), tables, {"lr": task.train.sparse_lr})

    planner = make_planner(objective, world, task.train.device, task.train.sharding_types, task.train.batch_size)
    plan = planner.collective_plan(objective, get_default_sharders(), dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(
        objective, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD), device=device, plan=plan
    )
    dense = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    critic = {k: v for k, v in dense.items() if ".critic." in k or k.startswith("critic.")}
    groups = [
        KeyedOptimizerWrapper(
            {k: v for k, v in dense.items() if k not in critic},
            lambda ps: torch.optim.Adam(ps, lr=task.train.dense_lr),
        )
    ]
    if critic:
        lr = task.crl.critic_lr if task.crl is not None else task.train.dense_lr
        groups.append(KeyedOptimizerWrapper(critic, lambda ps: torch.optim.Adam(ps, lr=lr)))
    optimizer = CombinedOptimizer([dmp.fused_optimizer, *groups])
    pipeline = TrainPipelineSparseDist(dmp, optimizer, device, execute_all_batches=True)

    builder = BatchBuilder(manifest, task.soft_label_columns)
    control = dist.new_group(backend="gloo")  # CPU side channel for the lockstep flag, also under nccl
    template = _template_batch(manifest, task.dataset, builder)
    shard = task.shards[rank]
    started = time.perf_counter()
    totals = torch.zeros(3, dtype=torch.float64)  # weighted loss sum, weight sum, rows trained
    for epoch in range(task.train.epochs):
        seed = task.seed * 1_000_003 + epoch * 1_009 + rank if spec.bootstrap else None
        local = to_batches(arrow_batches(shard, task.train.batch_size), builder, seed)
        batches = lockstep(_count_rows(local, totals), template, control)
        while True:
            try:
                out = pipeline.progress(batches)
            except StopIteration:
                break
            live = out.weights.sum().item()
            totals[0] += out.loss.item() * live
            totals[1] += live
        dist.all_reduce(totals, group=control)
        metrics = {
            "epoch": epoch,
            "train_loss": totals[0].item() / max(totals[1].item(), 1e-12),
            "rows": int(totals[2].item()),
            "seconds": time.perf_counter() - started,
        }
        final = epoch == task.train.epochs - 1
        state = gather_state_dict(dmp, prefix="model.") if final else None
        if final and rank == 0:
            assert state is not None
            metrics["plan"] = describe_plan(plan)
            export_spec = {"name": spec.name, "arch": spec.arch, "dim": spec.dim, "hidden": list(spec.hidden)}
            with tempfile.TemporaryDirectory() as tmp:
                write_export(Path(tmp), export_spec, manifest, state)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        totals.zero_()
