"""Per-rank row shards: equal, disjoint, complete, in order, and resumable at an exact batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distrec.data.reader import ShardReader, shard_bounds


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """Three files, 1,000 rows in all, with row groups of uneven sizes."""
    paths, start = [], 0
    for i, (rows, group) in enumerate([(230, 100), (500, 64), (270, 270)]):
        path = tmp_path / f"part-{i}.parquet"
        table = pa.table({"row": np.arange(start, start + rows), "x": np.ones(rows)})
        pq.write_table(table, path, row_group_size=group)
        paths.append(path)
        start += rows
    return paths


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shards_partition_rows_in_order(files: list[Path], world: int) -> None:
    seen = []
    sizes = []
    for rank in range(world):
        reader = ShardReader(files, ["row"], rank, world, batch_size=48)
        rows = [t.column("row").to_numpy() for t in reader.batches()]
        assert all(len(r) == 48 for r in rows[:-1]) and len(rows) == reader.num_batches
        seen.append(np.concatenate(rows))
        sizes.append(reader.rows)
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(1000))
    assert max(sizes) - min(sizes) <= 1


def test_skip_resumes_at_the_exact_batch(files: list[Path]) -> None:
    reader = ShardReader(files, ["row"], rank=1, world=2, batch_size=32)
    full = np.concatenate([t.column("row").to_numpy() for t in reader.batches()])
    resumed = np.concatenate([t.column("row").to_numpy() for t in reader.batches(skip_batches=5)])
    np.testing.assert_array_equal(resumed, full[5 * 32 :])
    assert list(reader.batches(skip_batches=reader.num_batches)) == []


def test_bounds() -> None:
    assert [shard_bounds(10, r, 3) for r in range(3)] == [(0, 3), (3, 7), (7, 10)]
    assert shard_bounds(0, 0, 2) == (0, 0)
