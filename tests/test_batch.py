"""Arrow -> Batch: exact tensors from hand-made Parquet, the same batches as a plain reference when cut
from a shard's chunks, clear errors on bad values naming the file."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from distrec.data import reader as reader_module
from distrec.data.batch import Batch, BatchBuilder, sparse_keys, table_index
from distrec.data.reader import ShardReader
from distrec.data.schema import HISTORY, LABEL, Manifest, SparseFeature
from distrec.errors import DataError
from distrec.train.feed import background, lockstep


def manifest() -> Manifest:
    return Manifest(
        name="hand",
        sparse=[
            SparseFeature("user_id", 5, "user"),
            SparseFeature("item_id", 7, "item"),
            SparseFeature("tag", 3, "item"),
        ],
        dense=["price"],
        confounders={"conf_pos": 4},
        history_max_len=3,
    )


def table(**changes: object) -> pa.Table:
    columns: dict[str, object] = {
        "user_id": pa.array([0, 4, 2], pa.int64()),
        "item_id": pa.array([6, 1, 3], pa.int64()),
        "label": pa.array([1.0, 0.0, 1.0], pa.float32()),
        "hist_item_ids": pa.array([[1, 2], [], [5, 6, 0]], pa.list_(pa.int64())),
        "tag": pa.array([2, 0, 1], pa.int64()),
        "price": pa.array([0.5, 1.5, -2.0], pa.float32()),
        "conf_pos": pa.array([3, 0, 1], pa.int64()),
        "fd__t": pa.array([0.25, 0.5, 0.75], pa.float32()),
    }
    columns.update(changes)
    return pa.table(columns)


def test_batch_from_parquet_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "part.parquet"
    pq.write_table(table(), path)
    builder = BatchBuilder(manifest(), soft_label_columns=["fd__t"])
    assert builder.columns[-1] == "fd__t"  # the soft-label columns are read with the rest
    batch = builder(pq.read_table(path, columns=builder.columns))

    assert isinstance(batch, Batch) and batch.size == 3
    assert batch.sparse.keys() == sparse_keys(manifest()) == ["user_id", "item_id", "tag", "hist_item_ids"]
    kjt = batch.sparse.to_dict()
    assert kjt["user_id"].values().tolist() == [0, 4, 2]
    assert kjt["item_id"].values().tolist() == [6, 1, 3]
    assert kjt["tag"].values().tolist() == [2, 0, 1]
    assert kjt["hist_item_ids"].values().tolist() == [1, 2, 5, 6, 0]
    assert kjt["hist_item_ids"].lengths().tolist() == [2, 0, 3]
    assert batch.sparse.values().dtype == torch.int64
    torch.testing.assert_close(batch.labels, torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(batch.dense, torch.tensor([[0.5], [1.5], [-2.0]]))
    assert batch.confounders.tolist() == [[3], [0], [1]]
    torch.testing.assert_close(batch.soft_labels, torch.tensor([[0.25], [0.5], [0.75]]))
    torch.testing.assert_close(batch.weights, torch.ones(3))
    padding = batch.as_padding()
    assert padding.weights.sum() == 0 and padding.sparse is batch.sparse


def test_record_batch_and_to_device_round_trip() -> None:
    builder = BatchBuilder(manifest())
    batch = builder(table().to_batches()[0])
    moved = batch.to(torch.device("cpu"))
    assert moved.sparse.values().tolist() == batch.sparse.values().tolist()
    assert moved.labels.tolist() == [1.0, 0.0, 1.0]
    empty = builder(table().slice(0, 0))
    assert empty.size == 0 and empty.sparse.values().numel() == 0 and empty.confounders.shape == (0, 1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"item_id": pa.array([6, 7, 9], pa.int64())}, "column 'item_id': 2 ids outside [0, 7)"),
        ({"hist_item_ids": pa.array([[1, -1], [], [8]], pa.list_(pa.int64()))}, "column 'hist_item_ids': 2 ids"),
        ({"hist_item_ids": pa.array([[1, None], [], [2]], pa.list_(pa.int64()))}, "'hist_item_ids': 1 null ids inside"),
        ({"label": pa.array([1.0, np.nan, 0.0], pa.float32())}, "column 'label': 1 null/NaN/inf"),
        ({"user_id": pa.array([0, None, 1], pa.int64())}, "column 'user_id': 1 null values"),
        ({"conf_pos": pa.array([0, 4, 4], pa.int64())}, "column 'conf_pos': 2 ids outside [0, 4)"),
    ],
)
def test_bad_values_are_named(change: dict[str, pa.Array], message: str) -> None:
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        BatchBuilder(manifest())(table(**change))


def test_small_tables_hash_ids_and_large_tables_keep_them() -> None:
    hashed = manifest().with_table_rows({"item_id": 4, "user_id": 1_000})
    batch = BatchBuilder(hashed)(table())
    kjt = batch.sparse.to_dict()
    assert kjt["user_id"].values().tolist() == [0, 4, 2]  # 1,000 rows >= 5 ids: identity
    items = kjt["item_id"].values()
    assert ((items >= 0) & (items < 4)).all()
    # the history shares the item table, so the same id lands on the same row
    same = BatchBuilder(hashed)(table(item_id=pa.array([1, 2, 5], pa.int64())))
    assert same.sparse.to_dict()["item_id"].values().tolist()[:2] == kjt["hist_item_ids"].values().tolist()[:2]
    assert hashed.table_rows["item_id"] == 4 and hashed.cardinality["item_id"] == 7
    with pytest.raises(DataError, match="unknown features"):
        manifest().with_table_rows({"nope": 3})


def test_table_index_spreads_ids_evenly() -> None:
    rows = table_index(np.arange(1_000_000, dtype=np.int64), 1_000_000, 1_000)
    counts = np.bincount(rows, minlength=1_000)
    assert counts.min() > 900 and counts.max() < 1_100


# ----------------------------------------------------------------------------- batches cut from a shard's chunks

SOFT = ["fd__t", "kd__t"]


def wide_manifest() -> Manifest:
    """Three sparse features (items hashed into a table smaller than their ids), two dense columns, two
    confounders and a history."""
    return Manifest(
        name="wide",
        sparse=[
            SparseFeature("user_id", 50, "user"),
            SparseFeature("item_id", 13, "item", table_rows=5),
            SparseFeature("tag", 4, "item"),
        ],
        dense=["price", "age"],
        confounders={"conf_a": 3, "conf_b": 5},
        history_max_len=6,
    )


def random_log(rng: np.random.Generator, rows: int) -> pa.Table:
    manifest = wide_manifest()
    columns: dict[str, pa.Array] = {s.name: pa.array(rng.integers(0, s.cardinality, rows)) for s in manifest.sparse}
    columns |= {d: pa.array(rng.normal(size=rows).astype(np.float32)) for d in manifest.dense}
    columns |= {c: pa.array(rng.integers(0, n, rows)) for c, n in manifest.confounders.items()}
    columns[LABEL] = pa.array(rng.integers(0, 2, rows).astype(np.float32))
    histories = [rng.integers(0, 13, rng.integers(0, 7)).tolist() for _ in range(rows)]
    histories[rows // 2] = None  # a null history: an empty one
    columns[HISTORY] = pa.array(histories, pa.list_(pa.int64()))
    columns |= {c: pa.array(rng.random(rows).astype(np.float32)) for c in SOFT}
    return pa.table(columns)


def reference(table: pa.Table, manifest: Manifest) -> Batch:
    """A batch built the plain way: Python rows, one tensor per field, ``from_lengths_sync``."""
    rows = table.to_pylist()
    values: list[int] = []
    for s in manifest.sparse:
        values += table_index(np.array([r[s.name] for r in rows], np.int64), s.cardinality, s.rows).tolist()
    histories = [r[HISTORY] or [] for r in rows]
    items = np.array([i for h in histories for i in h], np.int64)
    values += table_index(items, manifest.cardinality["item_id"], manifest.table_rows["item_id"]).tolist()
    lengths = [1] * len(rows) * len(manifest.sparse) + [len(h) for h in histories]

    def matrix(names: list[str], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([[r[c] for c in names] for r in rows], dtype=dtype).reshape(len(rows), len(names))

    return Batch(
        sparse=KeyedJaggedTensor.from_lengths_sync(
            sparse_keys(manifest), torch.tensor(values, dtype=torch.int64), torch.tensor(lengths, dtype=torch.int32)
        ),
        dense=matrix(manifest.dense, torch.float32),
        labels=matrix([LABEL], torch.float32).reshape(-1),
        weights=torch.ones(len(rows)),
        confounders=matrix(list(manifest.confounders), torch.int64),
        soft_labels=matrix(SOFT, torch.float32),
    )


def assert_same_batch(got: Batch, want: Batch) -> None:
    for f in fields(Batch):
        if f.name != "sparse":
            a, b = getattr(got, f.name), getattr(want, f.name)
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f.name
    mine, theirs = vars(got.sparse), vars(want.sparse)  # the whole KJT: keys, tensors and cached sizes
    assert mine.keys() == theirs.keys()
    for key, value in mine.items():
        other = theirs[key]
        if isinstance(value, torch.Tensor):
            assert value.dtype == other.dtype and torch.equal(value, other), key
        else:
            assert value == other, key


@pytest.mark.parametrize(("world", "batch_size", "chunk_rows"), [(1, 64, 8192), (3, 7, 10), (2, 16, 16)])
def test_batches_from_shard_chunks_match_the_reference(
    tmp_path: Path, world: int, batch_size: int, chunk_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files with uneven row groups, one without statistics; chunks smaller than, equal to and larger
    than a batch, so batches span chunks, row groups and files."""
    monkeypatch.setattr(reader_module, "CHUNK_ROWS", chunk_rows)
    rng = np.random.default_rng(0)
    files = []
    for i, (rows, group, statistics) in enumerate([(70, 16, True), (45, 45, False), (101, 30, True)]):
        files.append(tmp_path / f"part-{i}.parquet")
        pq.write_table(random_log(rng, rows), files[-1], row_group_size=group, write_statistics=statistics)
    manifest = wide_manifest()
    builder = BatchBuilder(manifest, SOFT)
    everything = pa.concat_tables(pq.read_table(f, columns=builder.columns) for f in files)
    for rank in range(world):
        reader = ShardReader(files, builder.columns, rank, world, batch_size)
        got = list(builder.batches(reader.chunks(), batch_size))
        shard = everything.slice(reader.begin, reader.rows)
        want = [reference(shard.slice(i, batch_size), manifest) for i in range(0, shard.num_rows, batch_size)]
        assert len(got) == len(want) == reader.num_batches
        for g, w in zip(got, want, strict=True):
            assert_same_batch(g, w)


