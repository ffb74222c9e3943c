"""The one training loop every model uses, run by each Ray Train worker.

Construction is TorchRec-canonical (torchrec examples/golden_training, ``build_training``): tables on
the meta device -> fused optimizer applied in backward -> planner.collective_plan with per-device
constraints -> DistributedModelParallel -> CombinedOptimizer. The loop itself follows Ray's recsys
benchmark runner: ``setup``, ``train_epoch`` (one ``train_step`` per batch), ``validate`` and
``save_checkpoint`` hooks, each timed by name (``Worker.timers``).

Every epoch ends with a pass over the validation split (``train.valid_split``). The loop keeps the
unsharded export of the epoch with the best valid AUC (``train.select_best``) and stops early after
``train.patience`` epochs without a better one; the per-epoch curve (train loss terms, valid AUC and
logloss) goes to the metrics.
"""

from __future__ import annotations

import json
import math
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from distrec.config import CRLConfig, DistillConfig, ModelConfig, TrainConfig
from distrec.data.batch import BatchBuilder
from distrec.data.schema import Manifest
from distrec.eval.metrics import auc, logloss
from distrec.train.export import export_spec, gather_state_dict, load_unsharded, read_export, write_export
from distrec.train.objective import COMPONENTS
from distrec.train.sharding import describe_plan

CURVE = "curve.json"  # the per-epoch curve, kept in every checkpoint so a resumed run continues it


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
    # Training files read by ShardReader (default: the dataset's train split), e.g. soft labels scored
    # once into Parquet: the same rows in the same order as the train split, plus soft-label columns.
    train_files: list[str] | None = None
    # One Ray DataIterator per rank (the soft-label stream, split with equal=False); None: each rank
    # reads its own share of the training files (ShardReader), which can resume mid-epoch.
    shards: list[Any] | None = None
    # A distrec.console.ProgressBoard actor: rank 0 reports its position to it about once a second.
    progress: Any = None
    # Cross-fitting: (fold k, folds K), a teacher's copy that gives weight 0 to the rows of fold k
    held_out: tuple[int, int] | None = None
    # distill.soft_labels=inline (a distrec.orchestrate.stream.InlineScoring): each rank scores the rows
    # it reads from the logs with every teacher before training on them
    inline_scoring: Any = None


PROGRESS_EVERY_S = 1.0


