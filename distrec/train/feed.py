"""Feeding a worker: Ray Data shard -> ``Batch``es, kept in lockstep across ranks.

Sharded embedding tables make every step a collective (all-to-all), so all ranks must run the
same number of steps. Ray's ``streaming_split(equal=True)`` gets there by dropping rows; instead
each rank's shard is consumed as it comes and a rank that runs out early runs zero-weight
padding batches until every rank is done. Every row is trained exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from distrec.data.batch import Batch, BatchBuilder


def arrow_batches(shard: object, batch_size: int) -> Iterator[pa.Table]:
    """Arrow tables from a Ray ``DataIterator`` (the worker's share of a streamed dataset)."""
    yield from shard.iter_batches(batch_size=batch_size, batch_format="pyarrow", prefetch_batches=2)  # type: ignore[attr-defined]


def to_batches(tables: Iterable[pa.Table], builder: BatchBuilder, bootstrap_seed: int | None = None) -> Iterator[Batch]:
    """Build ``Batch``es; with a seed, rows get Poisson(1) weights (an online bootstrap sample)."""
    rng = np.random.default_rng(bootstrap_seed) if bootstrap_seed is not None else None
    for table in tables:
        batch = builder(table)
        if rng is not None:
            batch.weights = torch.from_numpy(rng.poisson(1.0, size=batch.size).astype(np.float32))
        yield batch


def lockstep(batches: Iterable[Batch], template: Batch, group: dist.ProcessGroup | None) -> Iterator[Batch]:
    """Yield local batches, then padding, until no rank has a batch left (one tiny all-reduce a step)."""
    it = iter(batches)
    padding = template.as_padding()
    flag = torch.zeros(1)
    while True:
        batch = next(it, None)
        flag.fill_(0.0 if batch is None else 1.0)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        if flag.item() == 0.0:
            return
        yield batch if batch is not None else padding