@pytest.mark.parametrize(("world", "batch_size"), [(1, 64), (3, 7), (2, 16), (4, 50)])
def test_every_rank_runs_the_footers_step_count_without_a_collective(
    tmp_path: Path, world: int, batch_size: int
) -> None:
    """The file reader's ranks agree on their steps from the footers alone (no process group here at all):
    each yields its own batches in order, then padding up to the largest share's count, with the rows of
    each step counted on the host (0 for padding)."""
    rng = np.random.default_rng(1)
    files = []
    for i, rows in enumerate([70, 45, 102]):
        files.append(tmp_path / f"part-{i}.parquet")
        pq.write_table(random_log(rng, rows), files[-1], row_group_size=30)
    manifest = wide_manifest()
    builder = BatchBuilder(manifest, SOFT)
    readers = [ShardReader(files, builder.columns, rank, world, batch_size) for rank in range(world)]
    assert {r.steps for r in readers} == {max(r.num_batches for r in readers)}
    for reader in readers:
        local = list(builder.batches(reader.chunks(), batch_size))
        template = local[0]
        sizes: deque[int] = deque()
        ran = list(lockstep(iter(local), template, None, reader.steps, sizes))
        assert len(ran) == reader.steps
        assert list(sizes) == [b.size for b in local] + [0] * (reader.steps - len(local))
        assert all(a is b for a, b in zip(ran, local, strict=False))
        assert all(not b.weights.any() for b in ran[len(local) :])
        assert sum(sizes) == reader.rows
    with pytest.raises(RuntimeError, match="more than the 1 batches"):
        list(lockstep(iter(local + local), template, None, 1))


