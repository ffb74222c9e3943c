"""(d) Teacher training samples/s with 2 Ray Train workers against 1 worker.

Both sides are the same ``distrec.orchestrate.trainers.fit`` call (one epoch of a teacher on the same
synthetic training logs, each rank reading its own share of the files with ``ShardReader``, fit's
default without a dataset), differing only in ``train.num_workers``; runs alternate 1, 2, 2, 1, ...
Two models: the headline is a compute-bound one (``COMPUTE_BOUND``: the first teacher of
``jobs/local.yaml`` with wider tables and MLP, where a step's arithmetic outweighs its collectives),
and the demo teacher itself is reported beside it (``demo_*``, full runs only), whose tiny tables and
layers leave each step mostly collectives. A third side runs the compute-bound teacher on 2 workers
with its tables replicated (``train.sharding_types=[data_parallel]``: no embedding all-to-alls, the
table gradients all-reduced with the dense ones, the same table optimizer): ``data_parallel_ratio``.
A fourth side runs the compute-bound teacher's training without Ray: 1 and 2 gloo processes, each
doing what a training worker does (``build_training``, TorchRec's pipeline) on preloaded batches of its
share (``without_ray_ratio``): what the collectives cost, apart from Ray and the file reader. A fifth
measures the machine, not distrec: two independent processes, each training the
compute-bound model with plain PyTorch on one thread from preloaded batches (no process group, no Ray,
nothing shared), against one: ``independent_ratio``, the most a second worker could add here. The
fourth and fifth run in full runs only.
Throughput is the trainer's own ``rows`` / ``seconds`` metrics (``distrec.train.loop``: from the first
batch request after the model is sharded to the end of the epoch), so Ray start-up, worker-group
start-up and sharding are not counted.
The load average is recorded around the runs: on a shared machine it says how many cores were free.
"""

from __future__ import annotations

import itertools
import multiprocessing
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, interleave, load_average, loaded, median, ratio, spread, synthetic

# the first teacher's architecture with 64-dim tables and a 512-256 MLP: about 40x the demo teacher's
# arithmetic per row, for the same embedding lookups and a comparable number of collectives per step
COMPUTE_BOUND = {"dim": 64, "hidden": [512, 256]}


def fit_metrics(task: object, out: Path, dataset: object = None) -> dict[str, Any]:
    """The trainer's final metrics (``rows``, ``seconds``, ``timers``) of a fit from a fresh storage
    path (no resuming)."""
    from distrec.orchestrate.trainers import fit

    storage = (out / "ray" / uuid.uuid4().hex[:8]).resolve()
    try:
        metrics = fit(task, str(storage), dataset).metrics  # type: ignore[arg-type]
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    print(f"[bench] {task.model.name}: {metrics['rows']} rows in {metrics['seconds']:.1f}s", flush=True)  # type: ignore[attr-defined]
    return metrics


def fit_throughput(task: object, out: Path, dataset: object = None) -> float:
    """rows / seconds as the trainer reports them."""
    metrics = fit_metrics(task, out, dataset)
    return metrics["rows"] / metrics["seconds"]


def _preloaded(root: str, rank: int, world: int) -> tuple[Any, list[Any]]:
    """The manifest at ``root`` and the first 32 training batches of 1024 rows of rank ``rank``'s share:
    the processes below train from memory, so the file reader is no part of what they measure."""
    from distrec.data.batch import BatchBuilder
    from distrec.data.reader import ShardReader
    from distrec.data.schema import Manifest

    manifest = Manifest.read(root)
    builder = BatchBuilder(manifest)
    reader = ShardReader(manifest.files(root, "train"), builder.columns, rank=rank, world=world, batch_size=1024)
    return manifest, list(itertools.islice(builder.batches(reader.chunks(), 1024), 32))


