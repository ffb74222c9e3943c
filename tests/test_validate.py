"""validate_table and read_parquet_checked catch every class of bad value, naming file, column and count."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distrec.data.schema import Manifest, SparseFeature
from distrec.data.validate import read_parquet_checked, validate_table
from distrec.errors import DataError

SOURCE = "some/dir/part-00000.parquet"


@pytest.fixture
def manifest() -> Manifest:
    return Manifest(
        name="t",
        sparse=[
            SparseFeature("user_id", 5, "user"),
            SparseFeature("item_id", 7, "item"),
            SparseFeature("tag", 3, "item"),
        ],
        dense=["price"],
        confounders={"mood": 4},
        history_max_len=3,
        has_true_ctr=True,
    )


def good_columns() -> dict[str, pa.Array]:
    """Six valid rows of the ``manifest`` fixture's dataset."""
    return {
        "user_id": pa.array([0, 1, 2, 3, 4, 0], pa.int64()),
        "item_id": pa.array([0, 6, 2, 3, 4, 5], pa.int64()),
        "label": pa.array([0, 1, 1, 0, 0, 1], pa.float32()),
        "ts": pa.array([10, 11, 12, 13, 14, 15], pa.int64()),
        "policy": pa.array(["a"] * 6),
        "propensity": pa.array([0.5, 1.0, None, 0.01, 0.2, 0.3], pa.float32()),
        "is_random": pa.array([False, True, False, False, False, False]),
        "hist_item_ids": pa.array([[], [0, 6], [1], [], [2, 3, 4], [6]], pa.list_(pa.int64())),
        "tag": pa.array([0, 1, 2, 0, 1, 2], pa.int64()),
        "price": pa.array([1.0, -2.0, 0.0, 3.5, 1e6, 0.1], pa.float32()),
        "mood": pa.array([0, 1, 2, 3, 0, 1], pa.int64()),
        "true_ctr": pa.array([0.1, 0.9, 0.5, 0.2, 0.0, 1.0], pa.float32()),
        "p_obs": pa.array([0.2, 0.8, 0.5, 0.3, 0.1, 0.9], pa.float32()),
        "p_do": pa.array([0.3, 0.7, 0.5, 0.3, 0.2, 0.8], pa.float32()),
        "p_fd": pa.array([0.3, 0.6, 0.5, 0.4, 0.2, 0.7], pa.float32()),
    }


def with_column(name: str, values: list[object], type_: pa.DataType | None = None) -> pa.Table:
    columns = good_columns()
    columns[name] = pa.array(values, type_ or columns[name].type)
    return pa.table(columns)


def test_valid_table_passes_with_extra_and_partition_columns(manifest: Manifest) -> None:
    table = (
        pa.table(good_columns())
        .append_column("ds", pa.array(["2026-01-01"] * 6))
        .append_column("extra", pa.array(["x"] * 6))
    )
    validate_table(table, manifest, SOURCE)


BAD_CASES: list[tuple[str, Callable[[], pa.Table], str, str]] = [
    ("missing", lambda: pa.table(good_columns()).drop_columns(["tag"]), "tag", "missing"),
    ("type", lambda: with_column("user_id", [0, 1, 2, 3, 4, 0], pa.int32()), "user_id", "type int32"),
    ("null id", lambda: with_column("item_id", [0, None, 2, None, 4, 5]), "item_id", "2 null values"),
    ("null list", lambda: with_column("hist_item_ids", [[], None, [1], [], [], []]), "hist_item_ids", "1 null values"),
    (
        "null in list",
        lambda: with_column("hist_item_ids", [[None], [], [1], [], [], []]),
        "hist_item_ids",
        "1 null item",
    ),
    ("nan label", lambda: with_column("label", [0, float("nan"), 1, 0, 0, 1]), "label", "1 NaN or infinite"),
    ("label value", lambda: with_column("label", [0, 2, 0.5, 0, 0, -1]), "label", "3 values not in {0, 1}"),
    ("inf dense", lambda: with_column("price", [np.inf, -np.inf, 0, 0, 0, 0]), "price", "2 NaN or infinite"),
    ("nan propensity", lambda: with_column("propensity", [float("nan"), 1, 1, 1, 1, 1]), "propensity", "1 NaN"),
    (
        "propensity 0",
        lambda: with_column("propensity", [0.0, 1.5, 1, 1, None, 1]),
        "propensity",
        "2 values outside (0, 1]",
    ),
    ("nan true_ctr", lambda: with_column("true_ctr", [float("nan")] * 3 + [0.5] * 3), "true_ctr", "3 NaN"),
    ("user range", lambda: with_column("user_id", [-1, 5, 0, 0, 0, 0]), "user_id", "2 values outside [0, 5)"),
    ("item range", lambda: with_column("item_id", [7, 0, 0, 0, 0, 0]), "item_id", "1 values outside [0, 7)"),
    ("sparse range", lambda: with_column("tag", [3, 3, 3, 0, 0, 0]), "tag", "3 values outside [0, 3)"),
    ("confounder range", lambda: with_column("mood", [0, 4, 0, 0, 0, -2]), "mood", "2 values outside [0, 4)"),
    (
        "history range",
        lambda: with_column("hist_item_ids", [[7, -1], [], [8], [], [], []]),
        "hist_item_ids",
        "3 item ids",
    ),
]