@dataclass
class Progress:
    """Where a rank is; saved in every checkpoint (as one float64 tensor: DCP saves tensors only)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # batches done in the current epoch
    global_step: int = 0  # batches done in all epochs: the learning-rate schedule's clock
    rows: int = 0  # rows trained by this rank (not a held-out fold's), all epochs, across restarts
    best_epoch: int = -1
    best_auc: float = -math.inf
    stale_epochs: int = 0  # epochs since the best one

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor([float(getattr(self, f.name)) for f in fields(self)], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> Progress:
        values = t.tolist()
        return cls(**{f.name: (v if f.type == "float" else int(v)) for f, v in zip(fields(cls), values, strict=True)})


@dataclass
class Training:
    """What ``build_training`` returns: the sharded model and everything that steps it."""

    dmp: Any  # DistributedModelParallel over the Objective
    optimizer: Any  # CombinedOptimizer: the fused sparse optimiser plus dense Adam
    plan: Any  # the ShardingPlan
    spec: ModelConfig
    pipeline: Any  # what runs a step (``progress(batches)``): TorchRec's TrainPipelineSparseDist, or DirectSteps


class DirectSteps:
    """One batch a ``progress`` call, as TorchRec's pipelines take them: zero the gradients, forward,
    backward and step the optimizer (forward only in eval mode).

    For a single rank: ``TrainPipelineSparseDist`` overlaps the next batch's input all-to-all with the
    current step, which a rank alone does not have, and its bookkeeping cost a one-rank CPU step of
    the benchmark (b) teacher 8% (91,395 against 99,233 samples/s, median of 5). With two ranks on CPU
    the overlap pays (gloo runs the all-to-all in its own threads): the compute-bound teacher of
    benchmark (d) ran 71,264 and 74,290 samples/s pipelined against 67,974 and 69,421 direct.
    """

    def __init__(self, model: Any, optimizer: Any) -> None:
        self.model, self.optimizer = model, optimizer

    def progress(self, batches: Iterator[Any]) -> Any:
        batch = next(batches)  # StopIteration ends the epoch, as in TorchRec's pipelines
        if not self.model.training:
            return self.model(batch)[1]
        self.optimizer.zero_grad()
        loss, output = self.model(batch)
        loss.backward()
        self.optimizer.step()
        return output


def _sparse_optimizer(name: str) -> type[torch.optim.Optimizer]:
    from torchrec.optim import RowWiseAdagrad

    optimizers: dict[str, type[torch.optim.Optimizer]] = {
        "rowwise_adagrad": RowWiseAdagrad,
        "adagrad": torch.optim.Adagrad,
        "adam": torch.optim.Adam,
        "sgd": torch.optim.SGD,
    }
    return optimizers[name]


def with_zero_columns(table: pa.Table, names: list[str]) -> pa.Table:
    """``table`` with a float32 column of zeros for each of ``names`` it lacks (soft labels of a
    split that was never scored: padding and validation batches, whose soft labels nothing reads)."""
    for name in names:
        if name not in table.column_names:
            table = table.append_column(name, pa.array(np.zeros(table.num_rows, np.float32)))
    return table


def penalised(task: WorkerTask, manifest: Manifest) -> Manifest:
    """``manifest`` with only the confounder columns CRL penalises (``crl.confounders``; empty: all):
    what the batches carry as ``confounders`` and what the critic is sized for."""
    names = task.crl.confounders if task.crl is not None and task.crl.confounders else list(manifest.confounders)
    return replace(manifest, confounders={name: manifest.confounders[name] for name in names})


def build_training(task: WorkerTask, manifest: Manifest, world: int, device: torch.device) -> Training:
    """Meta-device model -> fused sparse optimizer -> collective plan -> DMP -> combined optimizer ->
    what steps them (TorchRec's pipeline across ranks, ``DirectSteps`` on one)."""
    from torchrec.distributed.model_parallel import DistributedModelParallel, get_default_sharders
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
    from torchrec.distributed.types import ShardingEnv
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from distrec.models.architectures import model_from_config
    from distrec.models.base import embedding_modules
    from distrec.train.objective import Objective
    from distrec.train.sharding import OneRank, make_planner

    spec, train = task.model, task.train
    model = model_from_config(spec, manifest, torch.device("meta"))
    objective = Objective(model, task.distill, task.crl, list(penalised(task, manifest).confounders.values()))
    tables = [p for m in embedding_modules(model) for p in m.parameters()]
    table_names = {name for name, p in objective.named_parameters() if any(p is t for t in tables)}
    sparse_optimizer = _sparse_optimizer(train.sparse_optimizer)
    apply_optimizer_in_backward(sparse_optimizer, tables, {"lr": train.sparse_lr})

    planner = make_planner(
        objective, world, train.device, train.sharding_types, train.batch_size, train.replicate_below_mib
    )
    plan = planner.collective_plan(objective, get_default_sharders(), dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(
        objective,
        env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
        device=device,
        plan=plan,
        data_parallel_wrapper=OneRank() if world == 1 else None,
    )
    # the CRL critic is trained by its own optimiser inside objective.loss (distrec.train.objective)
    rest = {k: v for k, v in in_backward_optimizer_filter(dmp.named_parameters()) if ".critic." not in k}
    dense = {k: v for k, v in rest.items() if k not in table_names}
    # fused: one kernel over all the dense tensors (a wide teacher's Adam step: 233 against 539 us)
    groups = [KeyedOptimizerWrapper(dense, lambda ps: torch.optim.Adam(ps, lr=train.dense_lr, fused=True))]
    # data_parallel tables are replicated dense parameters that TorchRec does not fuse: they keep the
    # tables' optimizer (not the dense layers' Adam at dense_lr), stepped after the backward
    replicated = {k: v for k, v in rest.items() if k in table_names}
    if replicated:

        def tables_optimizer(params: Any) -> torch.optim.Optimizer:
            return sparse_optimizer(params, lr=train.sparse_lr)  # type: ignore[call-arg]  # every choice takes lr

        groups.append(KeyedOptimizerWrapper(replicated, tables_optimizer))
    optimizer = CombinedOptimizer([dmp.fused_optimizer, *groups])
    if world == 1:  # nothing to overlap (DirectSteps)
        pipeline: Any = DirectSteps(dmp, optimizer)
    else:
        pipeline = TrainPipelineSparseDist(dmp, optimizer, device, execute_all_batches=True)
    return Training(dmp, optimizer, plan, spec, pipeline)


class Worker:
    """One rank's training of one model: ``setup(); run()``."""

    def __init__(self, task: WorkerTask) -> None:
        self.task = task
        self.timers: dict[str, float] = defaultdict(float)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timers[name] += time.perf_counter() - started

    def setup(self) -> None:
        import ray.train

        from distrec.data.reader import ShardReader
        from distrec.train import checkpoint
        from distrec.train.schedule import LRSchedule
        from distrec.train.sharding import device_for

        task, train = self.task, self.task.train
        torch.set_num_threads(1)
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = device = device_for(train.device, context.get_local_rank())
        torch.manual_seed(task.seed)
        self.manifest = Manifest.read(task.dataset).with_table_rows(dict(task.model.table_rows))
        with self.timed("build"):
            self.training = build_training(task, self.manifest, self.world, device)
        self.pipeline = self.training.pipeline
        # CPU side channel (lockstep flags, DCP), also under nccl; new_group does not inherit the training
        # group's timeout (torch's default is 30 minutes), so it gets the same one explicitly
        self.control = dist.new_group(backend="gloo", timeout=timedelta(seconds=train.collective_timeout_s))
        # where each rank runs (as Ray Train's scheduling tests check it): reported with every checkpoint
        self.nodes: list[Any] = [None] * self.world
        dist.all_gather_object(self.nodes, ray.get_runtime_context().get_node_id(), group=self.control)

        self.builder = BatchBuilder(penalised(task, self.manifest), task.soft_label_columns)
        files = task.train_files or [str(f) for f in self.manifest.files(task.dataset, "train")]
        # one row of the train split: the shape of this rank's padding batches
        self.log_columns = [c for c in self.builder.columns if c not in task.soft_label_columns]
        self.labeler = None
        read = self.builder.columns
        if task.inline_scoring is not None:  # this rank adds the soft-label columns to the logs it reads
            from distrec.orchestrate.stream import SoftLabeler

            self.labeler = SoftLabeler(task.inline_scoring.teachers, task.inline_scoring.options)
            read = list(dict.fromkeys(self.log_columns + self.labeler.columns))
        first = pq.ParquetFile(self.manifest.files(task.dataset, "train")[0]).read_row_group(
            0, columns=self.log_columns
        )
        self.template = self.builder(with_zero_columns(first.slice(0, 1), task.soft_label_columns))
        self.reader = ShardReader(files, read, self.rank, self.world, train.batch_size) if task.shards is None else None
        self.valid_files = [str(f) for f in self.manifest.files(task.dataset, train.valid_split)]

        per_rank_rows = -(-int(self.manifest.rows.get("train") or 0) // self.world)
        steps_per_epoch = max(1, -(-per_rank_rows // train.batch_size))
        self.schedule = LRSchedule(
            self.training.optimizer,
            steps_per_epoch * train.epochs,
            train.warmup_steps,
            train.lr_schedule,
            train.min_lr_ratio,
        )
        self.steps_per_epoch = steps_per_epoch
        self.progress = Progress()
        self.curve: list[dict[str, Any]] = []
        self.reported = 0.0  # time.monotonic() of the last progress report
        resumed = ray.train.get_checkpoint()
        if resumed is not None:
            with resumed.as_directory() as directory, self.timed("restore"):
                self.progress = Progress.from_tensor(
                    checkpoint.load(
                        self.training.dmp,
                        self.training.optimizer,
                        Path(directory) / "dcp",
                        self.control,
                        Progress().to_tensor(),
                    )
                )
                curve = Path(directory) / CURVE
                self.curve = json.loads(curve.read_text()) if curve.is_file() else []
        elif task.model.warm_start:
            load_unsharded(self.training.dmp, read_export(task.model.warm_start)[1], prefix="model.")

    def run(self) -> None:
        train = self.task.train
        started = time.perf_counter()
        self.training_started = time.monotonic()
        while self.progress.epoch < train.epochs:
            epoch = self.progress.epoch
            totals = self.train_epoch(epoch)
            with self.timed("validate"):
                valid = self.validate()
            p = self.progress
            better = valid["valid_auc"] > p.best_auc if math.isfinite(valid["valid_auc"]) else p.best_epoch < 0
            if better:
                p.best_epoch, p.best_auc, p.stale_epochs = epoch, valid["valid_auc"], 0
            else:
                p.stale_epochs += 1
            p.epoch, p.step = epoch + 1, 0
            if epoch == 0 and self.reader is None:  # a streamed epoch's step count is known once it ran
                self.schedule.total_steps = p.global_step * train.epochs
            point = {
                "epoch": epoch,
                **self._losses(totals),
                **valid,
                "lr_multiplier": self.schedule.apply(p.global_step),
                **self.confounder_offsets(),
            }
            self.curve.append(point)
            stop = bool(train.patience) and p.stale_epochs >= train.patience
            last = stop or p.epoch >= train.epochs
            export = better if train.select_best else last
            metrics = {**point, "best_epoch": p.best_epoch, "stopped_early": stop and p.epoch < train.epochs}
            self.save_checkpoint(f"epoch{epoch:03d}-end", metrics, export=export, started=started)
            self.report_progress(totals, status="done" if last else "train", force=True)
            if stop:
                break

    def confounder_offsets(self) -> dict[str, dict[str, list[float]]]:
        """``{"confounder_offsets": {column: offsets}}``: CRL's learned logit offset per value of each
        penalised confounder column (``crl.confounder_bias``), minus their mean, i.e. what C does to
        clicks by itself as the model fitted it beside the score; empty for a model without offsets."""
        bias = self.training.dmp.module.loss.confounder_bias
        if bias is None:
            return {}
        columns = penalised(self.task, self.manifest).confounders
        offsets = {}
        for column, table in zip(columns, bias.offsets, strict=True):
            values = table.detach().cpu()
            offsets[column] = [round(float(v), 4) for v in values - values.mean()]
        return {"confounder_offsets": offsets}

    def train_epoch(self, epoch: int) -> torch.Tensor:
        """One pass over this rank's share; returns [weighted loss, weight, components...] summed."""
        from distrec.train.feed import arrow_batches, background, hold_out, lockstep, to_batches

        task = self.task
        seed = task.seed * 1_000_003 + epoch * 1_009 + self.rank if task.model.bootstrap else None
        steps = None  # a streamed shard: its length is found out with lockstep's all-reduce
        if self.reader is not None:
            tables = self.reader.chunks(skip_batches=self.progress.step)
            steps = max(0, self.reader.steps - self.progress.step)
            if self.labeler is not None:
                tables = (replace(chunk, records=self.labeler(chunk.records)) for chunk in tables)
        else:
            tables = arrow_batches(task.shards[self.rank], task.train.batch_size)  # type: ignore[index]
        first_step_done = threading.Event()  # the feed's thread starts after it (``background``)
        batches = background(to_batches(tables, self.builder, task.train.batch_size, seed), after=first_step_done)
        held: deque[int] = deque()  # held-out rows of each local batch, in order (the pipeline keeps it)
        if task.held_out is not None:
            batches = hold_out(batches, *task.held_out, held)
        sizes: deque[int] = deque()  # rows of each batch in the pipeline, 0 for padding
        batches = lockstep(batches, self.template, self.control, steps, sizes)
        # summed on the training device and read on the host only for progress reports and at the end
        totals = torch.zeros(2 + len(COMPONENTS), dtype=torch.float64, device=self.device)
        every = task.train.checkpoint_every if self.reader is not None else 0
        self.training.dmp.train()
        self.schedule.apply(self.progress.global_step)
        for out in self._outputs(batches, "train_step", first="first_step"):
            first_step_done.set()
            live = out.weights.sum()
            totals[0] += (out.loss * live).double()
            totals[1] += live.double()
            totals[2:] += out.components.double() * live
            self.progress.step += 1
            self.progress.global_step += 1
            self.schedule.apply(self.progress.global_step)  # the learning rates of the next step
            size = sizes.popleft()  # padding: no rows, and nothing held out (hold_out never saw it)
            if size:
                self.progress.rows += size - (held.popleft() if task.held_out is not None else 0)
            self.report_progress(totals)
            if every and self.progress.step % every == 0:
                self.save_checkpoint(
                    f"epoch{epoch:03d}-step{self.progress.step:07d}", {"epoch": epoch, **self._losses(totals)}
                )
        return totals

    def report_progress(self, totals: torch.Tensor, status: str = "train", force: bool = False) -> None:
        """Rank 0's position and mean loss (``totals`` as ``train_epoch`` sums them) to the run's
        ProgressBoard, at most every PROGRESS_EVERY_S unless ``force``.

        Fire-and-forget (no ``ray.get``): the step never waits for the driver. Rows are rank 0's times
        the world size, so the rate is approximate when ranks' shares differ."""
        now = time.monotonic()
        board = self.task.progress
        if board is None or self.rank != 0 or (not force and now - self.reported < PROGRESS_EVERY_S):
            return
        self.reported = now
        p = self.progress
        auc = p.best_auc if math.isfinite(p.best_auc) else None
        steps = max(self.steps_per_epoch, p.step)
        report = {"epoch": p.epoch, "epochs": self.task.train.epochs, "step": p.step, "steps": steps}
        loss = totals[0].item() / max(totals[1].item(), 1e-12)
        report |= {"rows": p.rows * self.world, "loss": loss, "auc": auc, "best_epoch": p.best_epoch}
        board.update.remote(self.task.model.name, {**report, "elapsed": now - self.training_started, "status": status})

    def _outputs(self, batches: Iterator[Any], timer: str, first: str | None = None) -> Iterator[Any]:
        """The pipeline's ``StepOutput`` for each batch (a step when the model is in train mode).

        The first step is timed as ``first`` where given: it waits for the data to start flowing (a
        stream's scorers loading their teachers, the reader's first chunk), so ``timer`` times the
        steady state."""
        name = first or timer
        while True:
            with self.timed(name):
                try:
                    out = self.pipeline.progress(batches)
                except StopIteration:
                    return
            name = timer
            yield out

    def validate(self) -> dict[str, float]:
        """AUC and logloss on ``train.valid_split`` (``valid_*`` whichever it is), every rank scoring its
        share; identical on all ranks."""
        from distrec.data.reader import ShardReader
        from distrec.train.feed import lockstep, to_batches

        if not self.valid_files:
            return {"valid_auc": math.nan, "valid_logloss": math.nan}
        reader = ShardReader(self.valid_files, self.log_columns, self.rank, self.world, self.task.train.batch_size)
        chunks = (
            replace(c, records=with_zero_columns(c.records, self.task.soft_label_columns)) for c in reader.chunks()
        )
        batches = lockstep(
            to_batches(chunks, self.builder, self.task.train.batch_size), self.template, self.control, reader.steps
        )
        # Memory stays a few bytes a row: each batch's log-loss is summed as it comes, and the AUC (a rank
        # statistic, so of the logits themselves) needs only every rank's clicks and float32 logits.
        clicks, logits, loss_sum = [], [], 0.0
        self.training.dmp.eval()
        with torch.no_grad():
            for out in self._outputs(batches, "validate_step"):
                real = out.weights > 0
                y = out.labels[real].cpu().numpy()
                z = out.logits[real].float().cpu().numpy()
                if y.size:
                    loss_sum += logloss(y, 1.0 / (1.0 + np.exp(-z.astype(np.float64)))) * y.size
                clicks.append(y > 0.5)
                logits.append(z)
        self.training.dmp.train()
        mine = (np.concatenate(clicks or [np.zeros(0, bool)]), np.concatenate(logits or [np.zeros(0, np.float32)]))
        # Rank 0 alone gathers every rank's rows (5 bytes a row, and their pickles: at 7.5M validation
        # rows every rank used to hold them all) and computes both figures, then sends them to the others.
        gathered: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object((*mine, loss_sum), gathered, dst=0, group=self.control)
        figures: list[Any] = [None]
        if gathered is not None:
            y_all = np.concatenate([g[0] for g in gathered])
            rows = len(y_all)
            mean_loss = sum(g[2] for g in gathered) / rows if rows else math.nan
            figures[0] = {"valid_auc": auc(y_all, np.concatenate([g[1] for g in gathered])), "valid_logloss": mean_loss}
            del gathered, y_all
        dist.broadcast_object_list(figures, src=0, group=self.control)
        return figures[0]

    def save_checkpoint(
        self, name: str, metrics: dict[str, Any], export: bool = False, started: float | None = None
    ) -> None:
        """Every rank writes its DCP shards; with ``export`` rank 0 adds the unsharded export."""
        import ray.train

        from distrec.train import checkpoint

        with self.timed("save_checkpoint"):
            t = self.training
            state = gather_state_dict(t.dmp, prefix="model.") if export else None
            rows = torch.tensor([float(self.progress.rows)], dtype=torch.float64)
            dist.all_reduce(rows, group=self.control)
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint.save(t.dmp, t.optimizer, self.progress.to_tensor(), Path(tmp) / "dcp", self.control)
                if self.rank == 0:
                    (Path(tmp) / CURVE).write_text(json.dumps(self.curve))
                if state is not None:
                    write_export(Path(tmp), export_spec(t.spec), self.manifest, state)
                metrics = {
                    **metrics,
                    "step": self.progress.step,
                    "rows": int(rows.item()),
                    "export": export,
                    "curve": list(self.curve),
                    "plan": describe_plan(t.plan),
                    "nodes": list(self.nodes),
                    "timers": {k: round(v, 3) for k, v in self.timers.items()},
                }
                if started is not None:
                    metrics["seconds"] = time.perf_counter() - started
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)

    def _losses(self, totals: torch.Tensor) -> dict[str, float]:
        """Weighted mean loss and components over every rank's rows since ``totals`` started."""
        summed = totals.to("cpu", copy=True)  # the side group is gloo; the epoch goes on summing into totals
        dist.all_reduce(summed, group=self.control)
        weight = max(summed[1].item(), 1e-12)
        return {
            "train_loss": summed[0].item() / weight,
            **{f"train_{n}": v.item() / weight for n, v in zip(COMPONENTS, summed[2:], strict=True)},
        }


def train_worker(task: WorkerTask) -> None:
    """Body of ``train_loop_per_worker``."""
    worker = Worker(task)
    worker.setup()
    worker.run()
