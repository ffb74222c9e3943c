"""Arrow -> Batch: exact tensors from hand-made Parquet, clear errors on bad values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distrec.data.batch import Batch, BatchBuilder, sparse_keys, table_index
from distrec.data.schema import Manifest, SparseFeature
from distrec.errors import DataError


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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"item_id": pa.array([6, 7, 9], pa.int64())}, "column 'item_id': 2 ids outside [0, 7)"),
        ({"hist_item_ids": pa.array([[1, -1], [], [8]], pa.list_(pa.int64()))}, "column 'hist_item_ids': 2 ids"),
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
