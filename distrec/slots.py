"""How many CPU-heavy Ray tasks to run at once, and a way to run a set of them within that bound.

An embedded Ray is told more CPUs than the machine has (``ray.num_cpus``: K+1 trainers, scorers and
read tasks must all fit), so Ray alone would start a worker process per logical CPU, each importing
torch and torchrec, whenever there is that much work queued. These bound it to the real cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import ray


def cpu_slots() -> int:
    """The cluster's CPUs, but at most this machine's real cores per live node (nodes are assumed no
    larger than the driver's)."""
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(cpus, len(os.sched_getaffinity(0)) * max(nodes, 1)))


def gather_bounded(calls: Mapping[str, Callable[[], ray.ObjectRef]], slots: int) -> dict[str, Any]:
    """Each call's result by name, with at most ``slots`` of the tasks they submit running at a time, in
    the order given: a finished task's worker process (its imports done) is reused for the next."""
    queue = list(calls.items())
    pending: dict[ray.ObjectRef, str] = {}
    results: dict[str, Any] = {}
    while queue or pending:
        while queue and len(pending) < slots:
            name, call = queue.pop(0)
            pending[call()] = name
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            results[pending.pop(ref)] = ray.get(ref)
    return results