@pytest.mark.parametrize("statistics", [True, False])
def test_bad_ids_in_a_file_are_named_with_the_file(tmp_path: Path, statistics: bool) -> None:
    """With or without footer statistics, a chunk's bad ids are counted and the file named."""
    path = tmp_path / "part.parquet"
    log = random_log(np.random.default_rng(1), 40)
    items = log[HISTORY].to_pylist()
    items[3], items[9] = [13, 2], [-1]
    pq.write_table(
        log.set_column(log.schema.get_field_index(HISTORY), HISTORY, pa.array(items)), path, write_statistics=statistics
    )
    builder = BatchBuilder(wide_manifest(), SOFT)
    chunks = ShardReader([path], builder.columns, 0, 1, batch_size=8).chunks()
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: column 'hist_item_ids': 2 ids outside \[0, 13\)"):
        list(builder.batches(chunks, 8))


def test_background_feed_keeps_order_raises_and_stops() -> None:
    """``background`` yields what its iterable yields, in order; an error in its thread reaches the
    consumer; closing it early stops the thread instead of letting it produce for no one."""
    assert list(background(iter(range(100)), depth=3)) == list(range(100))

    def failing() -> Iterator[int]:
        yield 1
        raise DataError("bad chunk in f.parquet")

    feed = background(failing())
    assert next(feed) == 1
    with pytest.raises(DataError, match=r"f\.parquet"):
        next(feed)

    produced: list[int] = []

    def endless() -> Iterator[int]:
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    feed = background(endless(), depth=2)
    assert [next(feed) for _ in range(5)] == list(range(5))
    feed.close()
    count = len(produced)
    assert not any(t.name == "distrec-feed" for t in threading.enumerate())
    assert len(produced) == count  # nothing more after close
    assert count <= 5 + 2 + 1  # at most depth ahead, plus the item it was putting


