"""Ray Train: one ``TorchTrainer`` per model, several of them running side by side.

Each model gets its own worker group, process group and sharding plan (heterogeneous DMPs do
not share a process group). Trainers are started from Ray tasks, so K teachers and the ``base``
model train concurrently; the driver only waits.

On a cluster, each model's workers are placed by ``train.placement_strategy``, and those tasks are
pinned to the driver's node: Ray Train attaches each run's controller to the node that calls
``fit()``, so a lost worker node costs only the workers on it (restarted from the last checkpoint,
``train.max_failures``), never a controller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.train import Checkpoint, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distrec.train.loop import WorkerTask


@dataclass
class TrainedModel:
    name: str
    checkpoint: Checkpoint
    metrics: dict[str, Any]


def _worker_entry(config: dict[str, Any]) -> None:
    from distrec.train.loop import train_worker

    train_worker(config["task"])


def fit(task: WorkerTask, storage_path: str, dataset: ray.data.Dataset | None = None) -> TrainedModel:
    """Train ``task.model`` with a fresh TorchTrainer.

    Without ``dataset`` every worker reads its own share of the training files. A ``dataset`` (the
    soft-label stream) is split with ``streaming_split(equal=False)`` so no row is dropped; the loop
    keeps ranks in lockstep with padding batches instead (``distrec.train.feed``).
    """
    train = task.train
    if dataset is not None:
        task.shards = dataset.streaming_split(train.num_workers, equal=False)
    use_gpu = train.device == "cuda"
    resources = {"CPU": train.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = max(train.gpus_per_worker, 1.0)
    trainer = TorchTrainer(
        train_loop_per_worker=_worker_entry,
        train_loop_config={"task": task},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=train.collective_timeout_s),
        scaling_config=ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=resources,
            placement_strategy=train.placement_strategy,
        ),
        run_config=RunConfig(
            name=task.model.name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=train.max_failures),
        ),
    )
    result = trainer.fit()
    exported = [(c, m) for c, m in result.best_checkpoints or [] if m.get("export")]
    if result.checkpoint is None or not exported:
        raise RuntimeError(f"training {task.model.name!r} finished without an exported checkpoint")
    # the export of the best epoch on valid (the last one that has an export: select_best exports only
    # improvements); the metrics of the last report, which hold the whole curve
    checkpoint, _ = exported[-1]
    return TrainedModel(task.model.name, checkpoint, dict(result.metrics or {}))


@ray.remote(num_cpus=0)
def _fit_remote(task: WorkerTask, storage_path: str, dataset: ray.data.Dataset | None) -> TrainedModel:
    return fit(task, storage_path, dataset)


def fit_concurrently(
    tasks: Sequence[tuple[WorkerTask, ray.data.Dataset | None]], storage_path: str
) -> dict[str, TrainedModel]:
    """Train every (task, dataset) pair at the same time; returns the trained models by name."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    remote = _fit_remote.options(scheduling_strategy=here)
    refs = {task.model.name: remote.remote(task, storage_path, ds) for task, ds in tasks}
    return {name: ray.get(ref) for name, ref in refs.items()}
