"""The training files as a Ray Data datasource, for the soft-label stream.

Kept apart from the stream's scoring code on purpose: Ray's read workers import this module to run
their tasks, and it needs only numpy, pyarrow and Ray (about 160 MiB resident), not torch and
TorchRec (about 450 MiB), which every read worker would otherwise load.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import DataContext, Datasource, ReadTask
from ray.data.block import BlockMetadata

READ_TASK_BYTES = 32 * 2**20  # of Parquet per read task, at most, where the files are smaller than that
READ_TASKS_PER_SLOT = 2  # at least: a read task streams its blocks as it reads, so two a slot keep it busy
READ_CHUNK_ROWS = 16_384  # rows a read task decodes and hands on at a time (about 4 MiB of the synthetic log)


def read_tasks(files: Sequence[str], slots: int) -> int:
    """Ray Data read tasks for ``files``: one per file, unless there are many small ones, then fewer, each
    reading several files in turn (about ``READ_TASK_BYTES`` of Parquet, and at least ``READ_TASKS_PER_SLOT``
    per CPU slot). Every read task costs scheduling of its own: a log of thousands of small files streamed at
    0.56x the rows/s of the same rows in ten files when each file was a task (benchmark (h))."""
    total = sum(Path(f).stat().st_size for f in files)
    return max(1, min(len(files), max(READ_TASKS_PER_SLOT * slots, -(-total // READ_TASK_BYTES))))


class ParquetFiles(Datasource):
    """The training files as Ray Data read tasks: contiguous groups of files of about equal bytes, each
    read in turn with pyarrow's ``ParquetFile`` in chunks of ``READ_CHUNK_ROWS`` rows, on one thread.

    Leaner than ``ray.data.read_parquet``, which plans a fragment per file and scans each through a
    pyarrow dataset: over 3,000 files of 70 rows it read 35,000-49,000 rows/s where this reads
    77,000-107,000 (the same on ten large files). The files were validated before Ray started.
    """

    def __init__(self, files: Sequence[str], columns: Sequence[str]) -> None:
        self.files, self.columns = list(files), list(columns)
        self.sizes = [Path(f).stat().st_size for f in self.files]
        schema = pq.read_schema(self.files[0])
        self.schema = pa.schema([schema.field(c) for c in self.columns])

    def estimate_inmemory_data_size(self) -> int:
        return sum(self.sizes)  # of Parquet: Ray Data's planning only needs an order of magnitude

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: DataContext | None = None
    ) -> list[ReadTask]:
        cumulative = np.cumsum(self.sizes)
        tasks = max(1, min(parallelism, len(self.files)))
        ends = np.searchsorted(cumulative, cumulative[-1] * np.arange(1, tasks + 1) / tasks, side="left") + 1
        bounds = np.unique(np.concatenate([[0], np.minimum(ends, len(self.files))]))
        return [
            ReadTask(
                functools.partial(_read_files, self.files[start:end], self.columns),
                BlockMetadata(
                    num_rows=None,
                    size_bytes=int(sum(self.sizes[start:end])),
                    exec_stats=None,
                    input_files=tuple(self.files[start:end]),
                ),
                schema=self.schema,
                per_task_row_limit=per_task_row_limit,
            )
            for start, end in itertools.pairwise(bounds.tolist())
        ]


def _read_files(files: list[str], columns: list[str]) -> Iterator[pa.Table]:
    """One read task: ``files`` in turn, as tables of at most ``READ_CHUNK_ROWS`` rows (small files joined).

    Joined files are copied into one record batch: a table of hundreds of 70-row chunks would make every
    later slice, scoring call and batch conversion walk them."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(READ_CHUNK_ROWS, columns=columns, use_threads=False):
            if pending and rows + batch.num_rows > READ_CHUNK_ROWS:
                yield _joined(pending)
                pending, rows = [], 0
            pending.append(batch)
            rows += batch.num_rows
    if pending:
        yield _joined(pending)


def _joined(batches: list[pa.RecordBatch]) -> pa.Table:
    return pa.Table.from_batches([batches[0] if len(batches) == 1 else pa.concat_batches(batches)])