def test_background_feed_stays_in_the_consumers_thread_until_released() -> None:
    """Until ``after`` is set (TorchRec's pipeline has traced the model on its first step), every item is
    produced in the consumer's own thread, so nothing runs beside the tracer; then the thread takes over."""
    producers: list[str] = []

    def items() -> Iterator[int]:
        for i in range(10):
            producers.append(threading.current_thread().name)
            yield i

    released = threading.Event()
    feed = background(items(), depth=2, after=released)
    assert [next(feed), next(feed)] == [0, 1]
    assert producers == [threading.current_thread().name] * 2  # one item a request, in this thread
    released.set()
    assert list(feed) == list(range(2, 10))
    assert set(producers[2:]) == {"distrec-feed"}


LOWERED = """
import os, threading
from distrec.train.feed import lowest_cpu_priority

def nice(thread_id):
    return os.getpriority(os.PRIO_PROCESS, thread_id)

def nices():
    out = set()
    for task in os.listdir("/proc/self/task"):
        try:
            out.add(nice(int(task)))
        except ProcessLookupError:  # a thread that ended after the listing (the one joined below)
            pass
    return sorted(out)

released = threading.Event()
waiting = threading.Thread(target=released.wait, daemon=True)
waiting.start()
try:
    before = nice(threading.get_native_id())
    lowest_cpu_priority()
    later = []
    started = threading.Thread(target=lambda: later.append(nice(threading.get_native_id())))
    started.start()
    started.join()
    print(before, nices(), later)
finally:
    released.set()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="Linux keeps a nice value per thread")
def test_lowest_cpu_priority_lowers_every_thread_of_a_process_and_those_it_starts() -> None:
    """What the stream's scoring actors call first (``StreamLabeler``); run in a process of its own,
    since it cannot be undone."""
    run = subprocess.run([sys.executable, "-c", LOWERED], capture_output=True, text=True, check=True, timeout=120)
    out = run.stdout.split()
    if out[0] == "19":
        pytest.skip("this test already runs at nice 19: nothing to lower")
    assert out[1:] == ["[19]", "[19]"], out
