"""Many small files: ``partition="auto"`` keeps a long, sparse log to months, and ``distrec data compact``
merges an existing day-partitioned dataset into months in place, rows and values unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from distrec.cli import main
from distrec.data.compact import compact
from distrec.data.importer import AUTO_MAX_PARTITIONS, import_interactions
from distrec.data.schema import SPLITS, Manifest
from distrec.data.validate import read_parquet_checked
from distrec.errors import ConfigError

DAY = 86_400


def write_log(path: Path, days: int, rows: int, seed: int = 0) -> Path:
    """``rows`` interactions at random times over ``days`` days from 1996-01-01, as CSV."""
    rng = np.random.default_rng(seed)
    start = 820_454_400  # 1996-01-01
    pcsv.write_csv(
        pa.table(
            {
                "user_id": [f"u{k}" for k in rng.integers(0, 40, rows)],
                "item_id": rng.integers(0, 30, rows),
                "label": rng.integers(0, 2, rows),
                "timestamp": start + rng.integers(0, days * DAY, rows),
            }
        ),
        path,
    )
    return path


def dataset_rows(root: Path, manifest: Manifest) -> dict[str, pa.Table]:
    return {
        s: pa.concat_tables([read_parquet_checked(f, manifest) for f in manifest.files(root, s)])
        for s in manifest.splits
    }


def test_auto_partition_keeps_days_for_a_short_log_and_months_for_a_long_sparse_one(tmp_path: Path) -> None:
    short = import_interactions(write_log(tmp_path / "short.csv", 20, 2_000), tmp_path / "short")
    assert short.source["partition"] == "day" and len(short.splits["train"]) > 10
    long = import_interactions(write_log(tmp_path / "long.csv", 20 * 365, 5_000), tmp_path / "long")
    assert long.source["partition"] == "month"  # days would be ~3,000 partitions of ~2 rows
    files = sum(len(long.files(tmp_path / "long", s)) for s in long.splits)
    assert files <= AUTO_MAX_PARTITIONS
    assert all(ds.endswith("-01") for parts in long.splits.values() for ds in parts)


def test_compact_merges_day_files_into_months_in_place(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    before = import_interactions(write_log(tmp_path / "log.csv", 3 * 365, 3_000), root, partition="day")
    rows_before = dataset_rows(root, before)
    files_before = sum(len(before.files(root, s)) for s in before.splits)

    assert main(["data", "compact", str(root)]) == 0

    after = Manifest.read(root)
    assert after.source["partition"] == "month" and after.rows == before.rows
    files_after = sum(len(after.files(root, s)) for s in after.splits)
    assert files_before > 500 and files_after <= 3 * 12 * len(SPLITS)
    for split, table in dataset_rows(root, after).items():  # the same rows in the same order, every value
        assert table.equals(rows_before[split])
    months = after.source["days"]
    assert all(day.endswith("-01") for day in months)
    assert sum(sum(c.values()) for c in months.values()) == sum(after.rows.values())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind
    assert pq.ParquetFile(after.files(root, "train")[0]).metadata.num_rows > 1


def test_compact_refuses_a_finer_partition_and_leaves_the_dataset(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    import_interactions(write_log(tmp_path / "log.csv", 800, 1_000), root, partition="year")
    manifest_text = (root / "manifest.json").read_text()
    with pytest.raises(ConfigError, match="year partitions, coarser than month"):
        compact(root, "month")
    assert (root / "manifest.json").read_text() == manifest_text
