"""Ray Train: one ``TorchTrainer`` per model, several of them running side by side.

Each model gets its own worker group, process group and sharding plan (heterogeneous DMPs do
not share a process group). The driver starts the trainers from threads, so K teachers and the
``base`` model train concurrently while it only waits.

On a cluster, each model's workers are placed by ``train.placement_strategy``. Ray Train attaches
each run's controller to the node that calls ``fit()``, here the driver's, so a lost worker node
costs only the workers on it (restarted from the last checkpoint, ``train.max_failures``), never a
controller.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError
from ray.train import Checkpoint, ControllerError, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.v2._internal.constants import HEALTH_CHECK_INTERVAL_S_ENV_VAR

from distrec.train.loop import WorkerTask

log = logging.getLogger("distrec")


@dataclass
class TrainedModel:
    name: str
    checkpoint: Checkpoint
    metrics: dict[str, Any]


def _worker_entry(config: dict[str, Any]) -> None:
    from distrec.train.loop import train_worker

    train_worker(config["task"])


def _trainer(task: WorkerTask, storage_path: str, dataset: ray.data.Dataset | None) -> TorchTrainer:
    train = task.train
    # read by Ray Train as the trainer starts and passed on to its controller (each epoch's report waits for
    # the controller's next poll); fit() runs in a task of its own, or in the driver for the streamed student
    os.environ[HEALTH_CHECK_INTERVAL_S_ENV_VAR] = str(train.controller_poll_s)
    if dataset is not None:
        task.shards = dataset.streaming_split(train.num_workers, equal=False)
    use_gpu = train.device == "cuda"
    resources = {"CPU": train.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = max(train.gpus_per_worker, 1.0)
    return TorchTrainer(
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


def fit(task: WorkerTask, storage_path: str, dataset: ray.data.Dataset | None = None) -> TrainedModel:
    """Train ``task.model`` with a fresh TorchTrainer.

    Without ``dataset`` every worker reads its own share of the training files. A ``dataset`` (the
    soft-label stream) is split with ``streaming_split(equal=False)`` so no row is dropped; the loop
    keeps ranks in lockstep with padding batches instead (``distrec.train.feed``).

    Ray Train v2 takes a call to a worker on a node that has just gone (``ActorUnavailableError``) for a
    controller failure, which it never retries: a lost node, as its workers' death would have been,
    had the controller not been calling one of them at that moment (tests/test_cluster.py's node-loss
    test once failed so). Such a fit is started again, resuming from the run's last checkpoint as a
    restart of the worker group would, up to ``train.max_failures`` times.
    """
    for attempt in itertools.count():
        try:
            result = _trainer(task, storage_path, dataset).fit()
            break
        except ControllerError as error:
            if not isinstance(error.controller_failure, ActorUnavailableError) or attempt >= task.train.max_failures:
                raise
            log.warning(
                "%s: a worker's node went away mid-call (%s); resuming from the last checkpoint",
                task.model.name,
                error.controller_failure,
            )
    exported = [(c, m) for c, m in result.best_checkpoints or [] if m.get("export")]
    if result.checkpoint is None or not exported:
        raise RuntimeError(f"training {task.model.name!r} finished without an exported checkpoint")
    # the export of the best epoch on valid (the last one that has an export: select_best exports only
    # improvements); the metrics of the last report, which hold the whole curve
    checkpoint, _ = exported[-1]
    return TrainedModel(task.model.name, checkpoint, dict(result.metrics or {}))


def fit_concurrently(
    tasks: Sequence[tuple[WorkerTask, ray.data.Dataset | None]], storage_path: str
) -> dict[str, TrainedModel]:
    """Train every (task, dataset) pair at the same time; returns the trained models by name.

    Each ``fit()`` runs in a thread of this process: it only waits on its controller actor, and a Ray
    task per trainer would cost a process importing torch, torchrec and Ray Train (about 4 CPU-seconds
    each, which a 2-core machine pays in wall time before any model trains).
    """
    with ThreadPoolExecutor(max_workers=max(1, len(tasks)), thread_name_prefix="fit") as pool:
        futures = {task.model.name: pool.submit(fit, task, storage_path, ds) for task, ds in tasks}
        return {name: future.result() for name, future in futures.items()}
