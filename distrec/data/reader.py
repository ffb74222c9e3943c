"""Deterministic per-worker reading of a split: each rank gets a contiguous, equal share of rows.

Rank r of W reads global rows [r*N/W, (r+1)*N/W) of the split's files in order, touching only the
row groups that overlap its range (found from Parquet footers). The shares differ by at most one
row, and a resumed worker can skip exactly the batches it has already trained on, which a dynamic
split (Ray Data's ``streaming_split``) cannot promise.

Rows come as ``Chunk``s of at most ``CHUNK_ROWS`` rows, each carrying its file and the bounds its
row group's footer statistics give, so that ``BatchBuilder.batches`` converts and checks a chunk
once and cuts several batches from it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# Rows decoded at a time: enough to spread the per-chunk costs of decoding and converting over
# many training batches, few enough to stay in cache. On the synthetic logs (2 loaded cores),
# batches came fastest from chunks of 16,384-32,768 rows; whole row groups of 200,000 rows decode
# more slowly than such pieces.
CHUNK_ROWS = 16384


@dataclass(frozen=True)
class Chunk:
    """Consecutive rows of a split, with the file they come from (for error messages) and, per
    integer column, (min, max) from its row group's footer statistics (a list column: of its items).

    Bounds hold for the whole row group, so for any rows of it; a column without statistics has none.
    """

    records: pa.RecordBatch
    source: str = ""
    bounds: Mapping[str, tuple[int, int]] = field(default_factory=dict)


def footer_bounds(metadata: pq.RowGroupMetaData, columns: Collection[str]) -> dict[str, tuple[int, int]]:
    """(min, max) of each integer column of ``columns`` in one row group, from its footer statistics."""
    bounds: dict[str, tuple[int, int]] = {}
    unknown: set[str] = set()
    for j in range(metadata.num_columns):
        leaf = metadata.column(j)
        name = leaf.path_in_schema.split(".", 1)[0]  # a list column's leaf is "<name>.list.<item>"
        if name not in columns:
            continue
        stats = leaf.statistics
        if stats is None or not stats.has_min_max or leaf.physical_type not in ("INT32", "INT64"):
            unknown.add(name)
            continue
        lo, hi = bounds.get(name, (stats.min, stats.max))  # several leaves of one name: their union
        bounds[name] = (min(lo, stats.min), max(hi, stats.max))
    return {name: b for name, b in bounds.items() if name not in unknown}


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
    """One rank's share of rows, in order, as ``Chunk``s; ``batch_size`` sets what ``skip_batches``
    and ``num_batches`` count (``BatchBuilder.batches`` cuts the batches)."""

    def __init__(
        self, files: Sequence[str | Path], columns: Sequence[str], rank: int, world: int, batch_size: int
    ) -> None:
        self.groups = row_groups(files)
        total = self.groups[-1].start + self.groups[-1].rows if self.groups else 0
        self.begin, self.end = shard_bounds(total, rank, world)
        self.total, self.world = total, world
        self.columns = list(columns)
        self.batch_size = batch_size

    @property
    def rows(self) -> int:
        return self.end - self.begin

    @property
    def num_batches(self) -> int:
        return -(-self.rows // self.batch_size)

    @property
    def steps(self) -> int:
        """The batches of the largest rank's share: the steps every rank runs (the others pad), known to
        every rank from the footers alone."""
        shares = (shard_bounds(self.total, r, self.world) for r in range(self.world))
        return max(-(-(end - begin) // self.batch_size) for begin, end in shares)

    def chunks(self, skip_batches: int = 0) -> Iterator[Chunk]:
        """This shard's rows after its first ``skip_batches`` batches (resume), ``CHUNK_ROWS`` at most
        at a time. One thread: a training worker owns one core (``distrec.train.loop`` sets torch's)."""
        start = self.begin + skip_batches * self.batch_size
        for group in self.groups:
            lo, hi = max(start, group.start), min(self.end, group.start + group.rows)
            if lo >= hi:
                continue
            file = pq.ParquetFile(group.path)
            bounds = footer_bounds(file.metadata.row_group(group.index), self.columns)
            offset = group.start  # global row of the next record batch's first row
            pieces = file.iter_batches(CHUNK_ROWS, row_groups=[group.index], columns=self.columns, use_threads=False)
            for piece in pieces:
                first, offset = offset, offset + piece.num_rows
                if offset > lo:
                    yield Chunk(piece.slice(max(lo - first, 0), min(hi, offset) - max(lo, first)), group.path, bounds)
                if offset >= hi:
                    break
