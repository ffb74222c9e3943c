"""The one training loop every model uses, run by each Ray Train worker.

TorchRec-canonical (torchrec examples/golden_training): tables on the meta device -> fused
optimizer applied in backward -> planner.collective_plan with per-device constraints ->
DistributedModelParallel -> CombinedOptimizer -> TrainPipelineSparseDist.
"""

from __future__ import annotations

import tempfile
import time
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
from distrec.train.export import gather_state_dict, load_unsharded, read_export, write_export
from distrec.train.objective import COMPONENTS
from distrec.train.sharding import describe_plan


@dataclass
class WorkerTask:
    """Everything a worker needs; travels to the workers as the trainer's ``train_loop_config``."""

    model: ModelConfig
    train: TrainConfig
    dataset: str  # dataset root (manifest)
    seed: int = 0
    soft_label_columns: list[str] = field(default_factory=list)
    distill: DistillConfig | None = None
    crl: CRLConfig | None = None
    # One Ray DataIterator per rank (the soft-label stream, split with equal=False); None: each rank
    # reads its own share of the training files (ShardReader), which can resume mid-epoch.
    shards: list[Any] | None = None


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


def build_training(task: WorkerTask, manifest: Manifest, world: int, device: torch.device) -> tuple[Any, Any, Any, Any]:
    """Meta-device model -> fused sparse optimizer -> collective plan -> DMP -> combined optimizer."""
    from torchrec.distributed.model_parallel import DistributedModelParallel, get_default_sharders
    from torchrec.distributed.types import ShardingEnv
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from distrec.models.architectures import build_model
    from distrec.models.base import embedding_modules
    from distrec.train.objective import Objective
    from distrec.train.sharding import make_planner

    spec, train = task.model, task.train
    model = build_model(spec.arch, spec.name, manifest, spec.dim, list(spec.hidden), torch.device("meta"))
    objective = Objective(model, task.distill, task.crl, list(manifest.confounders.values()))
    tables = [p for m in embedding_modules(model) for p in m.parameters()]
    apply_optimizer_in_backward(_sparse_optimizer(train.sparse_optimizer), tables, {"lr": train.sparse_lr})

    planner = make_planner(objective, world, train.device, train.sharding_types, train.batch_size)
    plan = planner.collective_plan(objective, get_default_sharders(), dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(
        objective, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD), device=device, plan=plan
    )
    # the CRL critic is trained by its own optimiser inside objective.loss (distrec.train.objective)
    dense = {k: v for k, v in in_backward_optimizer_filter(dmp.named_parameters()) if ".critic." not in k}
    groups = [KeyedOptimizerWrapper(dense, lambda ps: torch.optim.Adam(ps, lr=train.dense_lr))]
    return dmp, CombinedOptimizer([dmp.fused_optimizer, *groups]), plan, spec


def train_worker(task: WorkerTask) -> None:
    """Body of ``train_loop_per_worker``: train one model on this rank's share, checkpoint, export.

    Progress is ``[epoch, batches done in the epoch, rows trained]`` per rank. Reading the files
    directly (``ShardReader``) resumes mid-epoch at the exact batch; the soft-label stream is a
    dynamic split, so a student checkpoints and resumes at epoch boundaries.
    """
    import ray.train
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

    from distrec.data.reader import ShardReader
    from distrec.train import checkpoint
    from distrec.train.feed import arrow_batches, lockstep, to_batches
    from distrec.train.sharding import device_for

    torch.set_num_threads(1)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = device_for(task.train.device, context.get_local_rank())
    torch.manual_seed(task.seed)
    manifest = Manifest.read(task.dataset).with_table_rows(dict(task.model.table_rows))
    dmp, optimizer, plan, spec = build_training(task, manifest, world, device)
    pipeline = TrainPipelineSparseDist(dmp, optimizer, device, execute_all_batches=True)
    control = dist.new_group(backend="gloo")  # CPU side channel (lockstep flags, DCP), also under nccl

    builder = BatchBuilder(manifest, task.soft_label_columns)
    template = _template_batch(manifest, task.dataset, builder)
    files = [str(f) for f in manifest.files(task.dataset, "train")]
    reader = ShardReader(files, builder.columns, rank, world, task.train.batch_size) if task.shards is None else None
    every = task.train.checkpoint_every if reader is not None else 0

    progress = torch.zeros(3, dtype=torch.int64)
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as directory:
            progress = checkpoint.load(dmp, optimizer, Path(directory) / "dcp", control)
    elif spec.warm_start:
        load_unsharded(dmp, read_export(spec.warm_start)[1], prefix="model.")

    def save(metrics: dict[str, Any], name: str, final: bool) -> None:
        """Every rank writes its DCP shards; rank 0 adds the unsharded export to the final one."""
        state = gather_state_dict(dmp, prefix="model.") if final else None
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint.save(dmp, optimizer, progress, Path(tmp) / "dcp", control)
            if state is not None:
                export_spec = {"name": spec.name, "arch": spec.arch, "dim": spec.dim, "hidden": list(spec.hidden)}
                write_export(Path(tmp), export_spec, manifest, state)
                metrics["plan"] = describe_plan(plan)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)

    started = time.perf_counter()
    # weighted loss sum, weight sum, rows trained this run, then the weighted loss components
    totals = torch.zeros(3 + len(COMPONENTS), dtype=torch.float64)
    for epoch in range(int(progress[0]), task.train.epochs):
        step = int(progress[1])
        seed = task.seed * 1_000_003 + epoch * 1_009 + rank if spec.bootstrap else None
        tables = (
            reader.batches(skip_batches=step)
            if reader is not None
            else arrow_batches(task.shards[rank], task.train.batch_size)
        )
        batches = lockstep(to_batches(tables, builder, seed), template, control)
        while True:
            try:
                out = pipeline.progress(batches)
            except StopIteration:
                break
            live = out.weights.sum().item()
            rows = out.labels.numel() if live > 0 else 0  # padding batches carry weight 0
            totals[:3] += torch.tensor([out.loss.item() * live, live, rows], dtype=torch.float64)
            totals[3:] += out.components.detach().cpu().double() * live
            step += 1
            progress[:] = torch.tensor([epoch, step, int(progress[2]) + rows])
            if every and step % every == 0:
                save(
                    _metrics(totals, epoch, step, started, control, progress),
                    f"epoch{epoch:03d}-step{step:07d}",
                    final=False,
                )
        progress[:] = torch.tensor([epoch + 1, 0, int(progress[2])])
        final = epoch == task.train.epochs - 1
        save(_metrics(totals, epoch, step, started, control, progress), f"epoch{epoch:03d}-end", final=final)
        totals.zero_()


def _metrics(
    totals: torch.Tensor, epoch: int, step: int, started: float, group: dist.ProcessGroup, progress: torch.Tensor
) -> dict[str, Any]:
    """Loss since the last report, rows trained so far (all ranks, across restarts)."""
    summed = totals.clone()
    dist.all_reduce(summed, group=group)
    rows = progress[2:3].to(torch.float64)
    dist.all_reduce(rows, group=group)
    return {
        "epoch": epoch,
        "step": step,
        "train_loss": summed[0].item() / max(summed[1].item(), 1e-12),
        **{f"train_{n}": v.item() / max(summed[1].item(), 1e-12) for n, v in zip(COMPONENTS, summed[3:], strict=True)},
        "rows": int(rows.item()),
        "rows_this_run": int(summed[2].item()),
        "seconds": time.perf_counter() - started,
    }
