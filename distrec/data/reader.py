"""Deterministic per-worker reading of a split: each rank gets a contiguous, equal share of rows.

Rank r of W reads global rows [r*N/W, (r+1)*N/W) of the split's files in order, touching only the
row groups that overlap its range (found from Parquet footers). The shares differ by at most one
row, and a resumed worker can skip exactly the batches it has already trained on, which a dynamic
split (Ray Data's ``streaming_split``) cannot promise.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class RowGroup:
    path: str
    index: int
    start: int  # global row offset of the group's first row
    rows: int


def row_groups(files: Sequence[str | Path]) -> list[RowGroup]:
    """Every row group of ``files`` with its global row offset (reads footers only)."""
    groups, offset = [], 0
    for path in files:
        meta = pq.ParquetFile(path).metadata
        for i in range(meta.num_row_groups):
            rows = meta.row_group(i).num_rows
            groups.append(RowGroup(str(path), i, offset, rows))
            offset += rows
    return groups


def shard_bounds(total_rows: int, rank: int, world: int) -> tuple[int, int]:
    bounds = np.linspace(0, total_rows, world + 1).round().astype(np.int64)
    return int(bounds[rank]), int(bounds[rank + 1])


class ShardReader:
    """Arrow tables of ``batch_size`` rows (the last may be shorter) from one rank's share of rows."""

    def __init__(
        self, files: Sequence[str | Path], columns: Sequence[str], rank: int, world: int, batch_size: int
    ) -> None:
        self.groups = row_groups(files)
        total = self.groups[-1].start + self.groups[-1].rows if self.groups else 0
        self.begin, self.end = shard_bounds(total, rank, world)
        self.columns = list(columns)
        self.batch_size = batch_size

    @property
    def rows(self) -> int:
        return self.end - self.begin

    @property
    def num_batches(self) -> int:
        return -(-self.rows // self.batch_size)

    def batches(self, skip_batches: int = 0) -> Iterator[pa.Table]:
        """Yield this shard's batches, starting after the first ``skip_batches`` (resume)."""
        start = self.begin + skip_batches * self.batch_size
        pending: list[pa.Table] = []
        pending_rows = 0
        for group in self.groups:
            lo, hi = max(start, group.start), min(self.end, group.start + group.rows)
            if lo >= hi:
                continue
            table = pq.ParquetFile(group.path).read_row_group(group.index, columns=self.columns)
            pending.append(table.slice(lo - group.start, hi - lo))
            pending_rows += hi - lo
            while pending_rows >= self.batch_size:
                merged = pa.concat_tables(pending)
                yield merged.slice(0, self.batch_size)
                rest = merged.slice(self.batch_size)
                pending, pending_rows = [rest], rest.num_rows
        if pending_rows:
            yield pa.concat_tables(pending)