@pytest.mark.parametrize(("case", "make", "column", "what"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_each_class_of_bad_value_is_reported(
    manifest: Manifest, case: str, make: Callable[[], pa.Table], column: str, what: str
) -> None:
    with pytest.raises(DataError) as info:
        validate_table(make(), manifest, SOURCE)
    message = str(info.value)
    assert message.startswith(SOURCE), message
    assert f"column {column!r}" in message, message
    assert what in message, message


def test_all_problems_are_reported_together(manifest: Manifest) -> None:
    columns = good_columns()
    columns["label"] = pa.array([3, 1, 1, 0, 0, 1], pa.float32())
    columns["mood"] = pa.array([9, 9, 0, 0, 0, 0], pa.int64())
    del columns["ts"]
    with pytest.raises(DataError) as info:
        validate_table(pa.table(columns), manifest, SOURCE)
    message = str(info.value)
    for part in ("'ts': missing", "'label': 1 values not in {0, 1}", "'mood': 2 values outside [0, 4)"):
        assert part in message, message


def test_read_parquet_checked_returns_the_manifest_schema(manifest: Manifest, tmp_path: Path) -> None:
    path = tmp_path / "ds=2026-01-01" / "part-00000.parquet"
    path.parent.mkdir()
    columns = good_columns()
    columns = {"extra": pa.array(range(6)), **columns}
    columns["hist_item_ids"] = columns["hist_item_ids"].cast(pa.list_(pa.field("element", pa.int64(), nullable=False)))
    pq.write_table(pa.table(columns), path)
    table = read_parquet_checked(path, manifest)
    assert table.schema.equals(manifest.schema())
    assert table["hist_item_ids"].to_pylist() == good_columns()["hist_item_ids"].to_pylist()


def test_read_parquet_checked_names_the_file_of_bad_values(manifest: Manifest, tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(with_column("user_id", [0, 0, 0, 0, 0, 99]), path)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: column 'user_id': 1 values outside \[0, 5\)"):
        read_parquet_checked(path, manifest)


def test_read_parquet_checked_rejects_corrupt_and_empty_files(manifest: Manifest, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.parquet"
    pq.write_table(pa.table(good_columns()), corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:-100])
    with pytest.raises(DataError, match=rf"^{re.escape(str(corrupt))}: unreadable Parquet file"):
        read_parquet_checked(corrupt, manifest)

    zero_bytes = tmp_path / "zero.parquet"
    zero_bytes.write_bytes(b"")
    with pytest.raises(DataError, match=rf"^{re.escape(str(zero_bytes))}: unreadable"):
        read_parquet_checked(zero_bytes, manifest)

    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table(good_columns()).slice(0, 0), empty)
    with pytest.raises(DataError, match=rf"^{re.escape(str(empty))}: empty partition"):
        read_parquet_checked(empty, manifest)

    missing = tmp_path / "missing.parquet"
    with pytest.raises(DataError, match=rf"^{re.escape(str(missing))}: unreadable"):
        read_parquet_checked(missing, manifest)
