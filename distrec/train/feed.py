"""Feeding a worker: Ray Data shard -> ``Batch``es, kept in lockstep across ranks.

Sharded embedding tables make every step a collective (all-to-all), so all ranks must run the
same number of steps. Ray's ``streaming_split(equal=True)`` gets there by dropping rows; instead
each rank's shard is consumed as it comes and a rank that runs out early runs zero-weight
padding batches until every rank is done. Every row is trained exactly once.

Cross-fitting (``distill.cross_fit``) holds a fold out of a teacher's copy the same way: its rows are
read and get weight 0, so lockstep, resume and padding are those of any other model.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from distrec.data.batch import Batch, BatchBuilder
from distrec.data.reader import Chunk
from distrec.data.schema import ITEM, USER

# splitmix64's constants: a fixed hash (never Python's salted one), so a pair's fold is the same in every
# process, run and night, whatever the order or the batching of the rows
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
T = TypeVar("T")
_DONE = object()  # the end of a background iterator's queue


def lowest_cpu_priority(thread_ids: Iterable[int] | None = None) -> None:
    """Nice 19 for each of ``thread_ids`` (native ids; None: every thread of this process), on Linux: it
    keeps a nice value per thread, and a thread starts with its creator's. Elsewhere an id names a
    process, so nothing is changed."""
    if sys.platform != "linux":
        return
    for thread_id in [int(t) for t in os.listdir("/proc/self/task")] if thread_ids is None else thread_ids:
        try:
            os.setpriority(os.PRIO_PROCESS, thread_id, 19)
        except ProcessLookupError:  # a thread that ended since it was listed
            continue


def background(items: Iterable[T], depth: int = 40, after: threading.Event | None = None) -> Iterator[T]:
    """``items``, produced in a thread of their own at most ``depth`` ahead of the consumer.

    A rank of a multi-worker run spends part of every step waiting on its collectives (a quarter of
    it, for the demo's student on 2 cores); the thread reads, converts (and, with
    ``distill.soft_labels=inline``, scores) the next batches in those waits: torch, Arrow and gloo
    release the GIL. The thread runs at the lowest CPU priority, so it takes the cores the steps leave
    idle rather than delaying a step that the other ranks wait for. ``depth`` is in items: 40 batches
    hold more than two of the reader's chunks (16,384 rows) at 1,024 rows a batch, so a chunk scored
    at once does not drain it. An exception in the thread is raised in the consumer; closing the
    iterator stops the thread.

    Until ``after`` is set, items are produced in the consumer's thread, one per request. TorchRec's
    pipeline traces the model with torch.fx on its first step, and the tracer patches
    ``nn.Module.__call__`` for every thread: a teacher scoring inline in the thread meanwhile was taken
    for a submodule of the traced model ("module is not installed as a submodule").
    """
    items = iter(items)
    while after is not None and not after.is_set():
        try:
            item = next(items)
        except StopIteration:
            return
        yield item
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            lowest_cpu_priority([threading.get_native_id()])
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as error:  # handed to the consumer, which raises it
            put(error)

    thread = threading.Thread(target=produce, name="distrec-feed", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5.0)  # bounded: a thread blocked inside ``items`` (a stalled stream) is a daemon


def arrow_batches(shard: object, batch_size: int) -> Iterator[pa.Table]:
    """Arrow tables from a Ray ``DataIterator`` (the worker's share of a streamed dataset)."""
    yield from shard.iter_batches(batch_size=batch_size, batch_format="pyarrow", prefetch_batches=2)  # type: ignore[attr-defined]


def to_batches(
    chunks: Iterable[Chunk | pa.Table], builder: BatchBuilder, batch_size: int, bootstrap_seed: int | None = None
) -> Iterator[Batch]:
    """``Batch``es of ``batch_size`` rows cut from ``chunks`` (``BatchBuilder.batches``); with a seed,
    rows get Poisson(1) weights (an online bootstrap sample)."""
    rng = np.random.default_rng(bootstrap_seed) if bootstrap_seed is not None else None
    for batch in builder.batches(chunks, batch_size):
        if rng is not None:
            batch.weights = torch.from_numpy(rng.poisson(1.0, size=batch.size).astype(np.float32))
        yield batch


def lockstep(
    batches: Iterable[Batch],
    template: Batch,
    group: dist.ProcessGroup | None,
    steps: int | None = None,
    sizes: deque[int] | None = None,
) -> Iterator[Batch]:
    """Yield local batches, then padding, until no rank has a batch left.

    ``steps``, where every rank knows it (``ShardReader.steps``, from the Parquet footers), is the number
    of steps all ranks run, and no collective is needed. Otherwise (a streamed shard, whose length no rank
    knows in advance) one tiny all-reduce a step finds the end. ``sizes`` gets the rows of each batch
    yielded, in order (0 for padding): counted on the host, so a step never waits on the device for it.
    """
    padding = template.as_padding()
    it = iter(batches)
    for batch in _counted(it, steps) if steps is not None else _agreed(it, group):
        if sizes is not None:
            sizes.append(0 if batch is None else batch.size)
        yield batch if batch is not None else padding


def _counted(batches: Iterator[Batch], steps: int) -> Iterator[Batch | None]:
    """``steps`` steps of local batches, None once this rank has run out (every rank knows ``steps``)."""
    for _ in range(steps):
        yield next(batches, None)
    if next(batches, None) is not None:
        raise RuntimeError(f"this rank has more than the {steps} batches every rank was to run")


def _agreed(batches: Iterator[Batch], group: dist.ProcessGroup | None) -> Iterator[Batch | None]:
    """Local batches, None once this rank has run out, until no rank has one left (an all-reduce a step)."""
    flag = torch.zeros(1)
    while True:
        batch = next(batches, None)
        flag.fill_(0.0 if batch is None else 1.0)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        if flag.item() == 0.0:
            return
        yield batch


def pair_folds(users: np.ndarray, items: np.ndarray, folds: int) -> np.ndarray:
    """The cross-fitting fold in [0, folds) of each (user, item) pair: every exposure of a pair falls in
    one fold, so the copy that scores a row never trained on another exposure of the same pair."""
    with np.errstate(over="ignore"):
        h = users.astype(np.uint64) * _MIX[0] ^ items.astype(np.uint64)
        for shift, factor in ((30, _MIX[1]), (27, _MIX[2])):
            h = (h ^ (h >> np.uint64(shift))) * factor
        h ^= h >> np.uint64(31)
    return (h % np.uint64(folds)).astype(np.int64)


def row_folds(batch: Batch, folds: int) -> np.ndarray:
    """Each row's fold, from the user and item ids of the batch (training and scoring build the same
    batches from the same rows, so they agree; with a hashed table, of the table rows the ids map to)."""
    users, items = (batch.sparse[key].values().numpy() for key in (USER, ITEM))
    return pair_folds(users, items, folds)


def hold_out(batches: Iterable[Batch], fold: int, folds: int, held: deque[int]) -> Iterator[Batch]:
    """Cross-fitting: rows of ``fold`` get weight 0 (read, never trained); the number of such rows of each
    batch is appended to ``held`` in batch order, for the count of rows trained (before ``lockstep``:
    padding holds nothing out)."""
    for batch in batches:
        out = torch.from_numpy(row_folds(batch, folds) == fold)
        batch.weights = batch.weights.masked_fill(out, 0.0)
        held.append(int(out.sum()))
        yield batch