def _train_alone(root: str, seconds: float, rates: multiprocessing.Queue) -> None:
    """One process training the compute-bound teacher's arithmetic with plain PyTorch for ``seconds``
    (one thread, 32 preloaded batches, Adam on every parameter: the tables are small); puts its rows/s."""
    import torch

    from distrec.models.architectures import build_model
    from distrec.train.objective import Objective

    torch.set_num_threads(1)
    torch.manual_seed(0)
    manifest, batches = _preloaded(root, rank=0, world=1)
    model = build_model("deepfm", "alone", manifest, COMPUTE_BOUND["dim"], COMPUTE_BOUND["hidden"], torch.device("cpu"))
    objective = Objective(model)
    optimizer = torch.optim.Adam(objective.parameters(), fused=True)

    def step(batch: object) -> None:
        loss, _ = objective(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for batch in batches[:5]:  # warm-up
        step(batch)
    rows, started = 0, time.perf_counter()
    for batch in itertools.cycle(batches):
        step(batch)
        rows += batch.size
        if time.perf_counter() - started > seconds:
            break
    rates.put(rows / (time.perf_counter() - started))


def _train_in_group(root: str, model: object, steps: int, world: int, store: str, rank: int, rates: object) -> None:
    """Rank ``rank`` of ``world`` gloo processes training ``model`` as a Ray Train worker does
    (``build_training`` and its ``pipeline``) but without Ray, on 32 preloaded batches
    of its share, for ``steps`` steps; puts its rows/s."""
    import os

    import torch
    import torch.distributed as dist

    from distrec.config import TrainConfig
    from distrec.train.loop import WorkerTask, build_training

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # as distrec's local runs
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    manifest, preloaded = _preloaded(root, rank, world)
    batches = itertools.cycle(preloaded)
    task = WorkerTask(model=model, train=TrainConfig(num_workers=world, batch_size=1024), dataset=root)  # type: ignore[arg-type]
    pipeline = build_training(task, manifest, world, torch.device("cpu")).pipeline
    for _ in range(5):  # warm-up
        pipeline.progress(batches)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(steps):
        pipeline.progress(batches).loss.item()
    dist.barrier()
    rates.put(steps * 1024 / (time.perf_counter() - started))  # type: ignore[attr-defined]
    dist.destroy_process_group()


def _concurrent(target: Callable[..., None], args: list[tuple[object, ...]]) -> float:
    """Summed rates of one spawned process a tuple of ``args``, each calling ``target(*its args, queue)``."""
    context = multiprocessing.get_context("spawn")
    rates = context.Queue()
    procs = [context.Process(target=target, args=(*a, rates)) for a in args]
    for proc in procs:
        proc.start()
    total = sum(rates.get(timeout=300) for _ in procs)
    for proc in procs:
        proc.join()
    return total


def independent_throughput(root: Path, processes: int, seconds: float = 6.0) -> float:
    """Summed rows/s of ``processes`` concurrent ``_train_alone`` processes."""
    return _concurrent(_train_alone, [(str(root), seconds)] * processes)


def without_ray_throughput(root: Path, model: object, world: int, steps: int) -> float:
    """Summed rows/s of ``world`` ``_train_in_group`` ranks."""
    with tempfile.TemporaryDirectory() as store:
        args = [(str(root), model, steps, world, str(Path(store) / "store"), rank) for rank in range(world)]
        return _concurrent(_train_in_group, args)


def run(out: Path, quick: bool) -> dict[str, object]:
    from distrec.config import ModelConfig, load_config
    from distrec.data.schema import Manifest
    from distrec.train.loop import WorkerTask

    rows = 100_000 if quick else 1_000_000
    repeats = 2 if quick else 3  # each round is whole TorchTrainer fits: quick keeps two
    config = load_config(REPO / "jobs" / "local.yaml")
    root = synthetic(out, rows)
    manifest = Manifest.read(root)
    teacher = config.teachers[0]

    def side(workers: int, model: ModelConfig, sharding_types: tuple[str, ...] = ()) -> float:
        train = replace(config.train, num_workers=workers, epochs=1, sharding_types=list(sharding_types))
        return fit_throughput(WorkerTask(model=model, train=train, dataset=str(root.resolve())), out)

    wide = replace(teacher, **COMPUTE_BOUND)
    load_before = load_average()
    results = interleave(
        {
            "one": lambda: side(1, wide),
            "two": lambda: side(2, wide),
            "two_dp": lambda: side(2, wide, ("data_parallel",)),
        },
        repeats,
    )
    causes: dict[str, object] = {}
    if not quick:  # where the second worker's time goes (full runs only: quick stays under 5 minutes)
        bare = interleave(
            {
                "one": lambda: without_ray_throughput(root, wide, 1, steps=60),
                "two": lambda: without_ray_throughput(root, wide, 2, steps=60),
            },
            repeats,
        )
        machine = interleave(
            {"one": lambda: independent_throughput(root, 1), "two": lambda: independent_throughput(root, 2)}, repeats
        )
        causes = {
            "without_ray_ratio": ratio(bare["two"], bare["one"]),
            "without_ray_ratio_spread": spread(bare["two"], bare["one"]),
            "independent_ratio": ratio(machine["two"], machine["one"]),
            "independent_ratio_spread": spread(machine["two"], machine["one"]),
        }
    demo_side: dict[str, object] = {}
    if not quick:  # the demo teacher beside the headline
        demo = interleave({"one": lambda: side(1, teacher), "two": lambda: side(2, teacher)}, repeats)
        demo_side = {
            "demo_ratio": ratio(demo["two"], demo["one"]),
            "demo_ratio_spread": spread(demo["two"], demo["one"]),
            "demo_two_workers_samples_per_s": round(median(demo["two"])),
            "demo_one_worker_samples_per_s": round(median(demo["one"])),
            "demo_model": f"{teacher.arch} dim {teacher.dim} hidden {teacher.hidden}",
            "demo_samples": {k: [round(v) for v in vs] for k, vs in demo.items()},
        }
    return {
        "ratio": ratio(results["two"], results["one"]),
        "ratio_spread": spread(results["two"], results["one"]),
        "loaded": loaded(load_before),
        "two_workers_samples_per_s": round(median(results["two"])),
        "data_parallel_ratio": ratio(results["two_dp"], results["one"]),
        "data_parallel_ratio_spread": spread(results["two_dp"], results["one"]),
        "two_workers_data_parallel_samples_per_s": round(median(results["two_dp"])),
        "one_worker_samples_per_s": round(median(results["one"])),
        **causes,
        "model": f"{wide.arch} dim {wide.dim} hidden {wide.hidden}",
        **demo_side,
        "rows": manifest.rows["train"],
        "dataset_rows": rows,
        "batch_size": config.train.batch_size,
        "repeats": repeats,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "samples": {k: [round(v) for v in vs] for k, vs in results.items()},
    }
