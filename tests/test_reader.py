"""Per-rank row shards: equal, disjoint, complete, in order, and resumable at an exact batch; chunks
carry their file and the bounds of their row group's footer statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distrec.data import reader as reader_module
from distrec.data.reader import ShardReader, footer_bounds, shard_bounds


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


def rows_of(reader: ShardReader, skip_batches: int = 0) -> np.ndarray:
    chunks = list(reader.chunks(skip_batches))
    assert all(0 < c.records.num_rows <= reader_module.CHUNK_ROWS for c in chunks)
    return np.concatenate([c.records.column("row").to_numpy() for c in chunks] or [np.zeros(0, np.int64)])


@pytest.mark.parametrize("chunk_rows", [40, 8192])
@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shards_partition_rows_in_order(
    files: list[Path], world: int, chunk_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader_module, "CHUNK_ROWS", chunk_rows)
    seen = []
    sizes = []
    for rank in range(world):
        reader = ShardReader(files, ["row"], rank, world, batch_size=48)
        rows = rows_of(reader)
        assert len(rows) == reader.rows
        seen.append(rows)
        sizes.append(reader.rows)
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(1000))
    assert max(sizes) - min(sizes) <= 1


def test_skip_resumes_at_the_exact_batch(files: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader_module, "CHUNK_ROWS", 40)
    reader = ShardReader(files, ["row"], rank=1, world=2, batch_size=32)
    full = rows_of(reader)
    np.testing.assert_array_equal(rows_of(reader, skip_batches=5), full[5 * 32 :])
    assert list(reader.chunks(skip_batches=reader.num_batches)) == []


def test_chunks_carry_their_file_and_footer_bounds(tmp_path: Path) -> None:
    path = tmp_path / "part.parquet"
    table = pa.table(
        {
            "id": pa.array([3, 9, 4, 7], pa.int64()),
            "hist": pa.array([[5, 2], [], None, [11]], pa.list_(pa.int64())),
            "x": pa.array([0.5, 1.5, 2.5, 3.5], pa.float32()),
        }
    )
    pq.write_table(table, path, row_group_size=2)
    chunks = list(ShardReader([path], ["id", "hist", "x"], 0, 1, batch_size=1).chunks())
    assert [c.source for c in chunks] == [str(path)] * 2
    # the bounds of the integer columns (a list column: of its items) of each row group; none for floats
    assert [dict(c.bounds) for c in chunks] == [{"id": (3, 9), "hist": (2, 5)}, {"id": (4, 7), "hist": (11, 11)}]

    pq.write_table(table, path, write_statistics=["x"])  # no statistics: no bounds
    assert footer_bounds(pq.ParquetFile(path).metadata.row_group(0), ["id", "hist", "x"]) == {}


def test_bounds() -> None:
    assert [shard_bounds(10, r, 3) for r in range(3)] == [(0, 3), (3, 7), (7, 10)]
    assert shard_bounds(0, 0, 2) == (0, 0)
